"""The ownership ledger and its warden: what we record is killed or removed when its owner
dies, and nothing that is not provably ours is ever touched.

Real processes throughout (``sleep`` and bare Python children), no Triton: these are the
rules every crash test relies on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fixtures.niceness import thread_nice
from fixtures.wait import wait_until

from infra.processes import leftovers
from infra.processes.procfs import ProcessIdentity, cmdline, live_group_members

PROJECT_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def alive(p: subprocess.Popen[Any]) -> bool:
    return p.poll() is None


def sleeper(*extra: str, session: bool = False) -> subprocess.Popen[bytes]:
    """A harmless process: the stand-in for something that is (or is not) ours."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *extra],
                            start_new_session=session)


def kill(*procs: subprocess.Popen[Any]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def owner_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a child Python that owns things: its own ``MME_HOME``, the project
    importable."""
    return {**os.environ, "MME_HOME": str(tmp_path / "home"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}


def run_dir(tmp_path: Path, ledger: dict[str, Any]) -> Path:
    d = tmp_path / "home" / "run" / "owner"
    leftovers.write_ledger(d, ledger)
    return d


def test_identity_tells_a_reused_pid_from_the_process_it_names() -> None:
    p = sleeper()
    try:
        ident = ProcessIdentity.of(p.pid)
        assert ident is not None and ident.alive()
        assert ProcessIdentity.from_dict(ident.to_dict()) == ident
        impostor = ProcessIdentity(pid=p.pid, start=ident.start - 1, boot=ident.boot)
        assert not impostor.alive(), "same pid, another start time: another process"
        assert not ProcessIdentity(pid=p.pid, start=ident.start, boot="other-boot").alive()
        assert "now another process" in impostor.describe()
    finally:
        kill(p)
    assert not ident.alive()
    assert ProcessIdentity.from_dict({"pid": "x"}) is None


def test_lower_priority_sets_every_thread_of_the_named_process_only() -> None:
    """Niceness is per thread: every thread of the process is lowered (a count of them), never
    raised; an identity that no longer names the running process changes nothing."""
    from infra.processes.procfs import lower_priority

    code = ("import threading, time; [threading.Thread(target=time.sleep, args=(120,), daemon=True)"
            ".start() for _ in range(3)]; print('up', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == b"up"
        ident = ProcessIdentity.of(p.pid)
        assert ident is not None
        impostor = ProcessIdentity(pid=p.pid, start=ident.start - 1, boot=ident.boot)
        assert lower_priority(impostor, 19) == 0 and thread_nice(p.pid) == {0}
        assert lower_priority(ident, 0) == 0 and thread_nice(p.pid) == {0}
        assert lower_priority(ident, 5) == 4 and thread_nice(p.pid) == {5}
        assert lower_priority(ident, 3) == 0 and thread_nice(p.pid) == {5}  # never raised
        assert lower_priority(ident, 19) == 4 and thread_nice(p.pid) == {19}
    finally:
        kill(p)
    assert lower_priority(ident, 19) == 0  # gone


def test_sweep_kills_only_processes_whose_identity_matches(tmp_path: Path) -> None:
    ours, not_ours = sleeper(), sleeper()
    try:
        me, other = ProcessIdentity.of(ours.pid), ProcessIdentity.of(not_ours.pid)
        assert me and other
        stale = {**other.to_dict(), "start": other.start + 7}  # a record whose pid was reused
        d = run_dir(tmp_path, {**leftovers.empty_ledger(ProcessIdentity.current()),
                               "processes": [me.to_dict(), stale]})
        done = leftovers.sweep(d)
        assert done.processes == [ours.pid]
        wait_until("our process to die", lambda: not alive(ours))
        assert alive(not_ours), "a process with a reused pid was signalled"
        assert not d.exists()
    finally:
        kill(ours, not_ours)


def test_group_sweep_kills_only_members_carrying_the_token(tmp_path: Path) -> None:
    token = f"mme_{os.getpid():x}test_"
    # one process group: a token-less sleep, then the leader execs into a token-bearing child
    leader = subprocess.Popen(
        ["bash", "-c", 'sleep 120 & exec "$PY" -c "import time; time.sleep(120)" "$TOKEN"'],
        env={**os.environ, "PY": sys.executable, "TOKEN": token}, start_new_session=True)
    outsider = sleeper(token)  # carries the token but is in another group
    try:
        wait_until("the group to form", lambda: len(live_group_members(leader.pid)) == 2
                 and token in cmdline(leader.pid))
        members = live_group_members(leader.pid)
        plain = next(p for p in members if p != leader.pid)
        d = run_dir(tmp_path, {**leftovers.empty_ledger(ProcessIdentity.current()),
                               "groups": [{"pgid": leader.pid, "token": token}]})
        assert leftovers.sweep(d).groups == [leader.pid]
        wait_until("the token-bearing member to die", lambda: not alive(leader))
        assert ProcessIdentity.of(plain) is not None, "a member without the token was signalled"
        assert alive(outsider), "a process of another group was signalled"
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        kill(leader, outsider)


def test_spawn_sweep_kills_only_processes_started_with_the_token(tmp_path: Path) -> None:
    token = f"mme-{os.getpid():x}spawntest"
    var = leftovers.SPAWN_TOKEN_VAR
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            env={**os.environ, var: token})
    other_token = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                   env={**os.environ, var: token + "x"})
    in_cmdline_only = sleeper(f"{var}={token}")
    try:
        d = run_dir(tmp_path, {**leftovers.empty_ledger(ProcessIdentity.current()),
                               "spawns": [{"token": token}, {"token": ""}, {"token": "not-ours"}]})
        assert leftovers.sweep(d).spawns == [ours.pid]
        wait_until("the process started with the token to die", lambda: not alive(ours))
        assert alive(other_token), "a process with another token was signalled"
        assert alive(in_cmdline_only), "the token in a command line is no proof"
        assert var not in os.environ
    finally:
        kill(ours, other_token, in_cmdline_only)


# Prefect's spawn of its temporary server, stood in for by a sleeper (the real server is the
# crash suite's): the hook claims a spawn token first, so a kill right after the spawn, before
# the child's identity is in the ledger, still leaves nothing behind.
SPAWN_HOOK_SCRIPT = """
import os, signal, subprocess, sys, time
from prefect.server.api.server import SubprocessASGIServer
from infra.processes import leftovers, prefect_server
from infra.processes.ownership import owner

def fake_spawn(self):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                             env={**os.environ})
    print(child.pid, flush=True)
    if self == "die":
        os.kill(os.getpid(), signal.SIGKILL)  # between the spawn and the identity claim
    return child

