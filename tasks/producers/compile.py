"""Compile an ONNX model into a TensorRT plan for Triton's ``tensorrt`` backend.

A TensorRT plan only deserializes in the TensorRT version that built it (Triton server issues
#3710, #3904: "The engine plan file is not compatible with this version of TensorRT"). So the
plan is compiled in ``nvcr.io/nvidia/pytorch:<YY.MM>-py3`` of the *same* release as the
serving image ``sagemaker-tritonserver:<YY.MM>-py3``: NGC containers of one monthly release
ship the same TensorRT. A mismatched pair is refused here (:class:`ReleaseMismatch`) rather than
discovered when the endpoint fails to load the model.

Runners, tried in this order by ``compile_tensorrt`` with ``runner="auto"``:

* ``host``: ``trtexec`` on ``PATH`` or the ``tensorrt`` Python package, when its TensorRT
  version is the one of the serving release (:data:`infra.triton.release.TENSORRT_BY_RELEASE`);
* ``docker``: ``trtexec`` inside the release's NGC PyTorch image, through the Docker SDK, with
  all GPUs of the host (``--gpus all``) and the caller's uid:gid (so the plan is not root-owned).

Whatever the runner, the plan is written under a private temp folder next to the destination
and renamed into place at the end, so a half-written plan never sits at the destination; the
shared timing cache is copied in and published back the same way (concurrent builds never
interleave writes into it; the last finished build's cache wins).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from pydantic import BaseModel, ConfigDict
from pydantic import JsonValue as PydanticJson

from infra.errors import InvalidInput, MissingInput, MMEError, UserError
from infra.store.objects import TMP_PREFIX, atomic_path, sha256_file
from infra.triton.release import DEFAULT_RELEASE, TritonRelease
from infra.jsontypes import JsonObject
from tasks.producers import trt_bindings

if TYPE_CHECKING:  # docker is imported only when the Docker route runs
    from docker import DockerClient
    from docker.models.containers import Container
# The release tables (TensorRT per release) and the one default live in infra.triton.release.
FIRST_SKIP_INFERENCE_RELEASE = TritonRelease(23, 4)  # TensorRT 8.6: --skipInference (build only)

# where things live inside the compile container
C_BUILD = PurePosixPath("/workspace/build")
C_ONNX_DIR = PurePosixPath("/workspace/onnx")
PLAN_NAME = "model.plan"
CACHE_NAME = "timing.cache"
LOG_TAIL_LINES = 40

# trtexec is on PATH in the NGC PyTorch images (/opt/tensorrt/bin); the fallbacks cover images
# that only ship it under /usr/src/tensorrt/bin. "$0" is the argv[0] given after the script.
# After a successful build the engine's I/O is read back with the image's own tensorrt Python
# package (tasks.producers.trt_bindings.INSPECT_SCRIPT, passed in $MME_ENGINE_INSPECT); trtexec's verbose
# log is the fallback when that fails.
_TRTEXEC_SHIM = ('t=$(command -v trtexec || ls /opt/tensorrt/bin/trtexec '
                 '/usr/src/tensorrt/bin/trtexec 2>/dev/null | head -n1); '
                 '[ -n "$t" ] || { echo "trtexec not found in this image" >&2; exit 127; }; '
                 '"$t" "$@" || exit $?; '
                 'if [ -n "$MME_ENGINE_INSPECT" ] && command -v python3 >/dev/null 2>&1; then '
                 'python3 -c "$MME_ENGINE_INSPECT" /workspace/build/model.plan || echo "engine '
                 'inspection with the tensorrt Python API failed; reading trtexec log instead"; fi')

_TRT_RUNNING_RE = re.compile(r"\[TensorRT v(\d+)\]")
_MANAGED_FLAGS = ("--onnx", "--saveEngine", "--minShapes", "--optShapes", "--maxShapes",
                  "--workspace", "--memPoolSize", "--timingCacheFile", "--fp16")

Log = Callable[[str], object]
"""Where progress lines go (``print``, a logger's ``info``, a test's list): its result is ignored."""

Run = Callable[..., "subprocess.CompletedProcess[str]"]
"""``subprocess.run`` (or a test's fake): how nvidia-smi and trtexec are started on the host."""


class _Severity(Protocol):
    """A TensorRT ``ILogger.Severity``: an int-like enum member with a name."""

    name: str

    def __int__(self) -> int: ...


class CompileError(MMEError, RuntimeError):
    """trtexec / the TensorRT builder failed; the message carries the end of its log."""


class CompileTimeout(MMEError, TimeoutError):
    """The compile ran past ``timeout_s``; the container (or process) was killed."""


class CompileUnavailable(UserError, RuntimeError):
    """Nothing here can compile for the asked release (no matching TensorRT, no Docker GPU)."""


class ReleaseMismatch(UserError, ValueError):
    """The compiling TensorRT is not the serving Triton's: its plan would not load."""


# --------------------------------------------------------------------------- releases


def pytorch_image_for(triton_release: str | TritonRelease) -> str:
    return f"nvcr.io/nvidia/pytorch:{TritonRelease.parse(triton_release)}-py3"


def check_release_pair(compile_image_or_release: str, triton_release: str) -> str:
    """Refuse compiling with one release for a Triton of another; return the release."""
    built = TritonRelease.of_image(compile_image_or_release)
    serving = TritonRelease.of_image(triton_release)
    if built != serving:
        tb, ts = built.tensorrt_version, serving.tensorrt_version
        versions = (f" (TensorRT {tb or '?'} vs {ts or '?'})" if tb or ts else "")
        raise ReleaseMismatch(
            f"cannot compile with release {built} ({compile_image_or_release}) for Triton "
            f"release {serving}{versions}: a TensorRT plan only loads in the TensorRT version "
            f"it was built with, so compile in {pytorch_image_for(serving)} for "
            f"sagemaker-tritonserver:{serving}-py3")
    return str(built)


def parse_trt_version(text: str) -> str | None:
    """TensorRT version from trtexec's banner ``[TensorRT v8503]`` / ``[TensorRT v100400]``."""
    m = _TRT_RUNNING_RE.search(text)
    if not m:
        return None
    n = int(m.group(1))
    if n >= 10000:  # TensorRT >= 10: major*10000 + minor*100 + patch
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"  # TensorRT 8: major*1000 + minor*100 + patch


def _same_version(a: str, b: str) -> bool:
    return a.split(".")[:3] == b.split(".")[:3]


def check_host_version(host_version: str, triton_release: str, *, what: str) -> None:
    """Refuse a host TensorRT that is not the serving release's."""
    want = TritonRelease.parse(triton_release).tensorrt_version
    if want is None:
        raise ReleaseMismatch(
            f"{what} has TensorRT {host_version}, but the TensorRT of Triton release "
            f"{triton_release} is not in infra.triton.release.TENSORRT_BY_RELEASE, so the match cannot "
            f"be checked (a TensorRT plan only loads in the TensorRT version it was built with); "
            f"compile in Docker ({pytorch_image_for(triton_release)}) or add the release")
    if not _same_version(host_version, want):
        raise ReleaseMismatch(
            f"{what} has TensorRT {host_version}, but Triton release {triton_release} serves "
            f"with TensorRT {want}: a TensorRT plan only loads in the TensorRT version it was "
            f"built with; compile in {pytorch_image_for(triton_release)} instead")


# --------------------------------------------------------------------------- shapes


def parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    """``"input_ids:1x128,attention_mask:1x128"`` -> ``{"input_ids": (1, 128), ...}``."""
    out: dict[str, tuple[int, ...]] = {}
    for item in str(text).split(","):
        item = item.strip()
        name, sep, dims = item.rpartition(":")
        name = name.strip().strip("'\"")
        try:
            shape = tuple(int(d) for d in dims.strip().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d < 1 for d in shape):
            raise InvalidInput(f"shape {item!r} in {text!r} is not '<input>:<d0>x<d1>...' with "
                               f"positive dims")
        if name in out:
            raise InvalidInput(f"input {name!r} appears twice in {text!r}")
        out[name] = shape
    return out


def format_shapes(shapes: Mapping[str, Iterable[int]]) -> str:
    return ",".join(f"{n}:{'x'.join(str(d) for d in s)}" for n, s in shapes.items())


def check_profile(min_shapes: str, opt_shapes: str, max_shapes: str) -> None:
    mn, op, mx = parse_shapes(min_shapes), parse_shapes(opt_shapes), parse_shapes(max_shapes)
    if not set(mn) == set(op) == set(mx):
        raise InvalidInput(f"min/opt/max shapes name different inputs: {sorted(mn)}, "
                           f"{sorted(op)}, {sorted(mx)}")
    for name in mn:
        if not len(mn[name]) == len(op[name]) == len(mx[name]):
            raise InvalidInput(f"input {name!r}: min/opt/max shapes have different ranks")
        if not all(a <= b <= c for a, b, c in zip(mn[name], op[name], mx[name], strict=True)):
            raise InvalidInput(f"input {name!r}: need min <= opt <= max in every dimension, got "
                               f"{mn[name]}, {op[name]}, {mx[name]}")


# --------------------------------------------------------------------------- spec and argv


@dataclass
class CompileSpec:
    onnx: Path
    output: Path
    min_shapes: str
    opt_shapes: str
    max_shapes: str
    fp16: bool = False
    workspace_mib: int = 14000
    timing_cache: Path | None = None
    triton_release: str = str(DEFAULT_RELEASE)
    timeout_s: float = 3600
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    verbose: bool = False

    def __post_init__(self) -> None:
        self.onnx = Path(self.onnx)
        self.output = Path(self.output)
        self.timing_cache = Path(self.timing_cache) if self.timing_cache else None
        self.triton_release = str(TritonRelease.parse(self.triton_release))
        check_profile(self.min_shapes, self.opt_shapes, self.max_shapes)
        self.min_shapes = format_shapes(parse_shapes(self.min_shapes))
        self.opt_shapes = format_shapes(parse_shapes(self.opt_shapes))
        self.max_shapes = format_shapes(parse_shapes(self.max_shapes))
        if int(self.workspace_mib) <= 0:
            raise InvalidInput(f"workspace_mib must be positive, not {self.workspace_mib}")
        self.workspace_mib = int(self.workspace_mib)
        if not float(self.timeout_s) > 0:
            raise InvalidInput(f"timeout_s must be positive, not {self.timeout_s}")
        self.extra_args = tuple(str(a) for a in self.extra_args)
        for a in self.extra_args:
            if a.split("=", 1)[0] in _MANAGED_FLAGS:
                raise InvalidInput(f"extra argument {a!r} sets a flag that CompileSpec manages "
                                   f"(use its fields instead)")

    @property
    def release(self) -> TritonRelease:
        return TritonRelease.parse(self.triton_release)


def trtexec_command(spec: CompileSpec, *, in_container_paths: Mapping[str, Path | PurePosixPath] | None = None,
                    trtexec: str = "trtexec") -> list[str]:
    """The trtexec argv for ``spec``. ``in_container_paths`` overrides the paths trtexec sees
    (keys ``onnx``, ``plan``, ``timing_cache``); without it the spec's own paths are used."""
    paths: dict[str, Path | PurePosixPath | None] = {"onnx": spec.onnx, "plan": spec.output,
                             "timing_cache": spec.timing_cache}
    paths.update(in_container_paths or {})
    argv = [trtexec, f"--onnx={paths['onnx']}", f"--saveEngine={paths['plan']}",
            f"--minShapes={spec.min_shapes}", f"--optShapes={spec.opt_shapes}",
            f"--maxShapes={spec.max_shapes}"]
    if spec.fp16:
        argv.append("--fp16")
    if spec.release.tensorrt_major >= 10:
        argv.append(f"--memPoolSize=workspace:{spec.workspace_mib}M")
    else:
        argv.append(f"--workspace={spec.workspace_mib}")  # MiB; removed in TensorRT 10
    if spec.timing_cache is not None and paths.get("timing_cache") is not None:
        argv.append(f"--timingCacheFile={paths['timing_cache']}")
    if spec.release >= FIRST_SKIP_INFERENCE_RELEASE:
        argv.append("--skipInference")  # build and save only: no benchmark run afterwards
    if spec.verbose:
        argv.append("--verbose")
    argv.extend(spec.extra_args)
    return argv


def io_report_flags(spec: CompileSpec) -> list[str]:
    """Flags that make trtexec print what :mod:`tasks.producers.trt_bindings` reads back: ``--verbose``
    (the ONNX parser's input/output lines; its other [V] lines are kept out of the log unless
    ``spec.verbose``) and, from TensorRT 10, ``--dumpOptimizationProfile``."""
    flags = [] if spec.verbose else ["--verbose"]
    if spec.release.tensorrt_major >= 10:
        flags.append("--dumpOptimizationProfile")
    return flags


# --------------------------------------------------------------------------- shared plumbing


class TimingCacheUse(BaseModel):
    """What a build did with the shared timing cache: its file, whether it was read (it
    existed) and whether the build changed it (then it was written back)."""

    model_config = ConfigDict(frozen=True)

    path: str
    used: bool
    updated: bool


class PlanWritten(BaseModel):
    """The plan a build wrote: its sha256 and size, and the timing cache's use (when one)."""

    model_config = ConfigDict(frozen=True)

    plan_sha256: str
    plan_bytes: int
    timing_cache: TimingCacheUse | None = None


class CompileReport(BaseModel):
    """One compile, as the manifest's ``sources`` entry records it (:meth:`meta`): which
    runner built the plan (the Docker image and whether it was pulled, or the host trtexec, or
    the tensorrt package), the command, TensorRT and Triton versions, time, the plan written,
    the log's last lines, the engine's I/O read back and the GPU that built it. A model, not a
    dict, so every reader of a field is checked; the file keeps its keys (:meth:`meta`)."""

    runner: Literal["docker", "host-trtexec", "host-tensorrt-python"]
    image: str | None = None
    image_pulled: bool | None = None
    trtexec: str | None = None
    command: list[str] | None = None
    triton_release: str
    tensorrt: str | None  # None: the image printed no version and the release table has none
    seconds: float
    plan_sha256: str
    plan_bytes: int
    timing_cache: TimingCacheUse | None = None
    log_tail: list[str] | None = None
    engine_io: dict[str, PydanticJson] | None = None  # pydantic's JSON type: a field it validates
    build_gpu: dict[str, str] | None = None
    # the profile it was built for (set by compile_tensorrt, the producer)
    min_shapes: str | None = None
    opt_shapes: str | None = None
    max_shapes: str | None = None
    fp16: bool | None = None
    workspace_mib: int | None = None

    @classmethod
    def of(cls, written: PlanWritten, engine: EngineReport,
           **run: str | bool | float | list[str] | None) -> CompileReport:
        """The report of a build that wrote ``written``; ``run``: the runner's own fields
        (validated: a misspelt or mistyped one is refused)."""
        return cls.model_validate({**run, **written.model_dump(exclude_none=True),
                                   "engine_io": engine.engine_io, "build_gpu": engine.build_gpu})

    def meta(self) -> JsonObject:
        """The producer's metadata document: the fields a runner has (``tensorrt``,
        ``engine_io`` and ``build_gpu`` always, null when unknown), the same keys the dict had."""
        doc: JsonObject = self.model_dump(mode="json", exclude_none=True)
        doc.setdefault("tensorrt", None)
        doc.setdefault("engine_io", None)
        doc.setdefault("build_gpu", None)
        return doc


@dataclass(frozen=True)
class EngineReport:
    """The engine's I/O (``EngineIO.to_json()``) and the GPU that built it, as far as known."""

    engine_io: dict[str, PydanticJson] | None = None  # pydantic's JSON type: a field it validates
    build_gpu: dict[str, str] | None = None


class _Build:
    """A private temp folder next to the destination, holding the plan being built and this
    build's copy of the shared timing cache; ``finish`` publishes both atomically."""

    def __init__(self, spec: CompileSpec) -> None:
        self.spec = spec
        spec.output.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}trt-build-", dir=spec.output.parent))
        self.plan = self.dir / PLAN_NAME
        self.cache = self.dir / CACHE_NAME
        self.cache_before: str | None = None
        if spec.timing_cache is not None and spec.timing_cache.is_file():
            shutil.copyfile(spec.timing_cache, self.cache)
            self.cache_before = sha256_file(self.cache)

    def finish(self, log_tail: list[str], log: Log) -> PlanWritten:
        """Move the plan into place (atomically) and keep the timing cache when it changed."""
        if not self.plan.is_file() or self.plan.stat().st_size == 0:
            raise CompileError(f"TensorRT reported success but wrote no plan ({PLAN_NAME} is "
                               f"{'empty' if self.plan.exists() else 'missing'}); last lines:\n"
                               + "\n".join(log_tail))
        with atomic_path(self.spec.output) as tmp:
            os.replace(self.plan, tmp)
        written = PlanWritten(plan_sha256=sha256_file(self.spec.output),
                              plan_bytes=self.spec.output.stat().st_size)
        tc = self.spec.timing_cache
        if tc is not None:
            updated = False
            if self.cache.is_file() and self.cache.stat().st_size > 0:
                updated = sha256_file(self.cache) != self.cache_before
                if updated:
                    with atomic_path(tc) as tmp:
                        shutil.copyfile(self.cache, tmp)
                    log(f"timing cache {tc} {'updated' if self.cache_before else 'created'}")
            written = written.model_copy(update={"timing_cache": TimingCacheUse(
                path=str(tc), used=self.cache_before is not None, updated=updated)})
        return written

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _LineSplitter:
    """Re-joins streamed chunks into lines; forwards them to ``log`` and the tail, except
    trtexec's [V] lines unless ``verbose`` (``--verbose`` is always on for the I/O report, and
    its tactic lines would bury the log); keeps the lines the I/O report is read from."""

    MAX_IO_LINES = 5000

    def __init__(self, log: Log, tail: deque, *, verbose: bool = True) -> None:
        self.log, self.tail, self.buf, self.verbose = log, tail, "", verbose
        self.all_text: list[str] = []
        self.io_lines: list[str] = []

    def feed(self, chunk: bytes | str) -> None:
        text = chunk.decode("utf-8", "replace") if isinstance(chunk, bytes) else chunk
        self.buf += text.replace("\r\n", "\n")
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            self._emit(line)

    def close(self) -> None:
        if self.buf:
            self._emit(self.buf)
            self.buf = ""

    def _emit(self, line: str) -> None:
        line = line.rstrip()
        if len(self.all_text) < 50:  # the banner with the TensorRT version is near the top
            self.all_text.append(line)
        if trt_bindings.is_relevant(line) and len(self.io_lines) < self.MAX_IO_LINES:
            self.io_lines.append(line)
        if not self.verbose and ("[V] " in line[:40]):
            return
        self.tail.append(line)
        try:
            self.log(line)
        except Exception:  # noqa: BLE001 - a broken log callback must not break the compile
            pass


