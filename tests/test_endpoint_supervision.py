"""The local endpoint supervises its tritonserver, and reloads a model whose Python stub died.

Real processes throughout: tritonserver is killed with SIGKILL mid-request, a model's
``triton_python_backend_stub`` is killed with SIGKILL, and the tests then look at ``/proc`` and
``/dev/shm`` for what the dead processes left. Ordering comes from states, never from sleeps: a
model whose ``execute`` waits for a gate file holds a request in flight, and the endpoint's
``before_restart`` hook holds the endpoint in its "down" state while the test looks at it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fixtures.local_endpoint import (
    ENDPOINT,
    Endpoint,
    X,
    assert_error,
    call,
    metrics,
    models,
    post,
    processes_mentioning,
    shm_segments,
    wait_gone,
)
from fixtures.tiny_models import HOLD_CONFIG, PIPE_CONFIG, publish_pipe
from fixtures.wait import wait_until

from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint, Metrics, TritonSupervisor
from infra.triton.model_repo import namespace_for
from infra.processes.procfs import ProcessIdentity
from infra.aws.runtime_client import encode_request
from infra.store.tarball import pack_deterministic
from infra.triton.server import TritonServer

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pytriton tritonserver is Linux-only"),
]

# ``hold`` answers Y = X + 1, but each request first creates <gate>.entered and then waits
# until <gate> exists: a request the test knows to be inside Triton when it kills Triton.

HOLD_MODEL = """\
import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.gate = json.loads(args["model_config"])["parameters"]["gate"]["string_value"]

    def execute(self, requests):
        open(self.gate + ".entered", "w").close()
        deadline = time.monotonic() + 300  # a gate never opened fails this step, not the whole suite
        while not os.path.exists(self.gate):
            if time.monotonic() > deadline:
                raise RuntimeError('gate never opened')
            time.sleep(0.01)
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 1)]))
        return out
"""


def publish_hold(store_dir: Path, target: str, gate: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="hold-src-") as tmp:
        repo = Path(tmp) / "repo"
        (repo / "add" / "1").mkdir(parents=True)
        (repo / "add" / "config.pbtxt").write_text(HOLD_CONFIG % gate)
        (repo / "add" / "1" / "model.py").write_text(HOLD_MODEL)
        (repo / "pipe" / "1").mkdir(parents=True)
        (repo / "pipe" / "config.pbtxt").write_text(PIPE_CONFIG.format(mbs=0))
        pack_deterministic(repo, store_dir / target)


def group_members(pgid: int) -> dict[int, str]:
    """{pid: state letter} of every process (zombies included) in process group ``pgid``."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # state, ppid, pgrp, ...
            found[int(entry.name)] = fields[0]
    return found


