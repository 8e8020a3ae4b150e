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

The pieces: :mod:`infra.endpoint.app` (the HTTP front end), :mod:`infra.endpoint.models` (loading and
eviction), :mod:`infra.endpoint.supervisor` (Triton's life), :mod:`infra.endpoint.errors` (SageMaker's
error answers), :mod:`infra.endpoint.state` (settings and records); this module starts and stops
them together and is the ``python -m infra.endpoint.local_mme serve`` entry point.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import uvicorn

from infra.errors import UserError
from infra.endpoint.app import Admission, AdmissionHook, EndpointApp
from infra.endpoint.errors import (
    Answer,
    EndpointError,
    InsufficientMemory,
    InternalFailure,
    ModelError,
    ModelNotReady,
    ServiceUnavailable,
    ValidationError,
)
from infra.endpoint.models import ModelManager
from infra.endpoint.state import EndpointConfig, Metrics, ModelEntry
from infra.endpoint.supervisor import TritonSupervisor
from infra.processes.ownership import sweep_dead_owners
from infra.processes.procfs import ProcessIdentity
from infra.aws.runtime_client import BINARY_CT
from infra.endpoint.triton_http import TritonHTTP, UpstreamError, UpstreamResponse
from infra.triton.server import TritonPorts, TritonServer, check_port_free, free_port

__all__ = [
    "Admission", "BINARY_CT", "EndpointConfig", "EndpointError", "InsufficientMemory", "InternalFailure",
    "LocalEndpoint", "Metrics", "ModelEntry", "ModelError", "ModelManager", "ModelNotReady",
    "ServiceUnavailable", "TritonSupervisor", "ValidationError", "main",
]

log = logging.getLogger("mme.local")


def _uvicorn_impl() -> tuple[str, str]:
    """(loop, http) for uvicorn: uvloop and httptools when installed (they halve the front
    end's CPU per request against asyncio and h11)."""
    loop, http = "asyncio", "h11"
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        pass
    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        pass
    return loop, http