def _user() -> str | None:
    if hasattr(os, "getuid") and hasattr(os, "getgid"):
        return f"{os.getuid()}:{os.getgid()}"
    return None


# --------------------------------------------------------------------------- docker route


def _docker_unavailable(what: str, err: BaseException) -> CompileUnavailable:
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return CompileUnavailable(f"Docker engine at {host} {what}: {err}")


def _ensure_image(client: DockerClient, image: str, log: Log) -> bool:
    """Pull ``image`` unless present; True when it was pulled."""
    import docker

    try:
        client.images.get(image)
        return False
    except docker.errors.ImageNotFound:
        pass
    repo, _, tag = image.rpartition(":")
    t0 = time.monotonic()
    log(f"pulling {image} (first compile with this release; the NGC PyTorch image is ~10 GB)")
    api = getattr(client, "api", None)
    if api is not None and hasattr(api, "pull"):
        last = 0.0
        layers: dict[str, str] = {}
        for ev in api.pull(repo, tag=tag, stream=True, decode=True):
            if not isinstance(ev, dict):
                continue
            if ev.get("error"):
                raise CompileError(f"pulling {image} failed: {ev['error']}")
            if ev.get("id") and ev.get("status"):
                layers[ev["id"]] = ev["status"]
            now = time.monotonic()
            if not ev.get("id") or now - last >= 15:
                done = sum(s in ("Pull complete", "Already exists") for s in layers.values())
                log(f"pull {image}: {ev.get('status', '')} ({done}/{len(layers)} layers done, "
                    f"{now - t0:.0f} s)")
                last = now
    else:
        client.images.pull(repo, tag=tag)
    log(f"pulled {image} in {time.monotonic() - t0:.0f} s")
    return True


