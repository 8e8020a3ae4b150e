"""What a long step says as it goes (n/N, rate, time left), and what a deploy leaves loaded.

A step over many items (tenants written, variants built, objects published, variants
validated, candidates simulated, shards verified) takes seconds to minutes; without word of it
a person cannot tell a slow run from a stuck one, nor see a failure before the end.
:class:`Progress` says ``<label> n/N[, f failed (latest: V)], R/s, ~T left`` at most every
``every`` items or every ``interval_s`` seconds (whichever comes first; ~5% or 5 s by default),
and once at the end (``<label> N/N in T, R/s``); each failure as it happens (the first
:data:`FAILURES_NAMED`); and moves a Prefect progress artifact at the same moments where a flow
runs. It is thread-safe (items finish in worker threads) and pure: the lines go to the
``emit`` it is given (a run's logger, the CLI's stderr console) and time comes from ``clock``.

Items finished by tasks that run side by side find their run's reporter by a key
(:func:`share`, :func:`shared`): a reporter lives in the process that made it, so a task on
another process (a Dask worker) finds none and says nothing per item. The flow then records
each task's items itself as the task ends (:meth:`Progress.record_all`): a reporter made with
``distinct=True`` counts each item once, so whichever side reaches it first counts it and the
other's record is a no-op (threads: per item, from the task; Dask: per task, from the flow).

A local endpoint loads every variant it is asked to validate and, by its own default limit
(70% of physical memory), keeps them: the first deploy of the 100-variant example fleet left 75
loaded, 15 of 23 GB. :class:`LoadedBudget` unloads the oldest validated variants beyond
``keep`` as validation goes, so a deploy leaves at most ``keep`` of them loaded (traffic
loads the others again on demand; routing does not depend on being loaded).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

#: Failures named one line each as they happen; beyond these, the progress lines count them
#: (a broken template fails every variant: a thousand error lines would bury the rest).
FAILURES_NAMED = 10
#: Reporters kept for tasks to find (:func:`share`); the oldest beyond it is dropped (a run that
#: crashed before its last item never unshares its own).
SHARED_MAX = 16


def progress_every(total: int) -> int:
    """A line every ~5% of the items (at least every one): ~20 lines for any count, plus the
    time-driven ones on a slow step."""
    return max(1, -(-total // 20))


def rate_text(per_s: float) -> str:
    """``12/s``, ``2.5/s``, ``0.25/s``; below 0.1/s per minute (``3.0/min``)."""
    if per_s >= 10:
        return f"{per_s:.0f}/s"
    if per_s >= 1:
        return f"{per_s:.1f}/s"
    if per_s >= 0.1:
        return f"{per_s:.2f}/s"
    return f"{per_s * 60:.1f}/min"


def duration_text(seconds: float) -> str:
    """``8 s``, ``2.5 min``, ``12 min``, ``1.5 h``: units a person reads at a glance."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min"
    if seconds < 100 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class Progress:
    """Counts finished items and failures (thread-safe) and says so at bounded moments:
    ``emit`` gets the progress lines, ``error`` each failure (the first :data:`FAILURES_NAMED`,
    worded by ``fail_line``; None: failures are only counted, their step says them itself),
    ``artifact`` the percentage (a Prefect progress artifact). ``done`` given at construction
    counts items already done (unchanged, skipped): they are not in the rate. ``at_most``: the
    total is a bound (a search's budget), not a count; the time left is then a bound too.
    ``distinct``: an item recorded again is not counted again (two sides may record the same
    items: the tasks where the reporter is reachable, the flow as each task ends)."""

    label: str
    total: int
    emit: Callable[[str], None]
    error: Callable[[str], None] | None = None
    artifact: Callable[[float], None] | None = None
    every: int = 0  # 0: progress_every(total)
    interval_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    at_most: bool = False
    fail_line: str = "{item} failed ({done}/{total}): {reason}"
    done: int = 0
    distinct: bool = False
    failed: list[str] = field(default_factory=list)
    updates: int = 0  # lines said (= artifact updates): what the tests count
    _start: tuple[int, float] = (0, 0.0)
    _last: tuple[int, float] = (0, 0.0)
    _ended: bool = False
    _seen: set[str] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        """The rate and the interval count from now (the clock is read once here)."""
        self._start = self._last = (self.done, self.clock())

    def record(self, item: str, reason: str | None = None) -> bool:
        """One item is over (``reason``: why it failed; None: it passed). False: ``distinct``
        and the item was counted before (nothing changes)."""
        with self._lock:
            if not self._count(item, reason):
                return False
            self._maybe_say()
            return True

    def record_all(self, items: Iterable[tuple[str, str | None]]) -> int:
        """Several items are over at once (a task's, as it ends: ``(item, reason)`` each), said
        as one moment: at most one line for them all. Returns how many were new."""
        with self._lock:
            new = sum(self._count(item, reason) for item, reason in items)
            if new:
                self._maybe_say()
            return new

    def _count(self, item: str, reason: str | None) -> bool:
        if self.distinct:
            if item in self._seen:
                return False
            self._seen.add(item)
        self.done += 1
        if reason:
            self.failed.append(item)
            if self.error is not None and len(self.failed) <= FAILURES_NAMED:
                self.error(self.fail_line.format(item=item, done=self.done, total=self.total,
                                                 reason=reason))
        return True

    def advance(self, done: int) -> None:
        """The count is now ``done`` (for a callback that counts for itself: a store sync)."""
        with self._lock:
            self.done = done
            self._maybe_say()

    def finish(self) -> None:
        """Say the last line now unless it was said (a search that ended before its bound)."""
        with self._lock:
            if not self._ended:
                self._say(self.clock(), final=True)

    def _maybe_say(self) -> None:
        now = self.clock()
        end = self.done >= self.total
        every = self.every or progress_every(self.total)
        if self._ended:
            return
        if end or self.done - self._last[0] >= every or now - self._last[1] >= self.interval_s:
            self._say(now, final=end)

    def _say(self, now: float, final: bool) -> None:
        self._last, self._ended, self.updates = (self.done, now), final, self.updates + 1
        self.emit(self.line(now, final))
        if self.artifact is not None:
            self.artifact(100.0 if final else 100.0 * min(self.done, self.total) / max(1, self.total))

    def line(self, now: float, final: bool = False) -> str:
        """``validated 6/10, 1 failed (latest: v4), 2.0/s, ~2 s left``; at the end ``validated
        10/10, 1 failed (latest: v4) in 5 s, 2.0/s`` (no rate before any time has passed)."""
        n0, t0 = self._start
        elapsed = now - t0
        rate = (self.done - n0) / elapsed if elapsed > 0 and self.done > n0 else None
        count = (f"{self.done}" if final else f"{self.done} (at most {self.total})") if self.at_most \
            else f"{self.done}/{self.total}"
        failed = f", {len(self.failed)} failed (latest: {self.failed[-1]})" if self.failed else ""
        head = f"{self.label} {count}{failed}"
        if rate is None:
            return head
        if final:  # a short step's own time to a tenth (a search of 0.3 s is not "0 s")
            took = f"{elapsed:.1f} s" if elapsed < 10 else duration_text(elapsed)
            return f"{head} in {took}, {rate_text(rate)}"
        left = max(0, self.total - self.done) / rate
        when = "<1 s" if left < 1 else f"~{duration_text(left)}"
        return f"{head}, {rate_text(rate)}, {'at most ' if self.at_most else ''}{when} left"

    def summary(self, done_key: str = "done") -> dict[str, int]:
        """The counts a step's result carries (``done_key``: what the step calls its items)."""
        return {done_key: self.done, "total": self.total, "failed": len(self.failed),
                "updates": self.updates}


