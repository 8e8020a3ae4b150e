"""Validate a deployed ensemble by invoking it by TargetModel, as a client would.

The first invoke is the cold one (download, extract, load); then ``n`` warm invokes give
p50/p99. The answers are scored against the expected outputs recorded in the build manifest.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from infra.runtime_client import infer_direct, invoke, runtime_client_for
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
    times = []
    with httpx.Client(base_url=triton_url, timeout=120) as c:
        for _ in range(n + 3):  # the first 3 are warm-up, not counted
            t = time.perf_counter()
            infer_direct(c, model_name, sample.inputs)
            times.append((time.perf_counter() - t) * 1000)
    times = times[3:]
    return {"p50": round(percentile(times, 50), 2), "p99": round(percentile(times, 99), 2), "n": n}


def check_validations(manifests: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    """Raise DeployValidationFailed naming every ensemble that answered wrongly."""
    failed = [(m, r) for m, r in zip(manifests, results) if not r["validation"]["passed"]]
    if failed:
        raise DeployValidationFailed("; ".join(
            f"{m['ensemble']}: {r['validation']['metric']} = {r['validation']['value']:.6f} "
            f"< {r['validation']['threshold']}" for m, r in failed))


def deploy_entries(manifests: list[dict[str, Any]], published: list[Any],
                   results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-ensemble lines of a deploy result (and of `mme demo --report`)."""
    return [{"name": m["ensemble"], "target": m["target"], "artifact": p.uri, "sha256": p.sha256,
             "bytes": p.bytes, "uploaded": p.uploaded, **r}
            for m, p, r in zip(manifests, published, results)]
