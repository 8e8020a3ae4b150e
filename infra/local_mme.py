"""The local multi-model endpoint: SageMaker's runtime API in front of a real Triton server.

It reproduces what a SageMaker multi-model endpoint does, on one machine, with no cloud:

* ``POST /endpoints/{name}/invocations`` with ``X-Amzn-SageMaker-Target-Model`` (so
  ``boto3.client("sagemaker-runtime", endpoint_url=...)`` works unchanged), JSON (KServe v2)
  bodies and ``application/vnd.sagemaker-triton.binary+json;json-header-size=N`` bodies;
* on a request for a model not loaded, it downloads ``<ModelDataUrl>/<TargetModel>`` from the
  object store into a disk cache, extracts it safely, renames its models into the tarball's
  own namespace and loads the entry model (and so its composing models) in Triton, which runs
  in explicit model-control mode; other models keep serving while one loads;
* it unloads the least recently used idle models when the loaded-model count or the server's
  memory passes a limit, and deletes the least recently used extracted models when the disk
  cache is full;
* it answers with SageMaker's error codes and reports SageMaker's MME metrics;
* it supervises Triton: when tritonserver dies (a crash, an OOM kill, SIGKILL) it answers 5xx
  while down, cleans up after it (process group, Python stubs, ``/dev/shm``), restarts it with
  back-off and a limit, and loads models again on demand; a model whose Python stub died is
  reloaded on its next request.

Adding a model is uploading it; removing one is deleting it; the endpoint is never redeployed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from infra.model_repo import (
    ModelRepoError,
    NamespacedModel,
    namespace_for,
    namespace_repository,
)
from infra.request_check import (
    ContractError,
    ModelContract,
    RequestRejected,
    TritonRequest,
    check_request,
    contract_from_config,
)
from infra.runtime_client import BINARY_CT
from infra.store import ObjectNotFound, StoreError, open_store
from infra.tarball import UnsafeArchive, safe_extract
from infra.triton_server import (
    TritonModelError,
    TritonNotFound,
    TritonServer,
    TritonStartError,
    describe_returncode,
    free_port,
)

log = logging.getLogger("mme.local")

TARGET_HEADER = "x-amzn-sagemaker-target-model"
OOM_MARKERS = ("out of memory", "oom", "no space left on device", "cannot allocate memory")
#: What Triton's Python backend answers once a model's stub process died (2.51:
#: "in ensemble 'pipe', Stub process 'add_0_0' is not healthy."); it never recovers by itself.
STUB_DEAD_MARKERS = ("stub process", "is not healthy")


# ---------------------------------------------------------------------------------- errors
class EndpointError(Exception):
    """An error answered to the client the way SageMaker answers it."""

    status = 400
    code = "ValidationError"

    def __init__(self, message: str, **extra: object):
        super().__init__(message)
        self.message = message
        self.extra = extra

    def response(self) -> JSONResponse:
        body = {"message": self.message, "__type": self.code, **self.extra}
        return JSONResponse(body, status_code=self.status, headers={"x-amzn-ErrorType": self.code})


class ValidationError(EndpointError):
    pass


class ModelNotReady(EndpointError):
    status = 429
    code = "ModelNotReadyException"


class InsufficientMemory(EndpointError):
    status = 507
    code = "ModelError"


class ModelError(EndpointError):
    """The model answered with an error: SageMaker wraps it as a 424 ModelError."""

    status = 424
    code = "ModelError"


class Rejected(EndpointError):
    """A request refused by :mod:`infra.request_check`, with the status and type it chose."""

    def __init__(self, e: RequestRejected):
        super().__init__(e.message)
        self.status, self.code = e.status, e.code

    def response(self) -> JSONResponse:
        if self.code.isdigit():  # SageMaker's 413 carries no error type (boto3's code: "413")
            return JSONResponse({"message": self.message}, status_code=self.status)
        return super().response()


def check_body(content_type: str, body: bytes, contract: ModelContract | None) -> TritonRequest:
    """:func:`infra.request_check.check_request`, its refusal as the endpoint's answer."""
    try:
        return check_request(content_type, body, contract)
    except RequestRejected as e:
        raise Rejected(e) from None


