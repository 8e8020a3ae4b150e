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
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from infra.endpoint.errors import (
    EndpointError,
    InsufficientMemory,
    InternalFailure,
    ModelNotReady,
    ServiceUnavailable,
    ValidationError,
)
from infra.endpoint.state import EndpointConfig, Metrics, ModelEntry, ThrashGuard, spare_slots
from infra.endpoint.supervisor import TritonSupervisor
from infra.triton.model_repo import ModelRepoError, NamespacedModel, namespace_for, namespace_repository
from infra.processes.procfs import Memory, tree_memory
from infra.endpoint.request_check import ContractError, ModelContract, contract_from_config
from infra.store.objects import ObjectNotFound, StoreError, open_store
from infra.store.tarball import UnsafeArchive, safe_extract
from infra.triton.server import TritonModelError, TritonServer

log = logging.getLogger("mme.local")

#: Load errors that mean "out of memory" (answered 507, as SageMaker does). Whole words only:
#: a bare "oom" substring also matched "room", "zoom" and "bloom".
OOM_PATTERN = re.compile(r"out of memory|\boom\b|no space left on device|cannot allocate memory",
                         re.IGNORECASE)
#: What Triton's Python backend answers once a model's stub process died (2.51:
#: "in ensemble 'pipe', Stub process 'add_0_0' is not healthy."); it never recovers by itself.
STUB_DEAD_MARKERS = ("stub process", "is not healthy")
#: States in which a model holds (or is about to hold, or still holds) memory in Triton.
OCCUPYING = ("loading", "loaded", "unloading")
#: A miss, by the state its model was in when the request came (else "Absent").
_MISS_REASON = {"preparing": "JoinedLoad", "loading": "JoinedLoad", "unloading": "Unloading"}


def is_oom(text: str) -> bool:
    return OOM_PATTERN.search(text) is not None


def _triton_memory(pid: int | None) -> Memory:
    """Triton's memory: the server and its Python-backend stubs (its process tree), by
    :func:`infra.processes.procfs.tree_memory`. The limit reads its PSS: summed RSS would count the
    libraries every stub maps once per stub (about 2x a variant's real cost, DESIGN.md)."""
    return tree_memory(pid)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------- models
