"""Python execution environments for Triton Python-backend steps (``EXECUTION_ENV_PATH``).

A Python-backend model that needs packages the Triton image lacks (transformers, tokenizers...)
ships an environment beside its ``model.py`` and names it in its config::

    parameters: { key: "EXECUTION_ENV_PATH", value: {string_value: "$$TRITON_MODEL_DIRECTORY/processing_env.tar.gz"} }

What Triton does with it (python_backend ``stub_launcher.cc``/``pb_env.cc``): it extracts the
tarball into ``/tmp/python_env_XXXXXX/<n>/`` (an unpacked directory is used as is from 23.07),
refuses the env if it has no ``bin/activate``, and starts the stub with::

    bash -c 'source <env>/bin/activate && exec env LD_LIBRARY_PATH=<env>/lib:$LD_LIBRARY_PATH <stub> ...'

The stub embeds CPython (linked against the *container's* libpython3.X): it finds its
``sys.prefix`` by looking ``python3`` up on ``PATH`` and honours a ``pyvenv.cfg`` beside it or
one directory up.  So any env whose ``activate`` puts an executable ``python3`` first on PATH,
next to a ``pyvenv.cfg``, works, provided its packages are built for the stub's Python version.

Two ways to build one:

* :func:`conda_pack_env` -- the seed's way: ``conda create`` + ``pip install`` + ``conda-pack``.
  A complete, relocatable CPython of its own (so it also needs numpy for the stub); needs conda
  and conda-pack on the build host.
* :func:`wheel_env` -- no conda, and no Python of the target version on the build host: pip
  installs binary wheels for the target (``--platform/--python-version/--only-binary``) into
  ``lib/python3.X/site-packages``; the env borrows the container's own interpreter.  Layout::

      bin/activate       sourced by Triton; see _ACTIVATE_TEMPLATE
      bin/python3        a sh shim (an executable "python3" for the stub's PATH lookup)
      pyvenv.cfg         home = <dir of the base python3>, include-system-site-packages = true
      lib/python3.X/site-packages/...
      mme-env.json       what was asked for and what got installed

  The stub then finds ``<env>/bin/python3`` first on PATH, reads ``<env>/pyvenv.cfg``, takes
  the stdlib from ``home`` (the container's ``/usr``) and adds ``<env>/lib/python3.X/site-packages``
  followed by the system site-packages (numpy and friends of the image).  ``home`` depends on
  the machine, so ``activate`` rewrites ``pyvenv.cfg`` at runtime from the ``python3`` that was
  on PATH before activation (the shipped file says ``/usr/bin``, the NGC images' Python, for
  read-only unpacked envs).  Symlinks are avoided on purpose: ``infra.store.tarball`` refuses them.

:func:`pack_python_env` is the ``pack_python_env`` producer named by ``ensemble.yaml``: it builds
an env once per :func:`env_cache_key` into ``$MME_HOME/envs/<key>/`` (atomically) and reuses it
for every ensemble that asks for the same requirements.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import logging
import os
import platform as host_platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from infra import paths
from infra.errors import MMEError, UserError
from infra.jsontypes import JsonObject
from infra.store.objects import TMP_PREFIX, atomic_dir, atomic_path, sha256_file
from infra.store.tarball import pack_deterministic
from tasks.producers.cache import cached_entry

__all__ = [
    "EnvPackError",
    "EnvPackOptions",
    "EnvPackTools",
    "EnvPackUnavailable",
    "conda_pack_env",
    "env_cache_key",
    "pack_python_env",
    "pip_command",
    "pip_platforms",
    "wheel_env",
]

LOGGER = logging.getLogger(__name__)

#: Bump when the layout of a built env changes (activate, shim, pyvenv.cfg): it is part of
#: every cache key, so cached envs of an older layout are rebuilt instead of reused.
ENV_FORMAT = 1
ENV_INFO_FILE = "mme-env.json"
CACHE_META_FILE = "meta.json"
#: Where the NGC Triton images keep their Python (the shipped pyvenv.cfg's ``home``).
CONTAINER_PYTHON_HOME = "/usr/bin"
#: manylinux ceiling for legacy platform names: every Triton image since 20.12 is Ubuntu
#: 20.04 (glibc 2.31) or newer, so manylinux_2_28 wheels run there.
DEFAULT_MAX_GLIBC_MINOR = 28

PipRunner = Callable[[list[str]], None]
Runner = Callable[..., "subprocess.CompletedProcess[Any]"]


class EnvPackError(MMEError, RuntimeError):
    """Building or packing an environment failed (pip/conda error, bad parameters)."""


class EnvPackUnavailable(UserError, RuntimeError):
    """The requested method needs a tool this host lacks (conda, conda-pack); the message names it."""


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #


def _check_python_version(python_version: str) -> str:
    if not re.fullmatch(r"3\.\d{1,2}", str(python_version)):
        raise EnvPackError(f"python_version must be 'major.minor' like '3.10', not {python_version!r}")
    return str(python_version)


def _normalize_requirements(requirements: Sequence[str] | str) -> list[str]:
    if isinstance(requirements, str):  # a single requirement given as a string
        requirements = [requirements]
    out: list[str] = []
    for req in requirements:
        if not isinstance(req, str) or not req.strip():
            raise EnvPackError(f"requirements must be non-empty strings, got {req!r}")
        req = " ".join(req.split())
        if req.startswith("-"):  # options would change pip's behaviour behind the cache key
            raise EnvPackError(f"requirement {req!r} looks like a pip option; give requirement specifiers only")
        out.append(req)
    if not out:
        raise EnvPackError("no requirements given")
    return out


def _requirement_names(requirements: Sequence[str]) -> set[str]:
    names = set()
    for req in requirements:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if m:
            names.add(re.sub(r"[-_.]+", "-", m.group(1)).lower())
    return names


def installed_packages(site_dir: Path) -> dict[str, str]:
    """``{name: version}`` from the ``*.dist-info/METADATA`` files directly in ``site_dir``."""
    parser = email.parser.HeaderParser()
    found: dict[str, str] = {}
    for meta in sorted(Path(site_dir).glob("*.dist-info/METADATA")):
        headers = parser.parsestr(meta.read_text(encoding="utf-8", errors="replace"))
        name, version = headers.get("Name"), headers.get("Version")
        if name and version:
            found[name] = version
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


# --------------------------------------------------------------------------- #
# The conda route (the seed's way)
# --------------------------------------------------------------------------- #


def _check(run: Runner, cmd: list[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    LOGGER.info("envpack: %s", " ".join(cmd))
    try:
        proc = run(cmd, capture_output=True, text=True, **kwargs)
    except OSError as exc:
        raise EnvPackError(f"{what} could not run: {' '.join(cmd)}: {exc}") from exc
    if proc.returncode != 0:
        tail = ((proc.stdout or "") + (proc.stderr or ""))[-3000:]
        raise EnvPackError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc


def _conda_executables(conda: str, which: Callable[[str], str | None]) -> tuple[str, str]:
    """``(conda, conda-pack)`` as found on PATH; :class:`EnvPackUnavailable` naming the missing one."""
    conda_exe = which(conda)
    if not conda_exe:
        raise EnvPackUnavailable(
            f"conda_pack_env needs conda, and {conda!r} is not on PATH; install Miniforge, "
            f"or build the env without conda (method='wheel')")
    pack_exe = which("conda-pack")
    if not pack_exe:
        raise EnvPackUnavailable(
            "conda_pack_env needs conda-pack, which is not on PATH; "
            "install it with `conda install -c conda-forge conda-pack`, or use method='wheel'")
    return conda_exe, pack_exe


def _create_conda_env(run: Runner, conda_exe: str, env_dir: Path, reqs: list[str],
                      python_version: str) -> dict[str, str]:
    """``conda create`` the env (with numpy, which the stub imports, unless asked for), ``pip
    install`` the requirements into it without the user site; return what got installed."""
    base = [f"python={python_version}", "pip"]
    if "numpy" not in _requirement_names(reqs):
        base.append("numpy")
    _check(run, [conda_exe, "create", "-y", "-q", "-p", str(env_dir), *base], "conda create")
    pip_env = {**os.environ, "PYTHONNOUSERSITE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _check(run, [conda_exe, "run", "-p", str(env_dir), "python", "-m", "pip", "install",
                 "--no-input", *reqs], "pip install (conda env)", env=pip_env)
    packages: dict[str, str] = {}
    for site in sorted(env_dir.glob("lib/python*/site-packages")):
        packages.update(installed_packages(site))
    return packages


def conda_pack_env(
    out_dir: Path,
    *,
    requirements: Sequence[str],
    python_version: str,
    name: str = "processing_env",
    conda: str = "conda",
    run: Runner = subprocess.run,
    which: Callable[[str], str | None] = shutil.which,
) -> tuple[Path, JsonObject]:
    """Build ``<out_dir>/<name>.tar.gz`` with conda + pip + conda-pack, as the seed did.

    ``conda create -p <tmp>/env python=X.Y pip numpy`` (numpy: the stub imports it, and a
    conda env does not see the image's packages), ``conda run -p <env> python -m pip install
    <requirements>`` with ``PYTHONNOUSERSITE=1``, then ``conda-pack -p <env> -o <tarball>``.
    The env is built for *this* host's platform (conda-pack packs what is installed).
    Raises :class:`EnvPackUnavailable` when conda or conda-pack is missing.
    """
    reqs = _normalize_requirements(requirements)
    python_version = _check_python_version(python_version)
    conda_exe, pack_exe = _conda_executables(conda, which)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / f"{name}.tar.gz"
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}conda-{name}-", dir=out_dir))
    env_dir = work / "env"
    try:
        packages = _create_conda_env(run, conda_exe, env_dir, reqs, python_version)
        with atomic_path(dest) as tmp:
            _check(run, [pack_exe, "-p", str(env_dir), "-o", str(tmp), "--format", "tar.gz",
                         "--force", "--quiet"], "conda-pack")
            sha256, size = sha256_file(tmp), tmp.stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta: JsonObject = {  # the env's meta.json ([*...], {**...}: typed as JSON values)
        "method": "conda-pack",
        "requirements": [*reqs],
        "python_version": python_version,
        "platform": f"{sys.platform}-{host_platform.machine()} (build host)",
        "packages": {**packages},
        "bytes": size,
        "sha256": sha256,
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    return dest, meta


# --------------------------------------------------------------------------- #
# The wheel route (no conda, no target Python needed)
# --------------------------------------------------------------------------- #


def pip_platforms(platform: str) -> list[str]:
    """Platform tags to hand to pip for ``platform``, best first.

    pip's ``--platform`` does not expand manylinux tags the way a real host does
    (``manylinux2014_x86_64`` only adds manylinux2010/1, and a ``manylinux_2_28`` wheel is
    never picked), so the list is spelled out: ``manylinux_2_<N>`` down to ``2_5`` with the
    legacy aliases at their glibc (2014 = 2.17, 2010 = 2.12, 1 = 2.5).  ``N`` is the glibc of
    a ``manylinux_2_N_<arch>`` platform, or 2.28 for the legacy names.  Anything else
    (``linux_x86_64``, ``any``) is passed through unchanged.
    """
    legacy = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if m:
        top, arch = int(m.group(1)), m.group(2)
    else:
        m = re.fullmatch(r"(manylinux2014|manylinux2010|manylinux1)_(\w+)", platform)
        if not m:
            return [platform]
        top, arch = max(DEFAULT_MAX_GLIBC_MINOR, legacy[m.group(1)]), m.group(2)
    alias_at = {v: k for k, v in legacy.items()}
    out: list[str] = []
    for minor in range(top, 4, -1):
        out.append(f"manylinux_2_{minor}_{arch}")
        if minor in alias_at:
            out.append(f"{alias_at[minor]}_{arch}")
    return out


def pip_command(site_dir: Path, requirements: Sequence[str], python_version: str, platform: str) -> list[str]:
    """Arguments after ``python -m pip`` that install ``requirements`` for the target into ``site_dir``.

    ``--only-binary=:all:`` is required by pip with ``--platform`` (an sdist would be built for
    *this* host); ``--no-compile`` because .pyc files of the build interpreter are useless to
    another Python version and carry timestamps (the tarball must be reproducible).
    """
    args = [
        "install",
        "--target", str(site_dir),
        "--python-version", python_version,
        "--implementation", "cp",
        "--only-binary=:all:",
        "--no-compile",
        "--no-input",
        "--disable-pip-version-check",
    ]
    for tag in pip_platforms(platform):
        args += ["--platform", tag]
    return args + list(requirements)


_CONNECTIVITY = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
    r"Network is unreachable|Connection refused|ConnectTimeout|ReadTimeout", re.IGNORECASE)


def run_pip(args: list[str]) -> None:
    """Run ``sys.executable -m pip <args>``; raise :class:`EnvPackError` with pip's output tail."""
    cmd = [sys.executable, "-m", "pip", *args]
    LOGGER.info("envpack: %s", " ".join(cmd))
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if proc.returncode != 0:
        out = (proc.stdout or "") + (proc.stderr or "")
        hint = "\n(the package index looks unreachable)" if _CONNECTIVITY.search(out) else ""
        raise EnvPackError(f"pip failed (exit {proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}{hint}")


# Sourced by Triton with bash (`bash -c 'source <env>/bin/activate && exec ...'`); kept POSIX sh
# so that dash can source it too.  Placeholders: @PYVER@.
_ACTIVATE_TEMPLATE = r"""# Triton Python-backend execution environment (built by tasks/producers/envpack.py).
# Triton runs:  bash -c 'source <env>/bin/activate && exec env LD_LIBRARY_PATH=<env>/lib:... <stub> ...'
# The stub's embedded Python looks "python3" up on PATH and honours the pyvenv.cfg next to it,
# so this script: (1) writes pyvenv.cfg with home = the directory of the python3 that was on
# PATH before (the container's interpreter; this env has none of its own), (2) puts <env>/bin
# (a python3 shim) first on PATH.  Packages live in lib/python@PYVER@/site-packages.
# Set MME_ENV_BASE_PYTHON to choose the base interpreter explicitly.
if [ "${VIRTUAL_ENV:-}" = "$(cd "$(dirname "${BASH_SOURCE:-$0}")/.." 2>/dev/null && pwd -P)" ]; then
    return 0 2>/dev/null || exit 0
fi
_mme_env=$(cd "$(dirname "${BASH_SOURCE:-$0}")/.." && pwd -P) || return 1
_mme_py=@PYVER@
_mme_base=${MME_ENV_BASE_PYTHON:-$(command -v python3 2>/dev/null || true)}
if [ -z "$_mme_base" ] && [ -x /usr/bin/python3 ]; then _mme_base=/usr/bin/python3; fi
_mme_home= ; _mme_basever=
if [ -n "$_mme_base" ]; then
    # "<dir of the real base executable> <X.Y>": realpath of a venv's python is its base install
    _mme_info=$("$_mme_base" -I -c 'import os, sys; print(os.path.dirname(os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)), "%d.%d" % sys.version_info[:2])' 2>/dev/null) || _mme_info=
    _mme_home=${_mme_info% *}
    _mme_basever=${_mme_info##* }
fi
if [ -n "$_mme_home" ]; then
    _mme_cfg="home = $_mme_home
include-system-site-packages = true
version = $_mme_basever"
    if [ "$(cat "$_mme_env/pyvenv.cfg" 2>/dev/null)" != "$_mme_cfg" ]; then
        _mme_tmp="$_mme_env/.pyvenv.cfg.$$"
        if ! { printf '%s\n' "$_mme_cfg" > "$_mme_tmp" && mv -f "$_mme_tmp" "$_mme_env/pyvenv.cfg"; } 2>/dev/null; then
            rm -f "$_mme_tmp" 2>/dev/null
            echo "processing_env: cannot update $_mme_env/pyvenv.cfg (read-only?); keeping: $(sed -n 1p "$_mme_env/pyvenv.cfg" 2>/dev/null)" >&2
        fi
    fi
    if [ "$_mme_basever" != "$_mme_py" ]; then
        echo "processing_env: WARNING: this env was built for Python $_mme_py but python3 here ($_mme_base) is $_mme_basever; the stub will not find lib/python$_mme_py/site-packages" >&2
    fi
else
    echo "processing_env: WARNING: no usable python3 on PATH ('$_mme_base'); keeping the shipped pyvenv.cfg" >&2
fi
VIRTUAL_ENV=$_mme_env
export VIRTUAL_ENV
PATH="$_mme_env/bin:$PATH"
export PATH
# For non-isolated interpreters and Python subprocesses; the isolated stub ignores it.
PYTHONPATH="$_mme_env/lib/python$_mme_py/site-packages${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH
PYTHONNOUSERSITE=1
export PYTHONNOUSERSITE
unset PYTHONHOME
unset _mme_env _mme_py _mme_base _mme_home _mme_basever _mme_info _mme_cfg _mme_tmp
"""  # noqa: E501 -- shell text shipped in the env tarball byte for byte; rewrapping it changes the artifact

_PYTHON3_SHIM_TEMPLATE = r"""#!/bin/sh
# python3 of a Triton processing_env (built by tasks/producers/envpack.py): the base interpreter named
# by pyvenv.cfg's "home", with this env's site-packages on PYTHONPATH.  The Triton stub never
# runs this file; it only needs an executable "python3" here to take this env as its prefix.
_mme_env=$(cd "$(dirname "$0")/.." && pwd -P)
_mme_home=$(sed -n 's/^home *= *//p' "$_mme_env/pyvenv.cfg" | sed -n 1p)
for _mme_exe in "$_mme_home/python@PYVER@" "$_mme_home/python3"; do
    if [ -x "$_mme_exe" ]; then
        PYTHONPATH="$_mme_env/lib/python@PYVER@/site-packages${PYTHONPATH:+:$PYTHONPATH}" exec "$_mme_exe" "$@"
    fi
done
echo "processing_env: no python@PYVER@/python3 in '$_mme_home' (pyvenv.cfg home)" >&2
exit 127
"""


def activate_script(python_version: str) -> str:
    """Text of ``bin/activate`` for an env built for ``python_version``."""
    return _ACTIVATE_TEMPLATE.replace("@PYVER@", _check_python_version(python_version))


def python3_shim(python_version: str) -> str:
    """Text of ``bin/python3`` (a sh script, so the tarball holds no symlink)."""
    return _PYTHON3_SHIM_TEMPLATE.replace("@PYVER@", _check_python_version(python_version))


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)


