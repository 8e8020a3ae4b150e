"""Run a real Triton Inference Server (``tritonserver``) as a child process.

Why this module exists
----------------------
The local endpoint and the tests need a *real* Triton, not a mock: ensembles,
explicit model control and the Python backend behave in ways a fake cannot
reproduce.  The ``nvidia-pytriton`` wheel ships a complete CPU-capable
``tritonserver`` (2.51) plus the Python backend, so no container is needed.
Using it directly (instead of through PyTriton's own ``Triton`` class) keeps
us in control of the model repository, the flags and the process lifetime.

Three things about the wheel are not obvious and are handled here:

* The Python backend expects ``triton_python_backend_stub`` inside
  ``<backend-dir>/python/``, but the wheel keeps one stub per Python version
  under ``python_backend_stubs/<major.minor>/``.  :func:`locate_triton`
  assembles a proper backend directory once, in a cache folder.
* The binaries find their shared libraries through an ``$ORIGIN``-relative
  RPATH that breaks as soon as a file is copied, so ``LD_LIBRARY_PATH`` must
  name the wheel's ``nvidia_pytriton.libs`` folder.
* The stub embeds CPython with ``PyConfig_InitIsolatedConfig``: it ignores
  ``PYTHONPATH``/``PYTHONHOME``.  It finds its ``sys.prefix`` by searching
  ``PATH`` for ``python3`` (and honours a ``pyvenv.cfg`` beside it) and it
  links ``libpython3.X.so.1.0`` dynamically.  So to make ``model.py`` files
  run with *this* virtualenv (numpy, onnxruntime, transformers ...), the
  server gets the running interpreter's ``bin`` first on ``PATH`` and its
  ``libpython`` folder on ``LD_LIBRARY_PATH``.  ``PYTHONPATH`` is set as well
  (for non-isolated stubs given through ``MME_TRITONSERVER`` and for any
  Python subprocess a model spawns), but it is not what makes this work.

Process hygiene: a tritonserver left running holds ports, CPU and
``/dev/shm`` segments, so :class:`TritonServer` starts it in its own process
group, asks the kernel to SIGKILL it when the parent dies
(``PR_SET_PDEATHSIG``), registers an ``atexit`` stop, and on :meth:`stop`
escalates SIGTERM -> SIGKILL for the whole group.  ``PR_SET_PDEATHSIG`` is
tied to the *thread* that forked, so servers are always forked from the main
thread or from a dedicated daemon thread (see :class:`_Spawner`).
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from infra.errors import MMEError, TransientError, UserError
from infra.processes.leftovers import kill_groups
from infra.processes.ownership import Claim, owner
from infra.processes.procfs import ProcessIdentity, live_group_members, proc_stats, stat_fields
from infra.store.objects import atomic_dir

__all__ = [
    "TritonDist",
    "TritonModelError",
    "TritonNotFound",
    "TritonServer",
    "TritonStartError",
    "locate_triton",
]

LOGGER = logging.getLogger(__name__)

#: Env var: path of another ``tritonserver`` binary to use instead of the wheel's.
ENV_TRITONSERVER = "MME_TRITONSERVER"
#: Env var: backend directory to use together with ``MME_TRITONSERVER``.
ENV_TRITON_BACKENDS = "MME_TRITON_BACKENDS"
#: Env var: base folder for prepared backend directories (default ``~/.cache/triton-mme``).
ENV_CACHE_DIR = "MME_CACHE_DIR"

_STUB_NAME = "triton_python_backend_stub"
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_LOG_TAIL_CHARS = 4000
_LAUNCH_MARKER = "\n=== tritonserver launch: "


class TritonNotFound(MMEError, RuntimeError):
    """The tritonserver binary, its libraries or the Python backend stub are missing."""


class TritonStartError(TransientError, RuntimeError):
    """tritonserver did not come up; the message carries the tail of its log."""


class TritonModelError(MMEError, RuntimeError):
    """Triton refused to load (or unload) a model; carries the model name and server message."""

    def __init__(self, model: str, message: str) -> None:
        self.model = model
        self.message = message
        super().__init__(f"model {model!r}: {message}")


# --------------------------------------------------------------------------- #
# Locating the distribution
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class TritonDist:
    """Everything needed to exec a tritonserver.

    ``lib_dirs`` go on ``LD_LIBRARY_PATH`` because the wheel's RPATHs are
    relative to the wheel layout and do not survive copying files elsewhere.
    """

    server_bin: Path
    backends_dir: Path
    lib_dirs: list[Path]


def _py_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _cache_root() -> Path:
    override = os.environ.get(ENV_CACHE_DIR)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "triton-mme"


def _wheel_tritonserver_dir() -> Path:
    """Return ``<site-packages>/pytriton/tritonserver`` without importing pytriton.

    ``find_spec`` on a top-level package does not execute its ``__init__``,
    which keeps this cheap and free of pytriton's import-time side effects.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFound(
            "the 'pytriton' package (PyPI: nvidia-pytriton) is not installed in this "
            f"interpreter ({sys.executable}); it provides the tritonserver binary. "
            f"Install nvidia-pytriton or set {ENV_TRITONSERVER}/{ENV_TRITON_BACKENDS}."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def _prepare_backends(ts_dir: Path) -> Path:
    """Build (once) a backend dir whose ``python/`` holds the backend and the right stub.

    The directory name hashes the source files' identity, so a reinstalled or
    upgraded wheel, or another Python version, gets a fresh directory instead
    of silently reusing stale binaries.  It is assembled in a temporary
    sibling and renamed into place, so concurrent callers never see a
    half-copied backend.
    """
    src_python = ts_dir / "backends" / "python"
    stub = ts_dir / "python_backend_stubs" / _py_version() / _STUB_NAME
    if not (src_python / "libtriton_python.so").is_file():
        raise TritonNotFound(f"python backend library not found: {src_python / 'libtriton_python.so'}")
    if not stub.is_file():
        available = sorted(p.name for p in (ts_dir / "python_backend_stubs").glob("*") if p.is_dir())
        raise TritonNotFound(
            f"no {_STUB_NAME} for Python {_py_version()} in the pytriton wheel "
            f"(looked for {stub}; available: {', '.join(available) or 'none'})"
        )

    sources = [stub, *sorted(p for p in src_python.iterdir() if p.is_file())]
    try:
        wheel_version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        wheel_version = "unknown"
    h = hashlib.sha256(f"{ts_dir.resolve()}|{wheel_version}|{_py_version()}".encode())
    for src in sources:
        st = src.stat()
        h.update(f"|{src.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    target = _cache_root() / f"backends-{h.hexdigest()[:16]}"

    expected = {p.name for p in sources}
    if (target / "python").is_dir() and expected <= {p.name for p in (target / "python").iterdir()}:
        return target

    # "keep": another process that prepared the same (content-addressed) folder first wins
    with atomic_dir(target, if_exists="keep") as tmp:
        (tmp / "python").mkdir()
        for src in sources:  # copy2 keeps the stub's exec bit
            shutil.copy2(src, tmp / "python" / src.name)
    if not (target / "python" / _STUB_NAME).is_file():
        raise FileExistsError(f"{target} exists without {_STUB_NAME}: not a lost race with "
                              f"another process; remove it to prepare it again")
    LOGGER.debug("prepared triton backends dir %s", target)
    return target


def locate_triton() -> TritonDist:
    """Find tritonserver and a ready backend directory.

    By default everything comes from the ``nvidia-pytriton`` wheel of the
    running interpreter.  ``MME_TRITONSERVER`` selects another binary (e.g.
    ``/opt/tritonserver/bin/tritonserver`` in an NGC container); its backend
    directory then comes from ``MME_TRITON_BACKENDS``, and no wheel libraries
    are put on ``LD_LIBRARY_PATH`` because such a build has its own.
    """
    override = os.environ.get(ENV_TRITONSERVER)
    if override:
        server_bin = Path(override).expanduser()
        if not (server_bin.is_file() and os.access(server_bin, os.X_OK)):
            raise TritonNotFound(f"{ENV_TRITONSERVER}={override} is not an executable file")
        backends = os.environ.get(ENV_TRITON_BACKENDS)
        if not backends:
            raise TritonNotFound(f"{ENV_TRITONSERVER} is set, so {ENV_TRITON_BACKENDS} must name its backend directory")
        backends_dir = Path(backends).expanduser()
        if not backends_dir.is_dir():
            raise TritonNotFound(f"{ENV_TRITON_BACKENDS}={backends} is not a directory")
        return TritonDist(server_bin=server_bin, backends_dir=backends_dir, lib_dirs=[])

    ts_dir = _wheel_tritonserver_dir()
    server_bin = ts_dir / "bin" / "tritonserver"
    if not server_bin.is_file():
        raise TritonNotFound(f"tritonserver binary not found in the pytriton wheel: {server_bin}")
    libs = ts_dir.parent.parent / "nvidia_pytriton.libs"  # sibling of the pytriton package
    if not libs.is_dir():
        raise TritonNotFound(f"the wheel's shared libraries folder is missing: {libs}")
    return TritonDist(server_bin=server_bin, backends_dir=_prepare_backends(ts_dir), lib_dirs=[libs])


# --------------------------------------------------------------------------- #
# Environment for the server (and the Python backend stub)
# --------------------------------------------------------------------------- #


def _python_lib_dir() -> Path | None:
    """Folder holding the running interpreter's ``libpython3.X.so``, if it is a shared build.

    The stub links ``libpython3.X.so.1.0`` by soname.  Without this folder on
    ``LD_LIBRARY_PATH`` it may bind the *system* libpython (another patch
    release, other prefix) and mix it with this venv's stdlib.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not ldlib or not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    path = Path(libdir)
    return path if (path / ldlib).exists() else None


def _venv_pythonpath() -> list[str]:
    """Directories of ``sys.path`` that are not the base interpreter's stdlib.

    The stdlib is left out on purpose: whatever Python reads this variable
    brings its own stdlib, and pointing it at another build's is harmful.
    """
    skip = set()
    for key in ("stdlib", "platstdlib"):
        p = sysconfig.get_path(key, vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
        if p:
            skip.add(os.path.realpath(p))
            skip.add(os.path.realpath(os.path.join(p, "lib-dynload")))
    out: list[str] = []
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        real = os.path.realpath(entry)
        if real in skip or real in out:
            continue
        out.append(real)
    return out


def _prepend_path_var(env: dict[str, str], key: str, dirs: list[str]) -> None:
    old = [p for p in env.get(key, "").split(os.pathsep) if p]
    merged = list(dict.fromkeys([*dirs, *old]))
    if merged:
        env[key] = os.pathsep.join(merged)


def server_environment(dist: TritonDist, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver so its Python models run with this interpreter's packages."""
    env = dict(os.environ)
    lib_dirs = [str(p) for p in dist.lib_dirs]
    pylib = _python_lib_dir()
    if pylib is not None:
        lib_dirs.append(str(pylib))
    _prepend_path_var(env, "LD_LIBRARY_PATH", lib_dirs)
    # The isolated stub locates its prefix by looking up "python3" on PATH.
    bindir = Path(sys.executable).parent
    if not (bindir / "python3").exists():
        LOGGER.warning("no python3 beside %s: Python-backend models may not see this environment", sys.executable)
    _prepend_path_var(env, "PATH", [str(bindir)])
    _prepend_path_var(env, "PYTHONPATH", _venv_pythonpath())
    env.pop("PYTHONHOME", None)
    if extra_env:
        env.update({k: str(v) for k, v in extra_env.items()})
    return env


# --------------------------------------------------------------------------- #
# Process spawning (PDEATHSIG is per *thread*)
# --------------------------------------------------------------------------- #

_libc: Any = None


def _load_libc() -> Any:
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


class _Spawner:
    """A daemon thread that outlives callers' threads and forks on their behalf.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits,
    not the process.  A server started from a worker thread (Prefect's
    ``ThreadPoolTaskRunner``, a ``ThreadPoolExecutor``) would be SIGKILLed
    as soon as that worker finishes.  Forking from the main thread or from
    this long-lived daemon thread ties the server to the process instead.
    """

    _lock = threading.Lock()
    _queue: queue.Queue[tuple[Callable[[], Any], queue.Queue[tuple[bool, Any]]]] | None = None

    @classmethod
    def call(cls, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is threading.main_thread():
            return fn()
        with cls._lock:
            if cls._queue is None:
                cls._queue = queue.Queue()
                threading.Thread(target=cls._run, args=(cls._queue,), name="tritonserver-spawner", daemon=True).start()
        reply: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
        cls._queue.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    @staticmethod
    def _run(q: queue.Queue[tuple[Callable[[], Any], queue.Queue[tuple[bool, Any]]]]) -> None:
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


def _process_alive(pid: int, start_time: str) -> bool:
    """True while ``pid`` runs and is the process that started at ``start_time`` (clock ticks,
    field 22 of ``/proc/<pid>/stat``): a reused pid or a zombie counts as gone."""
    fields = stat_fields(pid)
    return fields is not None and fields[19] == start_time and fields[0] not in ("Z", "X")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PortInUse(UserError, RuntimeError):
    pass


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUse` (naming host and port) unless ``host:port`` can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as e:
            raise PortInUse(f"cannot serve on {host}:{port}: {e.strerror or e} "
                            f"(pick another --port, or 0 for a free one)") from None


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


class TritonServer:
    """Own one tritonserver process: start it, drive the repository API, stop it for sure.

    Ports (:class:`TritonPorts`): ``http=None`` (or 0) picks a free port on 127.0.0.1.  gRPC
    and metrics are *disabled* when their port is ``None`` (we only speak HTTP and
    every open port is one more thing that can collide); pass ``0`` to get a
    free port for them, or an explicit number.

    The server binds to 127.0.0.1 only: it is a local development endpoint
    with an unauthenticated model-control API.

    ``auto_complete_config`` is off by default (``--disable-auto-complete-config``):
    with it on, Triton starts an extra throw-away Python stub per Python model
    just to ask it for config additions, which makes every load ~1.3 s instead
    of ~0.15 s on this wheel.  Our ``config.pbtxt`` files are complete, and a
    config that is not is better caught here than on the endpoint.  Turn it on
    for models that rely on ``auto_complete_config()`` in their ``model.py``.
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

    def __init__(
        self,
        model_repository: Path,
        *,
        ports: TritonPorts = TritonPorts(),
        model_control: str = "explicit",
        log_path: Path | None = None,
        extra_env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        startup_timeout: float = 60,
        auto_complete_config: bool = False,
    ) -> None:
        if model_control not in ("explicit", "none", "poll"):
            raise ValueError(f"model_control must be explicit, none or poll, not {model_control!r}")
        # Absolute: Triton hands model paths on to the stubs, and the server runs with its own cwd.
        self.model_repository = Path(model_repository).expanduser().resolve()
        self._req_http_port = ports.http
        self._req_grpc_port = ports.grpc
        self._req_metrics_port = ports.metrics
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
        self._client: httpx.Client | None = None
        self._grpc_client: tuple[str, Any] | None = None  # (url, tritonclient.grpc client)
        #: Called as ``on_exit(pid, returncode)`` from a watcher thread when tritonserver exits
        #: without :meth:`stop`/:meth:`kill_group` asking it to (a crash, an OOM kill, SIGKILL
        #: from outside). The watcher also reaps the process at once, so a crash never leaves
        #: a zombie behind, whoever owns the server.
        self.on_exit: Callable[[int, int], None] | None = None
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

    # ---------------------------------------------------------------- props
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

    def _log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """End of the log of the latest launch, minus the ``--help`` dump.

        A bad flag makes tritonserver print one error line followed by a
        ~20 kB usage text; a plain tail would show only the usage text.
        """
        text = self.log_text()
        marker = text.rfind(_LAUNCH_MARKER)
        if marker >= 0:  # skip older launches and the command line itself
            eol = text.find("\n", marker + len(_LAUNCH_MARKER))
            text = text[eol + 1 :] if eol >= 0 else ""
        usage = text.find("\nUsage:")
        if usage >= 0:
            text = text[:usage] + "\n[... usage text cut ...]"
        return text[-chars:] if len(text) > chars else text

    # ---------------------------------------------------------------- lifecycle
    def _command(self, dist: TritonDist) -> list[str]:
        cmd = [
            str(dist.server_bin),
            f"--id={self.server_id}",
            f"--model-repository={self.model_repository}",
            f"--backend-directory={dist.backends_dir}",
            f"--model-control-mode={self.model_control}",
            # a model that fails to load must not take the whole server down
            "--exit-on-error=false",
            # readiness = server readiness; per-model state is queried explicitly
            "--strict-readiness=false",
            f"--exit-timeout-secs={self.EXIT_TIMEOUT_SECS}",
            "--allow-http=true",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]
        if not self.auto_complete_config:
            cmd.append("--disable-auto-complete-config")
        if self.grpc_port is None:
            cmd.append("--allow-grpc=false")
        else:
            cmd += ["--allow-grpc=true", "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}"]
        if self.metrics_port is None:
            cmd.append("--allow-metrics=false")
        else:
            cmd += ["--allow-metrics=true", "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}"]
        return cmd + self.extra_args

    def _pick_ports(self) -> None:
        pick = self.port_picker
        self.http_port = self._req_http_port or pick()
        self.grpc_port = None if self._req_grpc_port is None else (self._req_grpc_port or pick())
        self.metrics_port = None if self._req_metrics_port is None else (self._req_metrics_port or pick())

    def start(self) -> TritonServer:
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

        auto_ports = not self._req_http_port or self._req_grpc_port == 0 or self._req_metrics_port == 0
        attempts = self._PORT_RETRIES if auto_ports else 1
        t0 = time.monotonic()
        for attempt in range(1, attempts + 1):
            self._pick_ports()
            try:
                self._launch(dist, env)
                self._wait_live(t0)
                break
            except TritonStartError:
                in_use = "already in use" in self._log_tail().lower()
                self._kill_group()
                if not (in_use and attempt < attempts):
                    raise
                LOGGER.warning("tritonserver port collision, retrying with other ports")
        self.startup_seconds = time.monotonic() - t0
        assert self._proc is not None
        self._watch(self._proc)
        atexit.register(self.stop)
        LOGGER.info("tritonserver pid %s live at %s in %.2fs", self.pid, self.url, self.startup_seconds)
        return self

    def _launch(self, dist: TritonDist, env: dict[str, str]) -> None:
        assert self.log_path is not None
        cmd = self._command(dist)
        with open(self.log_path, "ab") as log:
            log.write(f"{_LAUNCH_MARKER}{' '.join(cmd)}\n".encode())
            log.flush()
            preexec = _make_preexec(os.getpid())
            self._proc = _Spawner.call(
                lambda: subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=str(self.model_repository),
                    start_new_session=True,  # own process group: stop() kills stubs too
                    preexec_fn=preexec,
                    close_fds=True,
                )
            )
        self._claim_launch()

    def _claim_launch(self) -> None:
        """Write the launch into this process's ledger: if we die without stopping it, the
        warden kills the server (pid + start time) and its stubs (its group, carrying this
        launch's token in their command lines) and removes its shm segments."""
        assert self._proc is not None
        ident = ProcessIdentity.of(self._proc.pid)
        self._claim = owner().claim(processes=[ident] if ident else [],
                                    groups=[(self._proc.pid, self._shm_prefix)],
                                    shm=[self._shm_prefix], what=f"tritonserver {self.server_id}")

    def _wait_live(self, t0: float) -> None:
        assert self._proc is not None
        self._client = httpx.Client(base_url=self.url, trust_env=False, timeout=10.0)
        deadline = t0 + self.startup_timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise TritonStartError(
                    f"tritonserver exited with code {rc} during startup (log: {self.log_path})\n{self._log_tail()}"
                )
            try:
                if self._client.get("/v2/health/live", timeout=1.0).status_code == 200:
                    meta = self._client.get("/v2", timeout=1.0)
                    if meta.status_code == 200 and meta.json().get("name") == self.server_id:
                        return
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TritonStartError(
                    f"tritonserver not live after {self.startup_timeout:.0f}s (log: {self.log_path})\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.05)

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Reap ``proc`` the moment it exits and report an unexpected exit to :attr:`on_exit`.

        A blocking ``wait()`` in a daemon thread, not polling: the exit is seen at once, and
        the process never lingers as a zombie while nobody happens to call ``poll()``.
        """

        def wait() -> None:
            rc = proc.wait()
            if proc.pid in self._expected_exits:
                return
            LOGGER.error("tritonserver pid %s exited unexpectedly with %s (log: %s)",
                         proc.pid, describe_returncode(rc), self.log_path)
            callback = self.on_exit
            if callback is not None:
                try:
                    callback(proc.pid, rc)
                except Exception:  # a watcher must never die silently
                    LOGGER.exception("on_exit callback failed for tritonserver pid %s", proc.pid)

        threading.Thread(target=wait, name=f"tritonserver-{proc.pid}-watch", daemon=True).start()

    def kill_group(self) -> None:
        """SIGKILL the process group (server and stubs), reap it and remove its shm segments.

        Safe on a server that already died: it then removes what the dead server left
        (orphaned stubs still in its group, ``/dev/shm`` segments with its prefix).
        """
        self._kill_group()

    def _kill_group(self) -> None:
        """SIGKILL whatever is left of the process group (stubs included) and reap."""
        proc = self._proc
        if proc is None:
            return
        self._expected_exits.add(proc.pid)
        reused = proc.returncode is not None and Path(f"/proc/{proc.pid}").exists()
        if reused:  # reaped, and its pid already reused: the group id may be someone else's
            self._kill_own_members(proc.pid)
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
        if self._client is not None:
            self._client.close()
            self._client = None
        self._close_grpc()
        self._cleanup_shm()
        if self._claim is not None:
            owner().release(self._claim)
            self._claim = None

    def _close_grpc(self) -> None:
        if self._grpc_client is not None:
            try:
                self._grpc_client[1].close()
            except Exception:  # noqa: BLE001 - a channel to a dead server may fail to close
                pass
            self._grpc_client = None

    def _kill_own_members(self, pgid: int) -> None:
        """SIGKILL the processes of group ``pgid`` that carry this launch's token (its stubs)."""
        kill_groups([{"pgid": pgid, "token": self._shm_prefix}])  # the warden's own rule

    def _cleanup_shm(self) -> None:
        shm = Path("/dev/shm")
        if shm.is_dir():
            for seg in shm.glob(f"{self._shm_prefix}*"):
                try:
                    seg.unlink()
                except OSError:
                    pass

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
        if self._client is not None:  # our own keep-alive connection would delay Triton's exit
            self._client.close()
            self._client = None
        self._close_grpc()
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                LOGGER.warning("tritonserver pid %s ignored SIGTERM for %.0fs; killing", proc.pid, timeout)
            except ProcessLookupError:
                pass
        # Also reaps stubs that outlived a crashed server, and removes its shm segments.
        self._kill_group()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; stop() is the real API
        try:
            proc = getattr(self, "_proc", None)
            if proc is not None and proc.poll() is None:
                self._kill_group()
        except Exception:  # noqa: BLE001
            pass

    # ---------------------------------------------------------------- HTTP API
    def _http(self) -> httpx.Client:
        if self._client is None or not self.running:
            raise RuntimeError(f"tritonserver is not running (log: {self.log_path})\n{self._log_tail()}")
        return self._client

    @staticmethod
    def _error_text(resp: httpx.Response) -> str:
        try:
            return str(resp.json().get("error", resp.text))
        except ValueError:
            return resp.text or f"HTTP {resp.status_code}"

    # ---------------------------------------------------------------- repository API
    # With a gRPC port (``TritonPorts(grpc=0)`` or a number), load, unload and the repository index go
    # over gRPC. Why: Triton's HTTP server pins each connection to a worker thread, and a load
    # blocks the thread it arrived on for the whole load; a kept-alive inference connection
    # pinned to that thread would stall meanwhile. gRPC repository calls run on gRPC's own
    # threads (measured: 3 concurrent loads overlap; HTTP keeps answering in ms during a load),
    # which lets the local endpoint keep its inference connections alive.

    def _grpc(self) -> Any:
        if self.grpc_port is None:
            return None
        if not self.running:
            raise RuntimeError(f"tritonserver is not running (log: {self.log_path})\n{self._log_tail()}")
        url = f"127.0.0.1:{self.grpc_port}"
        if self._grpc_client is None or self._grpc_client[0] != url:
            import tritonclient.grpc as grpcclient

            self._grpc_client = (url, grpcclient.InferenceServerClient(url))
        return self._grpc_client[1]

    def _grpc_call(self, name: str, what: str, call: Callable[[], Any], timeout: float) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return call()
        except InferenceServerException as exc:
            if "DEADLINE_EXCEEDED" in str(exc.status()):
                raise TritonModelError(name, f"{what} did not finish within {timeout:.0f}s") from exc
            raise TritonModelError(name, exc.message() or str(exc)) from exc

    def load(self, name: str, timeout: float = 360) -> None:
        """Load (or reload) a model; for an ensemble Triton also loads its composing models.

        Blocks until Triton answers: the load API is synchronous.  Raises
        :class:`TritonModelError` with Triton's message on failure.
        """
        grpc = self._grpc()
        if grpc is not None:
            self._grpc_call(name, "load", lambda: grpc.load_model(name, client_timeout=timeout), timeout)
            return
        try:
            resp = self._http().post(f"/v2/repository/models/{quote(name, safe='')}/load", timeout=timeout)
        except httpx.TimeoutException as exc:
            raise TritonModelError(name, f"load did not finish within {timeout:.0f}s") from exc
        if resp.status_code != 200:
            raise TritonModelError(name, self._error_text(resp))

    def unload(self, name: str, *, unload_dependents: bool = True, wait: bool = True, timeout: float = 120) -> None:
        """Unload a model; with ``unload_dependents`` an ensemble's composing models go too.

        Triton's unload call returns as soon as the unload has *started* (2.51, measured: 2 ms,
        while the composing Python model stays UNLOADING ~1.1 s more, its stub alive and
        holding its memory). Per-model readiness (``ModelReady``) turns false at once, so it
        alone does not say the memory is free. So by default this waits, per model, until
        ``name`` and (with ``unload_dependents``) the composing models its ensemble config names
        are not ready, and the Python-backend stub processes that served them have exited.
        Nothing here reads Triton's repository index: that lists every folder in the
        repository (34 ms at 10k folders), which made each unload's wait grow with the disk
        cache and, when any model anywhere was UNLOADING, wait for that one too.
        """
        names = self.model_family(name) if unload_dependents else [name]
        stubs = self.stub_processes(names) if wait else []
        grpc = self._grpc()
        if grpc is not None:
            self._grpc_call(name, "unload", lambda: grpc.unload_model(
                name, unload_dependents=unload_dependents, client_timeout=timeout), timeout)
        else:
            body = {"parameters": {"unload_dependents": unload_dependents}}
            resp = self._http().post(f"/v2/repository/models/{quote(name, safe='')}/unload",
                                     json=body, timeout=timeout)
            if resp.status_code != 200:
                raise TritonModelError(name, self._error_text(resp))
        if wait:
            self._wait_unloaded(name, names, stubs, timeout)

    def _wait_unloaded(self, name: str, names: list[str], stubs: list[tuple[int, str]],
                       timeout: float) -> None:
        """Until ``names`` are not ready and ``stubs`` (pid, start time) have exited."""
        deadline = time.monotonic() + timeout
        pending = list(names)
        while time.monotonic() < deadline:
            pending = [n for n in pending if self.is_ready(n)]
            stubs = [s for s in stubs if _process_alive(*s)]
            if not pending and not stubs:
                return
            time.sleep(0.01)
        raise TritonModelError(name, f"still not unloaded after {timeout:.0f}s "
                                     f"(ready: {pending}, stub pids: {[p for p, _ in stubs]})")

    def model_family(self, name: str) -> list[str]:
        """``name`` and the models its ensemble config in the repository names, recursively
        (what ``unload_dependents`` unloads); just ``name`` when its config cannot be read."""
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as mc

        family, todo = [name], [name]
        while todo:
            path = self.model_repository / todo.pop() / "config.pbtxt"
            try:
                cfg = text_format.Parse(path.read_text(), mc.ModelConfig())
            except (OSError, UnicodeDecodeError, text_format.ParseError):
                continue
            for step in cfg.ensemble_scheduling.step:
                if step.model_name not in family:
                    family.append(step.model_name)
                    todo.append(step.model_name)
        return family

    def stub_processes(self, names: list[str]) -> list[tuple[int, str]]:
        """(pid, start time) of this server's Python-backend stubs serving models ``names``.

        A stub is a child of tritonserver whose first argument is
        ``<repository>/<model>/<version>/model.py``. One pass over ``/proc`` (its cost follows
        the processes running, not the models cached on disk).
        """
        pid, wanted = self.pid, set(names)
        if pid is None or not wanted:
            return []
        found = []
        for child, fields in proc_stats():
            if fields[1] != str(pid):
                continue
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(argv) > 1 and Path(argv[1].decode(errors="replace")).parent.parent.name in wanted:
                found.append((child, fields[19]))
        return found

    def is_ready(self, name: str) -> bool:
        """True if the model (any version) is loaded and ready to serve."""
        grpc = self._grpc()
        if grpc is not None:
            return bool(self._grpc_call(name, "ready", lambda: grpc.is_model_ready(
                name, client_timeout=10), 10))
        resp = self._http().get(f"/v2/models/{quote(name, safe='')}/ready")
        return resp.status_code == 200

    def repository_index(self) -> list[dict[str, Any]]:
        """Triton's repository index: ``[{"name", "version"?, "state"?, "reason"?}, ...]``."""
        grpc = self._grpc()
        if grpc is not None:
            doc = self._grpc_call("*", "index", lambda: grpc.get_model_repository_index(
                as_json=True, client_timeout=30), 30)
            return list(doc.get("models", []))
        resp = self._http().post("/v2/repository/index", json={})
        resp.raise_for_status()
        return list(resp.json())