def _docker_client(client: DockerClient | None) -> DockerClient:
    """``client``, or the engine of the environment (``DOCKER_HOST``) when none is given."""
    if client is not None:
        return client
    import docker

    try:
        return docker.from_env()
    except docker.errors.DockerException as e:
        raise _docker_unavailable("cannot be reached", e) from e


def _start_container(client: DockerClient, image: str, argv: list[str], onnx: Path,
                     build: _Build) -> Container:
    """Start trtexec detached in ``image`` with every GPU, the ONNX folder read-only and the
    build folder writable, as the caller's uid:gid; a GPU-less engine is :class:`CompileUnavailable`."""
    import docker

    try:
        return client.containers.run(
            image, command=["/bin/sh", "-c", _TRTEXEC_SHIM, *argv], detach=True,
            device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])],
            volumes={str(onnx.parent): {"bind": str(C_ONNX_DIR), "mode": "ro"},
                     str(build.dir.resolve()): {"bind": str(C_BUILD), "mode": "rw"}},
            working_dir=str(C_BUILD), user=_user(),
            environment={"HOME": "/tmp", "MME_ENGINE_INSPECT": trt_bindings.INSPECT_SCRIPT},
            remove=False)
    except docker.errors.APIError as e:
        msg = str(e).lower()
        if "device driver" in msg or "gpu" in msg or "nvidia" in msg:
            raise _docker_unavailable(
                "cannot give containers a GPU (is the NVIDIA Container Toolkit installed "
                "and the engine restarted?)", e) from e
        raise