class Held:
    """The ``before_restart`` hook: records what it saw, and blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[dict[str, Any]] = []
        self.entered = threading.Event()
        self.on_call: Callable[[int], None] | None = None

    def __call__(self, old_pid: int | None) -> None:
        assert old_pid is not None
        self.calls.append({"pid": old_pid, "group": group_members(old_pid),
                           "proc_exists": Path(f"/proc/{old_pid}").exists()})
        if self.on_call is not None:
            self.on_call(len(self.calls))
        self.entered.set()
        self.release.wait(300)


@pytest.fixture
def held_endpoint(tmp_path: Path) -> Iterator[tuple[Endpoint, Held]]:
    held = Held()
    store_dir, cache_dir = tmp_path / "store", tmp_path / "cache"
    store_dir.mkdir()
    cfg = EndpointConfig(name=ENDPOINT, model_data_url=store_dir.as_uri(), cache_dir=cache_dir,
                         triton_log=tmp_path / "triton.log", triton_restart_backoff_s=0.01)
    ep = LocalEndpoint(cfg, before_restart=held).start()
    try:
        yield Endpoint(ep, store_dir, cache_dir), held
    finally:
        held.release.set()
        ep.stop()


def triton_state(url: str) -> dict:
    return httpx.get(f"{url}/models", timeout=10).json()["triton"]


# ---------------------------------------------------------------------------------- A. Triton dies
def test_sigkilled_triton_is_cleaned_up_answers_503_and_restarts(
        held_endpoint: tuple[Endpoint, Held], tmp_path: Path) -> None:
    e, held = held_endpoint
    gate = tmp_path / "gate"
    publish_hold(e.store_dir, "hold.tar.gz", gate)
    publish_pipe(e.store_dir, "other.tar.gz", k=5)
    np.testing.assert_array_equal(call(e.url, "other.tar.gz"), X + 5)
    old_pid, old_prefix = e.ep.triton.pid, e.ep.triton.shm_prefix
    assert shm_segments(old_prefix), "the Python stubs hold shm segments with the server's prefix"
    assert len(group_members(old_pid)) >= 2  # server + the loaded model's stub
    downloads = metrics(e.url)["ModelDownloadingTime"]["count"]

    # a request inside Triton (the hold model's execute is waiting) when Triton is killed
    in_flight: dict[str, httpx.Response] = {}
    body, ct = encode_request({"X": X}, binary=False)
    thread = threading.Thread(target=lambda: in_flight.setdefault(
        "r", post(e.url, "hold.tar.gz", body, ct)), daemon=True)
    thread.start()
    wait_until("the request to reach the model", Path(f"{gate}.entered").exists)
    os.kill(old_pid, signal.SIGKILL)
    thread.join(60)
    assert_error(in_flight["r"], 503, "ServiceUnavailable", "restarting", "retry")

    # held down (before_restart blocks): every answer is the clear 503, /ping included
    wait_until("the cleanup to finish", held.entered.is_set)
    assert_error(httpx.get(f"{e.url}/ping", timeout=10), 503, "ServiceUnavailable", "restarting")
    doc = assert_error(post(e.url, "other.tar.gz", body, ct), 503, "ServiceUnavailable")
    # tenant isolation: another TargetModel's caller is told Triton is down, not what ran
    # when it died (the hold model's request), nor a pid or a cache path
    for private in ("hold", str(old_pid), str(e.cache_dir)):
        assert private not in doc["message"], doc["message"]
    listed = models(e.url)
    assert {t: m["state"] for t, m in listed.items()} == {"hold.tar.gz": "absent",
                                                          "other.tar.gz": "absent"}
    assert triton_state(e.url)["state"] == "restarting"
    m = metrics(e.url)
    assert (m["TritonDeaths"], m["TritonRestarts"], m["LoadedModelCount"]) == (1, 0, 0)
    # the old server was reaped (no zombie) and its group is gone: no stub survived it
    (seen,) = held.calls
    assert seen["pid"] == old_pid and not seen["proc_exists"], seen
    assert not {p: s for p, s in seen["group"].items() if s != "Z"}, seen
    wait_until("the orphaned stubs' zombies to be reaped", lambda: not group_members(old_pid), 30)
    assert shm_segments(old_prefix) == []
    # the files stayed in the disk cache
    assert (e.cache_dir / "repo" / listed["other.tar.gz"]["internal_name"] / "config.pbtxt").exists()

    held.release.set()
    wait_until("/ping 200", lambda: httpx.get(f"{e.url}/ping", timeout=10).status_code == 200)
    new = triton_state(e.url)
    assert new["state"] == "live" and new["pid"] != old_pid and new["generation"] == 2
    gate.touch()
    np.testing.assert_array_equal(call(e.url, "other.tar.gz"), X + 5)
    np.testing.assert_array_equal(call(e.url, "hold.tar.gz"), X + 1)
    m = metrics(e.url)
    assert (m["TritonDeaths"], m["TritonRestarts"], m["LoadedModelCount"]) == (1, 1, 2)
    assert m["ModelDownloadingTime"]["count"] == downloads + 1, "reloads come from the disk cache"
    assert models(e.url)["other.tar.gz"]["loads"] == 2
    assert e.ep.triton.shm_prefix != old_prefix


def test_triton_abort_on_bad_alloc_is_survived(tmp_path: Path) -> None:
    """The crash of issue 8, for real: a huge declared shape sent to Triton itself (around the
    front end, which now refuses it) makes 2.51 throw std::bad_alloc and abort (SIGABRT)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))  # Triton inherits it: no core dump
    e = start_endpoint_in(tmp_path)
    try:
        publish_pipe(e.store_dir, "a.tar.gz", k=1)
        np.testing.assert_array_equal(call(e.url, "a.tar.gz"), X + 1)
        old_pid = e.ep.triton.pid
        internal = models(e.url)["a.tar.gz"]["internal_name"]
        huge = b'{"inputs":[{"name":"X","shape":[1000000000000],"datatype":"FP32","data":[1,2,3]}]}'
        with pytest.raises(httpx.TransportError):
            httpx.post(f"{e.ep.triton.url}/v2/models/{internal}/infer", content=huge, timeout=120)
        state = wait_until("the restart", lambda: (s := triton_state(e.url))["generation"] == 2
                         and s["state"] == "live" and s)
        assert "SIGABRT" in state["reason"]
        assert str(old_pid) not in state["reason"], "the reason every tenant reads names no pid"
        np.testing.assert_array_equal(call(e.url, "a.tar.gz"), X + 1)
        assert not Path(f"/proc/{old_pid}").exists()
    finally:
        e.ep.stop()
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


