"""JSON vs binary+json request bodies for a typical JPEG, through the local endpoint.

Usage (after `mme build image_classifier`):  python bench/payload.py [--n 100]
The seed's JSON body carries the image as a list of UINT8 numbers; binary+json carries the raw
bytes after a small JSON header. Prints body sizes and invoke latencies (p50/p99, ms).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from infra import paths
from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint
from infra.aws.runtime_client import encode_request, invoke, runtime_client_for
from tasks.build.package import read_manifest
from tasks.build.verify import sample_image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--image", default="skimage:chelsea")
    args = ap.parse_args()
    manifest = read_manifest(paths.artifacts_dir("local-cpu"), "image_classifier")
    image = sample_image(args.image)
    inputs = {"INPUT": np.frombuffer(image, dtype=np.uint8).reshape(1, -1)}
    sizes = {kind: len(encode_request(inputs, binary=kind == "binary")[0]) for kind in ("json", "binary")}
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "models"
        prefix.mkdir()
        shutil.copyfile(Path(manifest.artifact.removeprefix("file://")), prefix / manifest.target_model)
        cfg = EndpointConfig(name="bench", model_data_url=prefix.as_uri(), cache_dir=Path(tmp) / "cache")
        with LocalEndpoint(cfg) as ep:
            client = runtime_client_for(ep.url)
            for _ in range(5):
                invoke(client, "bench", manifest.target_model, inputs)
            times: dict[str, list[float]] = {"json": [], "binary": []}
            for _ in range(args.n):
                for kind in ("json", "binary"):
                    t = time.perf_counter()
                    invoke(client, "bench", manifest.target_model, inputs, binary=kind == "binary")
                    times[kind].append((time.perf_counter() - t) * 1000)
    stats = {k: {"p50": round(float(np.percentile(v, 50)), 2), "p99": round(float(np.percentile(v, 99)), 2)}
             for k, v in times.items()}
    print(json.dumps({"image_bytes": len(image), "body_bytes": sizes, "latency_ms": stats,
                      "binary_speedup_p50": round(stats["json"]["p50"] / stats["binary"]["p50"], 2),
                      "n": args.n}))


if __name__ == "__main__":
    main()
