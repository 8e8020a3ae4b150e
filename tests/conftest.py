"""Shared fixtures: an isolated MME_HOME, one Prefect test server, one real build.

The Prefect harness starts a real (SQLite) Prefect server once per session (~15 s); the
text-embedding ensemble is built once per session through the real build flow (~25 s) and
reused by the endpoint, deploy and CLI tests.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def mme_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("mme-home")
    old = os.environ.get("MME_HOME")
    os.environ["MME_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("MME_HOME", None)
    else:
        os.environ["MME_HOME"] = old


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def built_text_embedding(mme_home: Path, prefect_harness) -> dict:
    """The real text-embedding build (export, render, pack, verify in Triton) for local-cpu."""
    from flows.build import build

    out = mme_home / "artifacts" / "local-cpu"
    manifests = build(ensembles=["text_embedding"], target="local-cpu", output_dir=str(out))
    (m,) = manifests
    return {"manifest": m, "archive": out / "text_embedding.tar.gz", "output_dir": out}


@pytest.fixture
def model_prefix(tmp_path: Path) -> tuple[Path, str]:
    """A fresh embedded store folder and the endpoint model prefix URL inside it."""
    store = tmp_path / "store"
    prefix = store / "models" / "test-ep"
    prefix.mkdir(parents=True)
    return prefix, prefix.as_uri()


def copy_archive(src: Path, prefix: Path, name: str) -> Path:
    dest = prefix / name
    shutil.copyfile(src, dest)
    return dest


@pytest.fixture(scope="session")
def built_image_classifier(mme_home: Path, prefect_harness) -> dict:
    """The real image ensemble build (DALI CPU pipeline, SqueezeNet ONNX, verified in Triton).
    Its ``manifest`` is the one on disk (with the validation sample), read as readers do."""
    from flows.build import build
    from tasks.build.package import read_manifest

    out = mme_home / "artifacts" / "local-cpu"
    build(ensembles=["image_classifier"], target="local-cpu", output_dir=str(out))
    full = read_manifest(out, "image_classifier")
    return {"manifest": full, "archive": out / "image_classifier.tar.gz", "output_dir": out}


@pytest.fixture
def tampered_text_build(built_text_embedding: dict, tmp_path: Path) -> Path:
    """A second text_embedding 'build' whose pooling negates the embedding: a valid tarball
    that loads fine and answers wrongly (for rollback tests). Returns its artifacts folder."""
    import json

    from infra.store.tarball import pack_deterministic, safe_extract

    repo = safe_extract(built_text_embedding["archive"], tmp_path / "tamper")
    model_py = repo / "text_embedding__postprocess" / "1" / "model.py"
    model_py.write_text(model_py.read_text().replace("(pooled / norms)", "(-pooled / norms)"))
    out = tmp_path / "tampered"
    out.mkdir()
    sha, size = pack_deterministic(repo, out / "text_embedding.tar.gz")
    doc = json.loads((built_text_embedding["output_dir"] / "text_embedding.manifest.json").read_text())
    doc.update(sha256=sha, bytes=size, artifact=(out / "text_embedding.tar.gz").as_uri())
    (out / "text_embedding.manifest.json").write_text(json.dumps(doc))
    return out
