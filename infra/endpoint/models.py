"""The local endpoint's models: load on demand, evict least recently used, keep a disk cache.

One :class:`ModelManager` per endpoint tracks every TargetModel it has seen (a
:class:`~infra.endpoint.state.ModelEntry`) through the states ``absent -> preparing -> loading ->
loaded -> unloading -> absent`` (or ``failed``). All state changes happen on the serving event
loop, so they need no locks; blocking work (download, extraction, Triton's repository calls,
reading ``/proc``) runs in worker threads and hands its results back to the loop.

The rules that keep it honest under fleet traffic:

* a request for a loaded model takes a dict lookup and a counter (O(1), no lock, no await):
  loads and unloads of other models run in their own tasks and never stand in its way;
* a model being unloaded is ``unloading`` from the first moment, so no request is handed a
  model that Triton is about to drop (it waits for the unload, then loads it again), and no
  second eviction picks it: one unload per victim;
* the budget counts every model in Triton (``resident``: loading, loaded or unloading). A load
  that needs room evicts the least recently used idle model and *inherits* its place: the
  victim's place passes to it in the same loop step as the unload ends, so the count never
  passes the budget and no other load can take the place meanwhile. It waits for that one
  unload only, not for the others in the server;
* "recently used" is when a request for the model came (a miss too: not when its load
  ended), as an exact LRU cache over the request stream ranks it; a model whose load has just
  ended is not a victim while the requests that waited for it (holding its lock) take it;
* at most ``max_concurrent_loads`` loads run at once;
* spare room (``spare_slots``): once the models staying in Triton (not unloading) pass the
  budget minus the spare places, the least recently used idle model is unloaded in a
  background task, so a miss finds a free place instead of waiting >= 1.2 s for its victim's
  unload. A load that still finds the budget full joins such an unload (it inherits that
  place) before it evicts another model. ``spare_slots=0``: none of this, as before;
* the work per load follows the models in Triton (``resident``), never the models cached on
  disk or seen in the store: no scan of the model table, no repository index.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from infra.endpoint.disk_cache import DiskCache
from infra.endpoint.errors import (
    EndpointError,
    InsufficientMemory,
    InternalFailure,
    ModelNotReady,
    ServiceUnavailable,
    ValidationError,
)
from infra.endpoint.eviction import Evictor
from infra.endpoint.memory import MemoryProbe
from infra.endpoint.reports import (
    AT_REST,
    EndpointMetrics,
    ModelRow,
    ModelState,
    TritonStatus,
)
from infra.endpoint.request_check import ContractError, ModelContract, contract_from_config
from infra.endpoint.residency import Residency
from infra.endpoint.state import EndpointConfig, Metrics, ModelEntry, ThrashGuard, spare_slots
from infra.endpoint.supervisor import TritonSupervisor
from infra.processes.procfs import Memory
from infra.store.objects import ObjectNotFound, StoreError
from infra.store.tarball import UnsafeArchive
from infra.triton.model_repo import ModelRepoError, namespace_for
from infra.triton.server import TritonModelError, TritonServer

log = logging.getLogger("mme.local")

#: Load errors that mean "out of memory" (answered 507, as SageMaker does). Whole words only:
#: a bare "oom" substring also matched "room", "zoom" and "bloom".
OOM_PATTERN = re.compile(r"out of memory|\boom\b|no space left on device|cannot allocate memory",
                         re.IGNORECASE)
#: What Triton's Python backend answers once a model's stub process died (2.51:
#: "in ensemble 'pipe', Stub process 'add_0_0' is not healthy."); it never recovers by itself.
STUB_DEAD_MARKERS = ("stub process", "is not healthy")
#: A miss, by the state its model was in when the request came (else "Absent").
_MISS_REASON = {ModelState.PREPARING: "JoinedLoad", ModelState.LOADING: "JoinedLoad",
                ModelState.UNLOADING: "Unloading"}


def is_oom(text: str) -> bool:
    return OOM_PATTERN.search(text) is not None


# ---------------------------------------------------------------------------------- models
class ModelManager:
    """Admits requests to TargetModels on one Triton server: loads them on demand (files from
    :class:`DiskCache`, a place from :class:`Evictor`), tracks their state, reports them."""

    def __init__(self, cfg: EndpointConfig, triton: TritonServer,
                 before_restart: Callable[[int | None], None] | None = None):
        self.cfg = cfg
        self.triton = triton
        if cfg.memory_limit_bytes is None:
            phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            cfg.memory_limit_bytes = int(phys * 0.7)
        self.models: dict[str, ModelEntry] = {}
        self._load_slots = asyncio.Semaphore(max(1, cfg.max_concurrent_loads))
        self.metrics = Metrics(thrash=ThrashGuard(cfg.thrash_window, cfg.thrash_miss_rate,
                                                  cfg.thrash_warn_interval_s, cfg.thrash_min_requests))
        self.residency = Residency(self.metrics)
        self.disk = DiskCache(cfg, self.metrics)
        self.memory = MemoryProbe(cfg, triton)
        self.sup = TritonSupervisor(triton, cfg, self.metrics, on_down=self.triton_down,
                                    before_restart=before_restart)
        self.evictor = Evictor(cfg, self.residency, self.memory, self.sup, self.disk, self.public)
        # host paths never reach a client: longest first, so the repo folder wins over the cache
        repo_dir = self.disk.repo_dir
        roots = {str(repo_dir), str(repo_dir.resolve()), str(triton.model_repository)}
        self._repo_roots = sorted(roots, key=len, reverse=True)
        self._cache_roots = sorted({str(cfg.cache_dir), str(cfg.cache_dir.resolve())},
                                   key=len, reverse=True)

    @property
    def resident(self) -> dict[int, ModelEntry]:
        """The models in Triton (loading, loaded, unloading), by identity."""
        return self.residency.resident

    def entry(self, target: str) -> ModelEntry:
        m = self.models.get(target)
        if m is None:
            m = self.models[target] = ModelEntry(target)
        return m

    async def admit(self, target: str) -> tuple[ModelEntry, bool]:
        """(the loaded model, whether it was loaded already); the caller must release().

        The check for "loaded" and the in-flight count that protects the model from eviction
        happen in one step of the event loop (no await between them). A model evicted between
        its load and this request's turn is simply loaded again, within the ready wait.
        """
        _check_target(target)
        m = self.entry(target)
        m.invocations += 1
        if m.state == ModelState.LOADED:  # the warm path: O(1), no lock, no await
            m.in_flight += 1
            m.last_used = time.monotonic()
            m.hits += 1
            self.metrics.model_cache_hit += 1
            self.metrics.thrash.record(True)
            return m, True
        self.metrics.thrash.record(False)
        self.metrics.misses[_MISS_REASON.get(m.state, "Absent")] += 1
        if self.cfg.recency == "request":
            m.last_used = time.monotonic()  # ranked by when it was asked for, as a hit is
        start = time.perf_counter()
        while True:
            await self._await_load(m, self.cfg.ready_wait_s - (time.perf_counter() - start))
            if m.state == ModelState.LOADED:
                m.in_flight += 1
                if self.cfg.recency == "served":
                    m.last_used = time.monotonic()
                self.metrics.loading_wait_ms.append((time.perf_counter() - start) * 1000)
                return m, False

    def count_error(self, target: str) -> None:
        """A request for ``target`` was answered with an error (per-model metric)."""
        m = self.models.get(target)
        if m is not None:
            m.errors += 1

    async def _await_load(self, m: ModelEntry, wait_s: float) -> None:
        """Start (or join) the model's load and wait for it, at most ``wait_s`` (then 429)."""
        try:
            async with asyncio.timeout(max(wait_s, 0.0)):
                async with m.lock:
                    while m.state == ModelState.UNLOADING and m.unloaded is not None:
                        await m.unloaded.wait()  # Triton drops it first; then it loads again
                    if m.state == ModelState.LOADED:
                        return
                    if m.load_task is None or m.load_task.done():
                        m.load_task = asyncio.create_task(self._load(m))
                    await asyncio.shield(m.load_task)
        except TimeoutError:
            raise ModelNotReady(
                f"Model {m.target} is still loading after {self.cfg.ready_wait_s:.0f} s; "
                f"retry the request") from None

    def release(self, m: ModelEntry) -> None:
        m.in_flight = max(0, m.in_flight - 1)
        if m.in_flight == 0 and m.state == ModelState.LOADED:
            self.residency.changed()  # it may be the idle model a waiting load can evict
            if self.evictor.spare_short:  # O(1) unless the spare room is short of a victim
                self.evictor.keep_spare()

    def triton_down(self) -> None:
        """Triton died: nothing is loaded any more; the files stay, so reloads need no download."""
        for m in list(self.resident.values()):
            self.residency.set_state(m, ModelState.ABSENT)
        self.residency.changed()

    def stub_died(self, m: ModelEntry, loads_seen: int) -> bool:
        """A model's Python stub died: make its next request reload it (once per failure).

        Not an unload in Triton: with a dead stub, 2.51 never finishes unloading the composing
        model (it stays UNLOADING), while a new load of the entry replaces the instances (a
        fresh stub) at once.
        """
        if m.state != ModelState.LOADED or m.loads != loads_seen:
            return False  # another request already reported it, or it was reloaded since
        self.residency.set_state(m, ModelState.ABSENT)
        self.residency.changed()
        self.metrics.stub_failures += 1
        log.error("model %s: a Python stub died; it reloads on its next request", m.target)
        return True

    async def _load(self, m: ModelEntry) -> None:
        self.residency.set_state(m, ModelState.PREPARING)  # downloading: no place in Triton yet
        generation = self.sup.generation
        try:
            async with self._load_slots:  # at most max_concurrent_loads at once
                await self.disk.fetch(m)
                generation = self.sup.check()
                await self.evictor.make_room(m)  # returns with m "loading": its place is reserved
                t0 = time.perf_counter()
                await self._triton_load(m)
                if generation != self.sup.generation or not self.sup.live:
                    raise self.sup.down_error()  # loaded into a server that died since
                seconds = time.perf_counter() - t0
            m.contract, why = await asyncio.to_thread(
                _read_contract, self.disk.repo_dir / m.repo.entry / "config.pbtxt", m.repo.original_entry)
            if why:
                log.warning("model %s: no request contract: %s", m.target, self.public(why))
            self.metrics.loading_ms.append(seconds * 1000)
            m.last_load_s, m.total_load_s = seconds, m.total_load_s + seconds
            m.loads += 1
            if self.cfg.recency == "served" or not m.last_used:
                m.last_used = time.monotonic()
            self.residency.set_state(m, ModelState.LOADED)
            self.residency.changed()
            log.debug("loaded %s as %s in %.3f s", m.target, m.repo.entry, seconds)
        except BaseException as e:  # noqa: BLE001 - always raised again, translated
            raise await self._load_failed(m, e, generation) from None

    async def _load_failed(self, m: ModelEntry, e: BaseException, generation: int) -> BaseException:
        """Undo a failed load (its place in Triton, its files unless Triton was at fault) and
        return what to raise."""
        down = None
        if isinstance(e, (TritonModelError, ConnectionError, RuntimeError)):
            down = await self.sup.after_error(generation, f"the load of {m.target}")
        if down is not None or isinstance(e, (ServiceUnavailable, InternalFailure)):
            self.residency.set_state(m, ModelState.ABSENT)  # Triton's fault: keep its files
            self.residency.changed()
            return down or e
        self.residency.set_state(m, ModelState.FAILED)
        self.residency.changed()
        await self.disk.discard(m)
        if isinstance(e, ObjectNotFound) and self.models.get(m.target) is m:
            # nothing to remember about a name with no object: requests for unknown
            # TargetModels must not grow the model table without bound
            del self.models[m.target]
        return self._load_error(m, e)

    async def _triton_load(self, m: ModelEntry) -> None:
        try:
            self.metrics.load_calls += 1
            await asyncio.to_thread(self.triton.load, m.repo.entry, self.cfg.load_timeout_s)
        except TritonModelError as e:
            if not is_oom(str(e)):
                raise
            # what SageMaker does on a 507: unload idle models, then try once more
            await self.evictor.make_room(m, force_one=True)
            self.metrics.load_calls += 1
            await asyncio.to_thread(self.triton.load, m.repo.entry, self.cfg.load_timeout_s)

    def _load_error(self, m: ModelEntry, e: BaseException) -> BaseException:
        """The client's answer for a failed load: names the TargetModel, never a host path."""
        if isinstance(e, EndpointError):
            return e
        if isinstance(e, ObjectNotFound):
            return ValidationError(
                f"Failed to download model data (model: {m.target}, url: "
                f"{self.disk.object_uri(m.target)}). Please ensure that there is "
                f"an object located at the URL.")
        if isinstance(e, UnsafeArchive):
            archive = str(self.disk.archive_for(m.target))
            text = str(e).replace(f"{archive}: ", "").replace(archive, "the archive")
            return ValidationError(f"Failed to load model {m.target}: {self.public(text)}")
        if isinstance(e, ModelRepoError):
            return ValidationError(f"Failed to load model {m.target}: {self.public(str(e))}")
        if isinstance(e, TritonModelError):
            text = unprefix(self.public(str(e)), m)
            if is_oom(text):
                return InsufficientMemory(f"Failed to load model {m.target}: {text}")
            return ValidationError(f"Failed to load model {m.target}: {text}")
        if isinstance(e, asyncio.TimeoutError):
            return ValidationError(f"Model {m.target} did not load within "
                                   f"{self.cfg.load_timeout_s:.0f} s")
        if isinstance(e, StoreError):
            return ValidationError(f"Failed to download model {m.target}: {self.public(str(e))}")
        return e

    def public(self, text: str) -> str:
        """``text`` fit for a client: no host path of the cache, no internal model names.

        Paths inside the Triton repository become repository-relative (a model.py traceback
        then reads ``add/1/model.py``); anything else under the cache dir becomes ``<cache>``.
        Internal names are those of the models in Triton (only they appear in its messages;
        the caller unprefixes the model at hand): O(loaded models), not O(models seen).
        """
        for root in self._repo_roots:
            text = text.replace(root + "/", "").replace(root, "<repository>")
        for root in self._cache_roots:
            text = text.replace(root, "<cache>")
        for m in self.resident.values():
            text = unprefix(text, m)
        return text

    async def unload(self, target: str, *, evicted: bool = False, delete_files: bool = False) -> bool:
        """Unload a model from Triton (its files stay on disk unless asked or caching is off).

        The model is "unloading" from the start, so no request is handed it meanwhile; one
        that wants it waits for the unload to finish, then loads it again.
        """
        m = self.models.get(target)
        if m is None or m.ns is None:
            return False
        await self.evictor.unload_entry(m, evicted=evicted, delete_files=delete_files)
        return True

    def forget(self, target: str) -> None:
        """Drop ``target``'s record (``DELETE /models``) unless a request is loading it again
        meanwhile: a record dropped while its model loads would leave a model in Triton that
        no request can find, and the next request would load a second copy."""
        m = self.models.get(target)
        if m is not None and m.state in AT_REST and m.in_flight == 0 \
                and (m.load_task is None or m.load_task.done()):
            del self.models[target]

    def describe(self) -> list[ModelRow]:
        """``GET /models``: one row per TargetModel seen, by name."""
        return [ModelRow(target_model=m.target, state=m.state,
                         internal_name=m.ns.entry if m.ns else None, disk_bytes=m.disk_bytes,
                         in_flight=m.in_flight, loads=m.loads)
                for m in sorted(self.models.values(), key=lambda x: x.target)]

    def report(self) -> EndpointMetrics:
        """``GET /metrics``: the endpoint's metrics, Triton's memory (at the last
        :meth:`refresh_memory` or admission check) and, under "models", each TargetModel's."""
        spare = spare_slots(self.cfg, *self.metrics.load_unload_s())
        counters = self.metrics.report(self.residency.loaded_count(), spare)
        now_mono, now_wall = time.monotonic(), time.time()
        models = {m.target: m.report(now_mono, now_wall)
                  for m in sorted(self.models.values(), key=lambda x: x.target)}
        return EndpointMetrics(**dict(counters), **dict(self.memory.report()), models=models)

    async def refresh_memory(self) -> Memory:
        """Read Triton's memory now (in a worker thread: ``/proc`` reads stay off the loop)."""
        return await self.memory.refresh()

    def triton_status(self) -> TritonStatus:
        """The supervised Triton for ``GET /models``: its state, pid and launch number."""
        return TritonStatus(state=self.sup.state, pid=self.triton.pid,
                            generation=self.sup.generation, reason=self.sup.reason or None)


def _read_contract(config: Path, original_entry: str) -> tuple[ModelContract | None, str]:
    """The entry model's inputs and outputs, named as in the tarball (in a worker thread).

    (None, why) -- structural checks only; they still cap every declared shape by the payload
    limit -- for a config Triton accepted but the checker cannot read.
    """
    try:
        contract = contract_from_config(config)
    except ContractError as e:
        return None, str(e)
    return dataclasses.replace(contract, name=original_entry), ""


def _check_target(target: str) -> None:
    if not target or len(target) > 1024 or target.startswith("/") or ".." in target.split("/") \
            or "\\" in target or any(ord(c) < 32 for c in target):
        raise ValidationError(f"Invalid TargetModel {target!r}")


def unprefix(text: str, m: ModelEntry) -> str:
    """Show the user's model names, not the cache-internal namespaced ones, in messages.

    Also after a failed load has discarded ``m.ns``: the prefix depends on the target only.
    """
    return text.replace(namespace_for(m.target) + "_", "")


