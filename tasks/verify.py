"""Verify a built artifact numerically before it ships.

The tarball itself (not the folder it was made from) is extracted and loaded in a real
Triton server; the ensemble's outputs on the spec's sample inputs are compared with the
framework reference (e.g. sentence-transformers). The same sample and expected outputs go
into the build manifest, so a deploy can check the endpoint's answers without the framework.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ensembles.spec import EnsembleSpec, SpecError


class VerificationFailed(RuntimeError):
    """The ensemble's answers do not match the reference: never retried, never shipped."""


@dataclass
class Sample:
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": {k: _arr_to_json(v) for k, v in self.inputs.items()},
            "expected": {k: _arr_to_json(v) for k, v in self.expected.items()},
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Sample":
        return cls(inputs={k: _arr_from_json(v) for k, v in doc["inputs"].items()},
                   expected={k: _arr_from_json(v) for k, v in doc["expected"].items()})


def _arr_to_json(a: np.ndarray) -> dict[str, Any]:
    if a.dtype == object:
        return {"dtype": "bytes", "shape": list(a.shape),
                "data": [x.decode() if isinstance(x, bytes) else str(x) for x in a.reshape(-1)]}
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.reshape(-1).tolist()}


def _arr_from_json(d: dict[str, Any]) -> np.ndarray:
    if d["dtype"] == "bytes":
        return np.array([s.encode() for s in d["data"]], dtype=object).reshape(d["shape"])
    return np.array(d["data"], dtype=d["dtype"]).reshape(d["shape"])


# ---------------------------------------------------------------------------------- validators
def _sentence_reference(spec: EnsembleSpec, params: dict[str, Any]) -> Sample:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    sentences = [str(s) for s in params["sentences"]]
    model = SentenceTransformer(str(params["model"]), device="cpu")
    emb = model.encode(sentences, convert_to_numpy=True, normalize_embeddings=True)
    in_name, out_name = spec.inputs[0].name, spec.outputs[0].name
    texts = np.array([s.encode() for s in sentences], dtype=object).reshape(-1, 1)
    return Sample(inputs={in_name: texts}, expected={out_name: emb.astype(np.float32)})


def min_cosine(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[float, list[float]]:
    """Smallest cosine similarity between expected and actual rows (1.0 = identical)."""
    (name, want), = expected.items()
    if name not in got:
        raise VerificationFailed(f"output {name!r} missing from the answer (got {sorted(got)})")
    have = np.asarray(got[name], dtype=np.float32).reshape(want.shape)
    num = (want * have).sum(axis=1)
    den = np.linalg.norm(want, axis=1) * np.linalg.norm(have, axis=1)
    cos = (num / np.clip(den, 1e-12, None)).tolist()
    return float(min(cos)), [float(c) for c in cos]


REFERENCES: dict[str, Callable[[EnsembleSpec, dict[str, Any]], Sample]] = {
    "sentence_embedding": _sentence_reference,
}
METRICS: dict[str, Callable[..., tuple[float, list[float]]]] = {"min_cosine": min_cosine}


def reference_sample(spec: EnsembleSpec, artifacts: dict[str, Path]) -> Sample:
    v = spec.validation
    if v is None:
        raise SpecError(f"ensemble {spec.name!r} has no validation section: nothing to verify against")
    if v.kind not in REFERENCES:
        raise SpecError(f"ensemble {spec.name!r}: unknown validation kind {v.kind!r}")
    params = {k: (artifacts[val[9:]] if isinstance(val, str) and val.startswith("artifact:") else val)
              for k, val in v.params.items()}
    return REFERENCES[v.kind](spec, params)


def score(metric: str, threshold: float, sample: Sample, got: dict[str, np.ndarray]) -> dict[str, Any]:
    value, per_item = METRICS[metric](sample.expected, got)
    return {"passed": bool(value >= threshold), "metric": metric, "value": value,
            "threshold": threshold, "per_item": per_item}


def verify_archive(spec: EnsembleSpec, archive: Path, sample: Sample,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Extract ``archive``, load it in a real Triton, run the sample, score it.

    Raises VerificationFailed (saying by how much) when the metric misses the threshold.
    """
    import tritonclient.http as httpclient

    from infra.tarball import safe_extract
    from infra.triton_server import TritonServer
    from infra.runtime_client import encode_request, decode_response

    v = spec.validation
    assert v is not None
    with tempfile.TemporaryDirectory(prefix="mme-verify-") as tmp:
        repo = safe_extract(archive, Path(tmp) / "repo")
        with TritonServer(repo, log_path=Path(tmp) / "triton.log") as server:
            t0 = time.perf_counter()
            server.load(spec.name)
            load_s = time.perf_counter() - t0
            body, ct = encode_request(sample.inputs, binary=True)
            headers = {"Content-Type": "application/octet-stream"}
            if "json-header-size=" in ct:
                headers["Inference-Header-Content-Length"] = ct.split("json-header-size=")[1]
            import httpx

            r = httpx.post(f"{server.url}/v2/models/{spec.name}/infer", content=body,
                           headers=headers, timeout=120)
            if r.status_code != 200:
                raise VerificationFailed(f"ensemble {spec.name!r}: Triton answered "
                                         f"{r.status_code}: {r.text}")
            size = r.headers.get("inference-header-content-length")
            got = decode_response(r.content, f"x;json-header-size={size}" if size else "")
    del httpclient
    result = score(v.metric, v.threshold, sample, got)
    result["load_seconds"] = round(load_s, 3)
    log(f"verify {spec.name}: {v.metric} = {result['value']:.6f} (threshold {v.threshold})")
    if not result["passed"]:
        raise VerificationFailed(
            f"ensemble {spec.name!r}: {v.metric} = {result['value']:.6f} is below the threshold "
            f"{v.threshold} by {v.threshold - result['value']:.6f} (per item: "
            f"{[round(x, 6) for x in result['per_item']]})")
    return result
