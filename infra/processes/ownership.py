"""This process's ledger of what it owns, its warden, and its scratch space (see
:mod:`infra.processes.leftovers` for why and for the rules).

Use::

    from infra.processes.ownership import owner
    claim = owner().claim(processes=[ident], groups=[(pgid, token)], shm=[prefix])
    ...
    owner().release(claim)            # after stopping them ourselves
    with owner().scratch("mme-verify-") as tmp: ...   # under $MME_HOME/run/<pid>-<start>/tmp

The run folder and the warden come into being on first use. A forked child (without exec)
gets a fresh owner of its own on first use, never its parent's ledger.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from infra import paths

from infra.processes import leftovers
from infra.processes.procfs import ProcessIdentity

log = logging.getLogger(__name__)


def run_root() -> Path:
    """``$MME_HOME/run``: one folder per running owner (CLI run, endpoint, test session)."""
    return paths.home() / "run"


@dataclass
class Claim:
    """What one :meth:`Owner.claim` call recorded, to hand back to :meth:`Owner.release`."""

    processes: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    spawns: list[dict[str, Any]] = field(default_factory=list)
    shm: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


_T = TypeVar("_T")


def _forget(held: list[_T], gone: list[_T]) -> None:
    """Remove each of ``gone`` from ``held`` once (what is not there any more is skipped)."""
    for item in gone:
        with contextlib.suppress(ValueError):
            held.remove(item)


class Owner:
    """The ledger of this process; thread-safe."""

    def __init__(self) -> None:
        self.identity = ProcessIdentity.current()
        self.run_dir = run_root() / self.identity.tag
        self._lock = threading.Lock()
        self._ledger = leftovers.empty_ledger(self.identity)
        self._warden: subprocess.Popen[bytes] | None = None
        self._write()
        self._start_warden()
        atexit.register(self.close)

    def _write(self) -> None:
        try:
            leftovers.write_ledger(self.run_dir, self._ledger)
        except OSError as e:  # a vanished $MME_HOME must not fail the work itself
            log.warning("cannot write the ownership ledger %s: %s", self.run_dir, e)

    def _start_warden(self) -> None:
        """The watcher that sweeps this ledger once this process is gone (see leftovers)."""
        try:
            self._warden = subprocess.Popen(
                [sys.executable, "-I", "-S", leftovers.__file__, str(self.run_dir)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, close_fds=True)
        except OSError as e:  # pragma: no cover - no interpreter to run: the next start sweeps
            log.warning("no warden for %s: %s", self.run_dir, e)
            return
        warden = ProcessIdentity.of(self._warden.pid)
        with self._lock:
            self._ledger["warden"] = warden.to_dict() if warden else None
            self._write()

    @property
    def warden_pid(self) -> int | None:
        return self._warden.pid if self._warden is not None else None

    def claim(self, *, processes: Sequence[ProcessIdentity] = (), groups: Sequence[tuple[int, str]] = (),
              spawns: Sequence[str] = (), shm: Sequence[str] = (), paths: Sequence[Path] = (),
              what: str = "") -> Claim:
        """Record things this process owns, so that they die with it. ``spawns`` are tokens
        (see :func:`spawn_token`) claimed before the process that will carry one exists."""
        c = Claim(processes=[{**p.to_dict(), "what": what} for p in processes],
                  groups=[{"pgid": g, "token": t, "what": what} for g, t in groups],
                  spawns=[{"token": t, "what": what} for t in spawns],
                  shm=list(shm), paths=[str(p) for p in paths])
        with self._lock:
            self._ledger["processes"].extend(c.processes)
            self._ledger["groups"].extend(c.groups)
            self._ledger["spawns"].extend(c.spawns)
            self._ledger["shm"].extend(c.shm)
            self._ledger["paths"].extend(c.paths)
            self._write()
        return c

    def release(self, claim: Claim) -> None:
        """Forget what was claimed (it was stopped or removed by its owner)."""
        with self._lock:
            _forget(self._ledger["processes"], claim.processes)
            _forget(self._ledger["groups"], claim.groups)
            _forget(self._ledger["spawns"], claim.spawns)
            _forget(self._ledger["shm"], claim.shm)
            _forget(self._ledger["paths"], claim.paths)
            self._write()

    def scratch_root(self) -> Path:
        """This owner's scratch folder, removed with the run folder when the owner is gone."""
        root = self.run_dir / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        return root

    @contextlib.contextmanager
    def scratch(self, prefix: str) -> Iterator[Path]:
        """Like ``tempfile.TemporaryDirectory`` but under ``$MME_HOME``, and swept when we die."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.scratch_root()))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """At a clean exit: the warden sweeps what is left and removes the run folder."""
        atexit.unregister(self.close)
        if os.getpid() != self.identity.pid:  # a forked child's copy: the ledger is the parent's
            return
        warden, self._warden = self._warden, None
        if warden is not None and warden.stdin is not None:
            with contextlib.suppress(OSError):
                warden.stdin.close()  # EOF: the warden sweeps and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                warden.wait(timeout=10)
        else:
            leftovers.sweep(self.run_dir)


def spawn_token() -> str:
    """A fresh token for :meth:`Owner.claim` ``spawns`` (``mme-<uuid>``)."""
    return f"mme-{uuid.uuid4().hex}"


@contextlib.contextmanager
def spawn_tagged(token: str) -> Iterator[None]:
    """``MME_SPAWN_TOKEN=<token>`` in this process's environment for the length of the block,
    for code that spawns with a copy of ``os.environ`` we cannot pass an ``env`` to (Prefect's).
    Restored after; a child spawned inside carries it for good, and the warden kills by it."""
    var = leftovers.SPAWN_TOKEN_VAR
    before = os.environ.get(var)
    os.environ[var] = token
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = before


_owner: Owner | None = None
_owner_lock = threading.Lock()


def owner() -> Owner:
    """This process's :class:`Owner` (created on first use; a forked child gets its own)."""
    global _owner
    with _owner_lock:
        if _owner is None or _owner.identity.pid != os.getpid():
            _owner = Owner()
        return _owner


def _forget_after_fork() -> None:
    global _owner, _owner_lock
    _owner, _owner_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def sweep_dead_owners() -> list[leftovers.SweepReport]:
    """Remove what dead owners left (processes proven ours, shm, folders); log each sweep."""
    reports = leftovers.sweep_dead_owners(run_root())
    for r in reports:
        if r.counts():
            log.warning("removed what a dead run (%s) left: %s", r.run, r.counts())
    return reports
