"""Supervision of the local endpoint's tritonserver: detect its death, restart it, say so."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable

import httpx

from infra.endpoint.errors import EndpointError, InternalFailure, ServiceUnavailable
from infra.endpoint.reports import TritonState
from infra.endpoint.state import EndpointConfig, Metrics
from infra.triton.server import TritonNotFound, TritonServer, TritonStartError, describe_returncode

log = logging.getLogger("mme.local")


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
        self.state = TritonState.LIVE
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
            self.mark_down(self.generation, f"tritonserver exited with {describe_returncode(rc)}",
                           during=f"pid {pid}")

    @property
    def live(self) -> bool:
        return self.state == TritonState.LIVE

    def check(self) -> int:
        """Raise the 5xx answer unless Triton is live; else return its generation."""
        if self.state != TritonState.LIVE:
            raise self.down_error()
        return self.generation

    def down_error(self) -> EndpointError:
        if self.state == TritonState.FAILED:
            return InternalFailure(
                f"The model server (Triton) died more than {self.cfg.max_triton_restarts} times "
                f"within {self.cfg.triton_restart_window_s:.0f} s and the endpoint stopped "
                f"restarting it (last: {self.reason}). Restart the endpoint.")
        return ServiceUnavailable(
            f"The model server (Triton) is restarting: {self.reason}. Models load again on "
            f"their next request; retry the request.")

    def mark_down(self, generation: int, reason: str, during: str = "") -> None:
        """Declare this generation's server dead (idempotent) and start the one restart.

        ``reason`` is told to every caller until Triton is back, so it names no TargetModel
        and no path: one tenant's answer never names another's model. ``during`` (what was
        running when it was seen: "a request to <TargetModel>") goes to the log only.
        """
        if self.stopping or generation != self.generation or self.state != TritonState.LIVE:
            return
        log.error("Triton is down: %s%s; restarting it", reason, f" (seen during {during})" if during else "")
        self.state, self.reason = TritonState.RESTARTING, reason
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
        if generation == self.generation and self.state == TritonState.LIVE:
            if await self.probe():
                return None
            rc = self.triton.returncode
            how = "stopped answering" if rc is None else f"exited with {describe_returncode(rc)}"
            self.mark_down(generation, f"tritonserver {how}", during=what)
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
                    self.state = TritonState.FAILED
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
                self.state = TritonState.LIVE
                log.warning("Triton restarted as pid %s (restart %d)", self.triton.pid,
                            self.metrics.triton_restarts)
                return


