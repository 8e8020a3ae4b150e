"""Tests for infra.triton.server against the real tritonserver from the pytriton wheel.

Why real: ensembles, explicit model control, the Python backend stub and
process cleanup are exactly the parts a fake server would get wrong.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from collections.abc import Iterator

import numpy as np
import pytest
from fixtures.niceness import thread_nice

from infra.endpoint.process import process_alive

from infra.triton.server import (
    TritonModelError,
    TritonNotFound,
    TritonPorts,
    TritonServer,
    TritonStartError,
    locate_triton,
)

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pytriton tritonserver is Linux-only"),
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]

ADD_ONE_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X", data_type: TYPE_FP32, dims: [ -1 ] }} ]
output [ {{ name: "Y", data_type: TYPE_FP32, dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
"""

ADD_ONE_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        {init_body}

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            y = (x + np.float32(1)).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
        return responses
"""

PIPE_CONFIG = """\
name: "pipe"
platform: "ensemble"
max_batch_size: 0
input [ { name: "X", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ -1 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "add_one"
      model_version: -1
      input_map { key: "X" value: "X" }
      output_map { key: "Y" value: "mid" }
    },
    {
      model_name: "add_one"
      model_version: -1
      input_map { key: "X" value: "mid" }
      output_map { key: "Y" value: "Y" }
    }
  ]
}
"""


def _write_python_model(repo: Path, name: str, init_body: str = "pass", prelude: str = "") -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(ADD_ONE_CONFIG.format(name=name))
    (repo / name / "1" / "model.py").write_text(prelude + ADD_ONE_MODEL.format(init_body=init_body))


def _build_repo(repo: Path) -> Path:
    _write_python_model(repo, "add_one")
    (repo / "pipe" / "1").mkdir(parents=True)  # ensembles still need a (empty) version folder
    (repo / "pipe" / "config.pbtxt").write_text(PIPE_CONFIG)
    _write_python_model(repo, "broken", init_body='raise RuntimeError("boom: broken on purpose")')
    # Proves the stub runs with *this* interpreter's packages: numpy must come from the
    # very same folder as the test's numpy, and tritonclient exists only in the venv.
    numpy_dir = str(Path(np.__file__).resolve().parent)
    _write_python_model(
        repo,
        "env_probe",
        prelude=textwrap.dedent(
            f"""\
            import os
            import numpy
            import tritonclient.http  # noqa: F401  (installed only in the project venv)
            _got = os.path.dirname(os.path.realpath(numpy.__file__))
            if _got != {numpy_dir!r}:
                raise RuntimeError("stub uses numpy from " + _got + ", expected " + {numpy_dir!r})
            """
        ),
    )
    return repo


_alive = process_alive  # running and not a zombie


def _group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid`` (tritonserver + its Python stubs)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _wait_dead(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep the prepared backends folder out of the user's ~/.cache during tests."""
    old = os.environ.get("MME_CACHE_DIR")
    path = tmp_path_factory.mktemp("mme-cache")
    os.environ["MME_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MME_CACHE_DIR", None)
    else:
        os.environ["MME_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_repo(tmp_path_factory.mktemp("model_repo"))


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[TritonServer]:
    with TritonServer(repo) as srv:
        yield srv


def _infer(srv: TritonServer, model: str, x: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=srv.url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput("Y")])
        return result.as_numpy("Y")
    finally:
        client.close()  # an open keep-alive connection delays Triton's shutdown


def _states(srv: TritonServer) -> dict[str, str]:
    return {m.name: m.state or "" for m in srv.repository_index()}


# --------------------------------------------------------------------------- locate


def test_locate_triton_prepares_backends_once(_cache_dir: Path) -> None:
    first = locate_triton()
    second = locate_triton()
    assert first == second
    assert first.server_bin.is_file() and os.access(first.server_bin, os.X_OK)
    stub = first.backends_dir / "python" / "triton_python_backend_stub"
    assert stub.is_file() and os.access(stub, os.X_OK)
    assert (first.backends_dir / "python" / "libtriton_python.so").is_file()
    assert (first.backends_dir / "python" / "triton_python_backend_utils.py").is_file()
    assert first.backends_dir.parent == _cache_dir
    assert any(list(d.glob("libtritonserver*.so*")) for d in first.lib_dirs)


def test_locate_triton_override_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MME_TRITONSERVER", str(tmp_path / "nope"))
    with pytest.raises(TritonNotFound, match="MME_TRITONSERVER"):
        locate_triton()
    fake = tmp_path / "tritonserver"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MME_TRITONSERVER", str(fake))
    monkeypatch.delenv("MME_TRITON_BACKENDS", raising=False)
    with pytest.raises(TritonNotFound, match="MME_TRITON_BACKENDS"):
        locate_triton()
    monkeypatch.setenv("MME_TRITON_BACKENDS", str(tmp_path))
    dist = locate_triton()
    assert dist.server_bin == fake and dist.backends_dir == tmp_path and dist.lib_dirs == []


