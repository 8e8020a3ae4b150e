"""What a process of ours owns, written down so that nothing outlives it: ledgers and the warden.

Why: a ``kill -9`` of ``mme build`` or of an endpoint used to leave Python stubs spinning for
good, ``/dev/shm`` segments, Prefect's temporary server and scratch folders. The process that
dies cannot clean up, so two others do, each acting only on what the ledger proves is ours:

* Every owner (a CLI run, an endpoint, a test session) keeps a *run folder*
  ``$MME_HOME/run/<pid>-<start>/`` holding ``ledger.json`` (its identity and what it owns:
  processes by :class:`~infra.processes.procfs.ProcessIdentity`, process groups with a token that must
  appear in a member's command line, spawn tokens, ``/dev/shm`` prefixes, folders) and its
  scratch space.
* The *warden*, this module run as a bare script (``python -I -S leftovers.py RUN_DIR``), is
  started by the owner in its own session with a pipe as stdin. It blocks reading; the pipe
  reaches end-of-file only when the owner is gone (the write end is held by the owner alone),
  however it died. Then it sweeps the ledger and removes the run folder, and exits.
* :func:`sweep_dead_owners`, called when a command or endpoint starts, does the same for any
  run folder whose owner is no longer running (a warden killed with its owner, a reboot).

Matching rules (nothing else is ever signalled or deleted): a process record is killed only
if pid, start time and boot id all match; a group record kills only members of that process
group whose command line contains the record's token (our per-launch shm prefix, a uuid);
a spawn record kills only processes started with ``MME_SPAWN_TOKEN=<its uuid>`` in their
environment (written into the ledger *before* the spawn, so a kill between the spawn and the
identity claim still finds the child: :mod:`infra.processes.prefect_server`); shm records
remove only ``/dev/shm/<prefix>*``; path records remove only folders inside the run folder's
``$MME_HOME``.

Standard library only (the warden runs with ``-I -S``), so the ledger is a ``TypedDict``
(:class:`OwnershipLedger`), not a pydantic document; it follows the one version rule of every
persisted document (``infra/versioned.py``) in stdlib code: no ``schema_version`` is version 1,
a newer one is refused (the sweep then acts on nothing it cannot read), a malformed one is
unreadable. ``spawns`` was added within version 1: a ledger without it has none, and an older
reader ignores it (as it always did before the field existed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, TypedDict

if __package__ in (None, ""):  # run as the warden script: make ``infra`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from infra.processes.procfs import ProcessIdentity, cmdline, environ_has, proc_stats  # noqa: E402

LEDGER = "ledger.json"
LEDGER_VERSION = 1
SHM_DIR = Path("/dev/shm")
SPAWN_TOKEN_VAR = "MME_SPAWN_TOKEN"
SPAWN_RESCAN_S = 0.5  # a child caught between fork and exec shows its token only after exec


class OwnershipLedger(TypedDict):
    """``ledger.json``: the owner, its warden, and what it owns (records as :func:`sweep` reads
    them: process identities, ``{pgid, token}`` groups, ``{token}`` spawns, shm prefixes, paths)."""

    schema_version: int
    owner: dict[str, Any]
    warden: dict[str, Any] | None
    processes: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    spawns: list[dict[str, Any]]
    shm: list[str]
    paths: list[str]


def empty_ledger(owner: ProcessIdentity) -> OwnershipLedger:
    return {"schema_version": LEDGER_VERSION, "owner": owner.to_dict(), "warden": None,
            "processes": [], "groups": [], "spawns": [], "shm": [], "paths": []}


def read_ledger(run_dir: Path) -> OwnershipLedger | None:
    """The ledger, or None when it is missing, malformed, or from a newer tool (the version
    rule: no ``schema_version`` is 1; one above :data:`LEDGER_VERSION` is not acted on)."""
    try:
        data = json.loads((run_dir / LEDGER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= LEDGER_VERSION:
        return None
    return {"schema_version": LEDGER_VERSION, "owner": data.get("owner") or {},
            "warden": data.get("warden"), "processes": list(data.get("processes") or []),
            "groups": list(data.get("groups") or []), "spawns": list(data.get("spawns") or []),
            "shm": list(data.get("shm") or []),
            "paths": list(data.get("paths") or [])}


def write_ledger(run_dir: Path, ledger: OwnershipLedger) -> None:
    """Atomic: a reader sees the old ledger or the new one, never half of one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{LEDGER}.tmp"
    tmp.write_text(json.dumps(ledger, indent=1))
    os.replace(tmp, run_dir / LEDGER)


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_processes(records: list[Any]) -> list[int]:
    """SIGKILL each recorded process that is still the very process recorded."""
    killed = []
    for rec in records:
        ident = ProcessIdentity.from_dict(rec)
        if ident is not None and ident.alive() and _kill(ident.pid):
            killed.append(ident.pid)
    return killed


