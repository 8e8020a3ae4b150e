"""The CLI commands a user runs around a local endpoint, as subprocesses against real builds:
``mme endpoint start / status / stop``, ``mme deploy``, ``mme invoke`` (sentences, and images
of different formats and sizes in one call, which the CLI pads into one batch) and
``mme retire`` (one ensemble, then the whole endpoint).

The session's builds (tests/conftest.py) are copied into a fresh ``MME_HOME``; the flows the
CLI runs report to the session's Prefect test server (``PREFECT_API_URL``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [
    pytest.mark.triton,
    pytest.mark.prefect,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pytriton tritonserver is Linux-only"),
]

MME = [sys.executable, "-m", "flows.cli"]
REPO = Path(__file__).resolve().parents[1]
EP = "cli-ep"


def _mme(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(MME + args, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO, check=False)


def _alive(pid: int) -> bool:
    """Running (a zombie left for a non-reaping init to collect does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, (r.args, r.stdout[-3000:], r.stderr[-3000:])
    return r


@pytest.fixture
def cli_env(tmp_path: Path, built_text_embedding: dict, built_image_classifier: dict,
            prefect_harness) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "home"
    art = home / "artifacts" / "local-cpu"
    art.mkdir(parents=True)
    for name in ("text_embedding", "image_classifier"):
        src = built_text_embedding["output_dir"] if name == "text_embedding" else \
            built_image_classifier["output_dir"]
        shutil.copyfile(src / f"{name}.tar.gz", art / f"{name}.tar.gz")
        doc = json.loads((src / f"{name}.manifest.json").read_text())
        doc["artifact"] = (art / f"{name}.tar.gz").as_uri()
        (art / f"{name}.manifest.json").write_text(json.dumps(doc))
    return {**os.environ, "MME_HOME": str(home), "PREFECT_API_URL": PREFECT_API_URL.value()}


def _images() -> dict[str, bytes]:
    """Three encoded images of different formats and sizes (so the CLI must pad them)."""
    import skimage.data as skdata
    from PIL import Image

    from tasks.build.verify import sample_image

    def enc(a: np.ndarray, fmt: str, **kw: Any) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format=fmt, **kw)
        return buf.getvalue()

    return {"chelsea.jpg": sample_image("skimage:chelsea"),
            "coffee.png": enc(skdata.coffee(), "PNG"),
            "rocket.webp": enc(skdata.rocket(), "WEBP", quality=90)}