class ModelManager:
    """Loads, tracks and evicts TargetModels on one Triton server."""

    def __init__(self, cfg: EndpointConfig, triton: TritonServer,
                 before_restart: Callable[[int | None], None] | None = None):
        self.cfg = cfg
        self.triton = triton
        self.store, self.prefix = open_store(cfg.model_data_url)
        self.repo_dir = cfg.cache_dir / "repo"
        self.work_dir = cfg.cache_dir / "work"
        self.models: dict[str, ModelEntry] = {}
        # the models in Triton (loading, loaded, unloading), by identity: the budget's count
        self.resident: dict[int, ModelEntry] = {}
        # the models with files in the repository, least recently unloaded first (disk LRU)
        self.on_disk: OrderedDict[str, ModelEntry] = OrderedDict()
        self.disk_used = 0
        self._load_slots = asyncio.Semaphore(max(1, cfg.max_concurrent_loads))
        self._room = asyncio.Event()  # replaced after each wake-up (see _changed)
        self._base_pss: int | None = None  # Triton with nothing loaded (PSS bytes)
        self._model_pss = 0  # the most memory (PSS) one loaded model was seen to take
        self._memory = Memory()  # Triton's memory at the last admission check or /metrics
        # spare room: background unloads under way that no load has joined yet (by identity),
        # their tasks (kept referenced until done), and "no idle model to unload last time"
        self._spare_unloads: dict[int, ModelEntry] = {}
        self._background: set[asyncio.Task] = set()
        self._spare_short = False
        self.metrics = Metrics(thrash=ThrashGuard(cfg.thrash_window, cfg.thrash_miss_rate,
                                                  cfg.thrash_warn_interval_s, cfg.thrash_min_requests))
        self.sup = TritonSupervisor(triton, cfg, self.metrics, on_down=self.triton_down,
                                    before_restart=before_restart)
        # host paths never reach a client: longest first, so the repo folder wins over the cache
        roots = {str(self.repo_dir), str(self.repo_dir.resolve()), str(triton.model_repository)}
        self._repo_roots = sorted(roots, key=len, reverse=True)
        self._cache_roots = sorted({str(cfg.cache_dir), str(cfg.cache_dir.resolve())},
                                   key=len, reverse=True)
        if cfg.memory_limit_bytes is None:
            phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            cfg.memory_limit_bytes = int(phys * 0.7)

    def key_for(self, target: str) -> str:
        return f"{self.prefix}/{target}" if self.prefix else target

    def loaded_count(self) -> int:
        return sum(1 for m in self.resident.values() if m.state == "loaded")

    def occupied_count(self, exclude: str) -> int:
        """Models holding, or about to hold, a place in Triton (the budget counts them all)."""
        return sum(1 for m in self.resident.values() if m.target != exclude)

    def entry(self, target: str) -> ModelEntry:
        m = self.models.get(target)
        if m is None:
            m = self.models[target] = ModelEntry(target)
        return m

    def _set_state(self, m: ModelEntry, state: str) -> None:
        """The one place a model's state changes: keeps ``resident`` (and its peak) exact."""
        m.state = state
        if state in OCCUPYING:
            self.resident[id(m)] = m
            self.metrics.peak_loaded = max(self.metrics.peak_loaded, len(self.resident))
        else:
            self.resident.pop(id(m), None)

    async def acquire(self, target: str) -> ModelEntry:
        """Return the loaded model, loading it first if needed; the caller must release()."""
        return (await self.admit(target))[0]

    async def admit(self, target: str) -> tuple[ModelEntry, bool]:
        """(the loaded model, whether it was loaded already); the caller must release().

        The check for "loaded" and the in-flight count that protects the model from eviction
        happen in one step of the event loop (no await between them). A model evicted between
        its load and this request's turn is simply loaded again, within the ready wait.
        """
        _check_target(target)
        m = self.entry(target)
        m.invocations += 1
        if m.state == "loaded":  # the warm path: O(1), no lock, no await
            m.in_flight += 1
            m.last_used = time.monotonic()
            m.hits += 1
            self.metrics.model_cache_hit += 1
            self.metrics.thrash.record(True)
            return m, True
        self.metrics.thrash.record(False)
        self.metrics.misses[_MISS_REASON.get(m.state, "Absent")] += 1
        start = time.perf_counter()
        while True:
            await self._await_load(m, self.cfg.ready_wait_s - (time.perf_counter() - start))
            if m.state == "loaded":
                m.in_flight += 1
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
                    while m.state == "unloading" and m.unloaded is not None:
                        await m.unloaded.wait()  # Triton drops it first; then it loads again
                    if m.state == "loaded":
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
        if m.in_flight == 0 and m.state == "loaded":
            self._changed()  # it may be the idle model a waiting load can evict
            if self._spare_short:  # O(1) unless the spare room is short of a victim
                self._keep_spare()

    def _changed(self) -> None:
        """Wake the loads waiting for room (a model became idle, loaded, or unloaded)."""
        self._room.set()
        self._room = asyncio.Event()

    def triton_down(self) -> None:
        """Triton died: nothing is loaded any more; the files stay, so reloads need no download."""
        for m in list(self.resident.values()):
            self._set_state(m, "absent")
        self._changed()

    def stub_died(self, m: ModelEntry, loads_seen: int) -> bool:
        """A model's Python stub died: make its next request reload it (once per failure).

        Not an unload in Triton: with a dead stub, 2.51 never finishes unloading the composing
        model (it stays UNLOADING), while a new load of the entry replaces the instances (a
        fresh stub) at once.
        """
        if m.state != "loaded" or m.loads != loads_seen:
            return False  # another request already reported it, or it was reloaded since
        self._set_state(m, "absent")
        self._changed()
        self.metrics.stub_failures += 1
        log.error("model %s: a Python stub died; it reloads on its next request", m.target)
        return True

    async def _load(self, m: ModelEntry) -> None:
        self._set_state(m, "preparing")  # downloading/extracting: no place in Triton yet
        generation = self.sup.generation
        try:
            async with self._load_slots:  # at most max_concurrent_loads at once
                await self._prepare_files(m)
                generation = self.sup.check()
                await self._make_room(m)  # returns with m "loading": its place is reserved
                t0 = time.perf_counter()
                await self._triton_load(m)
                if generation != self.sup.generation or not self.sup.live:
                    raise self.sup.down_error()  # loaded into a server that died since
                seconds = time.perf_counter() - t0
            m.contract, why = await asyncio.to_thread(
                _read_contract, self.repo_dir / m.repo.entry / "config.pbtxt", m.repo.original_entry)
            if why:
                log.warning("model %s: no request contract: %s", m.target, self.public(why))
            self.metrics.loading_ms.append(seconds * 1000)
            m.last_load_s, m.total_load_s = seconds, m.total_load_s + seconds
            m.loads += 1
            m.last_used = time.monotonic()
            self._set_state(m, "loaded")
            self._changed()
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
            self._set_state(m, "absent")  # Triton's fault, not the model's: keep its files
            self._changed()
            return down or e
        self._set_state(m, "failed")
        self._changed()
        await asyncio.to_thread(_remove_folders, self._forget_files(m))
        if isinstance(e, ObjectNotFound) and self.models.get(m.target) is m:
            # nothing to remember about a name with no object: requests for unknown
            # TargetModels must not grow the model table without bound
            del self.models[m.target]
        return self._load_error(m, e)

    async def _prepare_files(self, m: ModelEntry) -> None:
        """Download and extract the model unless its files are still in the disk cache."""
        if m.ns is not None and all((self.repo_dir / n).exists() for n in m.ns.models):
            return  # unloaded earlier, its files stayed in the disk cache
        self._forget_files(m)  # a partial leftover: its folders are replaced below
        ns, size, ms = await asyncio.wait_for(
            asyncio.to_thread(self._download_and_prepare, m.target), self.cfg.load_timeout_s)
        m.ns, m.disk_bytes = ns, size
        self.disk_used += size
        self.on_disk[m.target] = m
        self.on_disk.move_to_end(m.target)
        self.metrics.downloading_ms.append(ms)
        await self._trim_disk(exclude=m)

    async def _triton_load(self, m: ModelEntry) -> None:
        try:
            self.metrics.load_calls += 1
            await asyncio.to_thread(self.triton.load, m.repo.entry, self.cfg.load_timeout_s)
        except TritonModelError as e:
            if not is_oom(str(e)):
                raise
            # what SageMaker does on a 507: unload idle models, then try once more
            await self._make_room(m, force_one=True)
            self.metrics.load_calls += 1
            await asyncio.to_thread(self.triton.load, m.repo.entry, self.cfg.load_timeout_s)

    def _load_error(self, m: ModelEntry, e: BaseException) -> BaseException:
        """The client's answer for a failed load: names the TargetModel, never a host path."""
        if isinstance(e, EndpointError):
            return e
        if isinstance(e, ObjectNotFound):
            return ValidationError(
                f"Failed to download model data (model: {m.target}, url: "
                f"{self.store.uri_for(self.key_for(m.target))}). Please ensure that there is "
                f"an object located at the URL.")
        if isinstance(e, UnsafeArchive):
            archive = str(self.work_dir / f"{namespace_for(m.target)}.tar.gz")
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

    def _download_and_prepare(self, target: str) -> tuple[NamespacedModel, int, float]:
        """Store -> disk cache -> safe extraction -> namespaced folders in the Triton repo.

        Runs in a worker thread, so it touches no shared record: it returns (the namespaced
        models, their size on disk, the download time in ms) for the event loop to record.
        """
        ns = namespace_for(target)
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        archive = self.work_dir / f"{ns}.tar.gz"
        self.store.get_file(self.key_for(target), archive)
        download_ms = (time.perf_counter() - t0) * 1000
        extracted = self.work_dir / f"{ns}.d"
        shutil.rmtree(extracted, ignore_errors=True)
        try:
            safe_extract(archive, extracted)
        finally:
            archive.unlink(missing_ok=True)
        try:
            named = namespace_repository(extracted, self.repo_dir, target)
        finally:
            shutil.rmtree(extracted, ignore_errors=True)
        size = sum(_dir_bytes(self.repo_dir / name) for name in named.models)
        return named, size, download_ms

    def _forget_files(self, m: ModelEntry) -> list[Path]:
        """Drop the record of ``m``'s files (on the loop) and return the folders to delete."""
        if self.on_disk.get(m.target) is m:
            del self.on_disk[m.target]
        self.disk_used -= m.disk_bytes
        folders = [self.repo_dir / name for name in m.ns.models] if m.ns else []
        m.ns, m.disk_bytes = None, 0
        return folders

    async def _trim_disk(self, exclude: ModelEntry) -> None:
        """Delete the least recently used models that are not in Triton when the cache is full.

        Victims are chosen on the event loop from ``on_disk`` (least recently unloaded first)
        with a running total, so a trim costs the models it skips (those in Triton) plus those
        it deletes, not a sort of every model cached; the folders go in a worker thread.
        """
        if self.disk_used <= self.cfg.disk_cache_bytes:
            return
        used, victims = self.disk_used, []
        for victim in self.on_disk.values():
            if used <= self.cfg.disk_cache_bytes:
                break
            if victim is exclude or victim.state not in ("absent", "failed"):
                continue
            used -= victim.disk_bytes
            victims.append(victim)
        folders: list[Path] = []
        for victim in victims:
            folders += self._forget_files(victim)
            self.metrics.disk_evictions += 1
        if folders:
            await asyncio.to_thread(_remove_folders, folders)

    async def _make_room(self, m: ModelEntry, force_one: bool = False) -> None:
        """Reserve a place for ``m`` in Triton and return with ``m`` "loading".

        Over the model-count budget (or the memory limit, see :meth:`_over_memory`) it evicts
        the least recently used idle model and inherits its place when that unload ends. With
        no idle model (all busy, loading or unloading) it waits until one becomes idle or
        leaves, up to the load timeout (then 507, as SageMaker answers when it cannot free
        memory). A model alone in Triton loads even over the memory limit: Triton decides.
        ``force_one`` (after an out-of-memory load failure) evicts one idle model regardless.
        """
        forced, waits = force_one, set()
        deadline = time.monotonic() + self.cfg.load_timeout_s
        while True:
            over_count = self._over_count(m)
            over_mem = not over_count and await self._over_memory(m)
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
                await self._evict(victim, heir=None if m.state in OCCUPYING else m)
                continue
            if not over_count and (forced or not any(x is not m for x in self.resident.values())):
                break
            waits.add("WaitedForIdle")
            await self._wait_room(m, deadline, "count" if over_count else "memory")
        if m.state not in OCCUPYING:
            self._set_state(m, "loading")
        if not force_one:
            how = next((w for w in self.metrics.load_admission if w in waits), "Free")
            self.metrics.load_admission[how] += 1
            self._keep_spare()

    async def _join_background_unload(self, m: ModelEntry) -> None:
        """Inherit the place of a background unload already under way (the oldest one no load
        has joined): it ends sooner than a new eviction would, and costs no second unload."""
        key = next(iter(self._spare_unloads))
        victim = self._spare_unloads.pop(key)
        done = victim.unloaded
        victim.heir = m
        if done is not None:
            await done.wait()

    def _keep_spare(self) -> None:
        """Spare room: while the models that stay in Triton (loading or loaded, not unloading)
        pass the budget minus ``spare_slots``, unload the least recently used idle model in a
        background task. Runs on the loop, in the step a place was taken (or, when no model was
        idle then, when one becomes idle): O(models in Triton), never on the warm path."""
        budget, spare = self.cfg.max_loaded_models, spare_slots(self.cfg)
        self._spare_short = False
        if not spare or budget is None or not self.sup.live:
            return
        staying = sum(1 for x in self.resident.values() if x.state != "unloading")
        while staying > budget - spare:
            victim = self._spare_victim()
            if victim is None:
                self._spare_short = True  # tried again when a model becomes idle (release)
                return
            done = self._mark_unloading(victim)  # this step: no one else picks or is handed it
            self._spare_unloads[id(victim)] = victim
            task = asyncio.create_task(self._background_unload(victim, done))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            staying -= 1

    def _spare_victim(self) -> ModelEntry | None:
        """The least recently used idle loaded model that no request is waiting for (a model
        whose load just ended is idle until its requests, holding its lock, take it)."""
        idle = [x for x in self.resident.values()
                if x.state == "loaded" and x.in_flight == 0 and not x.lock.locked()]
        return min(idle, key=lambda x: x.last_used) if idle else None

    async def _background_unload(self, m: ModelEntry, done: asyncio.Event) -> None:
        """A spare-room unload, off the request path: counted as an eviction and as a
        background one; a failure is logged (the supervisor deals with a dead Triton)."""
        try:
            await self._run_unload(m, done, evicted=True)
            self.metrics.background_evictions += 1
        except Exception as e:  # noqa: BLE001 - a background task has no caller to raise to
            log.warning("background unload of %s failed: %s", m.target, self.public(str(e)))
        finally:
            self._spare_unloads.pop(id(m), None)

    def _over_count(self, m: ModelEntry) -> bool:
        budget = self.cfg.max_loaded_models
        return budget is not None and m.state not in OCCUPYING and len(self.resident) >= budget

    def _idle_victim(self, m: ModelEntry) -> ModelEntry | None:
        """The least recently used idle loaded model other than ``m``: O(models in Triton)."""
        idle = [x for x in self.resident.values()
                if x.state == "loaded" and x.in_flight == 0 and x is not m]
        return min(idle, key=lambda x: x.last_used) if idle else None

    async def _over_memory(self, m: ModelEntry) -> bool:
        """Would loading ``m`` pass the memory limit? Triton's memory (server and stubs, PSS:
        shared pages split among the processes that map them) is measured; the models still
        loading (and ``m``) are counted at the largest memory one loaded model was seen to
        take, so concurrent loads cannot overshoot together."""
        limit = self.cfg.memory_limit_bytes
        if not limit:
            return False
        self._memory = await asyncio.to_thread(_triton_memory, self.triton.pid)
        pss = self._memory.pss
        if not self.resident or self._base_pss is None:
            self._base_pss = pss if not self.resident else (self._base_pss or pss)
        others = sum(1 for x in self.resident.values() if x is not m)  # all hold some memory
        if others:
            self._model_pss = max(self._model_pss, (pss - self._base_pss) // others)
        loading = sum(1 for x in self.resident.values() if x.state == "loading" and x is not m)
        return pss + self._model_pss * (loading + (0 if m.state == "loading" else 1)) > limit

    async def _wait_room(self, m: ModelEntry, deadline: float, why: str) -> None:
        room = self._room
        try:
            await asyncio.wait_for(room.wait(), max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            limit = (f"{self.cfg.max_loaded_models} models are loaded" if why == "count"
                     else "the memory limit (Triton's PSS) is reached")
            raise InsufficientMemory(
                f"Failed to load model {m.target}: {limit} and none became idle within "
                f"{self.cfg.load_timeout_s:.0f} s") from None

    async def _evict(self, victim: ModelEntry, heir: ModelEntry | None) -> None:
        """Unload ``victim`` (idle, loaded: checked by the caller in this same loop step);
        ``heir``, if given, takes its place in Triton the moment the unload ends."""
        victim.heir = heir
        await self._unload_entry(victim, evicted=True)

    async def unload(self, target: str, *, evicted: bool = False, delete_files: bool = False) -> bool:
        """Unload a model from Triton (its files stay on disk unless asked or caching is off).

        The model is "unloading" from the start, so no request is handed it meanwhile; one
        that wants it waits for the unload to finish, then loads it again.
        """
        m = self.models.get(target)
        if m is None or m.ns is None:
            return False
        await self._unload_entry(m, evicted=evicted, delete_files=delete_files)
        return True

    async def _unload_entry(self, m: ModelEntry, *, evicted: bool = False,
                            delete_files: bool = False) -> None:
        if m.state == "unloading" and m.unloaded is not None:
            await m.unloaded.wait()  # someone else is unloading it
        elif m.state == "loaded" and self.sup.live:  # a dead Triton has nothing loaded
            await self._triton_unload(m, evicted)
        elif m.state not in ("loading", "preparing"):
            self._set_state(m, "absent")
        if (delete_files or not self.cfg.model_cache_enabled) and m.state in ("absent", "failed"):
            await asyncio.to_thread(_remove_folders, self._forget_files(m))

    async def _triton_unload(self, m: ModelEntry, evicted: bool) -> None:
        """One Triton unload of ``m``, which is "unloading" from this very step; when it ends
        (or fails) the place passes to ``m.heir`` in the same step as ``m`` leaves."""
        await self._run_unload(m, self._mark_unloading(m), evicted)

    def _mark_unloading(self, m: ModelEntry) -> asyncio.Event:
        """``m`` is "unloading" from this step on (the event is set when the unload ends)."""
        self._set_state(m, "unloading")
        m.unloaded = done = asyncio.Event()
        return done

    async def _run_unload(self, m: ModelEntry, done: asyncio.Event, evicted: bool) -> None:
        t0 = time.perf_counter()
        self.metrics.unload_calls += 1
        try:
            await asyncio.to_thread(self.triton.unload, m.repo.entry)
        finally:
            self._set_state(m, "absent")
            heir, m.heir = m.heir, None
            if heir is not None and heir.state not in OCCUPYING:
                self._set_state(heir, "loading")
            if self.on_disk.get(m.target) is m:
                self.on_disk.move_to_end(m.target)  # the disk LRU: most recently unloaded last
            done.set()
            self._changed()
        self.metrics.unloading_ms.append((time.perf_counter() - t0) * 1000)
        if evicted:
            self.metrics.evictions += 1
            m.evictions += 1
        log.debug("unloaded %s in %.3f s", m.target, time.perf_counter() - t0)

    def forget(self, target: str) -> None:
        """Drop ``target``'s record (``DELETE /models``) unless a request is loading it again
        meanwhile: a record dropped while its model loads would leave a model in Triton that
        no request can find, and the next request would load a second copy."""
        m = self.models.get(target)
        if m is not None and m.state in ("absent", "failed") and m.in_flight == 0 \
                and (m.load_task is None or m.load_task.done()):
            del self.models[target]

    def describe(self) -> list[dict]:
        return [{"target_model": m.target, "state": m.state,
                 "internal_name": m.ns.entry if m.ns else None, "disk_bytes": m.disk_bytes,
                 "in_flight": m.in_flight, "loads": m.loads}
                for m in sorted(self.models.values(), key=lambda x: x.target)]

    def report(self) -> dict:
        """``GET /metrics``: the endpoint's metrics and, under "models", each TargetModel's."""
        doc = self.metrics.report(self.loaded_count())
        doc["SpareSlots"] = spare_slots(self.cfg)
        doc.update(self.memory_report())
        now_mono, now_wall = time.monotonic(), time.time()
        doc["models"] = {m.target: m.report(now_mono, now_wall)
                         for m in sorted(self.models.values(), key=lambda x: x.target)}
        return doc

    async def refresh_memory(self) -> Memory:
        """Read Triton's memory now (in a worker thread: ``/proc`` reads stay off the loop)."""
        self._memory = await asyncio.to_thread(_triton_memory, self.triton.pid)
        return self._memory

    def memory_report(self) -> dict:
        """Triton's memory (at the last :meth:`refresh_memory` or admission check) in /metrics,
        each figure named by its basis: the limit counts PSS (``MemoryLimitBasis``); RSS stays
        for comparison (it counts shared library pages once per stub)."""
        mem = self._memory
        return {"TritonMemoryPss": mem.pss, "TritonMemoryUss": mem.uss, "TritonMemoryRss": mem.rss,
                "TritonPageTables": mem.page_tables, "TritonProcesses": mem.processes,
                "MemoryLimitBytes": self.cfg.memory_limit_bytes, "MemoryLimitBasis": "pss",
                "ModelMemoryPss": self._model_pss}

    def triton_status(self) -> dict:
        return {"state": self.sup.state, "pid": self.triton.pid,
                "generation": self.sup.generation, "reason": self.sup.reason or None}


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


def _remove_folders(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _check_target(target: str) -> None:
    if not target or len(target) > 1024 or target.startswith("/") or ".." in target.split("/") \
            or "\\" in target or any(ord(c) < 32 for c in target):
        raise ValidationError(f"Invalid TargetModel {target!r}")


def unprefix(text: str, m: ModelEntry) -> str:
    """Show the user's model names, not the cache-internal namespaced ones, in messages.

    Also after a failed load has discarded ``m.ns``: the prefix depends on the target only.
    """
    return text.replace(namespace_for(m.target) + "_", "")


