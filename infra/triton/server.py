"""Run a real Triton Inference Server (``tritonserver``) as a child process: the one class its
callers use.

:class:`TritonServer` is a small facade over two rooms: :class:`~infra.triton.process.TritonProcess`
(start, watch and stop the process, its ports, log, shared memory and stubs) and
:class:`~infra.triton.repository.TritonRepository` (load, unload and wait, readiness, the
index). Where the binary and its environment come from is :mod:`infra.triton.dist`. The names
callers import from here (errors, ports, helpers) are re-exported, so they need not know the rooms.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from infra.processes.procfs import ProcessIdentity
from infra.triton.dist import TritonDist, TritonNotFound, locate_triton, server_environment
from infra.triton.process import (
    PortInUse,
    TritonPorts,
    TritonProcess,
    TritonStartError,
    check_port_free,
    describe_returncode,
    free_port,
)
from infra.triton.repository import ModelIndexEntry, TritonModelError, TritonRepository

__all__ = [
    "ModelIndexEntry",
    "PortInUse",
    "TritonDist",
    "TritonModelError",
    "TritonNotFound",
    "TritonPorts",
    "TritonServer",
    "TritonStartError",
    "check_port_free",
    "describe_returncode",
    "free_port",
    "locate_triton",
    "server_environment",
]

#: HTTP on a free port, no gRPC, no metrics.
_DEFAULT_PORTS = TritonPorts()


class TritonServer:
    """One tritonserver: its process (:attr:`process`) and its model repository
    (:attr:`repository`), with the methods and attributes of both that callers use."""

    STOP_TIMEOUT = TritonProcess.STOP_TIMEOUT
    EXIT_TIMEOUT_SECS = TritonProcess.EXIT_TIMEOUT_SECS

    def __init__(self, model_repository: Path, *, ports: TritonPorts = _DEFAULT_PORTS,
                 model_control: str = "explicit", log_path: Path | None = None,
                 extra_env: dict[str, str] | None = None, extra_args: list[str] | None = None,
                 startup_timeout: float = 60, auto_complete_config: bool = False) -> None:
        self.process = TritonProcess(model_repository, ports=ports, model_control=model_control,
                                     log_path=log_path, extra_env=extra_env, extra_args=extra_args,
                                     startup_timeout=startup_timeout,
                                     auto_complete_config=auto_complete_config)
        self.repository = TritonRepository(self.process)
        self.process.close_clients = self.repository.close

    # ---------------------------------------------------------------- the process
    @property
    def model_repository(self) -> Path:
        return self.process.model_repository

    @property
    def log_path(self) -> Path | None:
        return self.process.log_path

    @property
    def url(self) -> str:
        """Base HTTP URL, e.g. ``http://127.0.0.1:8000`` (valid after :meth:`start`)."""
        return self.process.url

    @property
    def pid(self) -> int | None:
        """PID of tritonserver (also its process-group id), ``None`` before start."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def running(self) -> bool:
        return self.process.running

    @property
    def http_port(self) -> int | None:
        return self.process.http_port

    @property
    def grpc_port(self) -> int | None:
        return self.process.grpc_port

    @property
    def metrics_port(self) -> int | None:
        return self.process.metrics_port

    @property
    def server_id(self) -> str:
        return self.process.server_id

    @property
    def shm_prefix(self) -> str:
        return self.process.shm_prefix

    @property
    def startup_seconds(self) -> float | None:
        return self.process.startup_seconds

    @property
    def on_exit(self) -> Callable[[int, int], None] | None:
        """Called as ``on_exit(pid, returncode)`` when tritonserver exits unasked (a crash)."""
        return self.process.on_exit

    @on_exit.setter
    def on_exit(self, callback: Callable[[int, int], None] | None) -> None:
        self.process.on_exit = callback

    def log_text(self) -> str:
        return self.process.log_text()

    def start(self) -> TritonServer:
        """Launch tritonserver and block until it is live (:meth:`TritonProcess.start`)."""
        self.process.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL the group after ``timeout`` (:meth:`TritonProcess.stop`)."""
        self.process.stop(timeout)

    def kill_group(self) -> None:
        """SIGKILL the server and its stubs, remove its shm (:meth:`TritonProcess.kill_group`)."""
        self.process.kill_group()

    def stub_processes(self, names: list[str]) -> list[ProcessIdentity]:
        """This server's Python-backend stubs serving models ``names``."""
        return self.process.stubs(names)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---------------------------------------------------------------- the repository
    def load(self, name: str, timeout: float = 360) -> None:
        """Load (or reload) a model and its composing models (:meth:`TritonRepository.load`)."""
        self.repository.load(name, timeout)

    def unload(self, name: str, *, unload_dependents: bool = True, wait: bool = True, timeout: float = 120,
               nice: int = 0) -> None:
        """Unload a model and wait until it is really gone (:meth:`TritonRepository.unload`)."""
        self.repository.unload(name, unload_dependents=unload_dependents, wait=wait, timeout=timeout,
                               nice=nice)

    def is_ready(self, name: str) -> bool:
        return self.repository.is_ready(name)

    def model_family(self, name: str) -> list[str]:
        return self.repository.model_family(name)

    def repository_index(self) -> list[ModelIndexEntry]:
        """Triton's repository index, one typed row per model folder."""
        return self.repository.index()