class ServiceUnavailable(EndpointError):
    """Triton is down and being restarted: retry later (boto3 retries 503 by itself)."""

    status = 503
    code = "ServiceUnavailable"


class InternalFailure(EndpointError):
    """The endpoint itself failed (Triton gave up restarting, or an unexpected error)."""

    status = 500
    code = "InternalFailure"


# ---------------------------------------------------------------------------------- config
@dataclass
class EndpointConfig:
    name: str
    model_data_url: str  # the MME's model prefix: file:///... or s3://bucket/prefix
    cache_dir: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port
    max_loaded_models: int | None = None
    memory_limit_bytes: int | None = None  # None: 70% of physical memory
    disk_cache_bytes: int = 20 * 2**30
    ready_wait_s: float = 60.0  # SageMaker answers ModelNotReadyException after 60 s
    load_timeout_s: float = 360.0  # ... and keeps loading up to 360 s
    model_cache_enabled: bool = True  # MultiModelConfig.ModelCacheSetting
    triton_log: Path | None = None
    # Triton supervision: more than max_triton_restarts deaths within triton_restart_window_s
    # and the endpoint gives up (500 InternalFailure, /ping 500) instead of looping forever;
    # the 2nd, 3rd ... rapid death waits backoff, 2x backoff ... (capped) before the restart.
    max_triton_restarts: int = 5
    triton_restart_window_s: float = 300.0
    triton_restart_backoff_s: float = 1.0
    liveness_timeout_s: float = 5.0  # GET /v2/health/live slower than this counts as dead


@dataclass
class ModelEntry:
    target: str
    state: str = "absent"  # absent | loading | loaded | failed
    ns: NamespacedModel | None = None
    disk_bytes: int = 0
    last_used: float = 0.0
    in_flight: int = 0
    loads: int = 0  # successful loads so far: tells a stale failure report from a fresh one
    contract: ModelContract | None = None  # what the entry model accepts; read once per load
    load_task: asyncio.Task | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Metrics:
    """SageMaker's MME CloudWatch metrics, kept as running counts and sums (milliseconds)."""

    invocations: int = 0
    model_cache_hit: int = 0
    loading_wait_ms: list[float] = field(default_factory=list)
    downloading_ms: list[float] = field(default_factory=list)
    loading_ms: list[float] = field(default_factory=list)
    unloading_ms: list[float] = field(default_factory=list)
    evictions: int = 0
    disk_evictions: int = 0
    triton_deaths: int = 0
    triton_restarts: int = 0
    triton_failed_starts: int = 0
    stub_failures: int = 0

    def report(self, loaded: int) -> dict:
        def stat(xs: list[float]) -> dict:
            return {"count": len(xs), "avg": (sum(xs) / len(xs)) if xs else 0.0,
                    "max": max(xs) if xs else 0.0}

        return {
            "LoadedModelCount": loaded,
            "Invocations": self.invocations,
            "ModelCacheHit": self.model_cache_hit,
            "ModelLoadingWaitTime": stat(self.loading_wait_ms),
            "ModelDownloadingTime": stat(self.downloading_ms),
            "ModelLoadingTime": stat(self.loading_ms),
            "ModelUnloadingTime": stat(self.unloading_ms),
            "MemoryEvictions": self.evictions,
            "DiskEvictions": self.disk_evictions,
            "TritonDeaths": self.triton_deaths,
            "TritonRestarts": self.triton_restarts,
            "TritonFailedStarts": self.triton_failed_starts,
            "StubFailures": self.stub_failures,
        }


def _tree_rss_bytes(pid: int) -> int:
    """RSS of a process and its descendants (Triton plus its Python-backend stubs), from /proc."""
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


