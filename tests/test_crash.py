"""Crash suite: ``kill -9`` our own processes at their worst moments, then check that nothing
of ours is left (processes, ``/dev/shm`` segments, files outside ``$MME_HOME``), that nothing
that is not ours was signalled, and that the next run completes.

Real processes throughout: the endpoint runs as its own background process over a real
Triton; the build is the real ``mme build`` command line with Prefect's temporary server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fixtures.wait import wait_until
from fixtures.local_endpoint import X, call, post, processes_mentioning, shm_segments
from fixtures.local_endpoint import ENDPOINT as LOCAL_ENDPOINT
from fixtures.tiny_models import HOLD_CONFIG, PIPE_CONFIG

from infra.endpoint import process as endpoint_process

from infra.processes import leftovers
from infra.endpoint.process import StopOutcome, start_background, stop
from infra.processes.procfs import ProcessIdentity
from infra.aws.runtime_client import encode_request
from infra.store.tarball import pack_deterministic

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENDPOINT = LOCAL_ENDPOINT  # the name post() and call() address
pytestmark = [
    pytest.mark.triton,
    pytest.mark.prefect,  # the builds and deploys it kills are flows
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc and the Linux tritonserver"),
]

# ``add`` answers Y = X + 1, but its initialize() first creates <gate>.entered and then waits
# for <gate>: a load the test knows to be in progress (a stub mid-initialisation) when it kills.
# (The config is the supervision tests' gated model's; only model.py differs.)
SLOW_INIT_MODEL = """\
import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        gate = json.loads(args["model_config"])["parameters"]["gate"]["string_value"]
        open(gate + ".entered", "w").close()
        deadline = time.monotonic() + 300  # a gate never opened fails this step, not the whole suite
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise RuntimeError('gate never opened')
            time.sleep(0.01)

    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 1)]))
        return out
"""


def publish_slow_init(store_dir: Path, target: str, gate: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="slow-src-") as tmp:
        repo = Path(tmp) / "repo"
        (repo / "add" / "1").mkdir(parents=True)
        (repo / "add" / "config.pbtxt").write_text(HOLD_CONFIG % gate)
        (repo / "add" / "1" / "model.py").write_text(SLOW_INIT_MODEL)
        (repo / "pipe" / "1").mkdir(parents=True)
        (repo / "pipe" / "config.pbtxt").write_text(PIPE_CONFIG.format(mbs=0))
        pack_deterministic(repo, store_dir / target)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh ``$MME_HOME`` (the background endpoint inherits it); the endpoint is stopped
    at the end whatever happened."""
    h = tmp_path / "home"
    monkeypatch.setenv("MME_HOME", str(h))
    yield h
    stop(ENDPOINT)


def temp_entries() -> set[str]:
    """Our kinds of names in the system's temporary folder (none may appear)."""
    return {p.name for p in Path(tempfile.gettempdir()).iterdir()
            if p.name.startswith(("mme-", "tritonserver-", "triton-mme"))}


def ledger_of(home: Path, info: endpoint_process.EndpointInfo) -> tuple[Path, dict[str, Any]]:
    ident = info.identity
    assert ident is not None, "the state file records the endpoint's identity"
    folder = home / "run" / ident.tag
    ledger = leftovers.read_ledger(folder)
    assert ledger is not None, f"no ownership ledger at {folder}"
    return folder, ledger


def start_load_in_background(url: str, target: str) -> threading.Thread:
    """An invocation that triggers the load (its answer does not matter: we kill the server)."""
    body, ct = encode_request({"X": X}, binary=False)

    def go() -> None:
        try:
            post(url, target, body, ct)
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def endpoint_mid_load(home: Path, tmp_path: Path) -> tuple[endpoint_process.EndpointInfo, Path, dict[str, Any]]:
    """Start the endpoint and a load that blocks in the stub's initialize() (until
    ``tmp_path/gate`` exists); return the endpoint, its run folder and its ledger."""
    store = tmp_path / "store"
    store.mkdir()
    gate = tmp_path / "gate"
    publish_slow_init(store, "slow.tar.gz", gate)
    info = start_background(ENDPOINT, store.as_uri())
    start_load_in_background(info.url, "slow.tar.gz")
    wait_until("the stub to be inside initialize()", Path(f"{gate}.entered").exists)
    return (info, *ledger_of(home, info))


