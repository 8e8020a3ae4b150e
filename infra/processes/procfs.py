"""Who a process is, read from ``/proc``: the proof we ask for before we signal anything.

A pid alone proves nothing: pids are reused within a minute on a busy host, so a state file's
pid may name an unrelated process by the time anyone reads it. A :class:`ProcessIdentity` is
the pid plus the process's start time (field 22 of ``/proc/<pid>/stat``, clock ticks since
boot) plus the kernel's boot id: no two processes share all three. Every pid this project
records is recorded as an identity, and nothing is signalled unless its identity matches.

Standard library only: :mod:`infra.processes.leftovers` runs as a bare ``python -I -S`` script (the
warden) and imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, astuple, dataclass
from pathlib import Path

_PROC = Path("/proc")


def boot_id() -> str:
    """The kernel's id of this boot (``""`` where ``/proc`` does not have it)."""
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, ... so the
    start time is index 19), or None when the process is gone or unreadable."""
    try:
        fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """Every process's pid and stat fields; processes that vanish while read are skipped."""
    try:
        entries = list(_PROC.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None:
                yield int(entry.name), fields


def cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces ("" when gone)."""
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def environ_has(pid: int, entry: str) -> bool:
    """True when the process was started with ``entry`` (``NAME=value``) in its environment.

    The kernel shows the environment block the process was exec'd with, not later changes,
    so a parent that sets a variable only around one spawn never shows it itself."""
    try:
        return entry.encode() in (_PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return False


def argv(pid: int) -> list[str]:
    """The process's arguments, each as it was given ([] when gone): unlike :func:`cmdline`,
    an argument with spaces in it stays one argument."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]] if raw else []


def live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies."""
    return [pid for pid, fields in proc_stats() if fields[2] == str(pgid) and fields[0] not in ("Z", "X")]


@dataclass(frozen=True)
class ProcessIdentity:
    """A process, named so that a reused pid can never be mistaken for it."""

    pid: int
    start: int  # clock ticks after boot (``/proc/<pid>/stat`` field 22)
    boot: str  # the kernel's boot id

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The identity of the process now running as ``pid`` (None: no such process)."""
        fields = stat_fields(pid)
        if fields is None:
            return None
        return cls(pid=pid, start=int(fields[19]), boot=boot_id())

    @classmethod
    def current(cls) -> ProcessIdentity:
        me = cls.of(os.getpid())
        if me is None:  # pragma: no cover - /proc without ourselves
            raise RuntimeError("cannot read this process's own /proc entry")
        return me

    @classmethod
    def from_dict(cls, data: object) -> ProcessIdentity | None:
        """Read back :meth:`to_dict`'s output; None for anything that is not one."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(pid=int(data["pid"]), start=int(data["start"]), boot=str(data["boot"]))
        except (KeyError, TypeError, ValueError):
            return None

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)

    @property
    def tag(self) -> str:
        """``<pid>-<start>``: a folder name unique to this process for this boot."""
        return f"{self.pid}-{self.start}"

    def alive(self) -> bool:
        """True while this very process runs: same pid, start time and boot, not a zombie."""
        fields = stat_fields(self.pid)
        return (fields is not None and int(fields[19]) == self.start and fields[0] not in ("Z", "X")
                and self.boot == boot_id())

    def describe(self) -> str:
        """What now holds the pid, for messages: "pid 123 (now `sleep 60`)"."""
        now = ProcessIdentity.of(self.pid)
        if now is None:
            return f"pid {self.pid} (gone)"
        if now == self:
            return f"pid {self.pid}"
        return f"pid {self.pid} (now another process: {cmdline(self.pid)[:60].strip() or '?'})"


def lower_priority(proc: ProcessIdentity, nice: int) -> int:
    """Raise every thread of ``proc`` to at least niceness ``nice`` (lower CPU priority);
    returns how many threads it changed (0 when ``proc`` is gone or ``nice`` <= 0).

    Why: a Python-backend stub that is being unloaded spends its last second tearing down
    (interpreter exit, freeing its pages) while, with spare room, a load runs beside it; both
    want the same cores and the load is the one a request waits for. Niceness is per thread on
    Linux (``setpriority`` on a pid changes that thread only), so each of ``/proc/<pid>/task``
    is set. Only ever lowered (an unprivileged process cannot raise it back), and only for the
    very process ``proc`` names: its identity is checked first.
    """
    if nice <= 0 or not proc.alive():
        return 0
    try:
        tids = [int(t.name) for t in (_PROC / str(proc.pid) / "task").iterdir()]
    except OSError:
        return 0
    changed = 0
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                changed += 1
        except OSError:  # the thread ended meanwhile (or is not ours to change)
            continue
    return changed


def children(pid: int) -> list[ProcessIdentity]:
    """The processes whose parent is ``pid`` (one pass over ``/proc``), each by its identity, so
    that a later check that one has exited cannot be fooled by its pid being reused."""
    boot = boot_id()
    return [ProcessIdentity(pid=child, start=int(fields[19]), boot=boot)
            for child, fields in proc_stats() if fields[1] == str(pid)]


# ------------------------------------------------------------------------------ memory
#: ``/proc/<pid>/smaps_rollup`` fields (kB) a :class:`Memory` adds up.
_ROLLUP_FIELDS = {"Rss": "rss", "Pss": "pss", "Private_Clean": "uss", "Private_Dirty": "uss"}


@dataclass(frozen=True)
class Memory:
    """Memory of a set of processes, in bytes, counted three ways.

    Why three: RSS counts every page a process maps, so a shared library's pages count once
    per process that maps it. N Python stubs mapping the same libpython, numpy, ... are
    counted N times, and a limit over summed RSS admits about half the models that fit.
    PSS (proportional set size) splits each shared page among the processes that map it, so
    summed over all processes it is what the kernel really holds for them: the endpoint's
    limit and the footprints use it. USS (private pages only) is what ending the process
    would free. ``page_tables`` (VmPTE) is the kernel's own memory for the mappings, in none
    of the three.
    """

    pss: int = 0
    uss: int = 0
    rss: int = 0
    page_tables: int = 0
    processes: int = 0  # how many processes were read

    def __add__(self, other: Memory) -> Memory:
        return Memory(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def __sub__(self, other: Memory) -> Memory:
        return Memory(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def process_memory(pid: int) -> Memory | None:
    """One process's memory: ``smaps_rollup`` (Pss, Private_*, Rss: one read, the kernel sums
    the mappings) plus VmPTE from ``status``. None when the process is gone or unreadable
    (another user's process, or a kernel older than 4.14 without ``smaps_rollup``)."""
    kb = {"rss": 0, "pss": 0, "uss": 0}
    try:
        for line in (_PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in _ROLLUP_FIELDS:
                kb[_ROLLUP_FIELDS[key]] += int(rest.split()[0])
        status = (_PROC / str(pid) / "status").read_text()
    except (OSError, ValueError, IndexError):
        return None
    pte = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmPTE:")), 0)
    return Memory(pss=kb["pss"] * 1024, uss=kb["uss"] * 1024, rss=kb["rss"] * 1024,
                  page_tables=pte * 1024, processes=1)


def memory_of(pids: Iterable[int]) -> Memory:
    """The summed memory of ``pids``; processes that are gone (or unreadable) count nothing."""
    total = Memory()
    for pid in pids:
        m = process_memory(pid)
        if m is not None:
            total = total + m
    return total


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (tritonserver and the Python-backend stubs it forked),
    from one pass over ``/proc``; [] when ``pid`` is gone."""
    children: dict[int, list[int]] = {}
    alive = False
    for p, fields in proc_stats():
        alive = alive or p == pid
        children.setdefault(int(fields[1]), []).append(p)
    if not alive:
        return []
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_memory(pid: int | None) -> Memory:
    """The memory of a process and its descendants (nothing when ``pid`` is None or gone): the
    one probe of Triton's memory (the endpoint's limit, /metrics, ``mme profile``, benches)."""
    return memory_of(process_tree(pid)) if pid is not None else Memory()


def system_anon_bytes() -> int:
    """The kernel's own count of anonymous + shared-memory pages, system-wide
    (``/proc/meminfo`` AnonPages + Shmem): what a check of the probe compares its change to."""
    kb = 0
    try:
        for line in (_PROC / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("AnonPages", "Shmem"):
                kb += int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    return kb * 1024
