"""The tritonserver process: start it, watch it, stop it for sure (its Python stubs and shared
memory with it).

Process hygiene: a tritonserver left running holds ports, CPU and ``/dev/shm`` segments, so
:class:`TritonProcess` starts it in its own process group, asks the kernel to SIGKILL it when
the parent dies (``PR_SET_PDEATHSIG``), registers an ``atexit`` stop, claims it in this
process's ownership ledger (so the warden kills it if we die without stopping it), and on
:meth:`TritonProcess.stop` escalates SIGTERM -> SIGKILL for the whole group.
``PR_SET_PDEATHSIG`` is tied to the *thread* that forked, so servers are always forked from
the main thread or from a dedicated daemon thread (see :class:`_Spawner`).

What runs *in* the server (loading, unloading, readiness) is
:class:`infra.triton.repository.TritonRepository`'s business; this module only knows the
process, its ports, its log and which of its children are Python-backend stubs.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar, cast

import httpx

from infra.errors import TransientError, UserError
from infra.processes.leftovers import kill_groups
from infra.processes.ownership import Claim, owner
from infra.processes.procfs import ProcessIdentity, argv, children, live_group_members
from infra.triton.dist import TritonDist, locate_triton, server_environment

__all__ = ["PortInUse", "TritonPorts", "TritonProcess", "TritonStartError", "check_port_free",
           "describe_returncode", "free_port", "python_stubs"]

LOGGER = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_LOG_TAIL_CHARS = 4000
_LAUNCH_MARKER = "\n=== tritonserver launch: "
#: Threads the Python backend gives each model instance for BLS calls and decoupled responses
#: (its ``thread-pool-size``; Triton's default is 32). No model of this project makes either.
PYTHON_THREAD_POOL_SIZE = 1


class TritonStartError(TransientError, RuntimeError):
    """tritonserver did not come up; the message carries the tail of its log."""


# --------------------------------------------------------------------------- #
# Process spawning (PDEATHSIG is per *thread*)
# --------------------------------------------------------------------------- #

_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL | None:
    """Load libc before forking: loading it inside ``preexec_fn`` (post-fork) may deadlock."""
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _make_preexec(parent_pid: int) -> Callable[[], None] | None:
    libc = _load_libc()
    if libc is None:
        return None

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # parent died between fork and prctl
            os._exit(1)

    return preexec


_T = TypeVar("_T")
#: A call handed to the spawner thread, and where its (ok, value-or-exception) goes.
_Job = tuple[Callable[[], object], "queue.Queue[tuple[bool, object]]"]


class _Spawner:
    """A daemon thread that outlives callers' threads and forks on their behalf.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits,
    not the process.  A server started from a worker thread (Prefect's
    ``ThreadPoolTaskRunner``, a ``ThreadPoolExecutor``) would be SIGKILLed
    as soon as that worker finishes.  Forking from the main thread or from
    this long-lived daemon thread ties the server to the process instead.
    """

    _lock = threading.Lock()
    _queue: queue.Queue[_Job] | None = None

    @classmethod
    def call(cls, fn: Callable[[], _T]) -> _T:
        if threading.current_thread() is threading.main_thread():
            return fn()
        with cls._lock:
            if cls._queue is None:
                cls._queue = queue.Queue()
                threading.Thread(target=cls._run, args=(cls._queue,), name="tritonserver-spawner", daemon=True).start()
        reply: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=1)
        cls._queue.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            assert isinstance(value, BaseException)
            raise value
        return cast(_T, value)

    @staticmethod
    def _run(q: queue.Queue[_Job]) -> None:
        while True:
            fn, reply = q.get()
            try:
                reply.put((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                reply.put((False, exc))


_TEMP_LOGS: set[Path] = set()


@atexit.register
def _remove_temp_logs() -> None:
    """Delete default (temp-file) server logs at exit; registered first, so it runs after every stop()."""
    for path in _TEMP_LOGS:
        try:
            path.unlink()
        except OSError:
            pass


def describe_returncode(rc: int) -> str:
    """``-9`` -> ``"signal 9 (SIGKILL)"``, ``134`` -> ``"exit code 134"``: for log lines and answers."""
    if rc < 0:
        try:
            return f"signal {-rc} ({signal.Signals(-rc).name})"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


def _wait_group_dead(pgid: int, timeout: float) -> list[int]:
    """Poll until no live process is left in group ``pgid``; return those left at the timeout."""
    deadline = time.monotonic() + timeout
    while (left := live_group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PortInUse(UserError, RuntimeError):
    pass


def check_port_free(host: str, port: int, what: str = "--port") -> None:
    """Raise :class:`PortInUse` (naming host, port and the setting ``what`` that asked for it)
    unless ``host:port`` can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as e:
            raise PortInUse(f"cannot serve on {host}:{port}: {e.strerror or e} "
                            f"(pick another {what}, or 0 for a free one)") from None