def kill_during_load(home: Path, tmp_path: Path) -> tuple[Path, dict[str, Any], str]:
    """SIGKILL the endpoint process mid-load. Returns its run folder, its ledger (read before
    the kill) and the launch token of its tritonserver."""
    info, folder, ledger = endpoint_mid_load(home, tmp_path)
    (group,) = ledger["groups"]
    token = group["token"]
    assert len(processes_mentioning(token)) >= 2, "tritonserver and the loading stub"
    assert shm_segments(token), "the loading stub holds a shm segment"
    os.kill(info.pid, signal.SIGKILL)
    return folder, ledger, token


def test_endpoint_killed_during_a_load_leaves_nothing_and_restarts(home: Path, tmp_path: Path) -> None:
    before = temp_entries()
    folder, ledger, token = kill_during_load(home, tmp_path)
    # the warden saw its owner die: tritonserver and the stub in initialize() are killed
    left = wait_until("no process of the dead endpoint", lambda: not processes_mentioning(token) or None, 60)
    assert left is None or not processes_mentioning(token)
    wait_until("its shm segments to be removed", lambda: not shm_segments(token))
    wait_until("its run folder to be removed", lambda: not folder.exists())
    warden = ProcessIdentity.from_dict(ledger["warden"])
    assert warden is not None
    wait_until("the warden to exit", lambda: not warden.alive())
    # the state file is stale: stop removes it and signals nothing
    assert stop(ENDPOINT) is StopOutcome.STALE
    assert not endpoint_process.state_file(ENDPOINT).exists()
    # the next start completes, and the model loads and answers
    (tmp_path / "gate").touch()
    info = start_background(ENDPOINT, (tmp_path / "store").as_uri())
    np.testing.assert_array_equal(call(info.url, "slow.tar.gz"), X + 1)
    assert stop(ENDPOINT) is StopOutcome.STOPPED
    assert temp_entries() <= before, "files left in the system's temporary folder"


def test_next_start_sweeps_what_a_dead_endpoint_and_its_warden_left(home: Path, tmp_path: Path) -> None:
    info, folder, ledger = endpoint_mid_load(home, tmp_path)
    store, gate = tmp_path / "store", tmp_path / "gate"
    token = ledger["groups"][0]["token"]
    os.kill(ledger["warden"]["pid"], signal.SIGKILL)  # both die: nobody sweeps at once
    os.kill(info.pid, signal.SIGKILL)
    wait_until("the endpoint to die", lambda: not info.identity.alive())  # type: ignore[union-attr]
    assert folder.is_dir(), "with its warden dead too, the ledger stays for the next start"
    gate.touch()
    again = start_background(ENDPOINT, store.as_uri())  # its serve() sweeps dead owners first
    assert not folder.exists()
    wait_until("the old launch's processes to be gone", lambda: not processes_mentioning(token))
    assert not shm_segments(token)
    np.testing.assert_array_equal(call(again.url, "slow.tar.gz"), X + 1)


