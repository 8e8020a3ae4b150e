"""Triton's memory, as the endpoint's memory limit counts it.

Why its own class: the admission check (would one more load pass the limit?) and the
``/metrics`` figures read the same measurement and the same per-model estimate; keeping them
together keeps the estimate's rules (below) in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from infra.endpoint.reports import MemoryReport, ModelState
from infra.endpoint.state import EndpointConfig, ModelEntry
from infra.processes.procfs import Memory, tree_memory
from infra.triton.server import TritonServer


def triton_memory(pid: int | None) -> Memory:
    """Triton's memory: the server and its Python-backend stubs (its process tree), by
    :func:`infra.processes.procfs.tree_memory`. The limit reads its PSS: summed RSS would count
    the libraries every stub maps once per stub (about 2x a variant's real cost, DESIGN.md)."""
    return tree_memory(pid)


class MemoryProbe:
    """Measures Triton (in a worker thread: ``/proc`` reads stay off the loop) and estimates
    what one more model would take."""

    def __init__(self, cfg: EndpointConfig, triton: TritonServer) -> None:
        self.cfg = cfg  # read at each check: the limit may be changed while serving
        self.triton = triton
        self.last = Memory()  # Triton's memory at the last admission check or /metrics
        self.base_pss: int | None = None  # Triton with nothing loaded (PSS bytes)
        self.model_pss = 0  # the most memory (PSS) one loaded model was seen to take

    async def refresh(self) -> Memory:
        """Read Triton's memory now."""
        self.last = await asyncio.to_thread(triton_memory, self.triton.pid)
        return self.last

    async def over_limit(self, m: ModelEntry, resident: Mapping[int, ModelEntry]) -> bool:
        """Would loading ``m`` pass the memory limit? Triton's memory (server and stubs, PSS:
        shared pages split among the processes that map them) is measured; the models still
        loading (and ``m``) are counted at the largest memory one loaded model was seen to
        take, so concurrent loads cannot overshoot together. ``resident`` is the live set of
        models in Triton, read after the measurement."""
        limit = self.cfg.memory_limit_bytes
        if not limit:
            return False
        pss = (await self.refresh()).pss
        if not resident or self.base_pss is None:
            self.base_pss = pss if not resident else (self.base_pss or pss)
        others = sum(1 for x in resident.values() if x is not m)  # all hold some memory
        if others:
            self.model_pss = max(self.model_pss, (pss - self.base_pss) // others)
        loading = sum(1 for x in resident.values() if x.state == ModelState.LOADING and x is not m)
        return pss + self.model_pss * (loading + (0 if m.state == ModelState.LOADING else 1)) > limit

    def report(self) -> MemoryReport:
        """Triton's memory (at the last :meth:`refresh`), each figure named by its basis."""
        mem = self.last
        return MemoryReport(triton_memory_pss=mem.pss, triton_memory_uss=mem.uss,
                            triton_memory_rss=mem.rss, triton_page_tables=mem.page_tables,
                            triton_processes=mem.processes,
                            memory_limit_bytes=self.cfg.memory_limit_bytes,
                            memory_limit_basis="pss", model_memory_pss=self.model_pss)