# --------------------------------------------------------------------------- server


def test_server_is_live(server: TritonServer) -> None:
    import httpx

    assert server.url.startswith("http://127.0.0.1:")
    assert server.pid is not None and _alive(server.pid)
    assert httpx.get(f"{server.url}/v2/health/live", trust_env=False).status_code == 200
    assert server.startup_seconds is not None
    print(f"\ntritonserver startup: {server.startup_seconds:.3f}s")


def test_load_ensemble_loads_composing_models(server: TritonServer) -> None:
    assert not server.is_ready("pipe")
    t0 = time.monotonic()
    server.load("pipe")
    print(f"\nload('pipe') with 1 python composing model: {time.monotonic() - t0:.3f}s")
    assert server.is_ready("pipe")
    assert server.is_ready("add_one")
    states = _states(server)
    assert states["pipe"] == "READY"
    assert states["add_one"] == "READY"


def test_ensemble_inference_adds_two(server: TritonServer) -> None:
    server.load("pipe")
    x = np.array([0.0, 1.5, -3.0], dtype=np.float32)
    np.testing.assert_allclose(_infer(server, "pipe", x), x + 2)
    np.testing.assert_allclose(_infer(server, "add_one", x), x + 1)


def test_unload_ensemble_with_dependents(server: TritonServer) -> None:
    server.load("pipe")
    server.unload("pipe")
    assert not server.is_ready("pipe")
    assert not server.is_ready("add_one")
    states = _states(server)
    assert states["pipe"] == "UNAVAILABLE"
    assert states["add_one"] == "UNAVAILABLE"
    server.load("pipe")  # and it comes back
    assert server.is_ready("pipe") and server.is_ready("add_one")


def test_unload_keep_dependents(server: TritonServer) -> None:
    server.load("pipe")
    server.unload("pipe", unload_dependents=False)
    assert not server.is_ready("pipe")
    assert server.is_ready("add_one")


def test_unload_with_nice_lowers_every_thread_of_the_leaving_stub(server: TritonServer) -> None:
    """``nice`` > 0: the stub being unloaded tears down at that niceness (all its threads:
    niceness is per thread), read from /proc while it is still leaving; tritonserver itself
    and a stub that stays keep theirs. Without ``nice`` an unload changes no priority."""
    from infra.processes.procfs import lower_priority

    server.load("pipe")
    server.load("env_probe")
    [stub] = server.stub_processes(["add_one"])
    [other] = server.stub_processes(["env_probe"])
    assert thread_nice(stub.pid) == {0} and thread_nice(other.pid) == {0}
    server.unload("pipe", wait=False, nice=19)
    leaving = thread_nice(stub.pid)  # the stub lives on ~1 s after the unload is asked for
    server.unload("pipe")  # waits until it has gone
    assert leaving == {19}, leaving
    assert thread_nice(other.pid) == {0} and thread_nice(server.pid) == {0}
    assert not stub.alive() and lower_priority(stub, 19) == 0  # gone: nothing to change
    server.load("pipe")
    [again] = server.stub_processes(["add_one"])
    server.unload("pipe", wait=False)
    assert thread_nice(again.pid) <= {0}  # no nice asked: unchanged (or already gone)
    server.unload("pipe")


def test_failed_load_names_model_and_server_keeps_serving(server: TritonServer) -> None:
    server.load("add_one")
    with pytest.raises(TritonModelError) as info:
        server.load("broken")
    assert info.value.model == "broken"
    assert "broken" in str(info.value)
    assert "boom: broken on purpose" in info.value.message
    assert server.running
    assert not server.is_ready("broken")
    x = np.array([41.0], dtype=np.float32)
    np.testing.assert_allclose(_infer(server, "add_one", x), [42.0])
    server.load("pipe")
    np.testing.assert_allclose(_infer(server, "pipe", x), [43.0])


def test_unknown_model_load_fails(server: TritonServer) -> None:
    with pytest.raises(TritonModelError, match="no_such_model"):
        server.load("no_such_model")


def test_python_models_use_this_virtualenv(server: TritonServer) -> None:
    server.load("env_probe")  # initialize raises if numpy/tritonclient are not this venv's
    np.testing.assert_allclose(_infer(server, "env_probe", np.array([1.0], dtype=np.float32)), [2.0])


def test_python_model_load_time(server: TritonServer) -> None:
    """A synchronous load returns only once the model is READY and serving (the time is
    printed for information: timing goals belong in bench/, not in assertions)."""
    if server.is_ready("add_one"):
        server.unload("add_one")
    assert not server.is_ready("add_one")
    t0 = time.monotonic()
    server.load("add_one")
    elapsed = time.monotonic() - t0
    print(f"\nload('add_one') (one python model): {elapsed:.3f}s")
    assert server.is_ready("add_one")  # no polling needed: load() returned after READY
    ready = {m.name: m.state for m in server.repository_index()}
    assert ready.get("add_one") == "READY", ready
    np.testing.assert_allclose(_infer(server, "add_one", np.array([1.0, 2.5], dtype=np.float32)),
                               [2.0, 3.5])