def _follow_logs(container: Container, splitter: _LineSplitter) -> threading.Thread:
    """Stream the container's log into ``splitter`` on a daemon thread (started)."""

    def pump() -> None:
        try:
            for chunk in container.logs(stream=True, follow=True):
                splitter.feed(chunk)
        except Exception as e:  # noqa: BLE001 - the wait below decides the outcome
            splitter.feed(f"(log stream ended: {e})\n")
        finally:
            splitter.close()

    reader = threading.Thread(target=pump, name="trtexec-logs", daemon=True)
    reader.start()
    return reader


def _wait_container(container: Container, reader: threading.Thread, spec: CompileSpec, *,
                    image: str, t0: float, tail: deque[str]) -> int:
    """The container's exit status; past ``spec.timeout_s`` it is killed (:class:`CompileTimeout`)."""
    import requests

    try:
        result = container.wait(timeout=spec.timeout_s)
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as e:
        # over a unix socket a read timeout surfaces as ConnectionError("Read timed out")
        if (isinstance(e, requests.exceptions.ConnectionError)
                and not isinstance(e, requests.exceptions.ReadTimeout)
                and time.monotonic() - t0 < spec.timeout_s * 0.95):
            raise
        try:
            container.kill()
        except Exception:  # noqa: BLE001 - it may have exited meanwhile
            pass
        reader.join(timeout=10)
        raise CompileTimeout(
            f"trtexec did not finish within {spec.timeout_s:g} s in {image}; the container "
            f"was killed. Last lines:\n" + "\n".join(tail)) from e
    reader.join(timeout=30)
    return int(result.get("StatusCode", -1)) if isinstance(result, dict) else int(result)


