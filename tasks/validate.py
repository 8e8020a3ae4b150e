"""Validate a deployed ensemble by invoking it by TargetModel, as a client would.

The first invoke is the cold one (download, extract, load); then ``n`` warm invokes give
p50/p99. The answers are scored against the expected outputs recorded in the build manifest.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from infra.runtime_client import decode_response, encode_request, invoke, runtime_client_for
from tasks.verify import Sample, score


class DeployValidationFailed(RuntimeError):
    """An ensemble answered wrongly on the endpoint: the deploy was rolled back."""


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q)) if xs else 0.0


def validate_deployed(url: str | None, endpoint: str, manifest: dict[str, Any], *,
                      warm_invocations: int = 20, binary: bool = True,
                      runtime_client: Any = None) -> dict[str, Any]:
    client = runtime_client or runtime_client_for(url)
    sample = Sample.from_json(manifest["sample"])
    v = manifest["validation"]
    t0 = time.perf_counter()
    got = invoke(client, endpoint, manifest["target_model"], sample.inputs, binary=binary)
    cold_ms = (time.perf_counter() - t0) * 1000
    result = score(v["metric"], v["threshold"], sample, got)
    for _ in range(3):  # first runs after a load are slower (allocator, ORT warm-up): not counted
        invoke(client, endpoint, manifest["target_model"], sample.inputs, binary=binary)
    warm: list[float] = []
    for _ in range(warm_invocations):
        t = time.perf_counter()
        invoke(client, endpoint, manifest["target_model"], sample.inputs, binary=binary)
        warm.append((time.perf_counter() - t) * 1000)
    return {
        "validation": {k: v for k, v in result.items() if k != "per_item"},
        "latency_ms": {"cold": round(cold_ms, 2), "p50": round(percentile(warm, 50), 2),
                       "p99": round(percentile(warm, 99), 2), "n": len(warm)},
    }


def direct_triton_latency(triton_url: str, model_name: str, manifest: dict[str, Any],
                          n: int = 20) -> dict[str, float]:
    """The same request straight to Triton's HTTP API, to show what the front end costs."""
    import httpx

    sample = Sample.from_json(manifest["sample"])
    body, ct = encode_request(sample.inputs, binary=True)
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": ct.split("json-header-size=")[1]}
    times = []
    with httpx.Client(base_url=triton_url, timeout=120) as c:
        for _ in range(n + 3):
            t = time.perf_counter()
            r = c.post(f"/v2/models/{model_name}/infer", content=body, headers=headers)
            r.raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
    size = r.headers.get("inference-header-content-length")
    decode_response(r.content, f"x;json-header-size={size}" if size else "")
    times = times[3:]
    return {"p50": round(percentile(times, 50), 2), "p99": round(percentile(times, 99), 2), "n": n}