# ---------------------------------------------------------------------------------- supervision
class TritonSupervisor:
    """Keeps the endpoint's tritonserver alive, and tells requests the truth while it is not.

    Why: one bad request (a huge declared shape makes Triton 2.51 abort on ``std::bad_alloc``)
    or an outside SIGKILL used to leave a dead server behind a front end that kept saying
    "loaded" and answered bare 500s forever. Death is seen two ways: the server's watcher
    thread reaps the exited process and calls :meth:`_exited` on the event loop, and a request
    that loses its connection probes ``/v2/health/live`` (:meth:`after_error`). Either way
    :meth:`mark_down` runs once per server generation: requests are answered 503 from then
    on, every model becomes "absent" (files kept: the disk cache survives), and one restart
    task cleans up (process group with its Python stubs, ``/dev/shm`` segments), waits a
    back-off if deaths come fast, and starts a new server on the same repository; after more
    than ``max_triton_restarts`` deaths in ``triton_restart_window_s`` it gives up (state
    "failed", 500) rather than crash-loop. Everything but the watcher runs on the event loop,
    so state changes need no locks; the restart lock only guards against a second restart.
    """

    def __init__(self, triton: TritonServer, cfg: EndpointConfig, metrics: Metrics,
                 on_down: Callable[[], None],
                 before_restart: Callable[[int | None], None] | None = None):
        self.triton = triton
        self.cfg = cfg
        self.metrics = metrics
        self.state = "live"  # live | restarting | failed
        self.generation = 1  # +1 per launch; a request remembers the one it used
        self.reason = ""  # why the last server went down
        self.stopping = False
        self.http: httpx.AsyncClient | None = None
        self._on_down = on_down
        self._before_restart = before_restart  # runs in a thread, between cleanup and relaunch
        self._deaths: collections.deque[float] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._restart_lock = asyncio.Lock()

    def attach(self, loop: asyncio.AbstractEventLoop, http: httpx.AsyncClient) -> None:
        """Start listening to the watcher (called on the serving loop, at startup)."""
        self._loop, self.http = loop, http
        self.triton.on_exit = self._exited_threadsafe
        if not self.triton.running:  # died between start() and now
            self.mark_down(self.generation, "tritonserver exited before the endpoint started")

    def detach(self) -> None:
        self.stopping = True
        self.triton.on_exit = None
        if self._task is not None:
            self._task.cancel()

    def _exited_threadsafe(self, pid: int, rc: int) -> None:
        loop = self._loop
        if loop is None or self.stopping:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed: the endpoint is stopping
            loop.call_soon_threadsafe(self._exited, pid, rc)

    def _exited(self, pid: int, rc: int) -> None:
        if pid == self.triton.pid:  # else an older server, already dealt with
            self.mark_down(self.generation,
                           f"tritonserver (pid {pid}) exited with {describe_returncode(rc)}")

    @property
    def live(self) -> bool:
        return self.state == "live"

    def check(self) -> int:
        """Raise the 5xx answer unless Triton is live; else return its generation."""
        if self.state != "live":
            raise self.down_error()
        return self.generation

    def down_error(self) -> EndpointError:
        if self.state == "failed":
            return InternalFailure(
                f"The model server (Triton) died more than {self.cfg.max_triton_restarts} times "
                f"within {self.cfg.triton_restart_window_s:.0f} s and the endpoint stopped "
                f"restarting it (last: {self.reason}). Restart the endpoint.")
        return ServiceUnavailable(
            f"The model server (Triton) is restarting: {self.reason}. Models load again on "
            f"their next request; retry the request.")

    def mark_down(self, generation: int, reason: str) -> None:
        """Declare this generation's server dead (idempotent) and start the one restart."""
        if self.stopping or generation != self.generation or self.state != "live":
            return
        log.error("Triton is down: %s; restarting it", reason)
        self.state, self.reason = "restarting", reason
        self.metrics.triton_deaths += 1
        self._on_down()
        self._task = asyncio.get_running_loop().create_task(self._restart())

    async def probe(self) -> bool:
        """True if Triton answers ``/v2/health/live`` in time."""
        if self.http is None or not self.triton.running:
            return False
        try:
            r = await self.http.get(f"{self.triton.url}/v2/health/live",
                                    timeout=self.cfg.liveness_timeout_s)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def after_error(self, generation: int, what: str) -> EndpointError | None:
        """A call to Triton failed: return the 5xx to answer if Triton is (now) down, else None."""
        if generation == self.generation and self.state == "live":
            if await self.probe():
                return None
            rc = self.triton.returncode
            how = "stopped answering" if rc is None else f"exited with {describe_returncode(rc)}"
            self.mark_down(generation, f"tritonserver (pid {self.triton.pid}) {how} during {what}")
        return self.down_error()

    def _give_up(self) -> bool:
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.cfg.triton_restart_window_s:
            self._deaths.popleft()
        return len(self._deaths) > self.cfg.max_triton_restarts

    def _backoff_s(self) -> float:
        rapid = len(self._deaths)  # the first death in the window restarts at once
        return 0.0 if rapid < 2 else min(self.cfg.triton_restart_backoff_s * 2 ** (rapid - 2), 30.0)

    async def _restart(self) -> None:
        async with self._restart_lock:
            while not self.stopping:
                old_pid = self.triton.pid
                await asyncio.to_thread(self.triton.kill_group)  # reap, stubs, shm
                if self._before_restart is not None:
                    await asyncio.to_thread(self._before_restart, old_pid)
                if self._give_up():
                    self.state = "failed"
                    log.error("Triton died %d times in %.0f s: not restarting it again",
                              len(self._deaths), self.cfg.triton_restart_window_s)
                    return
                await asyncio.sleep(self._backoff_s())
                try:
                    await asyncio.to_thread(self.triton.start)
                except (TritonStartError, TritonNotFound, OSError) as e:
                    self.metrics.triton_failed_starts += 1
                    self.reason = f"restart failed: {str(e).splitlines()[0]}"
                    log.error("Triton restart failed: %s", e)
                    continue
                self.generation += 1
                self.metrics.triton_restarts += 1
                self.state = "live"
                log.warning("Triton restarted as pid %s (restart %d)", self.triton.pid,
                            self.metrics.triton_restarts)
                return


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

    def entry(self, target: str) -> ModelEntry:
        if target not in self.models:
            self.models[target] = ModelEntry(target)
        return self.models[target]

    async def acquire(self, target: str) -> ModelEntry:
        """Return the loaded model, loading it first if needed; the caller must release()."""
        _check_target(target)
        m = self.entry(target)
        if m.state == "loaded":
            self.metrics.model_cache_hit += 1
            m.in_flight += 1
            m.last_used = time.monotonic()
            return m
        start = time.perf_counter()
        async with m.lock:
            if m.state != "loaded":
                if m.load_task is None or m.load_task.done():
                    m.load_task = asyncio.create_task(self._load(m))
                try:
                    await asyncio.wait_for(asyncio.shield(m.load_task), self.cfg.ready_wait_s)
                except TimeoutError:
                    raise ModelNotReady(
                        f"Model {target} is still loading after {self.cfg.ready_wait_s:.0f} s; "
                        f"retry the request") from None
        self.metrics.loading_wait_ms.append((time.perf_counter() - start) * 1000)
        m.in_flight += 1
        m.last_used = time.monotonic()
        return m

    def release(self, m: ModelEntry) -> None:
        m.in_flight = max(0, m.in_flight - 1)

    def triton_down(self) -> None:
        """Triton died: nothing is loaded any more; the files stay, so reloads need no download."""
        for m in self.models.values():
            if m.state in ("loaded", "loading"):
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
        m.state = "loading"
        generation = self.sup.generation
        try:
            on_disk = m.ns is not None and all((self.repo_dir / n).exists() for n in m.ns.models)
            if not on_disk:  # else: unloaded earlier, its files stayed in the disk cache
                await asyncio.wait_for(asyncio.to_thread(self._download_and_prepare, m),
                                       self.cfg.load_timeout_s)
            generation = self.sup.check()
            await self._make_room(exclude=m.target)
            t0 = time.perf_counter()
            await self._triton_load(m)
            if generation != self.sup.generation or not self.sup.live:
                raise self.sup.down_error()  # loaded into a server that died since
            self.metrics.loading_ms.append((time.perf_counter() - t0) * 1000)
            m.contract = await asyncio.to_thread(self._read_contract, m)
            m.state = "loaded"
            m.loads += 1
            m.last_used = time.monotonic()
            log.info("loaded %s as %s", m.target, m.ns.entry)
        except BaseException as e:  # noqa: BLE001 - always raised again, translated
            down = None
            if isinstance(e, (TritonModelError, httpx.HTTPError, RuntimeError)):
                down = await self.sup.after_error(generation, f"the load of {m.target}")
            if down is not None or isinstance(e, (ServiceUnavailable, InternalFailure)):
                m.state = "absent"  # Triton's fault, not the model's: keep its files
                raise (down or e) from None
            m.state = "failed"
            await asyncio.to_thread(self._discard_files, m)
            raise self._load_error(m, e) from None

    def _read_contract(self, m: ModelEntry) -> ModelContract | None:
        """The entry model's inputs and outputs, named as in the tarball.

        None (structural checks only; they still cap every declared shape by the payload
        limit) for a config Triton accepted but the checker cannot read.
        """
        try:
            contract = contract_from_config(self.repo_dir / m.ns.entry / "config.pbtxt")
        except ContractError as e:
            log.warning("model %s: no request contract: %s", m.target, self.public(str(e)))
            return None
        return dataclasses.replace(contract, name=m.ns.original_entry)

    async def _triton_load(self, m: ModelEntry) -> None:
        try:
            await asyncio.to_thread(self.triton.load, m.ns.entry, self.cfg.load_timeout_s)
        except TritonModelError as e:
            if not any(k in str(e).lower() for k in OOM_MARKERS):
                raise
            # what SageMaker does on a 507: unload idle models, then try once more
            await self._make_room(exclude=m.target, force_one=True)
            await asyncio.to_thread(self.triton.load, m.ns.entry, self.cfg.load_timeout_s)

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
            text = _unprefix(self.public(str(e)), m)
            if any(k in text.lower() for k in OOM_MARKERS):
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
            text = _unprefix(text, m)
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
        self._trim_disk(exclude=m.target)

    def _discard_files(self, m: ModelEntry) -> None:
        if m.ns:
            for name in m.ns.models:
                shutil.rmtree(self.repo_dir / name, ignore_errors=True)
        m.ns = None
        m.disk_bytes = 0

    def _trim_disk(self, exclude: str) -> None:
        """Delete the least recently used models that are not loaded when the cache is full."""
        used = sum(x.disk_bytes for x in self.models.values())
        for victim in sorted(self.models.values(), key=lambda x: x.last_used):
            if used <= self.cfg.disk_cache_bytes:
                break
            if victim.target == exclude or victim.state in ("loaded", "loading") or not victim.ns:
                continue
            used -= victim.disk_bytes
            self._discard_files(victim)
            victim.state = "absent"
            self.metrics.disk_evictions += 1

    async def _make_room(self, exclude: str, force_one: bool = False) -> None:
        """Unload LRU idle models while over the model-count or memory limit."""
        forced = force_one
        while True:
            over_count = (self.cfg.max_loaded_models is not None
                          and self.loaded_count() >= self.cfg.max_loaded_models)
            over_mem = _tree_rss_bytes(self.triton.pid) > (self.cfg.memory_limit_bytes or 0)
            if not (over_count or over_mem or forced):
                return
            idle = [x for x in self.models.values()
                    if x.state == "loaded" and x.in_flight == 0 and x.target != exclude]
            if not idle:
                return
            victim = min(idle, key=lambda x: x.last_used)
            await self.unload(victim.target, evicted=True)
            forced = False

    async def unload(self, target: str, *, evicted: bool = False, delete_files: bool = False) -> bool:
        m = self.models.get(target)
        if m is None or m.ns is None:
            return False
        if m.state == "loaded" and self.sup.live:  # a dead Triton has nothing loaded
            t0 = time.perf_counter()
            await asyncio.to_thread(self.triton.unload, m.ns.entry)
            self.metrics.unloading_ms.append((time.perf_counter() - t0) * 1000)
            if evicted:
                self.metrics.evictions += 1
        m.state = "absent"
        # the files stay in the disk cache unless asked (or caching is disabled): a later
        # request then reloads them without a download
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