def _remove_container(container: Container, log: Log) -> None:
    try:
        container.remove(force=True)
    except Exception as e:  # noqa: BLE001
        log(f"could not remove container {getattr(container, 'id', '?')}: {e}")


def _image_tensorrt(spec: CompileSpec, image: str, banner: list[str], log: Log) -> str | None:
    """The TensorRT version the image's trtexec printed (else the table's); a disagreement with
    the release table is logged, since the plan matches the image, not the table."""
    trt_version = parse_trt_version("\n".join(banner))
    want = spec.release.tensorrt_version
    if trt_version and want and not _same_version(trt_version, want):
        log(f"warning: {image} reports TensorRT {trt_version}, the table says {want} for "
            f"{spec.triton_release}; the plan matches the image, fix infra.triton.release.TENSORRT_BY_RELEASE")
    return trt_version or want


def compile_in_docker(spec: CompileSpec, *, client: DockerClient | None = None, log: Log = print,
                      image: str | None = None) -> CompileReport:
    """Compile with trtexec in the release's NGC PyTorch image; return metadata."""
    image = image or pytorch_image_for(spec.triton_release)
    check_release_pair(image, spec.triton_release)
    onnx = spec.onnx.resolve()
    if not onnx.is_file():
        raise MissingInput(f"ONNX model {onnx} does not exist")
    client = _docker_client(client)
    pulled = _ensure_image(client, image, log)

    build = _Build(spec)
    argv = trtexec_command(spec, in_container_paths={
        "onnx": C_ONNX_DIR / onnx.name, "plan": C_BUILD / PLAN_NAME,
        "timing_cache": C_BUILD / CACHE_NAME}) + io_report_flags(spec)
    container = None
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    splitter = _LineSplitter(log, tail, verbose=spec.verbose)
    t0 = time.monotonic()
    try:
        log(f"compiling {onnx.name} -> {spec.output.name} in {image}: {' '.join(argv)}")
        container = _start_container(client, image, argv, onnx, build)
        reader = _follow_logs(container, splitter)
        status = _wait_container(container, reader, spec, image=image, t0=t0, tail=tail)
        seconds = time.monotonic() - t0
        if status != 0:
            hint = " (137: killed, often out of memory)" if status == 137 else ""
            raise CompileError(f"trtexec exited with status {status}{hint} in {image}. "
                               f"Last lines:\n" + "\n".join(tail))
        written = build.finish(list(tail), log)
    finally:
        if container is not None:
            _remove_container(container, log)
        build.cleanup()

    trt_version = _image_tensorrt(spec, image, splitter.all_text, log)
    log(f"compiled {spec.output} ({written.plan_bytes} bytes) in {seconds:.0f} s")
    return CompileReport.of(written, _log_report(splitter.io_lines), runner="docker", image=image,
                            image_pulled=pulled, command=argv, triton_release=spec.triton_release,
                            tensorrt=trt_version, seconds=round(seconds, 1), log_tail=list(tail))


