"""Cost of the endpoint's request validation (``infra.endpoint.request_check.check_request``).

Usage:  python bench/request_check.py [--n 5000]
Runs on every invoke, so it must stay far below the cost of the hop to Triton: the goal is a
p50 well under 0.2 ms for a 50 KB JPEG sent as binary+json. Bodies are the real ones:
chelsea encoded with Pillow (JPEG, quality 95) as binary+json (tritonclient's encoder) and as
the AWS sample's KServe JSON (ContentType application/octet-stream), and the text ensemble's
five validation sentences as BYTES. Each is checked against the contract read from the
catalog ensemble's rendered config.pbtxt. Prints JSON (microseconds).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from ensembles.catalog import load_ensemble
from ensembles.render import render_repository
from infra.endpoint.request_check import ModelContract, check_request, contract_from_config
from infra.aws.runtime_client import encode_request, pack_images
from tasks.build.verify import sample_image


def _contract(name: str, target: str = "local-cpu") -> ModelContract:
    spec, _ = load_ensemble(name)
    with tempfile.TemporaryDirectory() as tmp:
        repo = render_repository(spec, target, Path(tmp) / "repo", configs_only=True)
        return contract_from_config(repo / name / "config.pbtxt")


def _bodies() -> dict[str, tuple[str, str, bytes]]:
    """case -> (ensemble, content type, body)."""
    jpeg = sample_image("skimage:chelsea")
    spec, _ = load_ensemble("text_embedding")
    assert spec.validation is not None
    sentences: list[str] = list(spec.validation.params["sentences"])  # type: ignore[call-overload]
    texts = np.empty((len(sentences), 1), dtype=object)
    texts[:, 0] = [s.encode() for s in sentences]
    image_bin, image_ct = encode_request({"INPUT": pack_images([jpeg])})
    sample = json.dumps({"inputs": [{"name": "INPUT", "shape": [1, len(jpeg)], "datatype": "UINT8",
                                     "data": [list(jpeg)]}]}).encode()
    text_bin, text_ct = encode_request({"INPUT0": texts})
    text_json, json_ct = encode_request({"INPUT0": texts}, binary=False)
    return {
        f"image {len(jpeg)} B JPEG, binary+json": ("image_classifier", image_ct, image_bin),
        f"image {len(jpeg)} B JPEG, AWS sample JSON (octet-stream)":
            ("image_classifier", "application/octet-stream", sample),
        "text 5 sentences BYTES, binary+json": ("text_embedding", text_ct, text_bin),
        "text 5 sentences BYTES, JSON": ("text_embedding", json_ct, text_json),
    }


def _time(content_type: str, body: bytes, contract: ModelContract, n: int) -> dict[str, float]:
    for _ in range(min(n, 50)):
        check_request(content_type, body, contract)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        check_request(content_type, body, contract)
        times.append((time.perf_counter() - t) * 1e6)
    return {"p50_us": round(float(np.percentile(times, 50)), 1),
            "p99_us": round(float(np.percentile(times, 99)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args()
    contracts = {name: _contract(name) for name in ("image_classifier", "text_embedding")}
    out = {}
    for case, (ensemble, ct, body) in _bodies().items():
        n = args.n if len(body) < 100_000 else max(args.n // 25, 20)  # JSON image: ms each
        out[case] = {"body_bytes": len(body), "n": n, **_time(ct, body, contracts[ensemble], n)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