SubprocessASGIServer._run_uvicorn_command = fake_spawn
prefect_server._install_spawn_hook()
first = SubprocessASGIServer._run_uvicorn_command("live")
ledger = leftovers.read_ledger(owner().run_dir)
print(leftovers.SPAWN_TOKEN_VAR in os.environ, len(ledger["spawns"]),
      [p["pid"] for p in ledger["processes"]] == [first.pid], owner().run_dir, flush=True)
SubprocessASGIServer._run_uvicorn_command("die")
"""


def test_a_kill_between_the_server_spawn_and_its_claim_leaves_no_child(tmp_path: Path) -> None:
    env = owner_env(tmp_path)
    script = subprocess.Popen([sys.executable, "-c", SPAWN_HOOK_SCRIPT], stdout=subprocess.PIPE,
                              text=True, env=env, cwd=str(PROJECT_ROOT))
    assert script.stdout is not None
    children: list[ProcessIdentity] = []
    try:
        first = ProcessIdentity.of(int(script.stdout.readline()))
        assert first is not None
        children.append(first)
        token_left, spawns_left, claimed, folder = script.stdout.readline().split()
        assert (token_left, spawns_left, claimed) == ("False", "0", "True"), \
            "after a spawn: the token is out of the environment, its record released, the identity claimed"
        second = ProcessIdentity.of(int(script.stdout.readline()))
        assert second is not None
        children.append(second)
        assert script.wait(timeout=60) == -signal.SIGKILL
        wait_until("both children to be killed", lambda: not first.alive() and not second.alive())
        wait_until("the run folder to be removed", lambda: not Path(folder).exists())
    finally:
        for c in children:
            if c.alive():
                os.kill(c.pid, signal.SIGKILL)
        kill(script)


def test_shm_and_path_records_remove_only_what_is_ours(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm on this machine")
    prefix = f"mme_{os.getpid():x}shmtest_"
    ours, theirs = shm / f"{prefix}seg", shm / f"other_{os.getpid()}_seg"
    home = tmp_path / "home"
    inside, outside = home / "work" / "scratch", tmp_path / "outside"
    for f in (ours, theirs):
        f.write_bytes(b"x")
    for folder in (inside, outside):
        folder.mkdir(parents=True)
    try:
        d = run_dir(tmp_path, {**leftovers.empty_ledger(ProcessIdentity.current()),
                               "shm": [prefix, "", "other_"], "paths": [str(inside), str(outside)]})
        done = leftovers.sweep(d)
        assert done.shm == [ours.name] and not ours.exists() and theirs.exists()
        assert done.paths == [str(inside)] and not inside.exists() and outside.exists()
    finally:
        theirs.unlink(missing_ok=True)
        ours.unlink(missing_ok=True)


def test_sweep_dead_owners_leaves_a_live_owner_alone(tmp_path: Path) -> None:
    root = tmp_path / "home" / "run"
    live_child = sleeper()
    dead = sleeper()
    dead_ident = ProcessIdentity.of(dead.pid)
    kill(dead)
    try:
        kept = ProcessIdentity.of(live_child.pid)
        assert kept and dead_ident
        leftovers.write_ledger(root / "live", {**leftovers.empty_ledger(ProcessIdentity.current()),
                                               "processes": [kept.to_dict()]})
        leftovers.write_ledger(root / "dead", {**leftovers.empty_ledger(dead_ident),
                                               "processes": [kept.to_dict()]})
        # the dead owner's record names our live child too: it is killed (proven by identity)
        reports = leftovers.sweep_dead_owners(root)
        assert [r.run for r in reports] == ["dead"]
        assert (root / "live").is_dir() and not (root / "dead").exists()
        wait_until("the dead owner's process to die", lambda: not alive(live_child))
    finally:
        kill(live_child)


OWNER_SCRIPT = """
import subprocess, sys, time
from infra.processes.ownership import owner
from infra.processes.procfs import ProcessIdentity
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
o = owner()
o.claim(processes=[ProcessIdentity.of(child.pid)], what="test child")
scratch = o.scratch_root() / "half-written"
scratch.mkdir()
print(child.pid, o.run_dir, o.warden_pid, flush=True)
time.sleep(120)
"""


def test_warden_kills_what_a_sigkilled_owner_left(tmp_path: Path) -> None:
    env = owner_env(tmp_path)
    owner_proc = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT], stdout=subprocess.PIPE,
                                  text=True, env=env, cwd=str(PROJECT_ROOT))
    assert owner_proc.stdout is not None
    child_pid, folder, warden_pid = owner_proc.stdout.readline().split()
    child = ProcessIdentity.of(int(child_pid))
    try:
        assert child is not None and Path(folder, "tmp", "half-written").is_dir()
        ledger = json.loads(Path(folder, "ledger.json").read_text())
        assert ledger["warden"]["pid"] == int(warden_pid)
        owner_proc.send_signal(signal.SIGKILL)  # no atexit, no finally
        owner_proc.wait()
        wait_until("the owned child to be killed", lambda: not child.alive())
        wait_until("the run folder to be removed", lambda: not Path(folder).exists())
        wait_until("the warden to exit", lambda: ProcessIdentity.of(int(warden_pid)) is None
                 or not ProcessIdentity.of(int(warden_pid)).alive())  # type: ignore[union-attr]
    finally:
        if child is not None and child.alive():
            os.kill(child.pid, signal.SIGKILL)
        kill(owner_proc)


def test_a_clean_exit_leaves_no_run_folder(tmp_path: Path) -> None:
    env = owner_env(tmp_path)
    code = ("from infra.processes.ownership import owner\n"
            "with owner().scratch('x-') as d: (d / 'f').write_text('1')\n"
            "print(owner().run_dir)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(PROJECT_ROOT),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out.startswith(str(tmp_path / "home" / "run"))
    wait_until("the run folder to go", lambda: not Path(out).exists())