# --------------------------------------------------------------------------- host route


def _import_tensorrt() -> ModuleType:
    return importlib.import_module("tensorrt")


def trtexec_version(exe: str, *, run: Run = subprocess.run) -> str:
    """TensorRT version of a trtexec binary, from the banner that every invocation prints."""
    try:
        proc = run([exe, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                   text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        raise CompileUnavailable(f"trtexec at {exe} does not run: {e}") from e
    version = parse_trt_version(proc.stdout or "")
    if version is None:
        raise CompileUnavailable(f"trtexec at {exe}: no '[TensorRT vNNNN]' banner in its "
                                 f"--help output, cannot tell its TensorRT version")
    return version


def compile_on_host(spec: CompileSpec, *, run: Run = subprocess.run,
                    which: Callable[[str], str | None] = shutil.which, log: Log = print,
                    import_tensorrt: Callable[[], ModuleType] = _import_tensorrt) -> CompileReport:
    """Compile without Docker: ``trtexec`` on PATH, else the ``tensorrt`` Python package.
    Its TensorRT must be the serving release's (else :class:`ReleaseMismatch`)."""
    onnx = spec.onnx.resolve()
    if not onnx.is_file():
        raise MissingInput(f"ONNX model {onnx} does not exist")
    exe = which("trtexec")
    if exe:
        version = trtexec_version(exe, run=run)
        check_host_version(version, spec.triton_release, what=f"trtexec at {exe}")
        return _compile_trtexec_host(spec, exe, version, run=run, log=log)
    try:
        trt = import_tensorrt()
    except ImportError as e:
        raise CompileUnavailable("no trtexec on PATH and no tensorrt Python package") from e
    version = str(trt.__version__)
    check_host_version(version, spec.triton_release, what="the tensorrt Python package")
    return _compile_tensorrt_api(spec, trt, log=log)


def _compile_trtexec_host(spec: CompileSpec, exe: str, version: str, *,
                          run: Run, log: Log) -> CompileReport:
    build = _Build(spec)
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    splitter = _LineSplitter(log, tail, verbose=spec.verbose)
    argv = trtexec_command(spec, trtexec=exe, in_container_paths={
        "onnx": spec.onnx.resolve(), "plan": build.plan,
        "timing_cache": build.cache}) + io_report_flags(spec)
    t0 = time.monotonic()
    try:
        log(f"compiling {spec.onnx.name} -> {spec.output.name} with {exe}: {' '.join(argv)}")
        try:
            proc = run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=spec.timeout_s)
        except subprocess.TimeoutExpired as e:
            out = e.stdout or b""
            splitter.feed(out)
            splitter.close()
            raise CompileTimeout(f"trtexec did not finish within {spec.timeout_s:g} s and was "
                                 f"killed. Last lines:\n" + "\n".join(tail)) from e
        splitter.feed(proc.stdout or "")
        splitter.close()
        seconds = time.monotonic() - t0
        if proc.returncode != 0:
            raise CompileError(f"trtexec exited with status {proc.returncode}. Last lines:\n"
                               + "\n".join(tail))
        written = build.finish(list(tail), log)
    finally:
        build.cleanup()
    log(f"compiled {spec.output} ({written.plan_bytes} bytes) in {seconds:.0f} s")
    return CompileReport.of(written, _log_report(splitter.io_lines), runner="host-trtexec", trtexec=exe,
                            command=argv, triton_release=spec.triton_release, tensorrt=version,
                            seconds=round(seconds, 1), log_tail=list(tail))


def _compile_tensorrt_api(spec: CompileSpec, trt: ModuleType, *, log: Log) -> CompileReport:
    """The trtexec build, with the TensorRT Python API (8.6 / 10.x)."""
    build = _Build(spec)
    t0 = time.monotonic()
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)

    # TensorRT's pybind11 logger class: no stubs (a third-party gap), so the base is Any to mypy
    logger_base: Any = trt.ILogger

    class _Logger(logger_base):
        def __init__(self) -> None:
            logger_base.__init__(self)

        def log(self, severity: _Severity, msg: str) -> None:  # noqa: A003 - TensorRT's API
            if int(severity) <= int(trt.Logger.VERBOSE if spec.verbose else trt.Logger.WARNING):
                tail.append(f"[{severity.name}] {msg}")
                log(f"[TRT] {msg}")

    try:
        logger = _Logger()
        builder = trt.Builder(logger)
        major = int(str(trt.__version__).split(".")[0])
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(spec.onnx.resolve())):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise CompileError(f"TensorRT cannot parse {spec.onnx}:\n" + "\n".join(errors))
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mib << 20)
        if spec.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        mn, op, mx = (parse_shapes(s) for s in (spec.min_shapes, spec.opt_shapes, spec.max_shapes))
        inputs = {network.get_input(i).name for i in range(network.num_inputs)}
        if set(mn) != inputs:
            raise CompileError(f"shapes name inputs {sorted(mn)}, the ONNX has {sorted(inputs)}")
        for name in mn:
            profile.set_shape(name, mn[name], op[name], mx[name])
        config.add_optimization_profile(profile)
        if spec.timing_cache is not None:
            data = build.cache.read_bytes() if build.cache.is_file() else b""
            config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise CompileError("TensorRT builder returned no engine. Last lines:\n"
                               + "\n".join(tail))
        build.plan.write_bytes(bytes(serialized))
        engine_io = _inspect_with_api(trt, bytes(serialized))
        if spec.timing_cache is not None:
            build.cache.write_bytes(bytes(config.get_timing_cache().serialize()))
        seconds = time.monotonic() - t0
        written = build.finish(list(tail), log)
    finally:
        build.cleanup()
    return CompileReport.of(written, _engine_report(engine_io), runner="host-tensorrt-python",
                            triton_release=spec.triton_release, tensorrt=str(trt.__version__),
                            seconds=round(seconds, 1), log_tail=list(tail))


