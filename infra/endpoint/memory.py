"""Triton's memory, as the endpoint's memory limit counts it.

Why its own class: the admission check (would one more load pass the limit?) and the
``/metrics`` figures read the same measurement and the same per-model estimate; keeping them
together keeps the estimate's rules (below) in one place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from infra.endpoint.reports import MemoryReport, ModelState
from infra.endpoint.state import EndpointConfig, ModelEntry
from infra.processes.procfs import Memory, tree_memory
from infra.triton.server import TritonServer


def triton_memory(pid: int | None) -> Memory:
    """Triton's memory: the server and its Python-backend stubs (its process tree), by
    :func:`infra.processes.procfs.tree_memory`. The limit reads its PSS: summed RSS would count
    the libraries every stub maps once per stub (about 2x a variant's real cost, DESIGN.md)."""
    return tree_memory(pid)


#: A reading of Triton's memory at most this old (seconds) may answer an admission check
#: without a new read, when even its upper bound leaves :data:`TRUSTED_SHARE` of the limit.
RECENT_S = 1.0
#: The share of the memory limit under which a recent reading's upper bound is trusted.
TRUSTED_SHARE = 0.9


class MemoryProbe:
    """Measures Triton (in a worker thread: ``/proc`` reads stay off the loop) and estimates
    what one more model would take.

    Why a check may skip its read: PSS comes from every process's ``smaps_rollup``, whose cost
    follows the pages mapped: ~2 ms of CPU per example-variant stub, ~100 ms with 50 loaded
    (measured), and every load's admission asked for one, inside its load slot. Far below the
    limit the answer does not need it (see :meth:`over_limit`)."""

    def __init__(self, cfg: EndpointConfig, triton: TritonServer,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg  # read at each check: the limit may be changed while serving
        self.triton = triton
        self.clock = clock
        self.last = Memory()  # Triton's memory at the last admission check or /metrics
        self.base_pss: int | None = None  # Triton with nothing loaded (PSS bytes)
        self.model_pss = 0  # the most memory (PSS) one loaded model was seen to take
        # the last admission check's reading: when, its PSS, and how many models held memory
        # then (loaded or unloading; a loading one is counted apart, see over_limit)
        self.read_at: float | None = None
        self.read_pss = 0
        self.read_held = 0
        self.reads = self.skipped = 0  # admission checks that read Triton's memory / did not

    async def refresh(self) -> Memory:
        """Read Triton's memory now."""
        self.last = await asyncio.to_thread(triton_memory, self.triton.pid)
        return self.last

    async def over_limit(self, m: ModelEntry, resident: Mapping[int, ModelEntry]) -> bool:
        """Would loading ``m`` pass the memory limit? Triton's memory (server and stubs, PSS:
        shared pages split among the processes that map them) is measured; the models still
        loading (and ``m``) are counted at the largest memory one loaded model was seen to
        take, so concurrent loads cannot overshoot together. ``resident`` is the live set of
        models in Triton, read after the measurement.

        Without a read when the last check's reading is recent and even its upper bound
        (:meth:`_recent_bound`) with the loads counted as above stays under
        :data:`TRUSTED_SHARE` of the limit: then the answer is no either way."""
        limit = self.cfg.memory_limit_bytes
        if not limit:
            return False
        # the loads under way and m, each counted at the most one model was seen to take
        loading = sum(1 for x in resident.values() if x.state == ModelState.LOADING and x is not m)
        coming = loading + (0 if m.state == ModelState.LOADING else 1)
        if self._recent_bound(_held(resident)) + self.model_pss * coming <= TRUSTED_SHARE * limit:
            self.skipped += 1
            return False
        pss = (await self.refresh()).pss
        self.reads += 1
        self.read_at, self.read_pss, self.read_held = self.clock(), pss, _held(resident)
        if not resident or self.base_pss is None:
            self.base_pss = pss if not resident else (self.base_pss or pss)
        others = sum(1 for x in resident.values() if x is not m)  # all hold some memory
        if others:
            self.model_pss = max(self.model_pss, (pss - self.base_pss) // others)
        return pss + self.model_pss * coming > limit

    def _recent_bound(self, held: int) -> float:
        """An upper bound of Triton's PSS now from the last admission check's reading, or inf
        when there is none to go by: no per-model figure yet, or older than :data:`RECENT_S`
        (a loaded model's memory can grow with its requests). ``held``: the models holding
        memory now (loaded or unloading); each one more than at the reading is counted at the
        most one model was seen to take, and a model that left counts as still there."""
        if self.read_at is None or not self.model_pss or self.clock() - self.read_at > RECENT_S:
            return float("inf")
        return self.read_pss + self.model_pss * max(0, held - self.read_held)

    def report(self) -> MemoryReport:
        """Triton's memory (at the last :meth:`refresh`), each figure named by its basis."""
        mem = self.last
        return MemoryReport(triton_memory_pss=mem.pss, triton_memory_uss=mem.uss,
                            triton_memory_rss=mem.rss, triton_page_tables=mem.page_tables,
                            triton_processes=mem.processes,
                            memory_limit_bytes=self.cfg.memory_limit_bytes,
                            memory_limit_basis="pss", model_memory_pss=self.model_pss,
                            memory_checks_read=self.reads, memory_checks_skipped=self.skipped)


def _held(resident: Mapping[int, ModelEntry]) -> int:
    """The models in Triton that hold their memory: loaded, or unloading (until it ends)."""
    return sum(1 for x in resident.values() if x.state in (ModelState.LOADED, ModelState.UNLOADING))
