"""What a fleet deploy's validation says as it goes, and what it leaves loaded behind it.

Validating a 100-variant fleet takes minutes; without word of it a person cannot tell a slow
deploy from a stuck one, nor see a failure before the end. :class:`ValidationProgress` says
``validated n/N (f failed)`` on the terminal at most every ``every`` variants or every
``interval_s`` seconds (whichever comes first, and once at the end), each failure as it
happens, and moves a Prefect progress artifact at the same moments.

A local endpoint loads every variant it is asked to validate and, by its own default limit
(70% of physical memory), keeps them: the first deploy of the 100-variant example fleet left 75
loaded, 15 of 23 GB. :class:`LoadedBudget` unloads the oldest validated variants beyond
``keep`` as validation goes, so a deploy leaves at most ``keep`` of them loaded (traffic
loads the others again on demand; routing does not depend on being loaded).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: Failures named one line each as they happen; beyond these, the progress lines count them
#: (a broken template fails every variant: a thousand error lines would bury the rest).
FAILURES_NAMED = 10


def progress_every(total: int) -> int:
    """A terminal line every ~5% of the variants (at least every one): ~20 lines for any
    fleet size, plus the time-driven ones on a slow fleet."""
    return max(1, -(-total // 20))


@dataclass
class ValidationProgress:
    """Counts validated variants and failures (thread-safe: validations run side by side) and
    says so at bounded moments: ``emit`` gets the terminal lines, ``error`` each failure (the
    first :data:`FAILURES_NAMED`), ``artifact`` the percentage (a Prefect progress artifact)."""

    total: int
    emit: Callable[[str], None]
    error: Callable[[str], None]
    artifact: Callable[[float], None] | None = None
    every: int = 0  # 0: progress_every(total)
    interval_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    done: int = 0
    failed: list[str] = field(default_factory=list)
    updates: int = 0  # lines said (= artifact updates): what the tests count
    _last_done: int = 0
    _last_t: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, variant: str, reason: str | None) -> None:
        """One variant's validation is over (``reason``: why it failed, None: it passed)."""
        with self._lock:
            self.done += 1
            now = self.clock()
            if self._last_t is None:  # the interval counts from the first validation's end
                self._last_t = now
            if reason:
                self.failed.append(variant)
                if len(self.failed) <= FAILURES_NAMED:
                    self.error(f"variant {variant} failed validation ({self.done}/{self.total}): {reason}")
            every = self.every or progress_every(self.total)
            if (self.done == self.total or self.done - self._last_done >= every
                    or now - self._last_t >= self.interval_s):
                self._say(now)

    def _say(self, now: float) -> None:
        self._last_done, self._last_t, self.updates = self.done, now, self.updates + 1
        failed = f", {len(self.failed)} failed" if self.failed else ""
        latest = f" (latest: {self.failed[-1]})" if self.failed else ""
        self.emit(f"validated {self.done}/{self.total}{failed}{latest}")
        if self.artifact is not None:
            self.artifact(100.0 * self.done / max(1, self.total))

    def summary(self) -> dict[str, int]:
        return {"validated": self.done, "total": self.total, "failed": len(self.failed),
                "updates": self.updates}


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
