"""The one error tree (infra/errors.py) and the two policies that key on it.

- Every exception class the project defines is an ``MMEError``, on at most one branch, and
  keeps the built-in base its callers catch.
- The CLI: a ``UserError`` is one line and exit 2, another ``MMEError`` one line and exit 1,
  anything else (a bare ``ValueError`` included) a traceback. Driven through the real ``mme``
  app in a subprocess, with a real Prefect flow raising (so Prefect's own logging of the
  failure is part of what is checked).
- The retry policy: real Prefect tasks with ``retry_condition_fn=retry_transient`` retry the
  ``TransientError`` branch and nothing else.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from infra.errors import InvalidInput, MissingInput, MMEError, RetriedOut, TransientError, UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Exception classes that stay outside the tree on purpose, and why:
OUTSIDE_THE_TREE = {
    # shipped to AWS Lambda as this one standard-library file: it cannot import infra.errors
    "infra.aws.lambda_handler.PrefectPostError",
    # the local endpoint's HTTP answers (status + x-amzn-ErrorType): raised and answered inside
    # the server, never seen by the CLI or the retry policy
    "infra.endpoint.errors.EndpointError", "infra.endpoint.errors.ValidationError",
    "infra.endpoint.errors.ModelNotReady", "infra.endpoint.errors.InsufficientMemory",
    "infra.endpoint.errors.ModelError", "infra.endpoint.errors.Rejected",
    "infra.endpoint.errors.ServiceUnavailable", "infra.endpoint.errors.InternalFailure",
    "infra.endpoint.errors.NotFound", "infra.endpoint.request_check.RequestRejected",
}


def _project_modules() -> list[str]:
    """Every module of the four packages, except the Python models that run inside Triton's
    Python backend (they import ``triton_python_backend_utils``, which only Triton provides)."""
    names = []
    for pkg in ("infra", "ensembles", "tasks", "flows"):
        root = importlib.import_module(pkg)
        for info in pkgutil.walk_packages(root.__path__, f"{pkg}."):
            leaf = info.name.rsplit(".", 1)[-1]
            if leaf == "model" or info.name.startswith("ensembles.runtime."):
                continue
            names.append(info.name)
    return names


def _project_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _project_modules():
        module = importlib.import_module(name)  # a module that does not import fails the test
        for attr, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__):
                found[f"{module.__name__}.{attr}"] = obj
    return found


def test_every_project_exception_is_an_mme_error() -> None:
    found = _project_exceptions()
    assert len(found) >= 40, sorted(found)  # the walk saw the project, not an empty folder
    outside = sorted(name for name, cls in found.items()
                     if not issubclass(cls, MMEError) and name not in OUTSIDE_THE_TREE)
    assert outside == [], f"derive these from infra.errors (UserError, TransientError or MMEError): {outside}"
    both = sorted(name for name, cls in found.items()
                  if issubclass(cls, UserError) and issubclass(cls, TransientError))
    assert both == [], f"a class is either the user's to fix or worth a retry, not both: {both}"


def test_classes_keep_the_builtin_base_their_callers_catch() -> None:
    """Adding the tree changed no ``except`` clause: the old built-in bases are still there."""
    from ensembles.spec import SpecError
    from infra.store.objects import StoreError, StoreRefused, StoreUnavailable
    from infra.endpoint.triton_http import UpstreamError
    from infra.triton.server import TritonStartError
    from tasks.producers.compile import CompileTimeout, ReleaseMismatch
    from tasks.producers.fetch import DownloadInterrupted, DownloadTimeout, FetchError

    assert issubclass(SpecError, UserError) and issubclass(SpecError, ValueError)
    assert issubclass(ReleaseMismatch, UserError) and issubclass(ReleaseMismatch, ValueError)
    assert issubclass(FetchError, UserError) and issubclass(FetchError, RuntimeError)
    assert issubclass(InvalidInput, UserError) and issubclass(InvalidInput, ValueError)
    assert issubclass(MissingInput, UserError) and issubclass(MissingInput, FileNotFoundError)
    assert issubclass(DownloadInterrupted, TransientError) and issubclass(DownloadInterrupted, ConnectionError)
    assert issubclass(DownloadTimeout, TransientError) and issubclass(DownloadTimeout, TimeoutError)
    assert issubclass(UpstreamError, TransientError) and issubclass(UpstreamError, ConnectionError)
    assert issubclass(TritonStartError, TransientError) and issubclass(TritonStartError, RuntimeError)
    # a compile that timed out is a TimeoutError for its callers but will time out again
    assert issubclass(CompileTimeout, TimeoutError) and not issubclass(CompileTimeout, TransientError)
    assert issubclass(StoreRefused, StoreError) and issubclass(StoreRefused, UserError)
    assert issubclass(StoreUnavailable, StoreError) and issubclass(StoreUnavailable, RetriedOut)
    assert not issubclass(StoreUnavailable, TransientError)  # botocore retried it: docs/retries.md


def _bad_release() -> Any:
    from infra.triton.release import TritonRelease

    return TritonRelease.parse("24-09")


def _bad_environment() -> Any:
    from infra.aws.sagemaker import check_environment

    return check_environment({"BAD KEY": "v"})


def _bad_bucket() -> Any:
    from infra.aws.iam import endpoint_execution_policy

    return endpoint_execution_policy("b", "mme/models/ep", region="us-east-1",
                                     account_id="123456789012", ecr_repository_arns=[],
                                     endpoint_name="ep")


def _bad_store_uri() -> Any:
    from infra.store.objects import open_store

    return open_store("ftp://host/x")


def _missing_build() -> Any:
    from tasks.build.package import read_manifest

    return read_manifest(Path("/nonexistent-out"), "tiny")


@pytest.mark.parametrize("call, exc_type, words", [
    (_bad_release, InvalidInput, "24-09"),
    (_bad_environment, InvalidInput, "BAD KEY"),
    (_bad_bucket, InvalidInput, "'b'"),
    (_bad_store_uri, UserError, "ftp://host/x"),
    (_missing_build, MissingInput, "mme build tiny"),
])
def test_user_input_is_refused_with_a_user_error(call: Any, exc_type: type, words: str) -> None:
    """What used to be a bare ValueError (or FileNotFoundError) for the user's input is now a
    UserError naming the value: the CLI no longer treats every ValueError as the user's."""
    with pytest.raises(exc_type) as info:
        call()
    assert words in str(info.value), info.value