# --------------------------------------------------------------------------- lifecycle


def test_stop_leaves_no_process(repo: Path) -> None:
    srv = TritonServer(repo)
    srv.start()
    srv.load("add_one")
    pid = srv.pid
    assert pid is not None
    members = _group_members(pid)
    assert pid in members and len(members) >= 2, "expected tritonserver plus a python stub"
    shm = list(Path("/dev/shm").glob(f"{srv.shm_prefix}*"))
    assert shm, "python backend should have created its shm region"
    t0 = time.monotonic()
    srv.stop()
    print(f"\nstop() with one python model loaded: {time.monotonic() - t0:.3f}s")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not just dead
    assert _wait_dead(members, 1.0) == []
    assert not list(Path("/dev/shm").glob(f"{srv.shm_prefix}*"))
    assert not srv.running
    srv.stop()  # idempotent
    assert "successfully loaded 'add_one'" in srv.log_text()


def test_start_failure_raises_with_log_tail(repo: Path, tmp_path: Path) -> None:
    log = tmp_path / "bad.log"
    srv = TritonServer(repo, extra_args=["--no-such-flag-really"], log_path=log)
    with pytest.raises(TritonStartError, match="no-such-flag-really") as info:
        srv.start()
    assert "exited with code" in str(info.value)
    assert srv.pid is not None and not _alive(srv.pid)


def test_server_started_from_short_lived_thread_survives(repo: Path) -> None:
    """PR_SET_PDEATHSIG fires when the forking *thread* exits; the server must not care."""
    box: dict[str, TritonServer] = {}
    t = threading.Thread(target=lambda: box.setdefault("srv", TritonServer(repo).start()))
    t.start()
    t.join()
    srv = box["srv"]
    try:
        # join() returns before the OS thread is gone; the parent-death signal fires when it
        # is: wait for that (bounded), then the server must still be alive and serving
        deadline = time.monotonic() + 30
        while Path(f"/proc/self/task/{t.native_id}").exists():
            assert time.monotonic() < deadline, "the starting thread never exited"
            time.sleep(0.01)
        assert srv.running and srv.pid is not None and _alive(srv.pid)
        srv.load("add_one")
        np.testing.assert_allclose(_infer(srv, "add_one", np.array([1.0], dtype=np.float32)), [2.0])
    finally:
        srv.stop()


def test_explicit_port_in_use_fails(server: TritonServer, repo: Path) -> None:
    other = TritonServer(repo, ports=TritonPorts(http=server.http_port), startup_timeout=20)
    with pytest.raises(TritonStartError, match="already in use"):
        other.start()
    assert server.running
    assert other.pid is not None and not _alive(other.pid)


def test_auto_port_collision_is_retried(server: TritonServer, repo: Path) -> None:
    """The first "free" port is taken by another Triton, which must not be mistaken for ours."""
    from infra.triton.server import free_port

    ports = [server.http_port]
    other = TritonServer(repo)
    other.process.port_picker = lambda: ports.pop() if ports else free_port()  # type: ignore[method-assign]
    with other:
        assert other.http_port != server.http_port
        import httpx

        assert httpx.get(f"{other.url}/v2", trust_env=False).json()["name"] == other.server_id
    assert server.running


CHILD_SCRIPT = """\
import sys
from pathlib import Path
from infra.triton.server import TritonServer
srv = TritonServer(Path(sys.argv[1]), log_path=Path(sys.argv[2])).start()
srv.load("add_one")
print(srv.pid, flush=True)
import time
time.sleep(600)
"""


def test_sigkilled_parent_does_not_leave_tritonserver(repo: Path, tmp_path: Path) -> None:
    pid: int | None = None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, str(repo), str(tmp_path / "child-server.log")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(PROJECT_ROOT),
    )
    try:
        line = child.stdout.readline() if child.stdout else ""
        if not line.strip():
            child.kill()
            raise AssertionError(f"child did not start a server: {child.communicate()[1][-3000:]}")
        pid = int(line)
        members = _group_members(pid)
        assert pid in members and len(members) >= 2
        child.send_signal(signal.SIGKILL)  # no atexit, no finally: only PDEATHSIG can help
        child.wait(timeout=10)
        assert _wait_dead([pid], 10.0) == [], "tritonserver outlived its SIGKILLed parent"
        # Python stubs notice their dead server through their own health check.
        left = _wait_dead(members, 20.0)
        assert left == [], f"stub processes left behind: {left}"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for p in _group_members(pid) if pid is not None else []:
            os.kill(p, signal.SIGKILL)