def _inspect_with_api(trt: ModuleType, serialized: bytes) -> trt_bindings.EngineIO | None:
    """The engine's I/O through the tensorrt API (the same code the container runs)."""
    namespace: dict[str, object] = {"__name__": "mme_engine_inspect"}
    try:
        exec(compile(trt_bindings.INSPECT_SCRIPT, "INSPECT_SCRIPT", "exec"), namespace)  # noqa: S102
        engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(serialized)
        describe = cast(Callable[[object, ModuleType], list[dict[str, object]]], namespace["describe"])
        return trt_bindings.from_api(describe(engine, trt)) if engine else None
    except Exception:  # no report means the render step refuses the plan
        logging.getLogger("mme.compile").exception("reading the engine's I/O failed")
        return None


def _engine_report(io: trt_bindings.EngineIO | None) -> EngineReport:
    """``engine_io`` (tensors, source) and ``build_gpu`` as trtexec reported them."""
    if io is None:
        return EngineReport()
    return EngineReport(engine_io=io.to_json(), build_gpu=dict(io.device) if io.device else None)


def _log_report(lines: list[str]) -> EngineReport:
    """:func:`_engine_report` from trtexec's log; the build device even without I/O lines."""
    out = _engine_report(trt_bindings.parse_trtexec_log(lines))
    device = trt_bindings.parse_device(lines)
    if device and out.build_gpu is None:
        return EngineReport(engine_io=out.engine_io, build_gpu=device)
    return out


# --------------------------------------------------------------------------- producer


def host_gpu(*, run: Run, which: Callable[[str], str | None]) -> dict[str, str]:
    """The first GPU as nvidia-smi names it: ``{"name": ..., "compute_capability": "8.6"}``
    (``compute_cap`` needs a driver from 2022 on; without it only the name), {} without one."""
    exe = which("nvidia-smi")
    if not exe:
        return {}
    for fields in ("name,compute_cap", "name"):
        try:
            proc = run([exe, f"--query-gpu={fields}", "--format=csv,noheader"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=30)
            first = (proc.stdout or "").strip().splitlines()[0] if proc.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError, IndexError):
            first = ""
        name, _, cc = (part.strip() for part in first.rpartition(",")) \
            if fields != "name" and "," in first else (first.strip(), "", "")
        if name:
            gpu = {"name": name}
            if re.fullmatch(r"\d+\.\d+", cc):
                gpu["compute_capability"] = cc
            return gpu
    return {}


def _gpu_slug(*, run: Run, which: Callable[[str], str | None]) -> str:
    """``nvidia-h100-80gb-hbm3`` for the first GPU, ``unknown-gpu`` when nvidia-smi is absent.
    Timing caches are per GPU model, so the shared cache file is named after it."""
    name = host_gpu(run=run, which=which).get("name", "")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "unknown-gpu"


def default_timing_cache_dir(triton_release: str) -> Path:
    from infra.paths import home

    return home() / "trt-timing-cache" / str(TritonRelease.parse(triton_release))


@dataclass(frozen=True)
class CompileOptions:
    """The ``compile_tensorrt`` producer's parameters, named as in ``ensemble.yaml``
    (``artifacts.<name>.params``); an unknown name is refused when this is built."""

    onnx: Path
    min_shapes: str
    opt_shapes: str
    max_shapes: str
    triton_release: str = str(DEFAULT_RELEASE)
    fp16: bool = False
    workspace_mib: int = 14000
    timing_cache_dir: str | Path | None = None
    runner: str = "auto"
    timeout_s: float = 3600
    extra_args: Iterable[str] = ()


@dataclass(frozen=True)
class CompileHost:
    """How the compile reaches this host: the Docker client, the process runner, the PATH
    lookup, the ``tensorrt`` import and the log. Tests pass fakes here instead of patching."""

    client: DockerClient | None = None
    run: Run = subprocess.run
    which: Callable[[str], str | None] = shutil.which
    import_tensorrt: Callable[[], ModuleType] = _import_tensorrt
    log: Log | None = None