def _fill_wheel_env(env: Path, reqs: list[str], python_version: str, platform: str,
                    pip: PipRunner) -> JsonObject:
    """Install ``reqs`` for the target into the new folder ``env`` and write its activate
    script, python3 shim, pyvenv.cfg and :data:`ENV_INFO_FILE`; return the env's metadata."""
    site = env / "lib" / f"python{python_version}" / "site-packages"
    (env / "bin").mkdir(parents=True)
    site.mkdir(parents=True)
    pip(pip_command(site, reqs, python_version, platform))
    packages = installed_packages(site)
    if not packages:
        raise EnvPackError(f"pip installed nothing into {site} for {reqs}")
    # pip --target puts console scripts in <target>/bin with a shebang naming the build
    # host's interpreter: useless (and machine-specific) in the container.
    removed = sorted(p.name for p in (site / "bin").iterdir()) if (site / "bin").is_dir() else []
    shutil.rmtree(site / "bin", ignore_errors=True)
    for cache in site.rglob("__pycache__"):  # none with --no-compile; be sure anyway
        shutil.rmtree(cache, ignore_errors=True)
    links = [str(p.relative_to(env)) for p in env.rglob("*") if p.is_symlink()]
    if links:
        raise EnvPackError(f"the installed packages contain symlinks, which cannot be packed: {links[:5]}")

    _write(env / "bin" / "activate", activate_script(python_version), 0o755)
    _write(env / "bin" / "python3", python3_shim(python_version), 0o755)
    _write(env / "pyvenv.cfg",
           f"home = {CONTAINER_PYTHON_HOME}\ninclude-system-site-packages = true\nversion = {python_version}\n")
    info = {"format": ENV_FORMAT, "requirements": reqs, "python_version": python_version,
            "platform": platform, "packages": packages}
    _write(env / ENV_INFO_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")
    files, unpacked = paths.folder_usage(env)

    meta: JsonObject = {  # the env's meta.json ([*...], {**...}: typed as JSON values)
        "method": "wheel",
        "requirements": [*reqs],
        "python_version": python_version,
        "platform": platform,
        "pip_platforms": [*pip_platforms(platform)],
        "packages": {**packages},
        "removed_scripts": [*removed],
        "files": files,
        "unpacked_bytes": unpacked,
    }
    return meta


def wheel_env(
    out_dir: Path,
    *,
    requirements: Sequence[str],
    python_version: str = "3.10",
    platform: str = "manylinux2014_x86_64",
    name: str = "processing_env",
    pip: PipRunner | None = None,
    packed: bool = True,
) -> tuple[Path, JsonObject]:
    """Build a conda-free env for the Triton image's own Python; see the module docstring.

    pip (``sys.executable -m pip``, or the injected ``pip`` runner, which gets the arguments
    after ``-m pip``) installs binary wheels for ``python_version``/``platform`` into
    ``lib/python<ver>/site-packages``; then ``bin/activate``, ``bin/python3`` and
    ``pyvenv.cfg`` are written.  Returns ``<out_dir>/<name>.tar.gz`` (deterministic, via
    :func:`infra.store.tarball.pack_deterministic`) when ``packed``, else the directory
    ``<out_dir>/<name>``; either appears atomically.
    """
    reqs = _normalize_requirements(requirements)
    python_version = _check_python_version(python_version)
    pip = pip or run_pip
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if packed:
        with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{name}-", dir=out_dir) as work:
            env = Path(work) / name
            meta = _fill_wheel_env(env, reqs, python_version, platform, pip)
            dest = out_dir / f"{name}.tar.gz"
            sha256, size = pack_deterministic(env, dest)
            meta.update(bytes=size, sha256=sha256)
    else:
        dest = out_dir / name
        with atomic_dir(dest, if_exists="replace") as env:
            meta = _fill_wheel_env(env, reqs, python_version, platform, pip)
        meta.update(bytes=meta["unpacked_bytes"], sha256=None)
    meta["build_seconds"] = round(time.perf_counter() - t0, 1)
    return dest, meta


# --------------------------------------------------------------------------- #
# The producer, with a build-once cache
# --------------------------------------------------------------------------- #


def env_cache_key(requirements: Sequence[str], python_version: str, platform: str, *, method: str = "wheel") -> str:
    """Cache key of an env: readable prefix + hash of (layout format, method, sorted requirements, python, platform).

    Requirements are compared as written (whitespace-normalized, order-free): an unpinned
    ``transformers`` resolves once, at the first build, and is reused until the key changes
    (pin versions, or pass ``rebuild=True`` to :func:`pack_python_env`).
    """
    reqs = sorted(_normalize_requirements(requirements))
    python_version = _check_python_version(python_version)
    payload = json.dumps({"format": ENV_FORMAT, "method": method, "requirements": reqs,
                          "python_version": python_version, "platform": platform}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    safe_platform = re.sub(r"[^A-Za-z0-9_.-]", "_", platform)
    return f"{method}-py{python_version}-{safe_platform}-{digest}"


def _resolve_method(method: str, platform: str, conda: str, which: Callable[[str], str | None]) -> str:
    if method in ("wheel", "conda"):
        return method
    if method != "auto":
        raise EnvPackError(f"method must be 'auto', 'conda' or 'wheel', not {method!r}")
    # conda-pack packs this host's binaries: only usable when the host matches the target.
    host_ok = sys.platform.startswith("linux") and host_platform.machine() in platform
    return "conda" if host_ok and which(conda) and which("conda-pack") else "wheel"


def _valid_entry(entry: Path, tar_name: str) -> JsonObject | None:
    """The cached meta if ``entry`` holds an intact tarball, else None."""
    tarball, meta_file = entry / tar_name, entry / CACHE_META_FILE
    if not (tarball.is_file() and meta_file.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError:
        return None
    if meta.get("bytes") != tarball.stat().st_size or meta.get("sha256") != sha256_file(tarball):
        LOGGER.warning("envpack: cached env %s does not match its meta.json; rebuilding", entry)
        return None
    return meta


def _publish_copy(src: Path, dest: Path) -> None:
    """Put ``src`` at ``dest`` atomically: a hard link when possible (same filesystem), else a copy."""
    with atomic_path(dest) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


@dataclass(frozen=True)
class EnvPackOptions:
    """The ``pack_python_env`` producer's parameters, named as in ``ensemble.yaml``
    (``artifacts.<name>.params``); an unknown name is refused when this is built."""

    requirements: Sequence[str]
    python_version: str = "3.10"
    platform: str = "manylinux2014_x86_64"
    method: str = "auto"
    cache_dir: Path | None = None
    name: str = "processing_env"
    rebuild: bool = False


@dataclass(frozen=True)
class EnvPackTools:
    """The tools an env is built with: pip (the wheel route; None runs this interpreter's pip),
    the conda executable's name, the process runner and the PATH lookup. Tests pass fakes here."""

    pip: PipRunner | None = None
    conda: str = "conda"
    run: Runner = subprocess.run
    which: Callable[[str], str | None] = shutil.which


def _build_env(staging: Path, options: EnvPackOptions, tools: EnvPackTools, *, method: str,
               key: str) -> JsonObject:
    """Build the env (``options`` already normalized) with the resolved ``method`` into the
    cache's staging folder, beside the meta.json a later :func:`_valid_entry` checks it against."""
    o = options
    if method == "conda":
        built, meta = conda_pack_env(staging, requirements=o.requirements,
                                     python_version=o.python_version, name=o.name,
                                     conda=tools.conda, run=tools.run, which=tools.which)
    else:
        built, meta = wheel_env(staging, requirements=o.requirements,
                                python_version=o.python_version, platform=o.platform,
                                name=o.name, pip=tools.pip, packed=True)
    assert built == staging / f"{options.name}.tar.gz", built
    meta = {**meta, "cache_key": key}
    (staging / CACHE_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def pack_python_env(out_dir: Path, options: EnvPackOptions,
                    tools: EnvPackTools | None = None) -> tuple[Path, JsonObject]:
    """Producer ``pack_python_env``: ``<out_dir>/<name>.tar.gz`` for ``EXECUTION_ENV_PATH``.

    ``options.method``: ``"conda"`` (:func:`conda_pack_env`), ``"wheel"`` (:func:`wheel_env`)
    or ``"auto"`` (conda-pack when conda and conda-pack are on PATH and this host matches
    ``platform``, else wheel).  ``python_version`` must be the Triton image's
    (:attr:`infra.triton.release.TritonRelease.python_version`).

    Each env is built once per :func:`env_cache_key` into ``<cache_dir>/<key>/`` (default
    ``$MME_HOME/envs``) by the build cache's own mechanism (:func:`tasks.producers.cache.cached_entry`):
    the build runs in a hidden ``.tmp-`` sibling that is renamed into place only when
    complete, under a per-key file lock, so a crash leaves no half env in the cache and
    concurrent builds of one key build it once.  A cached tarball whose sha256 no longer
    matches its meta.json is rebuilt.

    Why a key of its own and not the artifact key (the build cache keys this producer too):
    the artifact key covers the producer's code and every package version of the build; the
    env key covers only what shapes the env (requirements, Python, platform, method,
    :data:`ENV_FORMAT`). So one pip install of hundreds of MB serves every ensemble, and every
    artifact key, that asks for the same requirements, and survives edits elsewhere.
    """
    tools = tools or EnvPackTools()
    o = replace(options, requirements=_normalize_requirements(options.requirements),
                python_version=_check_python_version(options.python_version))
    resolved = _resolve_method(o.method, o.platform, tools.conda, tools.which)
    key = env_cache_key(o.requirements, o.python_version, o.platform, method=resolved)
    cache_root = Path(o.cache_dir) if o.cache_dir is not None else paths.home() / "envs"
    tar_name = f"{o.name}.tar.gz"

    def build(staging: Path) -> JsonObject:
        return _build_env(staging, o, tools, method=resolved, key=key)

    with cached_entry(cache_root, key, lambda entry: _valid_entry(entry, tar_name), build,
                      rebuild=o.rebuild) as (entry, meta, hit):
        if hit:
            LOGGER.info("envpack: reusing cached env %s", entry)
        else:
            LOGGER.info("envpack: built %s (%s bytes) in %.1fs", entry, meta.get("bytes"),
                        meta.get("build_seconds", 0))
        dest = Path(out_dir) / tar_name
        _publish_copy(entry / tar_name, dest)
    return dest, {**meta, "cache_key": key, "cache_hit": hit, "cache_entry": str(entry)}
