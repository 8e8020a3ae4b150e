"""Retries on transient failures only, and the build on the Dask task runner.

The project's real tasks run in the Prefect test harness with their own ``retries`` and
``retry_condition_fn`` (:func:`flows.common.retry_transient`); only the backoff delay is set
to zero (``with_options``) so a test does not wait 2 + 4 + 8 s. The failure is injected
through the task's inputs: an S3 model prefix whose endpoint refuses connections (transient)
and a manifest whose tarball does not exist (permanent). Attempts are counted from the task
run Prefect recorded (``run_count``) and its state history.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.prefect]


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _publish_once(manifest: Any, models_url: str, backup_dir: Path) -> Any:
    """Run the real ``publish`` task in a flow; return its final state."""
    from prefect import flow

    from tasks.deploy.backends.local import LocalBackend
    from tasks.deploy.steps import publish_task

    fast = publish_task.with_options(retry_delay_seconds=0)  # same retries, same condition
    store_uri, _, endpoint = models_url.rpartition("/models/")
    backend = LocalBackend(endpoint, store_uri)
    assert backend.models_url == models_url

    states: list[Any] = []

    @flow(name="publish-retry-probe")
    def probe() -> None:
        states.append(fast(backend, manifest, backup_dir, return_state=True))

    probe()
    (state,) = states
    return state


def _attempts(state: Any) -> tuple[int, list[str]]:
    """(run_count, state names) of the task run behind ``state``, as the server recorded them."""
    from prefect.client.orchestration import get_client

    task_run_id = state.state_details.task_run_id
    with get_client(sync_client=True) as client:
        run = client.read_task_run(task_run_id)
        history = client.read_task_run_states(task_run_id)
    return run.run_count, [s.name for s in sorted(history, key=lambda s: s.timestamp)]


def _manifest(tmp_path: Path, exists: bool = True) -> Any:
    from infra.records.manifest import Manifest

    archive = tmp_path / "tiny.tar.gz"
    if exists:
        archive.write_bytes(b"not really a tarball, publish does not look inside")
    return Manifest(ensemble="tiny", target_model="tiny.tar.gz", artifact=archive.as_uri(),
                    sha256="0" * 64, bytes=51)


def test_an_unreachable_store_is_retried_by_botocore_only(prefect_harness, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An S3 store that refuses connections: botocore's standard mode retries the connection
    (the one layer for AWS transport failures, docs/retries.md); the StoreUnavailable left is
    RetriedOut, so the publish task runs once instead of multiplying the attempts."""
    from tasks.deploy.steps import publish_task

    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
                       "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{_closed_port()}"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    state = _publish_once(_manifest(tmp_path), "s3://models-bucket/models/ep", tmp_path / "backup")

    assert state.is_failed(), state
    with pytest.raises(Exception) as info:
        state.result()
    assert "Could not connect" in str(info.value) or "connect" in str(info.value).lower(), info.value
    runs, history = _attempts(state)
    assert publish_task.retries == 3  # kept for our own TransientErrors
    assert runs == 1 and "Retrying" not in history, history
    assert history[-1] == "Failed", history


def test_permanent_failure_is_not_retried(prefect_harness, tmp_path: Path) -> None:
    """A manifest whose tarball is gone: the user's error, one try only."""
    store = tmp_path / "store"
    store.mkdir()
    state = _publish_once(_manifest(tmp_path, exists=False), (store / "models" / "ep").as_uri(),
                          tmp_path / "backup")
    assert state.is_failed(), state
    with pytest.raises(Exception) as info:
        state.result()
    assert "tiny.tar.gz" in str(info.value), info.value
    runs, history = _attempts(state)
    assert runs == 1, history
    assert "Retrying" not in history and history[-1] == "Failed", history


def test_every_retrying_task_retries_only_transient_failures() -> None:
    """A task with retries and no condition would retry a failed verification for minutes."""
    import importlib
    import pkgutil

    from prefect import Task

    import flows
    import tasks
    from tasks.runtime.retry import retry_transient

    # every module of tasks/ (where the tasks live) and flows/ (where none should be left)
    modules = [importlib.import_module(info.name) for pkg in (tasks, flows)
               for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}.")]
    retrying = {f"{mod.__name__}.{name}": obj for mod in modules
                for name, obj in vars(mod).items() if isinstance(obj, Task) and obj.retries}
    names = {t.name for t in retrying.values()}
    assert {"produce-artifact", "verify", "publish", "validate"} <= names, sorted(retrying)
    wrong = [name for name, t in retrying.items() if t.retry_condition_fn is not retry_transient]
    assert wrong == [], wrong


def test_wrapped_transient_causes_count() -> None:
    """A wrapped stdlib connection error stays transient; a wrapped CompileTimeout does not, and
    neither does an S3 failure botocore already retried (StoreUnavailable is RetriedOut: one
    retry layer per kind of failure, docs/retries.md)."""
    from flows.common import is_transient
    from infra.store.objects import StoreError, StoreUnavailable
    from tasks.producers.compile import CompileTimeout

    def wrapped(inner: BaseException, outer: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException as e:
                raise outer from e
        except BaseException as e:  # noqa: BLE001
            return e

    assert is_transient(wrapped(ConnectionRefusedError("127.0.0.1:1"), StoreError("head failed")))
    assert not is_transient(StoreUnavailable("put of s3://b/k failed: connection refused"))
    assert not is_transient(wrapped(ConnectionResetError("reset"), StoreUnavailable("put failed")))
    assert not is_transient(StoreError("invalid object key"))
    assert not is_transient(wrapped(ValueError("bad"), StoreError("x")))
    timeout = CompileTimeout("trtexec ran past 3600 s")
    assert not is_transient(wrapped(timeout, RuntimeError("compile failed")))


@pytest.mark.triton
def test_build_on_the_dask_runner(built_image_classifier: dict, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """MME_TASK_RUNNER=dask: the build-ensemble task really runs on a Dask worker (a local
    in-process cluster, one worker) and packs the same bytes as the threads build."""
    from distributed import LocalCluster

    from flows.build import build

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        monkeypatch.setenv("MME_TASK_RUNNER", "dask")
        monkeypatch.setenv("MME_DASK_ADDRESS", cluster.scheduler_address)
        out = tmp_path / "dask-out"
        (m,) = build(ensembles=["image_classifier"], target="local-cpu", output_dir=str(out))
        ran = {prefix: tp.states.get("memory", 0) + tp.states.get("released", 0)
                       + tp.states.get("forgotten", 0)
               for prefix, tp in cluster.scheduler.task_prefixes.items()}
    assert any("build" in prefix for prefix in ran), ran  # the scheduler saw the build task
    threads_manifest = built_image_classifier["manifest"]
    dask_manifest = json.loads((out / "image_classifier.manifest.json").read_text())
    assert m.sha256 == dask_manifest["sha256"] == threads_manifest.sha256
    assert dask_manifest["validation"]["passed"] is True
    assert (out / "image_classifier.tar.gz").stat().st_size == threads_manifest.bytes
