"""Shared fixtures (an isolated MME_HOME, one Prefect test server, one real build) and the lanes.

The Prefect harness starts a real (SQLite) Prefect server once per session (~15 s); the
text-embedding ensemble is built once per session through the real build flow (~25 s) and
reused by the endpoint, deploy and CLI tests.

Lanes: ``pytest -m "not triton and not prefect"`` is the fast lane (no tritonserver, no Prefect
server); plain ``pytest`` runs everything. The markers are kept true by the spawn guard
(:mod:`fixtures.spawn_guard`): a test using a server-starting fixture is marked automatically,
and any test that starts a tritonserver or a Prefect server (or runs a flow) without the marker
fails, in every lane. Tests marked ``network`` need the internet (PyPI) and run only with
``--run-network``; tests marked ``gpu`` skip themselves where there is no GPU.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures import spawn_guard

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

#: Set at import, before anything is spawned: every child inherits this session's id.
_SPAWNS = spawn_guard.new_session()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-network", action="store_true", default=False,
                     help="also run the tests marked 'network' (they need PyPI)")


def pytest_configure(config: pytest.Config) -> None:
    spawn_guard.install(_SPAWNS)
    _SPAWNS.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    _SPAWNS.stop()


@pytest.hookimpl(tryfirst=True)  # before -m selects: the automatic markers must be there
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    spawn_guard.auto_mark(items)
    if config.getoption("--run-network"):
        return
    network = [i for i in items if i.get_closest_marker("network") is not None]
    if network:
        items[:] = [i for i in items if i.get_closest_marker("network") is None]
        config.hook.pytest_deselected(items=network)
        config.stash[_NETWORK_LEFT] = len(network)


_NETWORK_LEFT = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    left = config.stash.get(_NETWORK_LEFT, 0)
    if left:
        terminalreporter.write_line(f"{left} test(s) marked 'network' not run: they need PyPI "
                                    f"(run them with --run-network)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Fail a test that started a kind of server its markers do not name (see the module doc)."""
    outcome = yield
    report = outcome.get_result()
    if call.when == "setup" and report.passed:
        return  # checked after the call, which sees what setup started too
    _SPAWNS.scan()
    missing = spawn_guard.unmarked(_SPAWNS, item) - item.stash.get(_GUARD_REPORTED, set())
    if not missing:
        return
    item.stash[_GUARD_REPORTED] = item.stash.get(_GUARD_REPORTED, set()) | missing
    names = " and ".join(spawn_guard.WHAT[k] for k in sorted(missing))
    msg = (f"spawn guard: this test {names} but is not marked so: add "
           + ", ".join(f"@pytest.mark.{k.value}" for k in sorted(missing))
           + " (or use a fixture conftest marks), so the fast lane leaves it out")
    if report.passed:
        report.outcome = "failed"
        report.longrepr = msg
    else:
        report.sections.append(("spawn guard", msg))


_GUARD_REPORTED = pytest.StashKey[set[spawn_guard.Kind]]()


@pytest.fixture
def aws_calls() -> Iterator[list[tuple[str, str, dict[str, Any]]]]:
    """Every botocore call made meanwhile (fixtures.sagemaker_moto.botocore_calls): the moto
    fleet tests count S3 writes and SageMaker calls with it."""
    from fixtures.sagemaker_moto import botocore_calls

    with botocore_calls() as calls:
        yield calls


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
