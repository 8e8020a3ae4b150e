"""Time from tritonserver's death to the endpoint's first good answer again.

Usage:  python bench/triton_restart.py [--trials 5] [--ensemble tiny|text_embedding|image_classifier]

Starts a throwaway local endpoint, loads one model, then per trial: SIGKILLs tritonserver while
a client keeps sending the same request, and records how long until an answer is 200 and
correct again (the endpoint notices the death, reaps the process group, removes its shm
segments, starts a new Triton, reloads the model from the disk cache on that request). Also
counts what the client got while Triton was down. ``tiny`` (default) is the tests' one-step
Python ensemble (tests/fixtures/tiny_models.py); the seed ensembles need a ``mme build`` first.
Prints one JSON line.
The back-off is set to 0 here: every trial measures what a first death costs (in service,
the 2nd, 3rd ... death within the restart window waits 1 s, 2 s ... more on purpose).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from infra.endpoint.client import LocalEndpointClient
from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint
from infra.aws.runtime_client import decode_response, encode_request

TESTS = Path(__file__).resolve().parents[1] / "tests"  # tests/fixtures: the tests' tiny Triton models
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
from fixtures.tiny_models import publish_pipe  # noqa: E402

def _tiny(prefix: Path) -> tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``tiny.tar.gz``: the tests' one-step ``pipe -> add`` ensemble (tests/fixtures/tiny_models.py),
    Y = X + 1."""
    publish_pipe(prefix, "tiny.tar.gz", k=1)
    x = np.arange(4, dtype=np.float32)
    return "tiny.tar.gz", {"X": x}, {"Y": x + 1}


def _seed(prefix: Path, ensemble: str) -> tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]:
    from infra import paths
    from tasks.build.package import read_manifest
    from tasks.build.verify import Sample

    manifest = read_manifest(paths.artifacts_dir("local-cpu"), ensemble)
    shutil.copyfile(Path(manifest.artifact.removeprefix("file://")),
                    prefix / manifest.target_model)
    sample = Sample.from_json(manifest.required_sample())
    return manifest.target_model, sample.inputs, sample.expected


def _good(r: httpx.Response, expected: dict[str, np.ndarray]) -> bool:
    if r.status_code != 200:
        return False
    got = decode_response(r.content, r.headers["content-type"])
    return all(np.allclose(got[k], v, atol=1e-3) for k, v in expected.items())


def _trial(ep: LocalEndpoint, target: str, body: bytes, ct: str,
           expected: dict[str, np.ndarray]) -> dict[str, Any]:
    url = f"{ep.url}/endpoints/bench/invocations"
    headers = {"Content-Type": ct, "X-Amzn-SageMaker-Target-Model": target}
    seen: Counter[str] = Counter()
    with httpx.Client(timeout=120) as client:
        assert _good(client.post(url, content=body, headers=headers), expected)
        old_pid = ep.triton.pid
        t0 = time.perf_counter()
        os.kill(old_pid, signal.SIGKILL)
        while True:
            r = client.post(url, content=body, headers=headers)
            if _good(r, expected):
                break
            seen[f"{r.status_code} {r.headers.get('x-amzn-errortype', '')}".strip()] += 1
            time.sleep(0.005)  # a client's retry pace, not synchronisation
        elapsed = time.perf_counter() - t0
    assert ep.triton.pid != old_pid and not Path(f"/proc/{old_pid}").exists()
    return {"death_to_good_ms": round(elapsed * 1000, 1),
            "triton_start_ms": round((ep.triton.startup_seconds or 0) * 1000, 1),
            "answers_while_down": dict(seen)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ensemble", default="tiny")
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "models"
        prefix.mkdir()
        target, inputs, expected = (_tiny(prefix) if args.ensemble == "tiny"
                                    else _seed(prefix, args.ensemble))
        body, ct = encode_request(inputs, binary=True)
        cfg = EndpointConfig(name="bench", model_data_url=prefix.as_uri(),
                             cache_dir=Path(tmp) / "cache", max_triton_restarts=args.trials + 1,
                             triton_restart_window_s=60.0, triton_restart_backoff_s=0.0)
        with LocalEndpoint(cfg) as ep:
            trials = [_trial(ep, target, body, ct, expected) for _ in range(args.trials)]
            m = LocalEndpointClient(ep.url).metrics()
    ms = [t["death_to_good_ms"] for t in trials]
    print(json.dumps({"ensemble": args.ensemble, "trials": len(trials),
                      "death_to_good_ms": {"p50": float(np.percentile(ms, 50)), "max": max(ms),
                                           "all": ms},
                      "triton_start_ms": [t["triton_start_ms"] for t in trials],
                      "answers_while_down": sum((Counter(t["answers_while_down"]) for t in trials),
                                                Counter()),
                      "TritonRestarts": m.triton_restarts, "TritonDeaths": m.triton_deaths}))


if __name__ == "__main__":
    main()