# ----------------------------------------------------------------------------------- CLI


def test_cli_exit_code_keys_on_the_tree() -> None:
    """2 for the user's, 1 for another MMEError, None (a traceback) for anything else; an
    AWS error in the cause chain is classified by AWS's code first (issue 8)."""
    from flows.cli import _exit_code
    from infra.aws.errors import client_error, describe
    from infra.store.objects import ObjectNotFound, StoreError
    from tasks.producers.compile import CompileError

    assert _exit_code(UserError("x")) == 2
    assert _exit_code(ObjectNotFound("file:///s/models/x.tar.gz")) == 2
    assert _exit_code(CompileError("trtexec failed")) == 1
    assert _exit_code(TransientError("reset")) == 1
    assert _exit_code(ValueError("bad")) is None and _exit_code(KeyError("k")) is None
    assert _exit_code(describe(client_error("AccessDenied", "no", "CreateModel"))) == 2
    assert _exit_code(describe(client_error("ThrottlingException", "slow", "CreateModel"))) == 1
    denied = client_error("NoSuchBucket", "no bucket", "PutObject", status=404)
    try:
        raise StoreError("put s3://b/k failed") from denied
    except StoreError as wrapped:  # an MMEError (exit 1) whose AWS cause says: the user's
        assert _exit_code(wrapped) == 2


_PROBE = textwrap.dedent("""
    from prefect import flow

    from flows import cli
    from ensembles.spec import SpecError
    from tasks.producers.compile import CompileError

    RAISE = {
        "user": lambda: SpecError("ensemble 'probe': step 'pool' reads tensor 'x' nobody writes"),
        "failed": lambda: CompileError("trtexec exited 1: [E] no CUDA device"),
        "value": lambda: ValueError("shape mismatch: (1, 3) vs (1, 4)"),
    }

    @flow(name="error-tree-probe")
    def probe(kind: str) -> None:
        raise RAISE[kind]()

    @cli.app.command("probe")
    def probe_command(kind: str) -> None:
        cli._run_flow(probe, kind=kind)

    @cli.app.command("direct")
    def direct_command(kind: str) -> None:  # a command that runs no flow
        raise RAISE[kind]()

    cli.main()
""")


@pytest.fixture(scope="module")
def probe_env(prefect_harness: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The subprocess talks to the test harness's Prefect server (no server of its own)."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_HOME": str(tmp_path_factory.mktemp("pf-home"))}


def _probe(kind: str, env: dict[str, str], command: str = "probe") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _PROBE, command, kind], capture_output=True,
                          text=True, timeout=300, env=env, cwd=PROJECT_ROOT, check=False)


@pytest.mark.prefect
@pytest.mark.parametrize("kind, code, words", [
    ("user", 2, "SpecError: ensemble 'probe': step 'pool' reads tensor 'x' nobody writes"),
    ("failed", 1, "CompileError: trtexec exited 1: [E] no CUDA device"),
])
def test_cli_prints_one_line_for_a_project_error(probe_env: dict[str, str], kind: str,
                                                 code: int, words: str) -> None:
    """A flow that fails with a UserError exits 2, with another MMEError exits 1; either way
    one ``error:`` line naming the class and message, and no traceback (Prefect's log of the
    failure included)."""
    r = _probe(kind, probe_env)
    assert r.returncode == code, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {words}"], r.stderr[-3000:]


@pytest.mark.parametrize("kind, code", [("user", 2), ("failed", 1)])
def test_a_command_without_a_flow_keys_on_the_tree_too(kind: str, code: int) -> None:
    """``mme``'s entry point (``main``) gives commands that run no flow (``mme endpoint
    start``...) the same rule: one line, 2 for the user's, 1 otherwise."""
    r = _probe(kind, {**os.environ}, command="direct")
    assert r.returncode == code, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1, r.stderr


