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
* it answers with SageMaker's error codes and reports SageMaker's MME metrics.

Adding a model is uploading it; removing one is deleting it; the endpoint is never redeployed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from infra.runtime_client import BINARY_CT, HEADER_SIZE
from infra.model_repo import ModelRepoError, NamespacedModel, namespace_for, namespace_repository
from infra.store import ObjectNotFound, StoreError, open_store
from infra.tarball import UnsafeArchive, safe_extract
from infra.triton_server import TritonModelError, TritonServer, free_port

log = logging.getLogger("mme.local")

TARGET_HEADER = "x-amzn-sagemaker-target-model"
OOM_MARKERS = ("out of memory", "oom", "no space left on device", "cannot allocate memory")


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


@dataclass
class ModelEntry:
    target: str
    state: str = "absent"  # absent | loading | loaded | failed
    ns: NamespacedModel | None = None
    disk_bytes: int = 0
    last_used: float = 0.0
    in_flight: int = 0
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


# ---------------------------------------------------------------------------------- models
class ModelManager:
    """Loads, tracks and evicts TargetModels on one Triton server."""

    def __init__(self, cfg: EndpointConfig, triton: TritonServer):
        self.cfg = cfg
        self.triton = triton
        self.store, self.prefix = open_store(cfg.model_data_url)
        self.repo_dir = cfg.cache_dir / "repo"
        self.work_dir = cfg.cache_dir / "work"
        self.models: dict[str, ModelEntry] = {}
        self.metrics = Metrics()
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
                except asyncio.TimeoutError:
                    raise ModelNotReady(
                        f"Model {target} is still loading after {self.cfg.ready_wait_s:.0f} s; "
                        f"retry the request") from None
        self.metrics.loading_wait_ms.append((time.perf_counter() - start) * 1000)
        m.in_flight += 1
        m.last_used = time.monotonic()
        return m

    def release(self, m: ModelEntry) -> None:
        m.in_flight = max(0, m.in_flight - 1)

    async def _load(self, m: ModelEntry) -> None:
        m.state = "loading"
        try:
            on_disk = m.ns is not None and all((self.repo_dir / n).exists() for n in m.ns.models)
            if not on_disk:  # else: unloaded earlier, its files stayed in the disk cache
                await asyncio.wait_for(asyncio.to_thread(self._download_and_prepare, m),
                                       self.cfg.load_timeout_s)
            await self._make_room(exclude=m.target)
            t0 = time.perf_counter()
            try:
                await asyncio.to_thread(self.triton.load, m.ns.entry, self.cfg.load_timeout_s)
            except TritonModelError as e:
                if any(k in str(e).lower() for k in OOM_MARKERS):
                    # what SageMaker does on a 507: unload idle models, then try once more
                    await self._make_room(exclude=m.target, force_one=True)
                    await asyncio.to_thread(self.triton.load, m.ns.entry, self.cfg.load_timeout_s)
                else:
                    raise
            self.metrics.loading_ms.append((time.perf_counter() - t0) * 1000)
            m.state = "loaded"
            m.last_used = time.monotonic()
            log.info("loaded %s as %s", m.target, m.ns.entry)
        except BaseException as e:
            m.state = "failed"
            await asyncio.to_thread(self._discard_files, m)
            if isinstance(e, EndpointError):
                raise
            if isinstance(e, ObjectNotFound):
                raise ValidationError(
                    f"Failed to download model data (model: {m.target}, url: "
                    f"{self.store.uri_for(self.key_for(m.target))}). Please ensure that there is "
                    f"an object located at the URL.") from None
            if isinstance(e, (UnsafeArchive, ModelRepoError)):
                raise ValidationError(f"Failed to load model {m.target}: {e}") from None
            if isinstance(e, TritonModelError):
                text = _unprefix(str(e), m)
                if any(k in text.lower() for k in OOM_MARKERS):
                    raise InsufficientMemory(f"Failed to load model {m.target}: {text}") from None
                raise ValidationError(f"Failed to load model {m.target}: {text}") from None
            if isinstance(e, asyncio.TimeoutError):
                raise ValidationError(f"Model {m.target} did not load within "
                                      f"{self.cfg.load_timeout_s:.0f} s") from None
            if isinstance(e, StoreError):
                raise ValidationError(f"Failed to download model {m.target}: {e}") from None
            raise

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
        if m.state == "loaded":
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
                 "in_flight": m.in_flight}
                for m in sorted(self.models.values(), key=lambda x: x.target)]


def _check_target(target: str) -> None:
    if not target or len(target) > 1024 or target.startswith("/") or ".." in target.split("/") \
            or "\\" in target or any(ord(c) < 32 for c in target):
        raise ValidationError(f"Invalid TargetModel {target!r}")


def _unprefix(text: str, m: ModelEntry) -> str:
    """Show the user's model names, not the cache-internal namespaced ones, in messages."""
    if m.ns is None:
        return text
    return text.replace(namespace_for(m.target) + "_", "")