_SHARED: OrderedDict[str, Progress] = OrderedDict()
_SHARED_LOCK = threading.Lock()


def share(progress: Progress) -> str:
    """A key by which tasks of this process find ``progress`` (:func:`record_shared`)."""
    key = uuid.uuid4().hex
    with _SHARED_LOCK:
        _SHARED[key] = progress
        while len(_SHARED) > SHARED_MAX:
            _SHARED.popitem(last=False)
    return key


def shared(key: str | None) -> Progress | None:
    """The reporter shared under ``key`` here; None without one (no key, another process)."""
    with _SHARED_LOCK:
        return _SHARED.get(key) if key else None


def unshare(key: str | None) -> None:
    """Tasks no longer find the reporter shared under ``key`` (its step is over)."""
    with _SHARED_LOCK:
        _SHARED.pop(key or "", None)


def record_shared(key: str | None, item: str, reason: str | None = None) -> bool:
    """Record one item on the reporter shared under ``key``; the last item unshares it.
    False: there is none here (no key, another process): the caller's flow records it."""
    progress = shared(key)
    if progress is None:
        return False
    progress.record(item, reason)
    if progress.done >= progress.total:
        unshare(key)
    return True


@dataclass
class LoadedBudget:
    """Keeps at most ``keep`` of the variants a deploy validated loaded on each local endpoint:
    once validated, a variant joins its endpoint's queue and the oldest beyond ``keep`` is
    unloaded (``unload(endpoint, target_model)``). What was loaded before the deploy, or by
    traffic meanwhile, is not the deploy's to unload and is left alone."""

    keep: int
    unload: Callable[[str, str], None]
    unloaded: list[str] = field(default_factory=list)
    _queues: dict[str, deque[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def validated(self, endpoint: str, target_model: str) -> None:
        with self._lock:
            queue = self._queues.setdefault(endpoint, deque())
            queue.append(target_model)
            victims = [queue.popleft() for _ in range(max(0, len(queue) - self.keep))]
            self.unloaded += victims
        for victim in victims:  # outside the lock: an unload takes ~1 s (a Python stub stops)
            self.unload(endpoint, victim)