def test_endpoint_deploy_invoke_retire_from_the_cli(cli_env: dict[str, str], tmp_path: Path,
                                                    built_text_embedding: dict,
                                                    built_image_classifier: dict) -> None:
    from fixtures.image_reference import reference_top1

    from tasks.producers.classifiers import imagenet_label_names
    from tasks.build.verify import Sample, min_cosine

    home = Path(cli_env["MME_HOME"])
    state = home / "endpoints" / EP / "endpoint.json"
    try:
        # ---- endpoint start / status
        r = _ok(_mme(["endpoint", "start", "--name", EP], cli_env))
        assert "serving on http://127.0.0.1:" in r.stderr, r.stderr
        info = json.loads(state.read_text())
        status = json.loads(_ok(_mme(["endpoint", "status", "--name", EP, "--json"], cli_env)).stdout)
        assert status["endpoint"] == EP and status["url"] == info["url"]
        assert status["models"] == [] and status["metrics"]["Invocations"] == 0

        # ---- deploy both ensembles to the running endpoint (reused, not restarted)
        _ok(_mme(["deploy", "text_embedding", "image_classifier", "--endpoint", EP,
                  "--warm-invocations", "2"], cli_env))
        assert json.loads(state.read_text())["pid"] == info["pid"]

        # ---- invoke: sentences (binary+json and --json-body bodies), the answer as --json
        manifest = json.loads((home / "artifacts" / "local-cpu" /
                               "text_embedding.manifest.json").read_text())
        sample = Sample.from_json(manifest["sample"])
        sentences = [s.decode() if isinstance(s, bytes) else str(s)
                     for s in sample.inputs["INPUT0"].reshape(-1)]
        for extra in ([], ["--json-body"]):
            r = _ok(_mme(["invoke", *sentences, "--endpoint", EP, "--json", *extra], cli_env))
            (name, rows), = json.loads(r.stdout)["outputs"].items()
            got = {name: np.asarray(rows, dtype=np.float32)}
            assert got[name].shape == (len(sentences), 384)
            found = min_cosine(sample, got)
            assert found.value >= 0.999, (extra, found)

        # ---- invoke --image: three formats, three sizes, one padded batch
        images = _images()
        assert len({len(b) for b in images.values()}) == 3
        paths = []
        for fname, data in images.items():
            (tmp_path / fname).write_bytes(data)
            paths += ["--image", str(tmp_path / fname)]
        doc = json.loads(_ok(_mme(["invoke", *paths, "--endpoint", EP, "--json"], cli_env)).stdout)
        lines = doc["results"]
        assert [Path(x["input"]).name for x in lines] == list(images)
        assert doc["target_model"].startswith("image_classifier-")  # the versioned one it hit
        labels = imagenet_label_names()
        for x, (fname, data) in zip(lines, images.items(), strict=True):
            assert len(x["top_k"]) == 5
            assert x["top_k"][0]["label"] == labels[reference_top1(built_image_classifier["archive"], data)], (fname, x)
        assert lines[0]["top_k"][0]["label"] in ("Egyptian cat", "tiger cat", "tabby")
        shown = _ok(_mme(["invoke", *paths[:2], "--endpoint", EP, "--top-k", "2"], cli_env)).stdout
        assert doc["target_model"] in shown and lines[0]["top_k"][1]["label"] in shown
        assert len([ln for ln in shown.splitlines() if "(class " in ln]) == 2  # --top-k 2

        # ---- invoke resolved each ensemble to its versioned TargetModel through the record
        text_tm = f"text_embedding-{built_text_embedding['manifest'].sha256[:12]}.tar.gz"
        image_tm = f"image_classifier-{built_image_classifier['manifest'].sha256[:12]}.tar.gz"
        status = json.loads(_ok(_mme(["endpoint", "status", "--name", EP, "--json"], cli_env)).stdout)
        assert {m["target_model"]: m["state"] for m in status["models"]} == {
            text_tm: "loaded", image_tm: "loaded"}
        assert status["metrics"]["models"][text_tm]["invocations"] > 2  # validation + the invokes

        # ---- retire one ensemble: unloaded, its object deleted, the other still served
        store_obj = home / "store" / "models" / EP / image_tm
        assert store_obj.exists()
        r = _ok(_mme(["retire", "image_classifier", "--endpoint", EP], cli_env))
        assert "image_classifier" in r.stdout + r.stderr
        assert not store_obj.exists()
        status = json.loads(_ok(_mme(["endpoint", "status", "--name", EP, "--json"], cli_env)).stdout)
        assert image_tm not in {m["target_model"] for m in status["models"]}
        r = _mme(["invoke", *paths[:2], "--endpoint", EP], cli_env)
        assert r.returncode == 2 and "ValidationError" in r.stderr, (r.stdout, r.stderr)
        assert "image_classifier.tar.gz" in r.stderr
        _ok(_mme(["invoke", "still here", "--endpoint", EP], cli_env))

        # ---- retire the endpoint: the rest deleted, the endpoint stopped
        _ok(_mme(["retire", "--endpoint", EP, "--stop"], cli_env))
        assert not (home / "store" / "models" / EP / text_tm).exists()
        assert not state.exists()
        r = _mme(["endpoint", "status", "--name", EP], cli_env)
        assert r.returncode == 2 and "not running" in r.stderr, r.stderr
        r = _ok(_mme(["endpoint", "stop", "--name", EP], cli_env))
        assert "was not running" in r.stderr
    finally:
        _mme(["endpoint", "stop", "--name", EP], cli_env, timeout=120)


def test_endpoint_start_status_stop(cli_env: dict[str, str]) -> None:
    """The endpoint commands alone: start twice (the second reuses), stop, stop again."""
    home = Path(cli_env["MME_HOME"])
    name = "cli-bare"
    try:
        first = _ok(_mme(["endpoint", "start", "--name", name, "--max-loaded-models", "3"], cli_env))
        pid = json.loads((home / "endpoints" / name / "endpoint.json").read_text())["pid"]
        again = _ok(_mme(["endpoint", "start", "--name", name], cli_env))
        assert json.loads((home / "endpoints" / name / "endpoint.json").read_text())["pid"] == pid
        url = first.stderr.split("serving on ")[1].split()[0]
        assert url in again.stderr
        status = json.loads(_ok(_mme(["endpoint", "status", "--name", name, "--json"], cli_env)).stdout)
        assert status["url"] == url and status["models"] == []
        r = _ok(_mme(["endpoint", "stop", "--name", name], cli_env))
        assert f"endpoint {name}: stopped" in r.stderr
        assert not _alive(pid), f"the endpoint process {pid} is still running"
        assert "was not running" in _ok(_mme(["endpoint", "stop", "--name", name], cli_env)).stderr
    finally:
        _mme(["endpoint", "stop", "--name", name], cli_env, timeout=120)