@pytest.mark.prefect
def test_cli_lets_a_bug_through_as_a_traceback(probe_env: dict[str, str]) -> None:
    """A bare ValueError is not the user's error any more: it is a bug, shown with its
    traceback (and no ``error:`` line pretending it was the input's fault)."""
    r = _probe("value", probe_env)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" in r.stderr and "ValueError: shape mismatch" in r.stderr, r.stderr[-3000:]
    assert not any(line.startswith("error:") for line in r.stderr.splitlines()), r.stderr[-3000:]


def test_cli_refuses_a_bad_release_option_in_one_line(tmp_path: Path) -> None:
    """``--triton-release`` garbage: TritonRelease's InvalidInput, caught by the command as a
    UserError (it used to be caught as any ValueError)."""
    r = subprocess.run([sys.executable, "-m", "flows.cli", "render", "text_embedding", "--out",
                        str(tmp_path / "r"), "--triton-release", "24-09"], capture_output=True,
                       text=True, timeout=300, cwd=PROJECT_ROOT, check=False)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "'24-09'" in r.stderr, r.stderr[-3000:]


# ------------------------------------------------------------------------------- retries


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_s3_store_is_retried_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real S3 store against a port nothing listens on: StoreUnavailable (RetriedOut:
    botocore's standard mode retried the connection, no task retries it again) with botocore's
    connection error as its cause; a bad store URI is the user's (StoreRefused), not retried."""
    from infra.store.objects import StoreRefused, StoreUnavailable, open_store
    from tasks.runtime.retry import is_transient

    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
                       "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{_closed_port()}"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    store, prefix = open_store("s3://models-bucket/mme")
    with pytest.raises(StoreUnavailable) as info:
        store.put_bytes(f"{prefix}/models/ep/x.tar.gz", b"x")
    assert "s3://models-bucket/mme/models/ep/x.tar.gz" in str(info.value)
    assert not is_transient(info.value) and info.value.__cause__ is not None
    with pytest.raises(StoreRefused) as bad:
        open_store("s3://")
    assert isinstance(bad.value, UserError) and not is_transient(bad.value)


def test_retry_condition_keys_on_the_tree() -> None:
    from ensembles.spec import SpecError
    from infra.triton.server import TritonStartError
    from tasks.producers.compile import CompileError, CompileTimeout
    from tasks.runtime.retry import is_transient

    def raised(inner: BaseException, outer: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException as e:
                raise outer from e
        except BaseException as e:  # noqa: BLE001
            return e

    class PortRace(TransientError):
        pass

    assert is_transient(PortRace("port 8001 taken")) and is_transient(TritonStartError("x"))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    assert not is_transient(SpecError("miswired")) and not is_transient(MMEError("failed"))
    assert not is_transient(CompileError("trtexec failed")) and not is_transient(None)
    # the cause chain: a permanent wrapper around a transient cause is retried ...
    assert is_transient(raised(ConnectionRefusedError(), CompileError("download of x failed")))
    # ... unless a project error that is not transient keeps a transient-looking built-in
    # base (a compile that timed out will time out again), wherever it is in the chain
    assert not is_transient(CompileTimeout("ran past 3600 s"))
    assert not is_transient(raised(CompileTimeout("ran past 3600 s"), RuntimeError("failed")))


@pytest.mark.prefect
def test_prefect_retries_transient_errors_only(prefect_harness: Any) -> None:
    """Real Prefect tasks with the project's condition (3 retries, no delay): a task that
    raises TransientErrors is tried 4 times, one that succeeds on its second try is tried
    twice and completes; a UserError and a plain MMEError are tried once."""
    from prefect import flow, task

    from ensembles.spec import SpecError
    from infra.triton.server import TritonStartError
    from tasks.producers.compile import CompileError
    from tasks.producers.fetch import DownloadInterrupted
    from tasks.runtime.retry import retry_transient

    tries: dict[str, int] = {}

    @task(retries=3, retry_delay_seconds=0, retry_condition_fn=retry_transient, persist_result=False)
    def attempt(name: str, fail_times: int) -> str:
        tries[name] = tries.get(name, 0) + 1
        if tries[name] <= fail_times:
            raise {"transient": DownloadInterrupted("connection reset by peer"),
                   "port-race": TritonStartError("tritonserver: address already in use"),
                   "user": SpecError("ensemble 'x': no steps"),
                   "failed": CompileError("trtexec exited 1")}[name.split("#")[0]]
        return name

    @flow(name="error-tree-retry-probe")
    def probe() -> dict[str, str]:
        runs = {"transient": 99, "port-race#once": 1, "user": 99, "failed": 99}
        return {name: attempt(name, n, return_state=True).type.value for name, n in runs.items()}

    states = probe()
    assert states == {"transient": "FAILED", "port-race#once": "COMPLETED", "user": "FAILED",
                      "failed": "FAILED"}, states
    assert tries == {"transient": 4, "port-race#once": 2, "user": 1, "failed": 1}, tries
