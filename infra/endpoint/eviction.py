"""Room in Triton: which model to unload for a load, and running the unloads.

Why its own class: the budget rules (module docstring of :mod:`infra.endpoint.models`) are
about the models in Triton only -- choose the least recently used idle one, let the load that
needs room inherit its place, keep spare places free with background unloads -- and never
about admission, downloads or errors. :class:`Evictor` holds those rules and the unload
calls; :class:`~infra.endpoint.models.ModelManager` asks it for room and for unloads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Literal

from infra.endpoint.disk_cache import DiskCache
from infra.endpoint.errors import InsufficientMemory
from infra.endpoint.memory import MemoryProbe
from infra.endpoint.reports import AT_REST, OCCUPYING, ModelState
from infra.endpoint.residency import Residency
from infra.endpoint.state import EndpointConfig, Metrics, ModelEntry, spare_slots
from infra.endpoint.supervisor import TritonSupervisor
from infra.triton.server import TritonServer

log = logging.getLogger("mme.local")

#: How a load got its place (``LoadAdmission`` in /metrics), most telling first.
Wait = Literal["WaitedForEviction", "WaitedForBackgroundUnload", "WaitedForIdle"]


class Evictor:
    """Finds a place in Triton for a load (evicting, joining or waiting) and runs unloads."""

    def __init__(self, cfg: EndpointConfig, residency: Residency, memory: MemoryProbe,
                 sup: TritonSupervisor, disk: DiskCache, public: Callable[[str], str]) -> None:
        self.cfg = cfg
        self.residency = residency
        self.metrics: Metrics = residency.metrics
        self.memory = memory
        self.sup = sup
        self.triton: TritonServer = sup.triton
        self.disk = disk
        self._public = public  # scrubs host paths and internal names from logged errors
        # spare room: background unloads under way that no load has joined yet (by identity),
        # their tasks (kept referenced until done), and "no idle model to unload last time"
        self._spare_unloads: dict[int, ModelEntry] = {}
        self.background: set[asyncio.Task[None]] = set()
        self.spare_short = False

    async def make_room(self, m: ModelEntry, force_one: bool = False) -> None:
        """Reserve a place for ``m`` in Triton and return with ``m`` "loading".

        Over the model-count budget (or the memory limit, see
        :meth:`MemoryProbe.over_limit`) it evicts the least recently used idle model and
        inherits its place when that unload ends. With no idle model (all busy, loading or
        unloading) it waits until one becomes idle or leaves, up to the load timeout (then
        507, as SageMaker answers when it cannot free memory). A model alone in Triton loads
        even over the memory limit: Triton decides. ``force_one`` (after an out-of-memory
        load failure) evicts one idle model regardless.
        """
        forced, waits = force_one, set[Wait]()
        deadline = time.monotonic() + self.cfg.load_timeout_s
        resident = self.residency.resident
        while True:
            over_count = self._over_count(m)
            over_mem = not over_count and await self.memory.over_limit(m, resident)
            over_count = self._over_count(m)  # the memory was read in a thread: look again
            if not (over_count or over_mem or forced):
                break
            if not forced and m.state not in OCCUPYING and self._spare_unloads:
                waits.add("WaitedForBackgroundUnload")
                await self._join_background_unload(m)
                continue
            victim = self._idle_victim(m)
            if victim is not None:
                forced = False
                waits.add("WaitedForEviction")
                victim.heir = None if m.state in OCCUPYING else m
                await self.unload_entry(victim, evicted=True)
                continue
            if not over_count and (forced or not any(x is not m for x in resident.values())):
                break
            waits.add("WaitedForIdle")
            await self._wait_room(m, deadline, "count" if over_count else "memory")
        if m.state not in OCCUPYING:
            self.residency.set_state(m, ModelState.LOADING)
        if not force_one:
            how = next((w for w in self.metrics.load_admission if w in waits), "Free")
            self.metrics.load_admission[how] += 1
            self.keep_spare()

    async def _join_background_unload(self, m: ModelEntry) -> None:
        """Inherit the place of a background unload already under way (the oldest one no load
        has joined): it ends sooner than a new eviction would, and costs no second unload."""
        key = next(iter(self._spare_unloads))
        victim = self._spare_unloads.pop(key)
        done = victim.unloaded
        victim.heir = m
        if done is not None:
            await done.wait()

    def keep_spare(self) -> None:
        """Spare room: while the models that stay in Triton (loading or loaded, not unloading)
        pass the budget minus ``spare_slots``, unload the least recently used idle model in a
        background task. Runs on the loop, in the step a place was taken (or, when no model was
        idle then, when one becomes idle): O(models in Triton), never on the warm path."""
        budget, spare = self.cfg.max_loaded_models, spare_slots(self.cfg, *self.metrics.load_unload_s())
        self.spare_short = False
        if not spare or budget is None or not self.sup.live:
            return
        resident = self.residency.resident
        staying = sum(1 for x in resident.values() if x.state != ModelState.UNLOADING)
        while staying > budget - spare:
            victim = self._spare_victim()
            if victim is None:
                self.spare_short = True  # tried again when a model becomes idle (release)
                return
            done = self._mark_unloading(victim)  # this step: no one else picks or is handed it
            self._spare_unloads[id(victim)] = victim
            task = asyncio.create_task(self._background_unload(victim, done))
            self.background.add(task)
            task.add_done_callback(self.background.discard)
            staying -= 1

    def _spare_victim(self) -> ModelEntry | None:
        """The least recently used idle loaded model that no request is waiting for (a model
        whose load just ended is idle until its requests, holding its lock, take it)."""
        idle = [x for x in self.residency.resident.values()
                if x.state == ModelState.LOADED and x.in_flight == 0 and not x.lock.locked()]
        return min(idle, key=lambda x: x.last_used) if idle else None

    async def _background_unload(self, m: ModelEntry, done: asyncio.Event) -> None:
        """A spare-room unload, off the request path: counted as an eviction and as a
        background one; a failure is logged (the supervisor deals with a dead Triton)."""
        try:
            await self._run_unload(m, done, evicted=True, nice=self.cfg.background_unload_nice)
            self.metrics.background_evictions += 1
        except Exception as e:  # noqa: BLE001 - a background task has no caller to raise to
            log.warning("background unload of %s failed: %s", m.target, self._public(str(e)))
        finally:
            self._spare_unloads.pop(id(m), None)

    def _over_count(self, m: ModelEntry) -> bool:
        budget = self.cfg.max_loaded_models
        return (budget is not None and m.state not in OCCUPYING
                and len(self.residency.resident) >= budget)

    def _idle_victim(self, m: ModelEntry) -> ModelEntry | None:
        """The least recently used idle loaded model other than ``m`` and not one whose waiting
        requests are about to take it (its load just ended; they hold its lock): O(models in
        Triton)."""
        idle = [x for x in self.residency.resident.values()
                if x.state == ModelState.LOADED and x.in_flight == 0 and x is not m
                and not x.lock.locked()]
        return min(idle, key=lambda x: x.last_used) if idle else None

    async def _wait_room(self, m: ModelEntry, deadline: float,
                         why: Literal["count", "memory"]) -> None:
        room = self.residency.room
        try:
            await asyncio.wait_for(room.wait(), max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            limit = (f"{self.cfg.max_loaded_models} models are loaded" if why == "count"
                     else "the memory limit (Triton's PSS) is reached")
            raise InsufficientMemory(
                f"Failed to load model {m.target}: {limit} and none became idle within "
                f"{self.cfg.load_timeout_s:.0f} s") from None

    async def unload_entry(self, m: ModelEntry, *, evicted: bool = False,
                           delete_files: bool = False) -> None:
        """Unload ``m`` from Triton (or wait for the unload under way); its files go too when
        asked or when caching is off. ``m.heir``, if set, takes its place when it ends."""
        if m.state == ModelState.UNLOADING and m.unloaded is not None:
            await m.unloaded.wait()  # someone else is unloading it
        elif m.state == ModelState.LOADED and self.sup.live:  # a dead Triton has nothing loaded
            await self._run_unload(m, self._mark_unloading(m), evicted)
        elif m.state not in (ModelState.LOADING, ModelState.PREPARING):
            self.residency.set_state(m, ModelState.ABSENT)
        if (delete_files or not self.cfg.model_cache_enabled) and m.state in AT_REST:
            await self.disk.discard(m)

    def _mark_unloading(self, m: ModelEntry) -> asyncio.Event:
        """``m`` is "unloading" from this step on (the event is set when the unload ends)."""
        self.residency.set_state(m, ModelState.UNLOADING)
        m.unloaded = done = asyncio.Event()
        return done

    async def _run_unload(self, m: ModelEntry, done: asyncio.Event, evicted: bool,
                          nice: int = 0) -> None:
        """One Triton unload of ``m`` (its stubs at CPU niceness ``nice``); when it ends (or
        fails) the place passes to ``m.heir`` in the same step as ``m`` leaves."""
        t0 = time.perf_counter()
        self.metrics.unload_calls += 1
        try:
            await asyncio.to_thread(self.triton.unload, m.repo.entry, nice=nice)
        finally:
            self.residency.set_state(m, ModelState.ABSENT)
            heir, m.heir = m.heir, None
            if heir is not None and heir.state not in OCCUPYING:
                self.residency.set_state(heir, ModelState.LOADING)
            self.disk.touch(m)  # the disk LRU: most recently unloaded last
            done.set()
            self.residency.changed()
        self.metrics.unloading_ms.append((time.perf_counter() - t0) * 1000)
        if evicted:
            self.metrics.evictions += 1
            m.evictions += 1
        log.debug("unloaded %s in %.3f s", m.target, time.perf_counter() - t0)