def kill_groups(records: list[Any]) -> list[int]:
    """SIGKILL the members of each recorded group whose command line carries its token."""
    wanted = {}
    for rec in records:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if str(rec["token"]):
                wanted[str(int(rec["pgid"]))] = str(rec["token"])
    killed = []
    for pid, fields in proc_stats():
        token = wanted.get(fields[2])
        if token and fields[0] not in ("Z", "X") and token in cmdline(pid) and _kill(pid):
            killed.append(pid)
    return killed


def kill_spawns(records: list[Any]) -> list[int]:
    """SIGKILL every live process started with one of the records' spawn tokens in its
    environment. Scanned twice, :data:`SPAWN_RESCAN_S` apart, when there is a token: a child
    that was between fork and exec when its parent died shows the token only once it has
    exec'd."""
    entries = set()
    for rec in records:
        with contextlib.suppress(KeyError, TypeError):
            token = str(rec["token"])
            if token.startswith("mme-"):  # our uuids only, never an empty or foreign value
                entries.add(f"{SPAWN_TOKEN_VAR}={token}")
    killed: list[int] = []
    for scan in range(2 if entries else 0):
        if scan:
            time.sleep(SPAWN_RESCAN_S)
        for pid, fields in proc_stats():
            if (pid not in killed and fields[0] not in ("Z", "X")
                    and any(environ_has(pid, e) for e in entries) and _kill(pid)):
                killed.append(pid)
    return killed


def remove_shm(prefixes: list[Any]) -> list[str]:
    removed = []
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix.startswith("mme_") or "/" in prefix:
            continue  # only our own per-launch prefixes, never a bare glob
        for seg in SHM_DIR.glob(f"{prefix}*") if SHM_DIR.is_dir() else []:
            with contextlib.suppress(OSError):
                seg.unlink()
                removed.append(seg.name)
    return removed


def remove_paths(run_dir: Path, paths: list[Any]) -> list[str]:
    """Remove recorded folders and files that lie inside this owner's ``$MME_HOME``."""
    home = run_dir.resolve().parents[1]
    removed = []
    for p in paths:
        path = Path(str(p))
        if not path.is_absolute() or home not in path.resolve().parents:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        removed.append(str(path))
    return removed


@dataclasses.dataclass(frozen=True)
class SweepReport:
    """What one sweep of a run folder did: pids killed (by identity, by group token, by spawn
    token), shm segments and paths removed."""

    run: str
    processes: list[int]
    groups: list[int]
    spawns: list[int]
    shm: list[str]
    paths: list[str]

    def counts(self) -> str:
        """``"2 processes, 1 shm"``: the non-empty parts, for a log line ("" when nothing)."""
        return ", ".join(f"{len(v)} {k}" for k, v in
                         (("processes", self.processes), ("groups", self.groups),
                          ("spawns", self.spawns), ("shm", self.shm), ("paths", self.paths)) if v)


def sweep(run_dir: Path) -> SweepReport:
    """Act on everything the ledger in ``run_dir`` still lists, then remove the run folder."""
    ledger = read_ledger(run_dir)
    done = SweepReport(run=run_dir.name, processes=[], groups=[], spawns=[], shm=[], paths=[]) \
        if ledger is None \
        else SweepReport(run=run_dir.name, processes=kill_processes(ledger["processes"]),
                         groups=kill_groups(ledger["groups"]), spawns=kill_spawns(ledger["spawns"]),
                         shm=remove_shm(ledger["shm"]), paths=remove_paths(run_dir, ledger["paths"]))
    shutil.rmtree(run_dir, ignore_errors=True)
    return done


def owner_alive(run_dir: Path) -> bool:
    """True while the run folder's owner runs. A folder without a readable ledger counts as
    alive when it is young (its owner may be writing the first one) and dead when older."""
    ledger = read_ledger(run_dir)
    owner = ProcessIdentity.from_dict(ledger["owner"]) if ledger else None
    if owner is None:
        try:
            return time.time() - run_dir.stat().st_mtime < 60
        except OSError:
            return False
    return owner.alive()


def sweep_dead_owners(run_root: Path) -> list[SweepReport]:
    """Sweep every run folder under ``run_root`` whose owner is gone; what each sweep did."""
    reports: list[SweepReport] = []
    try:
        folders = sorted(p for p in run_root.iterdir() if p.is_dir())
    except OSError:
        return reports
    for run_dir in folders:
        if not owner_alive(run_dir):
            reports.append(sweep(run_dir))
    return reports


def warden_main(run_dir: Path) -> None:
    """Block until the owner is gone (stdin reaches EOF), then sweep its ledger."""
    with contextlib.suppress(OSError, KeyboardInterrupt):
        while sys.stdin.buffer.read(65536):
            pass
    sweep(run_dir)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the owner
    warden_main(Path(sys.argv[1]))