# --------------------------------------------------------------------------- #
# The server
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class TritonPorts:
    """The ports a :class:`TritonServer` asks for. ``http=None`` (or 0) picks a free port on
    127.0.0.1; gRPC and metrics are *disabled* when ``None`` (we only speak HTTP, and every
    open port is one more thing that can collide); ``0`` picks a free port for them."""

    http: int | None = None
    grpc: int | None = None
    metrics: int | None = None


def python_stubs(pid: int | None, names: Iterable[str]) -> list[ProcessIdentity]:
    """The Python-backend stubs of tritonserver ``pid`` that serve models ``names``.

    A stub is a child of tritonserver whose first argument is
    ``<repository>/<model>/<version>/model.py``. One pass over ``/proc`` (its cost follows the
    processes running, not the models cached on disk); each is named by its identity, so a
    reused pid is never taken for the stub that exited.
    """
    wanted = set(names)
    if pid is None or not wanted:
        return []
    found = []
    for child in children(pid):
        args = argv(child.pid)
        if len(args) > 1 and Path(args[1]).parent.parent.name in wanted:
            found.append(child)
    return found


class TritonProcess:
    """Own one tritonserver process: start it, watch it, stop it (and its group) for sure.

    Ports (:class:`TritonPorts`): ``http=None`` (or 0) picks a free port on 127.0.0.1; gRPC
    and metrics are *disabled* when ``None``, ``0`` picks a free port.  It binds 127.0.0.1
    only: its model-control API is unauthenticated.  ``auto_complete_config`` is off by
    default: with it on, Triton starts a throw-away Python stub per Python model to ask for
    config additions (every load ~1.3 s instead of ~0.15 s); our ``config.pbtxt`` files are
    complete, and one that is not is better caught here than on the endpoint.
    """

    #: Seconds :meth:`stop` waits after SIGTERM before SIGKILLing the group.
    STOP_TIMEOUT = 15.0
    #: Passed as ``--exit-timeout-secs`` (Triton's default is 30): on SIGTERM Triton waits this
    #: long for open HTTP connections and in-flight requests.  Any client holding a keep-alive
    #: connection (``tritonclient.http`` does) makes *every* stop last this long, so keep it
    #: short and below STOP_TIMEOUT, so that a graceful exit finishes before we escalate.
    EXIT_TIMEOUT_SECS = 3
    _PORT_RETRIES = 3
    #: How a port left at 0 is chosen (the OS picks a free one). An instance may be given its
    #: own (a test hands out a port another server holds, to check the collision is retried).
    port_picker: Callable[[], int] = staticmethod(free_port)

    def __init__(self, model_repository: Path, *, ports: TritonPorts = TritonPorts(),
                 model_control: str = "explicit", log_path: Path | None = None,
                 extra_env: dict[str, str] | None = None, extra_args: list[str] | None = None,
                 startup_timeout: float = 60, auto_complete_config: bool = False) -> None:
        if model_control not in ("explicit", "none", "poll"):
            raise ValueError(f"model_control must be explicit, none or poll, not {model_control!r}")
        # Absolute: Triton hands model paths on to the stubs, and the server runs with its own cwd.
        self.model_repository = Path(model_repository).expanduser().resolve()
        self.requested_ports = ports
        self.model_control = model_control
        #: Where stdout+stderr of tritonserver and its stubs go; default: a temp file
        #: chosen at start() and deleted when this interpreter exits.
        self.log_path: Path | None = Path(log_path) if log_path is not None else None
        self.extra_env = dict(extra_env or {})
        self.extra_args = list(extra_args or [])
        self.startup_timeout = startup_timeout
        self.auto_complete_config = auto_complete_config
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        #: Called as ``on_exit(pid, returncode)`` from a watcher thread when tritonserver exits
        #: without :meth:`stop`/:meth:`kill_group` asking it to (a crash, an OOM kill, SIGKILL
        #: from outside). The watcher also reaps the process at once, so a crash never leaves
        #: a zombie behind, whoever owns the server.
        self.on_exit: Callable[[int, int], None] | None = None
        #: Closes the clients that talk to this server (the repository's): called before a
        #: stop, since our own keep-alive connection would delay Triton's exit.
        self.close_clients: Callable[[], None] = lambda: None
        self._expected_exits: set[int] = set()  # pids that stop()/kill_group() ended
        self._shm_prefix = ""
        self._claim: Claim | None = None  # this launch's entry in the ownership ledger
        self.server_id = ""
        self._new_identity()
        self.startup_seconds: float | None = None

    def _new_identity(self) -> None:
        """A fresh token per launch: shm prefix and server id never outlive one process.

        The shm prefix lets :meth:`kill_group` remove exactly this launch's ``/dev/shm``
        segments; a restarted server gets a new one, so segments a dying stub of the old
        process may still hold are never confused with the new server's.  The id is reported
        as ``name`` by ``GET /v2``: it proves the process answering on our port is ours (with
        a port collision, another server may answer ``/v2/health/live`` first).
        """
        token = uuid.uuid4().hex[:12]
        self._shm_prefix = f"mme_{token}_"
        self.server_id = f"triton-mme-{token}"

    @property
    def shm_prefix(self) -> str:
        """Prefix of the ``/dev/shm`` segments of the current launch (its Python stubs')."""
        return self._shm_prefix

    @property
    def url(self) -> str:
        """Base HTTP URL, e.g. ``http://127.0.0.1:8000`` (valid after :meth:`start`)."""
        if self.http_port is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int | None:
        """PID of tritonserver (also its process-group id), ``None`` before start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the current launch once it has been reaped (negative: the signal)."""
        return self._proc.returncode if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the tritonserver process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Everything tritonserver (and its Python stubs) wrote to stdout/stderr so far."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """End of the log of the latest launch, minus the ``--help`` dump (:func:`launch_tail`)."""
        return launch_tail(self.log_text(), chars)

    def not_running(self) -> RuntimeError:
        """The error a call to a server that is not running raises (with the log's tail)."""
        return RuntimeError(f"tritonserver is not running (log: {self.log_path})\n{self.log_tail()}")

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> TritonProcess:
        """Launch tritonserver and block until ``/v2/health/live`` answers.

        Raises :class:`TritonStartError` (with the log tail) if the process
        exits or does not become live within ``startup_timeout``.  Free ports
        are picked by binding port 0, which is racy; if the server then loses
        the race ("already in use") it is retried with new ports.
        """
        if self.running:
            return self
        if self._proc is not None:  # a restart: clean up after the previous launch first
            self.kill_group()
            self._new_identity()
        if not self.model_repository.is_dir():
            raise TritonStartError(f"model repository {self.model_repository} is not a directory")
        dist = locate_triton()
        env = server_environment(dist, self.extra_env)
        if self.log_path is None:  # under $MME_HOME: swept with this process's run folder
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log", dir=owner().scratch_root())
            os.close(fd)
            self.log_path = Path(name)
            _TEMP_LOGS.add(self.log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

        req = self.requested_ports
        attempts = self._PORT_RETRIES if (not req.http or req.grpc == 0 or req.metrics == 0) else 1
        t0 = time.monotonic()
        for attempt in range(1, attempts + 1):
            self._pick_ports()
            try:
                self._launch(dist, env)
                self._wait_live(t0)
                break
            except TritonStartError:
                in_use = "already in use" in self.log_tail().lower()
                self.kill_group()
                if not (in_use and attempt < attempts):
                    raise
                LOGGER.warning("tritonserver port collision, retrying with other ports")
        self.startup_seconds = time.monotonic() - t0
        assert self._proc is not None
        _watch(self, self._proc)
        atexit.register(self.stop)
        LOGGER.info("tritonserver pid %s live at %s in %.2fs", self.pid, self.url, self.startup_seconds)
        return self

    def _pick_ports(self) -> None:
        """The ports of this launch: each asked-for one, and for each left at 0 a free port
        distinct from the others. The OS may hand the same free port to two ``bind(0)`` calls
        in a row (each socket is closed before the next), and Triton then refuses to start
        ("cannot listen to HTTP requests and metrics requests at the same address and port";
        seen in a `mme demo` run)."""
        req = self.requested_ports
        taken = {p for p in (req.http, req.grpc, req.metrics) if p}

        def fresh() -> int:
            for _ in range(100):
                port = self.port_picker()
                if port not in taken:
                    taken.add(port)
                    return port
            raise TritonStartError(f"no free port distinct from {sorted(taken)} after 100 tries")

        self.http_port = req.http or fresh()
        self.grpc_port = None if req.grpc is None else (req.grpc or fresh())
        self.metrics_port = None if req.metrics is None else (req.metrics or fresh())

    def _launch(self, dist: TritonDist, env: dict[str, str]) -> None:
        assert self.log_path is not None
        cmd = server_command(dist, self)
        with open(self.log_path, "ab") as log:
            log.write(f"{_LAUNCH_MARKER}{' '.join(cmd)}\n".encode())
            log.flush()
            preexec = _make_preexec(os.getpid())
            self._proc = _Spawner.call(lambda: subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=str(self.model_repository),
                start_new_session=True,  # own process group: stop() kills stubs too
                preexec_fn=preexec, close_fds=True))
        # Into this process's ledger: if we die without stopping it, the warden kills the server
        # (pid + start time) and its stubs (its group, carrying this launch's token in their
        # command lines) and removes its shm segments.
        ident = ProcessIdentity.of(self._proc.pid)
        self._claim = owner().claim(processes=[ident] if ident else [],
                                    groups=[(self._proc.pid, self._shm_prefix)],
                                    shm=[self._shm_prefix], what=f"tritonserver {self.server_id}")

    def _wait_live(self, t0: float) -> None:
        """Until ``/v2`` answers with this launch's id (our server, not another on the port)."""
        assert self._proc is not None
        deadline = t0 + self.startup_timeout
        with httpx.Client(base_url=self.url, trust_env=False, timeout=10.0) as client:
            while True:
                rc = self._proc.poll()
                if rc is not None:
                    raise TritonStartError(f"tritonserver exited with code {rc} during startup "
                                           f"(log: {self.log_path})\n{self.log_tail()}")
                try:
                    if client.get("/v2/health/live", timeout=1.0).status_code == 200:
                        meta = client.get("/v2", timeout=1.0)
                        if meta.status_code == 200 and meta.json().get("name") == self.server_id:
                            return
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise TritonStartError(f"tritonserver not live after {self.startup_timeout:.0f}s "
                                           f"(log: {self.log_path})\n{self.log_tail()}")
                time.sleep(0.05)

    def kill_group(self) -> None:
        """SIGKILL the process group (server and stubs), reap it and remove its shm segments.

        Safe on a server that already died: it then removes what the dead server left
        (orphaned stubs still in its group, ``/dev/shm`` segments with its prefix).
        """
        proc = self._proc
        if proc is None:
            return
        self._expected_exits.add(proc.pid)
        reused = proc.returncode is not None and Path(f"/proc/{proc.pid}").exists()
        if reused:  # reaped, and its pid already reused: the group id may be someone else's;
            # kill only its members that carry this launch's token (the warden's own rule)
            kill_groups([{"pgid": proc.pid, "token": self._shm_prefix}])
        else:  # alive, a zombie, or its pid still free: the group can only be ours
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            LOGGER.error("tritonserver pid %s survived SIGKILL", proc.pid)
        # SIGKILL is delivered asynchronously: wait until the stubs are really gone (zombies
        # awaiting their reaper at most), so that "killed" means "no process left running".
        left = [] if reused else _wait_group_dead(proc.pid, timeout=5)
        if left:  # pragma: no cover - a process in uninterruptible sleep
            LOGGER.error("processes %s of tritonserver's group %s survived SIGKILL", left, proc.pid)
        self.close_clients()
        _remove_shm(self._shm_prefix)
        if self._claim is not None:
            owner().release(self._claim)
            self._claim = None

    def stop(self, timeout: float | None = None) -> None:
        """Stop the server: SIGTERM, wait ``timeout`` (default 15 s), then SIGKILL the group.

        Idempotent; also registered with ``atexit`` while the server runs.
        """
        atexit.unregister(self.stop)
        proc = self._proc
        if proc is None:
            return
        timeout = self.STOP_TIMEOUT if timeout is None else timeout
        self._expected_exits.add(proc.pid)
        self.close_clients()  # our own keep-alive connection would delay Triton's exit
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                LOGGER.warning("tritonserver pid %s ignored SIGTERM for %.0fs; killing", proc.pid, timeout)
            except ProcessLookupError:
                pass
        # Also reaps stubs that outlived a crashed server, and removes its shm segments.
        self.kill_group()

    def expected_exit(self, pid: int) -> bool:
        """True when :meth:`stop` or :meth:`kill_group` ended launch ``pid`` (not a crash)."""
        return pid in self._expected_exits

    def stubs(self, names: Iterable[str]) -> list[ProcessIdentity]:
        """This server's Python-backend stubs serving models ``names`` (:func:`python_stubs`)."""
        return python_stubs(self.pid, names)

    def __enter__(self) -> TritonProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; stop() is the real API
        try:
            proc = getattr(self, "_proc", None)
            if proc is not None and proc.poll() is None:
                self.kill_group()
        except Exception:  # noqa: BLE001
            pass


def _watch(server: TritonProcess, proc: subprocess.Popen[bytes]) -> None:
    """Reap ``proc`` the moment it exits and report an unexpected exit to ``server.on_exit``.

    A blocking ``wait()`` in a daemon thread, not polling: the exit is seen at once, and
    the process never lingers as a zombie while nobody happens to call ``poll()``.
    """

    def wait() -> None:
        rc = proc.wait()
        if server.expected_exit(proc.pid):
            return
        LOGGER.error("tritonserver pid %s exited unexpectedly with %s (log: %s)",
                     proc.pid, describe_returncode(rc), server.log_path)
        callback = server.on_exit
        if callback is not None:
            try:
                callback(proc.pid, rc)
            except Exception:  # a watcher must never die silently
                LOGGER.exception("on_exit callback failed for tritonserver pid %s", proc.pid)

    threading.Thread(target=wait, name=f"tritonserver-{proc.pid}-watch", daemon=True).start()


def launch_tail(text: str, chars: int = _LOG_TAIL_CHARS) -> str:
    """The end of a server log's latest launch, minus the ``--help`` dump.

    A bad flag makes tritonserver print one error line followed by a
    ~20 kB usage text; a plain tail would show only the usage text.
    """
    marker = text.rfind(_LAUNCH_MARKER)
    if marker >= 0:  # skip older launches and the command line itself
        eol = text.find("\n", marker + len(_LAUNCH_MARKER))
        text = text[eol + 1 :] if eol >= 0 else ""
    usage = text.find("\nUsage:")
    if usage >= 0:
        text = text[:usage] + "\n[... usage text cut ...]"
    return text[-chars:] if len(text) > chars else text


def server_command(dist: TritonDist, server: TritonProcess) -> list[str]:
    """tritonserver's command line for ``server``'s settings and the ports it picked."""
    cmd = [
        str(dist.server_bin),
        f"--id={server.server_id}",
        f"--model-repository={server.model_repository}",
        f"--backend-directory={dist.backends_dir}",
        f"--model-control-mode={server.model_control}",
        # a model that fails to load must not take the whole server down
        "--exit-on-error=false",
        # readiness = server readiness; per-model state is queried explicitly
        "--strict-readiness=false",
        f"--exit-timeout-secs={server.EXIT_TIMEOUT_SECS}",
        "--allow-http=true",
        "--http-address=127.0.0.1",
        f"--http-port={server.http_port}",
        f"--backend-config=python,shm-region-prefix-name={server.shm_prefix}",
        # the Python backend starts this many threads in tritonserver per model instance (32 by
        # default) and uses them only for BLS calls and decoupled responses, which no model here
        # makes: one each (issue 19: 62 fewer threads per two-stub variant)
        f"--backend-config=python,thread-pool-size={PYTHON_THREAD_POOL_SIZE}",
    ]
    if not server.auto_complete_config:
        cmd.append("--disable-auto-complete-config")
    if server.grpc_port is None:
        cmd.append("--allow-grpc=false")
    else:
        cmd += ["--allow-grpc=true", "--grpc-address=127.0.0.1", f"--grpc-port={server.grpc_port}"]
    if server.metrics_port is None:
        cmd.append("--allow-metrics=false")
    else:
        cmd += ["--allow-metrics=true", "--metrics-address=127.0.0.1", f"--metrics-port={server.metrics_port}"]
    return cmd + server.extra_args


def _remove_shm(prefix: str) -> None:
    """Remove the ``/dev/shm`` segments whose names start with ``prefix`` (one launch's)."""
    shm = Path("/dev/shm")
    if prefix and shm.is_dir():
        for seg in shm.glob(f"{prefix}*"):
            try:
                seg.unlink()
            except OSError:
                pass