def test_stop_and_status_never_signal_a_process_with_a_reused_pid(home: Path) -> None:
    stand_in = subprocess.Popen(["sleep", "120"])  # an unrelated process holding "our" pid
    try:
        ident = ProcessIdentity.of(stand_in.pid)
        assert ident is not None
        state = endpoint_process.state_file(ENDPOINT)
        state.parent.mkdir(parents=True)
        doc = {"name": ENDPOINT, "url": "http://127.0.0.1:9", "pid": stand_in.pid,
               "model_data_url": "file:///nowhere", "triton_url": "http://127.0.0.1:9",
               "cache_dir": "/nowhere", "started_at": 0.0}
        # the endpoint that wrote it started at another time: the pid was reused since
        for owner in ({**ident.to_dict(), "start": ident.start - 5}, None):
            state.write_text(json.dumps({**doc, "owner": owner}))
            assert endpoint_process.find_running(ENDPOINT) is None
            assert not state.exists(), "the stale state file is removed"
            state.write_text(json.dumps({**doc, "owner": owner}))
            assert stop(ENDPOINT) is StopOutcome.STALE
            assert not state.exists()
            assert stand_in.poll() is None, "a process that is not ours was signalled"
        # the command line says so, in one line, and exits 2
        state.write_text(json.dumps({**doc, "owner": {**ident.to_dict(), "start": ident.start - 5}}))
        r = run_cli("endpoint", "status", "--name", ENDPOINT)
        assert r.returncode == 2 and "stale state file" in r.stdout + r.stderr, r
        assert "Traceback" not in r.stdout + r.stderr
        state.write_text(json.dumps({**doc, "owner": {**ident.to_dict(), "start": ident.start - 5}}))
        r = run_cli("endpoint", "stop", "--name", ENDPOINT)
        assert r.returncode == 0 and "stale state file" in r.stdout + r.stderr, r
        assert stand_in.poll() is None
    finally:
        stand_in.kill()
        stand_in.wait()


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=str(PROJECT_ROOT),
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def test_endpoint_start_on_a_busy_port_is_one_line(home: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = run_cli("endpoint", "start", "--name", ENDPOINT, "--port", str(port))
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert f"127.0.0.1:{port}" in out and "Traceback" not in out
    assert len([line for line in out.splitlines() if line.strip()]) == 1, out
    assert not endpoint_process.state_file(ENDPOINT).exists()


def cli_env(home: Path, prefect_home: Path) -> dict[str, str]:
    """The environment of a user's ``mme`` run: its own MME_HOME, Prefect's temporary server
    (no PREFECT_API_URL: the test harness's server is not the user's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(MME_HOME=str(home), PREFECT_HOME=str(prefect_home), COLUMNS="200",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def owner_run_folder(home: Path, pid: int) -> Path | None:
    found = [p for p in (home / "run").glob(f"{pid}-*") if (p / leftovers.LEDGER).exists()]
    return found[0] if found else None


def children_of(pid: int, *needles: str) -> list[int]:
    """Live children of ``pid`` whose command line holds every needle (ours, not a look-alike
    another job started)."""
    return [p for p, cmd in processes_mentioning(needles[0]).items()
            if all(n in cmd for n in needles) and (ProcessIdentity.of(p) is not None)
            and _ppid(p) == pid]


def _ppid(pid: int) -> int | None:
    from infra.processes.procfs import stat_fields

    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def test_build_killed_while_prefect_starts_leaves_no_server(home: Path, tmp_path: Path) -> None:
    """The temporary Prefect server is claimed at its spawn: a kill while it is still starting
    (migrating its database) takes it along."""
    seen: dict[str, Any] = {}

    def spawned(pid: int) -> bool:
        found = children_of(pid, "uvicorn", "prefect.server.api.server:create_app")
        seen["server"] = ProcessIdentity.of(found[0]) if found else None
        return seen["server"] is not None

    pid = kill_build_when(cli_env(home, tmp_path / "prefect"), "Prefect's temporary server to be spawned",
                          spawned, 120)
    wait_until("the temporary server to be killed", lambda: not seen["server"].alive(), 60)
    wait_until("the build's run folder to go", lambda: owner_run_folder(home, pid) is None)


BUILD = [sys.executable, "-m", "flows.cli", "build", "image_classifier"]


def kill_build_when(env: dict[str, str], what: str, reached: Callable[[int], bool], timeout: float,
                    before_kill: Callable[[int], None] | None = None, command: list[str] = BUILD) -> int:
    """Run ``command`` (default ``mme build image_classifier``); SIGKILL it once
    ``reached(pid)`` holds (after ``before_kill(pid)`` looked at it); return its pid."""
    build = subprocess.Popen(command, cwd=str(PROJECT_ROOT), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_until(what, lambda: reached(build.pid), timeout)
        if before_kill is not None:
            before_kill(build.pid)
        build.send_signal(signal.SIGKILL)
        build.wait()
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
    return build.pid


def test_build_killed_during_verify_leaves_nothing_and_the_rerun_completes(home: Path, tmp_path: Path) -> None:
    before = temp_entries()
    env = cli_env(home, tmp_path / "prefect")
    seen: dict[str, Any] = {}

    def look(pid: int) -> None:
        folder = owner_run_folder(home, pid)
        assert folder is not None and folder.is_relative_to(home)
        seen["folder"], seen["ledger"] = folder, leftovers.read_ledger(folder)
        assert seen["ledger"] is not None
        whats = [p.get("what", "") for p in seen["ledger"]["processes"]]
        assert "prefect temporary server" in whats and any("tritonserver" in w for w in whats), whats

    # the verify step: a tritonserver serving the freshly packed tarball from our scratch
    kill_build_when(env, "the build's verify step",
                    lambda pid: bool(children_of(pid, "tritonserver", "mme-verify-")), 300, look)
    folder, ledger = seen["folder"], seen["ledger"]
    owned = [ProcessIdentity.from_dict(p) for p in ledger["processes"]]
    wait_until("the build's processes (Prefect's server, Triton) to die",
             lambda: not any(i is not None and i.alive() for i in owned), 60)
    tokens = [g["token"] for g in ledger["groups"]]
    wait_until("the verify stubs to die", lambda: not any(processes_mentioning(t) for t in tokens), 60)
    assert not any(shm_segments(t) for t in tokens)
    wait_until("the dead build's scratch to be removed", lambda: not folder.exists())
    assert temp_entries() <= before, "files left in the system's temporary folder"
    # the rerun completes and leaves no run folder and no scratch behind
    r = subprocess.run(BUILD, cwd=str(PROJECT_ROOT), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (home / "artifacts" / "local-cpu" / "image_classifier.tar.gz").is_file()
    wait_until("the rerun's run folder to go", lambda: not any((home / "run").iterdir()))
    assert not (home / "work").exists() or not any((home / "work").iterdir())
    assert temp_entries() <= before


# ------------------------------------------------------------------ fleet deploy, killed
FLEET_ENDPOINT = "crash-fleet"


@pytest.fixture(scope="module")
def built_fleet(tmp_path_factory: pytest.TempPathFactory, mme_home: Path, prefect_harness: None) -> dict[str, Any]:
    """A 4-tenant example fleet built for real (its build folder is what the deploys read)."""
    from flows.fleet_build import fleet_build
    from tasks.fleet.example import make_example_fleet

    root = tmp_path_factory.mktemp("crash-fleet")
    make_example_fleet(4, (root / "models").as_uri(), seed=5, fleet_file=root / "fleet.yaml")
    build = root / "build"
    fleet_build(str(root / "fleet.yaml"), output_dir=str(build), triton_sample=1)
    index = json.loads((build / "fleet-index.json").read_text())
    return {"build": build, "fleet": index["fleet"], "names": sorted(index["variants"])}


def fleet_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "fleet", *args]


def fleet_env(built: dict[str, Any], home: Path) -> dict[str, str]:
    """A user's run: Prefect's temporary server over a PREFECT_HOME that outlives the kill
    (a killed deploy's concurrency slot once stayed taken there, and every rerun waited)."""
    return cli_env(home, home.parent / "prefect")


def endpoint_loading(home: Path) -> bool:
    """True once the deploy's validation made the endpoint load (or hold) any variant."""
    from infra.endpoint.client import LocalEndpointClient

    info = endpoint_process.find_running(FLEET_ENDPOINT)
    if info is None:
        return False
    try:
        return bool(LocalEndpointClient(info.url).models())
    except httpx.HTTPError:
        return False


def published_any(store: Path) -> bool:
    return any((store / "models" / FLEET_ENDPOINT).glob("**/*.tar.gz"))


@pytest.mark.parametrize("moment", ["publish", "validate"])
def test_fleet_deploy_killed_mid_way_leaves_a_consistent_store_after_the_rerun(
        moment: str, built_fleet: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("MME_HOME", str(home))  # find_running() here looks where the CLI runs
    store = tmp_path / "store"
    env = fleet_env(built_fleet, home)
    deploy = fleet_cli("deploy", built_fleet["fleet"], "--endpoint", FLEET_ENDPOINT,
                       "--store", store.as_uri(), "--build-dir", str(built_fleet["build"]))
    before = temp_entries()
    proc = subprocess.Popen(deploy, cwd=str(PROJECT_ROOT), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        reached = (lambda: published_any(store)) if moment == "publish" else (lambda: endpoint_loading(home))
        wait_until(f"the deploy to reach {moment}", lambda: reached() or proc.poll() is not None, 300)
        assert proc.poll() is None, f"the deploy ended (rc {proc.returncode}) before {moment}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_until("the killed run's folder to go", lambda: owner_run_folder(home, proc.pid) is None)
        assert temp_entries() <= before, "files left in the system's temporary folder"
        # the next run completes; the store and the routing table agree, object by object
        r = subprocess.run(deploy, cwd=str(PROJECT_ROOT), env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        check = subprocess.run(fleet_cli("verify", built_fleet["fleet"], "--deep",
                                         "--store", store.as_uri()),
                               cwd=str(PROJECT_ROOT), env=env, capture_output=True, text=True, timeout=300)
        assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
        from tasks.fleet.routes import read_routes

        table = read_routes(store.as_uri(), built_fleet["fleet"])
        assert sorted(table.variants) == built_fleet["names"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop(FLEET_ENDPOINT)


LOCK_HOLDER = """
import sys, time
from flows.common import endpoint_lock
with endpoint_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_deploy_killed_after_its_upload_leaves_an_object_the_next_deploy_deletes(
        home: Path, tmp_path: Path) -> None:
    """``kill -9`` of ``mme deploy`` right after it uploaded (the record says ``publishing``):
    the next deploy of the ensemble, with another build, deletes that object after it
    validated, and says so."""
    from fixtures.pipe_builds import build_pipe

    from infra.records import endpoint as record
    from infra.store.objects import open_store
    from tasks.deploy.publish import model_data_url

    env = cli_env(home, tmp_path / "prefect")
    built = home / "artifacts" / "local-cpu"
    sha1 = build_pipe(built, k=1)
    store, _ = open_store(model_data_url((home / "store").as_uri(), ENDPOINT))
    deploy = [sys.executable, "-m", "flows.cli", "deploy", "pipe", "--endpoint", ENDPOINT,
              "--warm-invocations", "1", "--json"]
    kill_build_when(env, "the first deploy's upload", lambda _: store.exists(f"pipe-{sha1[:12]}.tar.gz"),
                    300, command=deploy)
    assert record.read_record(ENDPOINT).ensembles["pipe"].state == "publishing"  # type: ignore[union-attr]

    sha2 = build_pipe(built, k=2)
    r = subprocess.run(deploy, cwd=str(PROJECT_ROOT), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    pruned = json.loads(r.stdout)["pruned"]
    assert [line for line in pruned if f"pipe-{sha1[:12]}.tar.gz" in line and "died before it settled" in line], pruned
    assert sorted(i.key for i in store.list()) == [f"pipe-{sha2[:12]}.tar.gz"]
    entry = record.read_record(ENDPOINT).ensembles["pipe"]  # type: ignore[union-attr]
    assert (entry.state, entry.abandoned, entry.kept_versions) == ("deployed", None, None)


def test_a_killed_deploy_never_keeps_the_endpoint_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deploy lock of a killed holder is free at once (the kernel drops its flock)."""
    import time

    from flows.common import endpoint_lock

    env = cli_env(tmp_path / "home", tmp_path / "prefect")
    monkeypatch.setenv("MME_HOME", env["MME_HOME"])
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, "locked-ep"], cwd=str(PROJECT_ROOT),
                              env=env, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    got: list[float] = []

    def take() -> None:
        with endpoint_lock("locked-ep"):
            got.append(time.monotonic())

    waiter = threading.Thread(target=take, daemon=True)
    try:
        waiter.start()
        waiter.join(1.0)
        assert not got, "the lock was taken while its holder lived"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        waiter.join(60)
        assert got, "the lock of a killed holder was never released"
    finally:
        if holder.poll() is None:
            holder.kill()