def compile_tensorrt(out_dir: Path, options: CompileOptions,
                     host: CompileHost | None = None) -> tuple[Path, JsonObject]:
    """Producer: ``options.onnx`` -> ``out_dir/model.plan`` for Triton ``options.triton_release``.

    ``options.runner``: ``host`` (trtexec / tensorrt package of the release's TensorRT),
    ``docker`` (the release's NGC PyTorch image with the host's GPUs) or ``auto`` (host if it
    matches, else Docker if an engine answers, else :class:`CompileUnavailable` saying what was
    looked for). The timing cache is shared by all builds of a release and GPU model:
    ``$MME_HOME/trt-timing-cache/<release>/<gpu>.cache`` unless ``timing_cache_dir`` is given.
    """
    o, h = options, host or CompileHost()
    if o.runner not in ("auto", "host", "docker"):
        raise InvalidInput(f"runner must be auto, host or docker, not {o.runner!r}")
    log = h.log or logging.getLogger("mme.compile").info
    triton_release = str(TritonRelease.parse(str(o.triton_release)))
    cache_dir = Path(o.timing_cache_dir) if o.timing_cache_dir else default_timing_cache_dir(
        triton_release)
    cache_file = cache_dir / f"{_gpu_slug(run=h.run, which=h.which)}.cache"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = CompileSpec(onnx=Path(o.onnx), output=out_dir / PLAN_NAME, min_shapes=o.min_shapes,
                       opt_shapes=o.opt_shapes, max_shapes=o.max_shapes, fp16=o.fp16,
                       workspace_mib=o.workspace_mib, timing_cache=cache_file,
                       triton_release=triton_release, timeout_s=o.timeout_s,
                       extra_args=tuple(o.extra_args))

    if o.runner == "host":
        report = compile_on_host(spec, run=h.run, which=h.which, log=log,
                                 import_tensorrt=h.import_tensorrt)
    elif o.runner == "docker":
        report = compile_in_docker(spec, client=h.client, log=log)
    else:
        report = _compile_auto(spec, client=h.client, run=h.run, which=h.which,
                               import_tensorrt=h.import_tensorrt, log=log)
    report = report.model_copy(update={"min_shapes": spec.min_shapes, "opt_shapes": spec.opt_shapes,
                                       "max_shapes": spec.max_shapes, "fp16": spec.fp16,
                                       "workspace_mib": spec.workspace_mib})
    report = _record_engine(spec, report, run=h.run, which=h.which, log=log)
    return spec.output, report.meta()


def _record_engine(spec: CompileSpec, report: CompileReport, *, run: Run,
                   which: Callable[[str], str | None], log: Log) -> CompileReport:
    """The report with the build GPU (the manifest's sources keep it, so a deploy can warn
    when the serving instance has another GPU architecture), after writing ``engine_io.json``
    beside the plan (the render step checks it against the config before packing)."""
    gpu = report.build_gpu or host_gpu(run=run, which=which) or None
    report = report.model_copy(update={"build_gpu": gpu})
    if gpu is None:
        log("warning: could not tell which GPU built this plan (no 'Selected Device' line from "
            "trtexec, no nvidia-smi); a deploy cannot check it against the instance's GPU")
    if report.engine_io is None:
        log("warning: could not read the engine's inputs and outputs back (no tensorrt API, no "
            "binding lines in trtexec's log); the render step will refuse this plan")
    sidecar = {"engine_io": report.engine_io, "build_gpu": gpu,
               "triton_release": spec.triton_release, "tensorrt": report.tensorrt}
    with atomic_path(spec.output.parent / trt_bindings.SIDECAR_NAME) as tmp:
        Path(tmp).write_text(json.dumps(sidecar, indent=2, sort_keys=True))
    return report


def _compile_auto(spec: CompileSpec, *, client: DockerClient | None, run: Run,
                  which: Callable[[str], str | None], import_tensorrt: Callable[[], ModuleType],
                  log: Log) -> CompileReport:
    rel = spec.triton_release
    want = TritonRelease.parse(rel).tensorrt_version or "unknown (release not in the table)"
    looked: list[str] = []

    exe = which("trtexec")
    if exe:
        try:
            version = trtexec_version(exe, run=run)
            check_host_version(version, rel, what=f"trtexec at {exe}")
        except (ReleaseMismatch, CompileUnavailable) as e:
            looked.append(f"trtexec on PATH: {e}")
        else:
            if not spec.onnx.is_file():
                raise MissingInput(f"ONNX model {spec.onnx.resolve()} does not exist")
            return _compile_trtexec_host(spec, exe, version, run=run, log=log)
    else:
        looked.append("trtexec on PATH: not found")

    try:
        trt = import_tensorrt()
    except ImportError:
        looked.append("tensorrt Python package: not installed")
    else:
        try:
            check_host_version(str(trt.__version__), rel, what="the tensorrt Python package")
            return compile_on_host(spec, run=run, which=lambda _name: None, log=log,
                                   import_tensorrt=lambda: trt)
        except ReleaseMismatch as e:
            looked.append(f"tensorrt Python package: {e}")

    try:
        client = _docker_client(client)
        try:
            client.ping()
        except Exception as e:  # noqa: BLE001 - any failure means "no engine here"
            raise _docker_unavailable("does not answer", e) from e
    except CompileUnavailable as e:
        looked.append(f"Docker engine with GPU: {e}")
    else:
        return compile_in_docker(spec, client=client, log=log)

    raise CompileUnavailable(
        f"cannot compile a TensorRT plan for Triton release {rel} (TensorRT {want}) on this "
        f"host; looked for:\n  - " + "\n  - ".join(looked)
        + f"\nInstall the NVIDIA Container Toolkit with a Docker engine (the compile runs in "
          f"{pytorch_image_for(rel)}), or TensorRT {want} (trtexec on PATH), on a GPU host")
