"""Load one model in a running Triton and measure what it costs: the one harness.

Every figure the planner reads about a model (``mme profile``, the fleet build's canary, the
build's verify step, the benches) comes from here: the seconds the load took, the memory it
added to Triton's process tree by the one probe (:func:`infra.processes.procfs.tree_memory`,
headline basis PSS: what the endpoint's memory limit counts), the seconds of a service call
when the caller times one, and the seconds the unload took (until its stubs have exited, see
:meth:`infra.triton.repository.TritonRepository.unload`). One harness, so that a load time in
a plan and a load time in a bench mean the same thing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from infra.processes.procfs import Memory, tree_memory
from infra.triton.server import TritonServer

__all__ = ["MEMORY_BASIS", "LoadMeasurement", "LoadRun", "timed", "timed_load", "timed_unload"]

#: How the harness's headline memory figure counts pages: shared pages split among the
#: processes that map them (see :class:`infra.processes.procfs.Memory`).
MEMORY_BASIS: Literal["pss"] = "pss"


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took (a monotonic, high-resolution clock)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed_load(server: TritonServer, model: str) -> float:
    """Seconds Triton took to load ``model`` (its load call is synchronous)."""
    return timed(lambda: server.load(model))


def timed_unload(server: TritonServer, model: str) -> float:
    """Seconds until ``model`` (and its composing models) are unloaded and their stubs gone."""
    return timed(lambda: server.unload(model))


@dataclass(frozen=True)
class LoadMeasurement:
    """What one load cost. ``memory_added`` is None when memory was not measured;
    ``unload_s`` None when the model was left loaded; ``service_s`` None when no call was timed."""

    model: str
    load_s: float
    memory_added: Memory | None = None
    service_s: float | None = None
    unload_s: float | None = None
    basis: Literal["pss"] = MEMORY_BASIS


class LoadRun:
    """``with LoadRun(server, model) as run:`` loads ``model`` (timed), and on leaving unloads
    it (timed) unless ``unload=False``, even when the block raised. Inside, the caller may
    read :meth:`memory_added` (against a reading taken before the load, when ``memory``) and
    time service calls with :meth:`service_time`; :attr:`result` says all of it."""

    def __init__(self, server: TritonServer, model: str, *, memory: bool = False, unload: bool = True) -> None:
        self.server = server
        self.model = model
        self.unload = unload
        self._before = tree_memory(server.pid) if memory and server.pid is not None else None
        self.load_s = 0.0
        self.unload_s: float | None = None
        self._added: Memory | None = None
        self._service_s: float | None = None

    def __enter__(self) -> LoadRun:
        self.load_s = timed_load(self.server, self.model)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.unload:
            self.unload_s = timed_unload(self.server, self.model)

    @property
    def measures_memory(self) -> bool:
        return self._before is not None

    def memory_added(self) -> Memory:
        """What Triton's process tree holds now beyond the reading before the load (the one
        probe); the first reading is kept for :attr:`result`. Raises when memory was not asked for."""
        if self._before is None:
            raise RuntimeError(f"LoadRun of {self.model!r} was not asked to measure memory")
        added = tree_memory(self.server.pid) - self._before
        if self._added is None:
            self._added = added
        return added

    def service_time(self, call: Callable[[], object], repeats: int = 1, warm_up: bool = True) -> float:
        """Median seconds of ``call()`` over ``repeats`` calls (after one untimed call when
        ``warm_up``); the first timing is kept for :attr:`result`."""
        if warm_up:
            call()
        median = float(statistics.median(timed(call) for _ in range(max(1, repeats))))
        if self._service_s is None:
            self._service_s = median
        return median

    @property
    def result(self) -> LoadMeasurement:
        return LoadMeasurement(model=self.model, load_s=self.load_s, memory_added=self._added,
                               service_s=self._service_s, unload_s=self.unload_s)