def start_endpoint_in(root: Path) -> Endpoint:
    store_dir = root / "store"
    store_dir.mkdir()
    ep = LocalEndpoint(EndpointConfig(name=ENDPOINT, model_data_url=store_dir.as_uri(),
                                      cache_dir=root / "cache", triton_log=root / "triton.log"))
    return Endpoint(ep.start(), store_dir, root / "cache")


def test_restart_that_fails_is_retried(held_endpoint: tuple[Endpoint, Held]) -> None:
    """A relaunch that fails (here: its repository folder is missing) counts, and is retried."""
    e, held = held_endpoint
    publish_pipe(e.store_dir, "a.tar.gz", k=1)
    np.testing.assert_array_equal(call(e.url, "a.tar.gz"), X + 1)
    repo = e.cache_dir / "repo"
    aside = e.cache_dir / "repo-aside"
    held.on_call = lambda n: repo.rename(aside) if n == 1 else aside.rename(repo)
    held.release.set()
    os.kill(e.ep.triton.pid, signal.SIGKILL)
    wait_until("two restart attempts", lambda: len(held.calls) == 2)
    wait_until("/ping 200", lambda: httpx.get(f"{e.url}/ping", timeout=10).status_code == 200)
    m = metrics(e.url)
    assert (m["TritonDeaths"], m["TritonFailedStarts"], m["TritonRestarts"]) == (1, 1, 1)
    np.testing.assert_array_equal(call(e.url, "a.tar.gz"), X + 1)


def test_endpoint_gives_up_after_repeated_deaths(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    cfg = EndpointConfig(name=ENDPOINT, model_data_url=store_dir.as_uri(),
                         cache_dir=tmp_path / "cache", triton_log=tmp_path / "triton.log",
                         max_triton_restarts=1, triton_restart_window_s=3600,
                         triton_restart_backoff_s=0.01)
    ep = LocalEndpoint(cfg).start()
    try:
        publish_pipe(store_dir, "a.tar.gz", k=1)
        np.testing.assert_array_equal(call(ep.url, "a.tar.gz"), X + 1)
        first = ep.triton.pid
        os.kill(first, signal.SIGKILL)
        wait_until("the first restart", lambda: triton_state(ep.url)["generation"] == 2
                 and triton_state(ep.url)["state"] == "live")
        np.testing.assert_array_equal(call(ep.url, "a.tar.gz"), X + 1)
        second = ep.triton.pid
        os.kill(second, signal.SIGKILL)
        wait_until("giving up", lambda: triton_state(ep.url)["state"] == "failed")
        assert_error(httpx.get(f"{ep.url}/ping", timeout=10), 500, "InternalFailure",
                     "stopped restarting")
        body, ct = encode_request({"X": X})
        doc = assert_error(post(ep.url, "a.tar.gz", body, ct), 500, "InternalFailure",
                           "Restart the endpoint")
        assert f"pid {second}" not in doc["message"] and "SIGKILL" in doc["message"]
        m = metrics(ep.url)
        assert (m["TritonDeaths"], m["TritonRestarts"]) == (2, 1)
        assert not ep.triton.running
        for pid in (first, second):  # both reaped, nothing left of their groups
            assert not Path(f"/proc/{pid}").exists()
            wait_until(f"group {pid} gone", lambda pid=pid: not group_members(pid), 30)
    finally:
        ep.stop()


def test_restart_backoff_grows_and_is_bounded(tmp_path: Path) -> None:
    """Deaths in the window: the 1st restarts at once, then 1x, 2x, 4x ... the back-off; more
    than max_triton_restarts and the supervisor gives up."""
    cfg = EndpointConfig(name="x", model_data_url=tmp_path.as_uri(), cache_dir=tmp_path,
                         max_triton_restarts=4, triton_restart_backoff_s=0.5)
    sup = TritonSupervisor(TritonServer(tmp_path), cfg, Metrics(), on_down=lambda: None)
    seen = []
    for _ in range(5):
        gave_up = sup._give_up()
        seen.append((gave_up, sup._backoff_s()))
    assert seen == [(False, 0.0), (False, 0.5), (False, 1.0), (False, 2.0), (True, 4.0)]


def test_ping_follows_triton_liveness(held_endpoint: tuple[Endpoint, Held],
                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """/ping is 200 while Triton is live, 5xx once it is not: the old code said 200 regardless.
    ``mme endpoint start`` still finds the endpoint while its Triton restarts (a second one
    started over the same cache folder would wipe the first one's models)."""
    from infra.endpoint import process as endpoint_process
    e, held = held_endpoint
    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    state = endpoint_process.state_file(ENDPOINT)
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"name": ENDPOINT, "url": e.url, "pid": os.getpid(),
                                 "model_data_url": e.store_dir.as_uri(),
                                 "triton_url": e.ep.triton.url, "cache_dir": str(e.cache_dir),
                                 "started_at": 0.0,
                                 "owner": ProcessIdentity.current().to_dict()}))
    assert httpx.get(f"{e.url}/ping", timeout=10).status_code == 200
    os.kill(e.ep.triton.pid, signal.SIGKILL)
    wait_until("the cleanup to finish", held.entered.is_set)
    r = httpx.get(f"{e.url}/ping", timeout=10)
    assert r.status_code == 503 and "message" in r.json()
    found = endpoint_process.find_running(ENDPOINT)
    assert found is not None and found.url == e.url
    held.release.set()
    wait_until("/ping 200", lambda: httpx.get(f"{e.url}/ping", timeout=10).status_code == 200)