def _check_target(target: str) -> None:
    if not target or len(target) > 1024 or target.startswith("/") or ".." in target.split("/") \
            or "\\" in target or any(ord(c) < 32 for c in target):
        raise ValidationError(f"Invalid TargetModel {target!r}")


def _unprefix(text: str, m: ModelEntry) -> str:
    """Show the user's model names, not the cache-internal namespaced ones, in messages.

    Also after a failed load has discarded ``m.ns``: the prefix depends on the target only.
    """
    return text.replace(namespace_for(m.target) + "_", "")


# ---------------------------------------------------------------------------------- HTTP app
def create_app(endpoint: LocalEndpoint, lifespan=None) -> FastAPI:
    app = FastAPI(title=f"local MME {endpoint.cfg.name}", docs_url=None, redoc_url=None,
                  lifespan=lifespan)

    @app.exception_handler(EndpointError)
    async def _endpoint_error(_req: Request, exc: EndpointError) -> JSONResponse:
        return endpoint.answer(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        # still SageMaker-shaped (JSON message, x-amzn-ErrorType), and scrubbed of host paths
        log.exception("unexpected error")
        return endpoint.answer(InternalFailure(f"Internal error: {type(exc).__name__}: {exc}"))

    @app.get("/ping")
    async def ping() -> Response:
        """200 only while Triton is live (SageMaker's health check), else the 5xx of the moment."""
        sup = endpoint.manager.sup
        if sup.live and not await sup.probe():
            sup.mark_down(sup.generation, "tritonserver failed its liveness check (/ping)")
        if not sup.live:
            return endpoint.answer(sup.down_error())
        return Response(status_code=200)

    @app.post("/endpoints/{name}/invocations")
    async def invoke(name: str, request: Request) -> Response:
        return await _invoke(endpoint, name, request)

    @app.get("/models")
    async def list_models() -> JSONResponse:
        mgr = endpoint.manager
        return JSONResponse({"endpoint": endpoint.cfg.name, "triton": mgr.triton_status(),
                             "models": mgr.describe()})

    @app.delete("/models/{target:path}")
    async def delete_model(target: str) -> JSONResponse:
        ok = await endpoint.manager.unload(target, delete_files=True)
        endpoint.manager.models.pop(target, None)
        return JSONResponse({"target_model": target, "unloaded": ok})

    @app.get("/metrics")
    async def metrics() -> JSONResponse:
        mgr = endpoint.manager
        return JSONResponse(mgr.metrics.report(mgr.loaded_count()))

    return app


async def _invoke(endpoint: LocalEndpoint, name: str, request: Request) -> Response:
    """One InvokeEndpoint: validate, acquire (load) the model, forward to Triton, answer."""
    if name != endpoint.cfg.name:
        raise ValidationError(f"Endpoint {name} not found.")
    target = request.headers.get(TARGET_HEADER)
    if not target:
        raise ValidationError("This is a multi-model endpoint: the request needs a "
                              "TargetModel (header X-Amzn-SageMaker-Target-Model)")
    body = await request.body()
    ct = request.headers.get("content-type", "")
    mgr = endpoint.manager
    known = mgr.models.get(target)
    # refused before the model is looked up: with its contract if it is loaded, else
    # structurally (shapes capped by the payload limit), then again with the contract
    contract = known.contract if known is not None and known.state == "loaded" else None
    req = check_body(ct, body, contract)
    mgr.metrics.invocations += 1
    generation = mgr.sup.check()
    m = await mgr.acquire(target)
    try:
        if m.contract is not contract:
            req = check_body(ct, body, m.contract)
        loads_seen = m.loads
        r = await endpoint.forward(m, body, req.headers, generation)
    finally:
        mgr.release(m)
    if r.status_code != 200:
        raise _model_error(mgr, m, r, loads_seen)
    size = r.headers.get("inference-header-content-length")
    content, size = _rename_model(r.content, None if size is None else int(size),
                                  m.ns.entry, m.ns.original_entry)
    ct = f"{BINARY_CT};json-header-size={size}" if size is not None else "application/json"
    return Response(content=content, media_type=ct,
                    headers={"X-Amzn-Invoked-Production-Variant": "AllTraffic"})


def _triton_error(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", r.text))
    except ValueError:
        return r.text


def _model_error(mgr: ModelManager, m: ModelEntry, r: httpx.Response, loads_seen: int) -> ModelError:
    """Triton's refusal as SageMaker wraps it (424), in the user's model names.

    A dead Python stub is special: Triton keeps answering that error for good, so the model is
    marked for a reload on its next request, and the answer says so.
    """
    text = _unprefix(mgr.public(_triton_error(r)), m)
    if all(k in text.lower() for k in STUB_DEAD_MARKERS):
        mgr.stub_died(m, loads_seen)
        return ModelError(
            f"Model {m.target} failed: a process of its Python backend died ({text}). The model "
            f"is reloaded on its next request; retry the request.",
            OriginalStatusCode=r.status_code, OriginalMessage=text)
    kind = "client" if r.status_code < 500 else "server"
    return ModelError(
        f"Received {kind} error ({r.status_code}) from primary with message \"{text}\".",
        OriginalStatusCode=r.status_code, OriginalMessage=text)


def _rename_model(content: bytes, header_size: int | None, internal: str,
                  public: str) -> tuple[bytes, int | None]:
    """Answer with the tarball's own entry-model name where Triton wrote the namespaced one.

    Only the JSON (header) changes; for binary+json the binary tail is kept as is and the new
    header length is returned, for the content type's json-header-size. Triton writes
    ``"model_name":"<name>"`` first, so a bounded byte search finds it without parsing (which
    would cost a full JSON round trip on large JSON outputs).
    """
    end = len(content) if header_size is None else header_size
    old = b'"model_name":' + json.dumps(internal).encode()
    at = content.find(old, 0, min(end, 4096))
    if at >= 0:
        new = b'"model_name":' + json.dumps(public).encode()
        header = content[:at] + new + content[at + len(old):end]
    else:  # another layout: parse the header
        try:
            doc = json.loads(content[:end])
        except (UnicodeDecodeError, json.JSONDecodeError):
            return content, header_size
        if not isinstance(doc, dict) or doc.get("model_name") != internal:
            return content, header_size
        doc["model_name"] = public
        header = json.dumps(doc, separators=(",", ":")).encode()
    if header_size is None:
        return header, None
    return header + content[end:], len(header)


# ---------------------------------------------------------------------------------- lifecycle
class LocalEndpoint:
    """Triton + the SageMaker-runtime front end, started and stopped together.

    ``serve_forever()`` runs in the foreground (the ``mme endpoint serve`` command);
    ``start()``/``stop()`` (or ``with``) run it in a background thread for tests and the demo.

    ``before_restart(old_pid)``, if given, runs in a worker thread after a dead Triton was
    cleaned up and before it is started again (alerting; tests use it to hold the endpoint in
    its "down" state while they look at it).
    """

    def __init__(self, cfg: EndpointConfig,
                 before_restart: Callable[[int | None], None] | None = None):
        self.cfg = cfg
        self.before_restart = before_restart
        self.triton: TritonServer | None = None
        self.manager: ModelManager | None = None
        self.http: httpx.AsyncClient | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.port}"

    def _prepare(self) -> None:
        cache = self.cfg.cache_dir
        (cache / "repo").mkdir(parents=True, exist_ok=True)
        # models extracted by an earlier run of this endpoint may be stale: start from the store
        for sub in ("repo", "work"):
            shutil.rmtree(cache / sub, ignore_errors=True)
        (cache / "repo").mkdir(parents=True)
        if self.cfg.port == 0:
            self.cfg.port = free_port(self.cfg.host)
        self.triton = TritonServer(cache / "repo", log_path=self.cfg.triton_log)
        self.triton.start()
        self.manager = ModelManager(self.cfg, self.triton, before_restart=self.before_restart)
        app = create_app(self, lifespan=self._lifespan)
        config = uvicorn.Config(app, host=self.cfg.host, port=self.cfg.port, log_level="warning",
                                access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: FastAPI):
        # No keep-alive: Triton's HTTP server pins each connection to one worker thread, and
        # a model load holds the thread that received it until the load ends. A kept-alive
        # inference connection pinned to that thread stalls other models' requests for the
        # whole load; a new connection goes to a free thread (about 0.1 ms on loopback).
        # No base_url: a restarted Triton may listen on another port.
        self.http = httpx.AsyncClient(timeout=self.cfg.load_timeout_s,
                                      limits=httpx.Limits(max_keepalive_connections=0))
        self.manager.sup.attach(asyncio.get_running_loop(), self.http)
        try:
            yield
        finally:
            self.manager.sup.detach()
            await self.http.aclose()

    async def forward(self, m: ModelEntry, body: bytes, headers: dict[str, str],
                      generation: int) -> httpx.Response:
        """POST the request to Triton; a lost connection becomes the 5xx of a dead Triton."""
        try:
            return await self.http.post(f"{self.triton.url}/v2/models/{m.ns.entry}/infer",
                                        content=body, headers=headers)
        except httpx.TransportError as e:
            down = await self.manager.sup.after_error(generation, f"a request to {m.target}")
            if down is not None:
                raise down from None
            raise InternalFailure(f"Lost the connection to the model server during a request "
                                  f"to {m.target} ({type(e).__name__}); retry the request") from None

    def answer(self, exc: EndpointError) -> JSONResponse:
        """The error's response with every host path of the cache scrubbed from its text."""
        mgr = self.manager
        if mgr is not None:
            exc.message = mgr.public(exc.message)
            exc.extra = {k: mgr.public(v) if isinstance(v, str) else v
                         for k, v in exc.extra.items()}
        return exc.response()

    def serve_forever(self) -> None:
        self._prepare()
        try:
            self._server.run()
        finally:
            self.manager.sup.stopping = True
            self.triton.stop()

    def start(self, timeout: float = 90) -> LocalEndpoint:
        self._prepare()
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._server.run, name=f"mme-{self.cfg.name}",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"local endpoint {self.cfg.name} did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.manager is not None:
            self.manager.sup.stopping = True  # no restart from here on
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self.triton is not None:
            self.triton.stop()

    def __enter__(self) -> LocalEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------- process entry
def main(argv: list[str] | None = None) -> None:
    """``python -m infra.local_mme serve ...``: run an endpoint until SIGTERM/SIGINT.

    Writes ``--state-file`` (url, pid, Triton url) once serving, removes it on exit.
    """
    import argparse
    import signal

    p = argparse.ArgumentParser(prog="python -m infra.local_mme")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--name", required=True)
    s.add_argument("--model-data-url", required=True)
    s.add_argument("--cache-dir", required=True, type=Path)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--max-loaded-models", type=int, default=None)
    s.add_argument("--memory-limit-bytes", type=int, default=None)
    s.add_argument("--disk-cache-bytes", type=int, default=20 * 2**30)
    s.add_argument("--state-file", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    cfg = EndpointConfig(name=args.name, model_data_url=args.model_data_url,
                         cache_dir=args.cache_dir, host=args.host, port=args.port,
                         max_loaded_models=args.max_loaded_models,
                         memory_limit_bytes=args.memory_limit_bytes,
                         disk_cache_bytes=args.disk_cache_bytes,
                         triton_log=args.cache_dir.parent / "triton.log")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ep = LocalEndpoint(cfg).start()
    try:
        if args.state_file:
            from infra.store import atomic_path

            state = {"name": cfg.name, "url": ep.url, "pid": os.getpid(),
                     "model_data_url": cfg.model_data_url, "triton_url": ep.triton.url,
                     "cache_dir": str(cfg.cache_dir), "started_at": time.time()}
            with atomic_path(args.state_file) as tmp:
                tmp.write_text(json.dumps(state, indent=2))
        log.info("endpoint %s serving on %s (Triton %s)", cfg.name, ep.url, ep.triton.url)
        while not stop.wait(0.5):
            pass
    finally:
        ep.stop()
        if args.state_file:
            args.state_file.unlink(missing_ok=True)
        log.info("endpoint %s stopped", cfg.name)


if __name__ == "__main__":
    main()
