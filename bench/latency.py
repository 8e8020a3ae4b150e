"""Warm invoke latency: what the local endpoint adds to Triton, raw HTTP against raw HTTP.

Usage (after `mme build` of the ensembles):
    python bench/latency.py [--n 300] [--ensemble text_embedding --ensemble image_classifier]

Starts a throwaway endpoint on the built artifacts. For each ensemble it sends the same
binary+json body, interleaved so both see the same machine state:

* ``endpoint``: one kept-alive ``httpx.Client`` POSTing to ``/endpoints/<name>/invocations``
  with the TargetModel header;
* ``triton``: the same client type POSTing the same bytes straight to Triton's
  ``/v2/models/<internal name>/infer``;
* ``boto3``: ``invoke_endpoint`` through boto3 (what users run; includes boto3's own cost).

Reports p50/p99 of each, the p50 of the per-pair difference (endpoint - triton) and the ratio
of the p50s, as one JSON line per ensemble.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from infra import paths
from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint
from infra.records.manifest import Manifest
from infra.aws.runtime_client import (
    encode_request,
    invoke,
    runtime_client_for,
    triton_headers,
)
from tasks.build.package import read_manifest
from tasks.build.verify import Sample


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.array(ms)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3)}


def _timed(fn) -> float:  # noqa: ANN001 - any zero-argument call
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def measure(ep: LocalEndpoint, manifest: Manifest, n: int) -> dict:
    target = manifest.target_model
    sample = Sample.from_json(manifest.required_sample())
    body, ct = encode_request(sample.inputs, binary=True)
    boto = runtime_client_for(ep.url)
    invoke(boto, ep.cfg.name, target, sample.inputs)  # cold load, not counted
    internal = ep.manager.models[target].ns.entry
    ep_headers = {"Content-Type": ct, "X-Amzn-SageMaker-Target-Model": target}
    tr_headers = triton_headers(ct)
    res: dict[str, list[float]] = {"endpoint": [], "triton": [], "boto3": []}
    with httpx.Client(base_url=ep.url) as e, httpx.Client(base_url=ep.triton.url) as t:
        def via_endpoint() -> None:
            e.post(f"/endpoints/{ep.cfg.name}/invocations", content=body,
                   headers=ep_headers).raise_for_status()

        def direct() -> None:
            t.post(f"/v2/models/{internal}/infer", content=body, headers=tr_headers).raise_for_status()

        for _ in range(20):  # warm-up, not counted
            via_endpoint(), direct()
        for i in range(n):  # interleaved; the order within a pair alternates
            pair = (via_endpoint, direct) if i % 2 == 0 else (direct, via_endpoint)
            for fn in pair:
                res["endpoint" if fn is via_endpoint else "triton"].append(_timed(fn))
            res["boto3"].append(_timed(lambda: invoke(boto, ep.cfg.name, target, sample.inputs)))
    diff = np.array(res["endpoint"]) - np.array(res["triton"])
    out = {k: _stats(v) for k, v in res.items()}
    return {"ensemble": manifest.ensemble, "n": n, "request_bytes": len(body), **out,
            "added_p50_ms": round(float(np.median(diff)), 3),
            "ratio_p50": round(out["endpoint"]["p50"] / out["triton"]["p50"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ensemble", action="append", default=None)
    ap.add_argument("--target", default="local-cpu")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON lines here")
    args = ap.parse_args()
    names = args.ensemble or ["image_classifier", "text_embedding"]

    manifests = [read_manifest(paths.artifacts_dir(args.target), name) for name in names]
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "models"
        prefix.mkdir()
        for m in manifests:
            shutil.copyfile(Path(m.artifact.removeprefix("file://")), prefix / m.target_model)
        cfg = EndpointConfig(name="bench", model_data_url=prefix.as_uri(), cache_dir=Path(tmp) / "cache")
        with LocalEndpoint(cfg) as ep:
            for m in manifests:
                lines.append(json.dumps(measure(ep, m, args.n)))
                print(lines[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