# ---------------------------------------------------------------------------------- B. a stub dies
def stub_pids(cache_dir: Path, internal_model: str) -> list[int]:
    """The Python stub(s) of one internal model: their command line holds its folder path."""
    folder = str((cache_dir / "repo" / internal_model).resolve()) + "/"
    return [pid for pid, cmd in processes_mentioning(folder).items()
            if "triton_python_backend_stub" in cmd]


def test_model_with_a_dead_stub_is_reloaded_on_its_next_request(tmp_path: Path) -> None:
    e = start_endpoint_in(tmp_path)
    ep, store_dir, cache_dir = e.ep, e.store_dir, e.cache_dir
    try:
        publish_pipe(store_dir, "victim.tar.gz", k=2)
        publish_pipe(store_dir, "bystander.tar.gz", k=3)
        np.testing.assert_array_equal(call(ep.url, "victim.tar.gz"), X + 2)
        np.testing.assert_array_equal(call(ep.url, "bystander.tar.gz"), X + 3)
        triton_pid = ep.triton.pid
        internal_add = f"{namespace_for('victim.tar.gz')}_add"
        (stub,) = stub_pids(cache_dir, internal_add)
        bystander_stubs = stub_pids(cache_dir, f"{namespace_for('bystander.tar.gz')}_add")
        os.kill(stub, signal.SIGKILL)
        assert wait_gone(f"{internal_add}/", timeout=30) == {}

        body, ct = encode_request({"X": X})
        doc = assert_error(post(ep.url, "victim.tar.gz", body, ct), 424, "ModelError",
                           "victim.tar.gz", "reloaded on its next request")
        assert "not healthy" in doc["OriginalMessage"]
        assert namespace_for("victim.tar.gz") not in json.dumps(doc)
        listed = models(ep.url)
        assert listed["victim.tar.gz"]["state"] == "absent"
        assert listed["bystander.tar.gz"]["state"] == "loaded"
        assert metrics(ep.url)["StubFailures"] == 1

        # the next request reloads it (a fresh stub) and it serves again; nothing else moved
        np.testing.assert_array_equal(call(ep.url, "victim.tar.gz", binary=False), X + 2)
        (new_stub,) = stub_pids(cache_dir, internal_add)
        assert new_stub != stub
        assert models(ep.url)["victim.tar.gz"] | {"state": "loaded", "loads": 2} \
            == models(ep.url)["victim.tar.gz"]
        np.testing.assert_array_equal(call(ep.url, "bystander.tar.gz"), X + 3)
        assert stub_pids(cache_dir, f"{namespace_for('bystander.tar.gz')}_add") == bystander_stubs
        m = metrics(ep.url)
        assert (m["TritonDeaths"], m["StubFailures"]) == (0, 1)
        assert ep.triton.pid == triton_pid
    finally:
        ep.stop()