# ---------------------------------------------------------------------------------- lifecycle
class LocalEndpoint:
    """Triton + the SageMaker-runtime front end, started and stopped together.

    ``serve_forever()`` runs in the foreground (the ``mme endpoint serve`` command);
    ``start()``/``stop()`` (or ``with``) run it in a background thread for tests and the demo.

    ``before_restart(old_pid)``, if given, runs in a worker thread after a dead Triton was
    cleaned up and before it is started again (alerting; tests use it to hold the endpoint in
    its "down" state while they look at it).

    ``on_admission``, if given, is told each request's admission (an :class:`Admission`:
    warm or cold, when): the public hook for benches that run the endpoint in-process.
    """

    def __init__(self, cfg: EndpointConfig,
                 before_restart: Callable[[int | None], None] | None = None,
                 on_admission: AdmissionHook | None = None):
        self.cfg = cfg
        self.before_restart = before_restart
        self.on_admission = on_admission
        self._triton: TritonServer | None = None
        self._manager: ModelManager | None = None
        self._http: httpx.AsyncClient | None = None
        self._upstream: TritonHTTP | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.port}"

    def triton_ports(self) -> TritonPorts:
        """Triton's ports from the settings; a set port that is taken is refused here, naming
        the setting, before Triton starts (0: a free port, picked at each start)."""
        cfg = self.cfg
        for setting, port in (("triton_http_port", cfg.triton_http_port),
                              ("triton_grpc_port", cfg.triton_grpc_port),
                              ("triton_metrics_port", cfg.triton_metrics_port)):
            if port:
                check_port_free("127.0.0.1", port, what=setting)
        return TritonPorts(http=cfg.triton_http_port or None, grpc=cfg.triton_grpc_port,
                           metrics=cfg.triton_metrics_port)

    @property
    def triton(self) -> TritonServer:
        if self._triton is None:
            raise RuntimeError(f"endpoint {self.cfg.name} is not started")
        return self._triton

    @property
    def manager(self) -> ModelManager:
        if self._manager is None:
            raise RuntimeError(f"endpoint {self.cfg.name} is not started")
        return self._manager

    def _prepare(self) -> uvicorn.Server:
        cache = self.cfg.cache_dir
        (cache / "repo").mkdir(parents=True, exist_ok=True)
        # models extracted by an earlier run of this endpoint may be stale: start from the store
        for sub in ("repo", "work"):
            shutil.rmtree(cache / sub, ignore_errors=True)
        (cache / "repo").mkdir(parents=True)
        if self.cfg.port == 0:
            self.cfg.port = free_port(self.cfg.host)
        else:  # before Triton starts: a busy port is the user's one-line error, not a traceback
            check_port_free(self.cfg.host, self.cfg.port)
        # gRPC for Triton's repository calls (loads, unloads), HTTP for inference: see
        # infra.endpoint.triton_http for why that split lets inference connections stay alive
        self._triton = TritonServer(cache / "repo", log_path=self.cfg.triton_log,
                                    ports=self.triton_ports())
        self._triton.start()
        self._manager = ModelManager(self.cfg, self._triton, before_restart=self.before_restart)
        loop, http = _uvicorn_impl()
        config = uvicorn.Config(EndpointApp(self), host=self.cfg.host, port=self.cfg.port,
                                log_level="warning", access_log=False, lifespan="on",
                                loop=loop, http=http)
        self._server = uvicorn.Server(config)
        return self._server

    async def startup(self) -> None:
        """On the serving loop, before the first request: clients, and Triton's watcher."""
        # the liveness probe and other rare calls; inference goes through self._upstream
        self._http = httpx.AsyncClient(timeout=self.cfg.load_timeout_s)
        self.manager.sup.attach(asyncio.get_running_loop(), self._http)

    async def shutdown(self) -> None:
        self.manager.sup.detach()
        if self._upstream is not None:
            await self._upstream.aclose()
        if self._http is not None:
            await self._http.aclose()

    async def triton_metrics(self) -> tuple[int, bytes]:
        """(status, body) of Triton's own Prometheus metrics (``GET /metrics`` on its metrics
        port): what ``GET /triton/metrics`` on the endpoint passes through, so a scraper needs
        only the endpoint's address. 404 when the endpoint runs Triton without metrics."""
        port = self.triton.metrics_port
        if port is None or self._http is None:
            return 404, b"tritonserver runs without metrics (triton_metrics_port None)\n"
        try:
            r = await self._http.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0)
        except httpx.HTTPError as e:
            return 503, f"tritonserver's metrics are not answering: {type(e).__name__}\n".encode()
        return r.status_code, r.content

    def upstream(self) -> TritonHTTP:
        """The keep-alive connection pool to the current Triton (a restart may change its port)."""
        port = self.triton.http_port
        if port is None:
            raise UpstreamError("tritonserver has no HTTP port: it is not running")
        if self._upstream is None or self._upstream.port != port:
            old, self._upstream = self._upstream, TritonHTTP("127.0.0.1", port,
                                                             timeout=self.cfg.load_timeout_s)
            if old is not None:
                asyncio.get_running_loop().create_task(old.aclose())
        return self._upstream

    async def forward(self, m: ModelEntry, body: bytes, headers: dict[str, str],
                      generation: int) -> UpstreamResponse:
        """POST the request to Triton; a lost connection becomes the 5xx of a dead Triton."""
        try:
            return await self.upstream().post(f"/v2/models/{m.repo.entry}/infer", body, headers)
        except UpstreamError as e:
            down = await self.manager.sup.after_error(generation, f"a request to {m.target}")
            if down is not None:
                raise down from None
            raise InternalFailure(f"Lost the connection to the model server during a request "
                                  f"to {m.target} ({e}); retry the request") from None

    def answer(self, exc: EndpointError) -> Answer:
        """The error's answer with every host path of the cache scrubbed from its text."""
        mgr = self._manager
        if mgr is not None:
            exc.message = mgr.public(exc.message)
            exc.extra = {k: mgr.public(v) if isinstance(v, str) else v
                         for k, v in exc.extra.items()}
        return exc.answer()

    def serve_forever(self) -> None:
        server = self._prepare()
        try:
            server.run()
        finally:
            self.manager.sup.stopping = True
            self.triton.stop()

    def start(self, timeout: float = 90) -> LocalEndpoint:
        server = self._prepare()
        # (uvicorn installs signal handlers only on the main thread: the caller keeps them)
        self._thread = threading.Thread(target=server.run, name=f"mme-{self.cfg.name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"local endpoint {self.cfg.name} did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._manager is not None:
            self._manager.sup.stopping = True  # no restart from here on
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._triton is not None:
            self._triton.stop()

    def __enter__(self) -> LocalEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------- process entry
def main(argv: list[str] | None = None) -> None:
    """``python -m infra.endpoint.local_mme serve --settings FILE [--state-file FILE]``: run an endpoint
    until SIGTERM/SIGINT. ``FILE`` holds an :class:`EndpointConfig` as JSON (written by
    :func:`infra.endpoint.process.start_background`)."""
    import argparse

    from infra.endpoint.state import read_settings

    p = argparse.ArgumentParser(prog="python -m infra.endpoint.local_mme")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--settings", required=True, type=Path)
    s.add_argument("--state-file", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        serve(read_settings(args.settings), state_file=args.state_file)
    except UserError as e:  # one line in the log, and the exit code the launcher reports
        log.error("%s", e)
        raise SystemExit(2) from None


def configure_logging(cfg: EndpointConfig, level: int = logging.INFO) -> logging.Handler:
    """The endpoint process's logging: bounded, whatever the traffic.

    Per-request and per-Triton-call lines are DEBUG (a busy endpoint wrote 11 MB per 2,000
    requests at INFO); INFO and above are lifecycle events, warnings (thrash) and errors.
    httpx's one INFO line per HTTP call (the liveness probe) is silenced. With
    ``cfg.log_file`` the log rotates at ``log_max_bytes`` keeping ``log_backup_count`` old
    files, so it never takes more than (1 + backups) x max bytes; else it goes to stderr.
    """
    from logging.handlers import RotatingFileHandler

    handler: logging.Handler
    if cfg.log_file is not None:
        cfg.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(cfg.log_file, maxBytes=cfg.log_max_bytes,
                                      backupCount=cfg.log_backup_count)
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


def serve(cfg: EndpointConfig, *, state_file: Path | None = None) -> None:
    """Run the endpoint in this process until SIGTERM/SIGINT. Writes ``state_file`` (url,
    pid, Triton url) once serving and removes it on exit."""
    import signal

    configure_logging(cfg)
    sweep_dead_owners()  # what a killed earlier run (of any endpoint or build) left
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ep = LocalEndpoint(cfg).start()
    try:
        if state_file:
            from infra.store.objects import atomic_path

            state = {"name": cfg.name, "url": ep.url, "pid": os.getpid(),
                     "owner": ProcessIdentity.current().to_dict(),
                     "model_data_url": cfg.model_data_url, "triton_url": ep.triton.url,
                     "cache_dir": str(cfg.cache_dir), "started_at": time.time()}
            with atomic_path(state_file) as tmp:
                tmp.write_text(json.dumps(state, indent=2))
        log.info("endpoint %s serving on %s (Triton %s)", cfg.name, ep.url, ep.triton.url)
        while not stop.wait(0.5):
            pass
    finally:
        ep.stop()
        if state_file:
            state_file.unlink(missing_ok=True)
        log.info("endpoint %s stopped", cfg.name)


if __name__ == "__main__":
    main()
