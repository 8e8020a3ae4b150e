"""Find a tritonserver to run and the environment it needs (the wheel's binary, its Python
backend, this interpreter's packages for the Python-backend stubs).

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
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from infra.errors import MMEError
from infra.store.objects import atomic_dir

__all__ = ["ENV_CACHE_DIR", "ENV_TRITONSERVER", "ENV_TRITON_BACKENDS", "TritonDist", "TritonNotFound",
           "locate_triton", "server_environment"]

LOGGER = logging.getLogger(__name__)

#: Env var: path of another ``tritonserver`` binary to use instead of the wheel's.
ENV_TRITONSERVER = "MME_TRITONSERVER"
#: Env var: backend directory to use together with ``MME_TRITONSERVER``.
ENV_TRITON_BACKENDS = "MME_TRITON_BACKENDS"
#: Env var: base folder for prepared backend directories (default ``~/.cache/triton-mme``).
ENV_CACHE_DIR = "MME_CACHE_DIR"

_STUB_NAME = "triton_python_backend_stub"


class TritonNotFound(MMEError, RuntimeError):
    """The tritonserver binary, its libraries or the Python backend stub are missing."""


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