# ---------------------------------------------------------------------------------- request bodies

def parse_request(content_type: str, body: bytes) -> tuple[dict[str, str], int | None]:
    """Check a request body and return the headers Triton needs to read it.

    Raises ValidationError (400) naming what is wrong, before anything reaches the model.
    """
    ct = (content_type or "").lower()
    if ct.startswith(BINARY_CT) or ct.startswith("application/octet-stream"):
        m = HEADER_SIZE.search(ct)
        if not m:
            raise ValidationError(f"Content-Type {content_type!r} needs json-header-size=N")
        size = int(m.group(1))
        if size > len(body):
            raise ValidationError(f"json-header-size={size} exceeds the body length {len(body)}")
        _check_json_header(body[:size])
        return {"Inference-Header-Content-Length": str(size),
                "Content-Type": "application/octet-stream"}, size
    if ct.startswith("application/json") or ct.startswith("application/vnd.sagemaker-triton.json") or not ct:
        _check_json_header(body)
        return {"Content-Type": "application/json"}, None
    raise ValidationError(f"Unsupported Content-Type {content_type!r}: use application/json or "
                          f"{BINARY_CT};json-header-size=N")


def _check_json_header(raw: bytes) -> None:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValidationError(f"Request body is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise ValidationError("Request JSON must be an object with a non-empty \"inputs\" list")
    for i, t in enumerate(doc["inputs"]):
        if not isinstance(t, dict) or not all(k in t for k in ("name", "shape", "datatype")):
            raise ValidationError(f"inputs[{i}] must have \"name\", \"shape\" and \"datatype\"")


# ---------------------------------------------------------------------------------- HTTP app
def create_app(endpoint: "LocalEndpoint", lifespan=None) -> FastAPI:
    app = FastAPI(title=f"local MME {endpoint.cfg.name}", docs_url=None, redoc_url=None,
                  lifespan=lifespan)

    @app.exception_handler(EndpointError)
    async def _endpoint_error(_req: Request, exc: EndpointError) -> JSONResponse:
        return exc.response()

    @app.get("/ping")
    async def ping() -> Response:
        return Response(status_code=200)

    @app.post("/endpoints/{name}/invocations")
    async def invoke(name: str, request: Request) -> Response:
        if name != endpoint.cfg.name:
            raise ValidationError(f"Endpoint {name} not found.")
        target = request.headers.get(TARGET_HEADER)
        if not target:
            raise ValidationError("This is a multi-model endpoint: the request needs a "
                                  "TargetModel (header X-Amzn-SageMaker-Target-Model)")
        body = await request.body()
        headers, _ = parse_request(request.headers.get("content-type", ""), body)
        mgr = endpoint.manager
        mgr.metrics.invocations += 1
        m = await mgr.acquire(target)
        try:
            r = await endpoint.http.post(f"/v2/models/{m.ns.entry}/infer", content=body,
                                         headers=headers)
        finally:
            mgr.release(m)
        if r.status_code != 200:
            text = _unprefix(_triton_error(r), m)
            kind = "client" if r.status_code < 500 else "server"
            raise ModelError(
                f"Received {kind} error ({r.status_code}) from primary with message \"{text}\".",
                OriginalStatusCode=r.status_code, OriginalMessage=text)
        out_headers = {"X-Amzn-Invoked-Production-Variant": "AllTraffic"}
        size = r.headers.get("inference-header-content-length")
        ct = f"{BINARY_CT};json-header-size={size}" if size is not None else "application/json"
        return Response(content=r.content, media_type=ct, headers=out_headers)

    @app.get("/models")
    async def list_models() -> JSONResponse:
        return JSONResponse({"endpoint": endpoint.cfg.name, "models": endpoint.manager.describe()})

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


def _triton_error(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", r.text))
    except ValueError:
        return r.text


# ---------------------------------------------------------------------------------- lifecycle
class LocalEndpoint:
    """Triton + the SageMaker-runtime front end, started and stopped together.

    ``serve_forever()`` runs in the foreground (the ``mme endpoint serve`` command);
    ``start()``/``stop()`` (or ``with``) run it in a background thread for tests and the demo.
    """

    def __init__(self, cfg: EndpointConfig):
        self.cfg = cfg
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
        self.manager = ModelManager(self.cfg, self.triton)
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
        self.http = httpx.AsyncClient(base_url=self.triton.url, timeout=self.cfg.load_timeout_s,
                                      limits=httpx.Limits(max_keepalive_connections=0))
        try:
            yield
        finally:
            await self.http.aclose()

    def serve_forever(self) -> None:
        self._prepare()
        try:
            self._server.run()
        finally:
            self.triton.stop()

    def start(self, timeout: float = 90) -> "LocalEndpoint":
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
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self.triton is not None:
            self.triton.stop()

    def __enter__(self) -> "LocalEndpoint":
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
