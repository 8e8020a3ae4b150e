"""The local endpoint's models: load on demand, evict least recently used, keep a disk cache.

One :class:`ModelManager` per endpoint tracks every TargetModel it has seen (a
:class:`~infra.mme_state.ModelEntry`) through the states ``absent -> loading -> loaded ->
unloading -> absent`` (or ``failed``). All state changes happen on the serving event loop;
blocking work (download, extraction, Triton's repository calls) runs in worker threads.

Two rules keep eviction honest under concurrency:

* a model being unloaded is ``unloading`` from the first moment, so no request is handed a
  model that Triton is about to drop (it waits for the unload, then loads it again);
* the loaded-model budget counts models that are loading or unloading too, so N concurrent
  first requests cannot load more than the budget; a load that finds no idle model to evict
  waits until one becomes idle (bounded by the client's ready wait, as on SageMaker).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from infra.mme_errors import (
    EndpointError,
    InsufficientMemory,
    InternalFailure,
    ModelNotReady,
    ServiceUnavailable,
    ValidationError,
)
from infra.mme_state import EndpointConfig, Metrics, ModelEntry
from infra.mme_supervisor import TritonSupervisor
from infra.model_repo import ModelRepoError, namespace_for, namespace_repository
from infra.request_check import ContractError, ModelContract, contract_from_config
from infra.store import ObjectNotFound, StoreError, open_store
from infra.tarball import UnsafeArchive, safe_extract
from infra.triton_server import TritonModelError, TritonServer

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


def is_oom(text: str) -> bool:
    return OOM_PATTERN.search(text) is not None


def _tree_rss_bytes(pid: int | None) -> int:
    """RSS of a process and its descendants (Triton plus its Python-backend stubs), from /proc;
    0 when there is no process."""
    if pid is None:
        return 0
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            pass
        todo.extend(children.get(p, []))
    return total


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
        self._room = asyncio.Event()  # replaced after each wake-up (see _changed)
        self.metrics = Metrics()
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
        return sum(1 for m in self.models.values() if m.state == "loaded")

    def occupied_count(self, exclude: str) -> int:
        """Models holding, or about to hold, a place in Triton (the budget counts them all)."""
        return sum(1 for m in self.models.values() if m.state in OCCUPYING and m.target != exclude)

    def entry(self, target: str) -> ModelEntry:
        if target not in self.models:
            self.models[target] = ModelEntry(target)
        return self.models[target]

    async def acquire(self, target: str) -> ModelEntry:
        """Return the loaded model, loading it first if needed; the caller must release().

        The check for "loaded" and the in-flight count that protects the model from eviction
        happen in one step of the event loop (no await between them). A model evicted between
        its load and this request's turn is simply loaded again, within the ready wait.
        """
        _check_target(target)
        m = self.entry(target)
        start: float | None = None
        while True:
            if m.state == "loaded":
                m.in_flight += 1
                m.last_used = time.monotonic()
                if start is None:
                    self.metrics.model_cache_hit += 1
                else:
                    self.metrics.loading_wait_ms.append((time.perf_counter() - start) * 1000)
                return m
            start = time.perf_counter() if start is None else start
            await self._await_load(m, self.cfg.ready_wait_s - (time.perf_counter() - start))

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
        if m.in_flight == 0:
            self._changed()  # it may be the idle model a waiting load can evict

    def _changed(self) -> None:
        """Wake the loads waiting for room (a model became idle, loaded, or unloaded)."""
        self._room.set()
        self._room = asyncio.Event()

    def triton_down(self) -> None:
        """Triton died: nothing is loaded any more; the files stay, so reloads need no download."""
        for m in self.models.values():
            if m.state in OCCUPYING:
                m.state = "absent"

    def stub_died(self, m: ModelEntry, loads_seen: int) -> bool:
        """A model's Python stub died: make its next request reload it (once per failure).

        Not an unload in Triton: with a dead stub, 2.51 never finishes unloading the composing
        model (it stays UNLOADING), while a new load of the entry replaces the instances (a
        fresh stub) at once.
        """
        if m.state != "loaded" or m.loads != loads_seen:
            return False  # another request already reported it, or it was reloaded since
        m.state = "absent"
        self.metrics.stub_failures += 1
        log.error("model %s: a Python stub died; it reloads on its next request", m.target)
        return True

    async def _load(self, m: ModelEntry) -> None:
        m.state = "preparing"  # downloading/extracting: holds no place in Triton yet
        generation = self.sup.generation
        try:
            on_disk = m.ns is not None and all((self.repo_dir / n).exists() for n in m.ns.models)
            if not on_disk:  # else: unloaded earlier, its files stayed in the disk cache
                await asyncio.wait_for(asyncio.to_thread(self._download_and_prepare, m),
                                       self.cfg.load_timeout_s)
                await self._trim_disk(exclude=m.target)
            generation = self.sup.check()
            await self._make_room(m)  # returns with m "loading": its place is reserved
            t0 = time.perf_counter()
            await self._triton_load(m)
            if generation != self.sup.generation or not self.sup.live:
                raise self.sup.down_error()  # loaded into a server that died since
            self.metrics.loading_ms.append((time.perf_counter() - t0) * 1000)
            m.contract = await asyncio.to_thread(self._read_contract, m)
            m.state = "loaded"
            m.loads += 1
            m.last_used = time.monotonic()
            self._changed()
            log.info("loaded %s as %s", m.target, m.repo.entry)
        except BaseException as e:  # noqa: BLE001 - always raised again, translated
            down = None
            if isinstance(e, (TritonModelError, ConnectionError, RuntimeError)):
                down = await self.sup.after_error(generation, f"the load of {m.target}")
            if down is not None or isinstance(e, (ServiceUnavailable, InternalFailure)):
                m.state = "absent"  # Triton's fault, not the model's: keep its files
                raise (down or e) from None
            m.state = "failed"
            await asyncio.to_thread(self._discard_files, m)
            if isinstance(e, ObjectNotFound) and self.models.get(m.target) is m:
                # nothing to remember about a name with no object: requests for unknown
                # TargetModels must not grow the model table without bound
                del self.models[m.target]
            raise self._load_error(m, e) from None

    def _read_contract(self, m: ModelEntry) -> ModelContract | None:
        """The entry model's inputs and outputs, named as in the tarball.

        None (structural checks only; they still cap every declared shape by the payload
        limit) for a config Triton accepted but the checker cannot read.
        """
        try:
            contract = contract_from_config(self.repo_dir / m.repo.entry / "config.pbtxt")
        except ContractError as e:
            log.warning("model %s: no request contract: %s", m.target, self.public(str(e)))
            return None
        return dataclasses.replace(contract, name=m.repo.original_entry)

    async def _triton_load(self, m: ModelEntry) -> None:
        try:
            await asyncio.to_thread(self.triton.load, m.repo.entry, self.cfg.load_timeout_s)
        except TritonModelError as e:
            if not is_oom(str(e)):
                raise
            # what SageMaker does on a 507: unload idle models, then try once more
            await self._make_room(m, force_one=True)
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
        """
        for root in self._repo_roots:
            text = text.replace(root + "/", "").replace(root, "<repository>")
        for root in self._cache_roots:
            text = text.replace(root, "<cache>")
        for m in self.models.values():
            text = unprefix(text, m)
        return text

    def _download_and_prepare(self, m: ModelEntry) -> None:
        """Store -> disk cache -> safe extraction -> namespaced folders in the Triton repo."""
        ns = namespace_for(m.target)
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        archive = self.work_dir / f"{ns}.tar.gz"
        self.store.get_file(self.key_for(m.target), archive)
        self.metrics.downloading_ms.append((time.perf_counter() - t0) * 1000)
        extracted = self.work_dir / f"{ns}.d"
        shutil.rmtree(extracted, ignore_errors=True)
        try:
            safe_extract(archive, extracted)
        finally:
            archive.unlink(missing_ok=True)
        try:
            m.ns = namespace_repository(extracted, self.repo_dir, m.target)
        finally:
            shutil.rmtree(extracted, ignore_errors=True)
        m.disk_bytes = sum(_dir_bytes(self.repo_dir / name) for name in m.ns.models)

    def _discard_files(self, m: ModelEntry) -> None:
        if m.ns:
            for name in m.ns.models:
                shutil.rmtree(self.repo_dir / name, ignore_errors=True)
        m.ns = None
        m.disk_bytes = 0

    async def _trim_disk(self, exclude: str) -> None:
        """Delete the least recently used models that are not in Triton when the cache is full.

        Victims are chosen on the event loop (the model table is only touched there); their
        folders are deleted in a worker thread.
        """
        used = sum(x.disk_bytes for x in self.models.values())
        victims = []
        for victim in sorted(self.models.values(), key=lambda x: x.last_used):
            if used <= self.cfg.disk_cache_bytes:
                break
            if victim.target == exclude or victim.state not in ("absent", "failed") or not victim.ns:
                continue
            used -= victim.disk_bytes
            victim.state = "absent"
            folders = [self.repo_dir / name for name in victim.ns.models]
            victim.ns, victim.disk_bytes = None, 0
            victims.append(folders)
            self.metrics.disk_evictions += 1
        for folders in victims:
            await asyncio.to_thread(_remove_folders, folders)

    async def _make_room(self, m: ModelEntry, force_one: bool = False) -> None:
        """Reserve a place for ``m`` in Triton: unload least recently used idle models while
        over the model-count or memory limit, and mark ``m`` "loading" once it fits.

        Over the count budget with no idle model to unload (all busy, loading or unloading),
        it waits until one becomes idle or leaves, up to the load timeout (then 507, as
        SageMaker answers when it cannot free memory). Over the memory limit with nothing
        idle it loads anyway: memory is measured, not reserved, and other loads in flight
        may be what pushes it over.
        """
        forced = force_one
        deadline = time.monotonic() + self.cfg.load_timeout_s
        while True:
            over_count = (self.cfg.max_loaded_models is not None
                          and self.occupied_count(m.target) >= self.cfg.max_loaded_models)
            over_mem = _tree_rss_bytes(self.triton.pid) > (self.cfg.memory_limit_bytes or 0)
            if not (over_count or over_mem or forced):
                break
            idle = [x for x in self.models.values()
                    if x.state == "loaded" and x.in_flight == 0 and x.target != m.target]
            if idle:
                await self.unload(min(idle, key=lambda x: x.last_used).target, evicted=True)
                forced = False
                continue
            if not over_count:
                break
            room = self._room
            try:
                await asyncio.wait_for(room.wait(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                raise InsufficientMemory(
                    f"Failed to load model {m.target}: {self.cfg.max_loaded_models} models are "
                    f"loaded and none became idle within {self.cfg.load_timeout_s:.0f} s") from None
        m.state = "loading"

    async def unload(self, target: str, *, evicted: bool = False, delete_files: bool = False) -> bool:
        """Unload a model from Triton (its files stay on disk unless asked or caching is off).

        The model is "unloading" from the start, so no request is handed it meanwhile; one
        that wants it waits for the unload to finish, then loads it again.
        """
        m = self.models.get(target)
        if m is None or m.ns is None:
            return False
        if m.state == "unloading" and m.unloaded is not None:
            await m.unloaded.wait()  # someone else is unloading it
        elif m.state == "loaded" and self.sup.live:  # a dead Triton has nothing loaded
            m.state, m.unloaded = "unloading", asyncio.Event()
            t0 = time.perf_counter()
            try:
                await asyncio.to_thread(self.triton.unload, m.repo.entry)
            finally:
                m.state = "absent"
                m.unloaded.set()
                self._changed()
            self.metrics.unloading_ms.append((time.perf_counter() - t0) * 1000)
            if evicted:
                self.metrics.evictions += 1
        elif m.state != "loading" and m.state != "preparing":
            m.state = "absent"
        if delete_files or not self.cfg.model_cache_enabled:
            await asyncio.to_thread(self._discard_files, m)
        log.info("unloaded %s", target)
        return True

    def describe(self) -> list[dict]:
        return [{"target_model": m.target, "state": m.state,
                 "internal_name": m.ns.entry if m.ns else None, "disk_bytes": m.disk_bytes,
                 "in_flight": m.in_flight, "loads": m.loads}
                for m in sorted(self.models.values(), key=lambda x: x.target)]

    def triton_status(self) -> dict:
        return {"state": self.sup.state, "pid": self.triton.pid,
                "generation": self.sup.generation, "reason": self.sup.reason or None}


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


