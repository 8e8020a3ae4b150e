"""Warm invoke latency: boto3 -> local endpoint -> Triton, next to Triton called directly.

Usage (after `mme build`):  python bench/latency.py [--n 200] [--ensemble text_embedding]
Starts a throwaway endpoint on the built artifact, measures, stops it. Prints a JSON line.
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
from infra.local_mme import EndpointConfig, LocalEndpoint
from infra.runtime_client import encode_request, invoke, runtime_client_for, triton_headers
from tasks.package import read_manifest
from tasks.verify import Sample


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.array(ms)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2),
            "mean": round(float(a.mean()), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ensemble", default="text_embedding")
    ap.add_argument("--target", default="local-cpu")
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()

    manifest = read_manifest(paths.artifacts_dir(args.target), args.ensemble)
    archive = Path(manifest["artifact"].removeprefix("file://"))
    sample = Sample.from_json(manifest["sample"])
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "models"
        prefix.mkdir()
        shutil.copyfile(archive, prefix / manifest["target_model"])
        cfg = EndpointConfig(name="bench", model_data_url=prefix.as_uri(), cache_dir=Path(tmp) / "cache")
        with LocalEndpoint(cfg) as ep:
            client = runtime_client_for(ep.url)
            t = time.perf_counter()
            invoke(client, "bench", manifest["target_model"], sample.inputs)
            cold_ms = (time.perf_counter() - t) * 1000
            internal = ep.manager.models[manifest["target_model"]].ns.entry
            body, ct = encode_request(sample.inputs, binary=True)
            direct_headers = triton_headers(ct)
            results: dict[str, list[float]] = {"boto3_binary": [], "boto3_json": [], "triton_direct": []}
            with httpx.Client(base_url=ep.triton.url) as direct:
                for _ in range(10):  # warm-up, not counted
                    invoke(client, "bench", manifest["target_model"], sample.inputs)
                    direct.post(f"/v2/models/{internal}/infer", content=body, headers=direct_headers)
                for _ in range(args.n):  # interleaved, so both see the same machine state
                    t = time.perf_counter()
                    invoke(client, "bench", manifest["target_model"], sample.inputs, binary=True)
                    results["boto3_binary"].append((time.perf_counter() - t) * 1000)
                    t = time.perf_counter()
                    invoke(client, "bench", manifest["target_model"], sample.inputs, binary=False)
                    results["boto3_json"].append((time.perf_counter() - t) * 1000)
                    t = time.perf_counter()
                    direct.post(f"/v2/models/{internal}/infer", content=body,
                                headers=direct_headers).raise_for_status()
                    results["triton_direct"].append((time.perf_counter() - t) * 1000)
    print(json.dumps({"ensemble": args.ensemble, "n": args.n, "batch": len(next(iter(sample.inputs.values()))),
                      "cold_ms": round(cold_ms, 1), **{k: _stats(v) for k, v in results.items()}}))


if __name__ == "__main__":
    main()
