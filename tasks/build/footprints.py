"""What one ensemble costs an instance: bytes on disk, memory when loaded, load/unload and
service times. Each figure says whether it was measured (where, on what hardware) or estimated
(by which formula), so every number in a plan can be traced.

Read from a manifest's ``footprint`` field when the build or ``mme profile`` recorded one, else
estimated from the manifest's tarball bytes by the formulas below (stated in the record).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from infra.jsontypes import JsonObject
from infra.records.manifest import Manifest
from infra.processes.ownership import owner
from infra.triton.measure import MEMORY_BASIS, LoadRun, timed_load, timed_unload
from tasks.runtime.hardware import hardware

MIB = 1024 ** 2
# The estimate formulas, named in every estimated figure.
UNPACK_FACTOR = 1.1  # gzip of weights saves ~10%: unpacked = tarball x 1.1
MODELMESH_FACTOR = 1.25  # ModelMesh sizes a model as its disk size x 1.25 plus a buffer
PYTHON_STUB_HOST_BYTES = 64 * MIB  # one Triton Python-backend stub process (interpreter + numpy)
CUDA_CONTEXT_BYTES = 300 * MIB  # one CUDA context (a GPU Python stub holds its own)
DISK_LOAD_BYTES_PER_S = 200e6  # read + deserialize from the local disk cache
STORE_BYTES_PER_S = 100e6  # S3 download + extract on a cold load
LOAD_FIXED_S = 0.5  # Triton's per-load overhead (config parse, stub start)
FORMULAS = {
    "unpack-x1.1": "unpacked bytes = tarball bytes x 1.1",
    "modelmesh-x1.25+stub": ("host memory = unpacked bytes x 1.25 (ModelMesh's disk x 1.25) "
                             "+ 64 MiB per Python stub"),
    "modelmesh-x1.25+cuda-context": "GPU memory = unpacked bytes x 1.25 + 300 MiB CUDA context per GPU Python stub",
    "fixed+disk-throughput": "load from disk = 0.5 s + unpacked bytes / 200 MB/s",
    "disk-load+store-throughput": "cold load = load from disk + tarball bytes / 100 MB/s (download + extract)",
    "fixed-unload": "unload = 0.2 s",
    "assumed-service": ("service time: 10 ms at batch 1, 40 ms at max batch (no measurement: "
                        "measure with `mme profile`)"),
}


class Figure(BaseModel):
    """One number and where it came from."""

    model_config = ConfigDict(extra="allow")
    value: float
    status: Literal["measured", "estimated"]
    where: str | None = None  # measured: the command/host; estimated: the input it was derived from
    hardware: str | None = None
    formula: str | None = None  # a key of FORMULAS when estimated
    # memory figures: how the pages were counted ("pss": shared pages split among the processes
    # that map them; "uss": private pages; "rss": every mapped page, shared ones once per process)
    basis: str | None = None


class FootprintSource(BaseModel):
    """Where a fleet variant's footprint came from: the canary it was measured on (and the
    template key), or, when nothing was measured, that it is estimated and why."""

    model_config = ConfigDict(extra="allow")
    measured_on: str | None = None
    template_key: str | None = None
    estimated: str | None = None
    reason: str | None = None


class FootprintRow(BaseModel):
    """One footprint as a table row (``mme plan``'s report): each figure as text with its
    m(easured)/e(stimated) mark; the field aliases are the column headers."""

    model_config = ConfigDict(frozen=True)
    target_model: str
    tarball: str
    host_mem: str
    gpu_mem: str
    load_cold: str
    load_disk: str
    service_b1: str

    def cells(self) -> dict[str, str]:
        """Column header -> cell, in column order."""
        headers = {"host_mem": "host mem", "gpu_mem": "GPU mem", "load_cold": "load cold",
                   "load_disk": "load disk", "service_b1": "service b1"}
        return {headers.get(k, k): v for k, v in self.model_dump().items()}


class Footprint(BaseModel):
    """The per-ensemble footprint record (bytes, seconds)."""

    model_config = ConfigDict(extra="allow")
    target_model: str
    tarball_bytes: Figure
    unpacked_bytes: Figure
    host_memory_bytes: Figure
    gpu_memory_bytes: Figure
    load_cold_s: Figure
    load_disk_s: Figure
    unload_s: Figure
    service_batch1_s: Figure
    service_max_batch_s: Figure
    max_batch: int = 1
    host_memory_uss_bytes: Figure | None = None  # private pages only: what unloading frees
    source: FootprintSource | None = None  # a fleet variant's: the canary, or why estimated

    @model_validator(mode="after")
    def _old_records_counted_rss(self) -> Footprint:
        """Footprints measured before the PSS probe recorded summed RSS without saying so: read
        them as basis "rss" (an overcount: shared library pages once per Python stub, ~2x)."""
        if self.host_memory_bytes.status == "measured" and self.host_memory_bytes.basis is None:
            self.host_memory_bytes.basis = "rss"
        return self

    def to_record(self) -> JsonObject:
        """The manifest's ``footprint`` document (unset figures left out)."""
        return self.model_dump(mode="json", exclude_none=True)

    def summary(self) -> FootprintRow:
        """One table row: value plus m(easured)/e(stimated), and how measured memory was counted."""
        def cell(f: Figure, scale: float, unit: str) -> str:
            return f"{f.value / scale:.3g} {unit} ({f.status[0]})"
        host = cell(self.host_memory_bytes, MIB, "MiB")
        if self.host_memory_bytes.basis == "rss":
            host += " rss (old record: counts shared pages per stub; re-run mme profile)"
        elif self.host_memory_bytes.basis:
            host += f" {self.host_memory_bytes.basis}"
        return FootprintRow(target_model=self.target_model, tarball=cell(self.tarball_bytes, MIB, "MiB"),
                            host_mem=host, gpu_mem=cell(self.gpu_memory_bytes, MIB, "MiB"),
                            load_cold=cell(self.load_cold_s, 1, "s"), load_disk=cell(self.load_disk_s, 1, "s"),
                            service_b1=cell(self.service_batch1_s, 1e-3, "ms"))


def _est(value: float, formula: str, where: str) -> Figure:
    return Figure(value=value, status="estimated", where=where, formula=formula)


def estimate_footprint(target_model: str, tarball_bytes: int, *, gpu: bool, python_stubs: int = 1,
                       measured_load_s: float | None = None) -> Footprint:
    """The footprint by the stated formulas, from the tarball's size alone. ``measured_load_s``
    (the verify step's load time, when the manifest has it) replaces the load-from-disk estimate."""
    where = f"tarball {tarball_bytes} bytes"
    unpacked = tarball_bytes * UNPACK_FACTOR
    disk_load = LOAD_FIXED_S + unpacked / DISK_LOAD_BYTES_PER_S
    load_disk = (Figure(value=measured_load_s, status="measured", where="build verify step (Triton load)",
                        hardware=hardware())
                 if measured_load_s is not None else _est(disk_load, "fixed+disk-throughput", where))
    return Footprint(
        target_model=target_model,
        tarball_bytes=Figure(value=tarball_bytes, status="measured", where="manifest bytes"),
        unpacked_bytes=_est(unpacked, "unpack-x1.1", where),
        host_memory_bytes=_est(unpacked * MODELMESH_FACTOR + python_stubs * PYTHON_STUB_HOST_BYTES,
                               "modelmesh-x1.25+stub", where),
        gpu_memory_bytes=_est(unpacked * MODELMESH_FACTOR + python_stubs * CUDA_CONTEXT_BYTES if gpu else 0.0,
                              "modelmesh-x1.25+cuda-context", where),
        load_disk_s=load_disk,
        load_cold_s=_est(load_disk.value + tarball_bytes / STORE_BYTES_PER_S, "disk-load+store-throughput", where),
        unload_s=_est(0.2, "fixed-unload", where),
        service_batch1_s=_est(0.010, "assumed-service", where),
        service_max_batch_s=_est(0.040, "assumed-service", where), max_batch=1)


def from_manifest(manifest: Manifest, gpu: bool | None = None) -> Footprint:
    """The manifest's recorded footprint, else the estimate from its bytes. ``gpu`` defaults to
    whether the build target is a GPU one (``sagemaker-gpu``)."""
    doc = getattr(manifest, "footprint", None)
    if doc:
        return Footprint.model_validate(doc)
    needs_gpu = gpu if gpu is not None else (manifest.target or "").endswith("gpu")
    extra = manifest.validation.model_extra or {}
    measured = {field: fig for key, field in VERIFY_FIGURES.items()
                if (fig := _verify_figure(extra, key)) is not None}
    load = measured.get("load_disk_s")
    fp = estimate_footprint(manifest.target_model, manifest.bytes, gpu=needs_gpu,
                            measured_load_s=load.value if load else None)
    return fp.model_copy(update=measured)


# What the build's verify step measures when it loads a variant in Triton (the fleet build's
# canaries, tasks/fleet/verify.py): validation key -> footprint figure. The tarball is extracted
# before the load is timed, so its load is a load from disk.
VERIFY_FIGURES = {"load_seconds": "load_disk_s", "unload_seconds": "unload_s",
                  "service_seconds": "service_batch1_s"}


def _verify_figure(extra: Mapping[str, object], key: str) -> Figure | None:
    """A validation time as a measured figure (where: the verify step; hardware: as it recorded,
    unknown in manifests written before it did)."""
    value = extra.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    hardware = extra.get("measured_on")
    return Figure(value=float(value), status="measured", where="build verify step (Triton: load, sample, unload)",
                  hardware=hardware if isinstance(hardware, str) else None)


# ------------------------------------------------------------------------------ measurement
# Every load below goes through the one harness (infra.triton.measure: LoadRun, timed_load,
# timed_unload), and every memory figure through its one probe (basis MEMORY_BASIS, "pss").


def _measured(where: str, hardware: str) -> Callable[..., Figure]:
    """A maker of measured figures that share one provenance: ``m(value=..., basis=...)``."""
    return partial(Figure, status="measured", where=where, hardware=hardware)


def _service_time(run: LoadRun, inputs: dict[str, np.ndarray], repeats: int) -> float:
    """Median seconds of one inference of the loaded model (after one warm-up call)."""
    import httpx

    from infra.aws.runtime_client import infer_direct

    with httpx.Client(base_url=run.server.url, timeout=120) as client:
        return run.service_time(lambda: infer_direct(client, run.model, inputs), repeats)


def _batched(inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    return {k: np.repeat(v[:1], batch, axis=0) for k, v in inputs.items()}


def _entry_model(repo: Path, model: str) -> str:
    """The model to load: ``model`` when the tarball has a folder of that name, else its entry
    (ensemble) model. A fleet variant's manifest names the variant (``tenant-0001``), while its
    tarball holds the template's models (``image_classifier_tenant`` ...)."""
    from infra.triton.model_repo import find_models

    if (repo / model).is_dir():
        return model
    entry, _ = find_models(repo, model)
    return entry or model


def measure_footprint(tarball: Path, model: str, inputs: dict[str, np.ndarray], max_batch: int = 8,
                      gpu_memory: Callable[[], int | None] | None = None, repeats: int = 20) -> Footprint:
    """Load ``tarball`` in a real Triton and measure: host memory added (Triton + Python stubs,
    its process tree) as PSS (basis "pss": what the endpoint's limit counts) and USS, cold load
    (extract + load), unload, load from the disk cache (already extracted), service time at
    batch 1 and ``max_batch``; GPU memory from ``gpu_memory()`` (NVML) before/after when
    given, else estimated."""
    from infra.store.tarball import safe_extract
    from infra.triton.server import TritonServer

    with owner().scratch("mme-profile-") as tmp:
        t0 = time.perf_counter()
        repo = safe_extract(tarball, Path(tmp) / "repo")
        extract_s = time.perf_counter() - t0
        unpacked = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
        entry = _entry_model(repo, model)
        with TritonServer(repo, log_path=Path(tmp) / "triton.log") as server:
            gpu0 = gpu_memory() if gpu_memory else None
            with LoadRun(server, entry, memory=True) as run:
                added, gpu1 = run.memory_added(), gpu_memory() if gpu_memory else None
                s1 = _service_time(run, _batched(inputs, 1), repeats)
                sb = _service_time(run, _batched(inputs, max_batch), max(3, repeats // 4))
            unload = run.unload_s or 0.0
            disk = timed_load(server, entry)
    est = estimate_footprint(model, tarball.stat().st_size, gpu=gpu_memory is not None)
    m = _measured("mme profile (real Triton)", hardware())
    gpu_fig = (m(value=max(0, (gpu1 or 0) - (gpu0 or 0))) if gpu0 is not None and gpu1 is not None
               else est.gpu_memory_bytes)
    return Footprint(target_model=model, tarball_bytes=m(value=tarball.stat().st_size),
                     unpacked_bytes=m(value=unpacked),
                     host_memory_bytes=m(value=max(0, added.pss), basis=MEMORY_BASIS),
                     host_memory_uss_bytes=m(value=max(0, added.uss), basis="uss"),
                     gpu_memory_bytes=gpu_fig, load_cold_s=m(value=extract_s + run.load_s),
                     load_disk_s=m(value=disk), unload_s=m(value=unload),
                     service_batch1_s=m(value=s1), service_max_batch_s=m(value=sb),
                     max_batch=max_batch)


def nvml_used_bytes() -> Callable[[], int | None] | None:
    """A GPU-0 used-memory reader when NVML (pynvml, optional) and a GPU are present, else None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # no pynvml, no driver, no GPU: GPU memory is estimated instead
        return None
    return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


class LoadConcurrency(BaseModel):
    """Seconds one load and one unload take when k run at once (index k-1: medians), their
    spread, the samples, and where they were measured."""

    model_config = ConfigDict(frozen=True)
    load_s: list[float]
    unload_s: list[float]
    load_cv: float
    unload_cv: float
    load_samples: dict[int, list[float]]
    unload_samples: dict[int, list[float]]
    status: Literal["measured"] = "measured"
    where: str = "measure_load_concurrency (real Triton)"
    hardware: str


def measure_load_concurrency(tarballs: list[Path], rounds: int = 4) -> LoadConcurrency:
    """Seconds one load and one unload take in a real Triton when ``k`` of them run at once,
    for k = 1 .. len(tarballs) (medians over ``rounds``, each round going through every k, so a
    change in the host's other load touches every k alike): a property of the host and Triton,
    not of one model. On a 2-core host, two Python-backend ensembles loading together took
    ~2.5 s each where one alone took ~1 s (with ~1 CPU-second of work each): an endpoint that
    runs loads two at a time (``max_concurrent_loads``) pays that, and a simulator that charges
    the alone time per load predicts half its miss latency."""
    from infra.triton.model_repo import namespace_repository
    from infra.store.tarball import safe_extract
    from infra.triton.server import TritonServer

    load: dict[int, list[float]] = {}
    unload: dict[int, list[float]] = {}
    with owner().scratch("mme-profile-conc-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        entries = [namespace_repository(safe_extract(t, Path(tmp) / f"x{i}"), repo, f"conc-{i}").entry
                   for i, t in enumerate(tarballs)]
        with TritonServer(repo, log_path=Path(tmp) / "triton.log") as server:
            for _ in range(rounds):
                for k in range(1, len(entries) + 1):
                    load.setdefault(k, []).extend(_at_once(lambda n: timed_load(server, n), entries[:k]))
                    unload.setdefault(k, []).extend(_at_once(lambda n: timed_unload(server, n), entries[:k]))
    return LoadConcurrency(load_s=[float(np.median(load[k])) for k in sorted(load)],
                           unload_s=[float(np.median(unload[k])) for k in sorted(unload)],
                           load_cv=_spread(load), unload_cv=_spread(unload),
                           load_samples={k: load[k] for k in sorted(load)},
                           unload_samples={k: unload[k] for k in sorted(unload)},
                           hardware=hardware())


def _spread(samples: dict[int, list[float]]) -> float:
    """The coefficient of variation of the samples, each divided by its k's median (so the
    slowdown between k's does not count as spread)."""
    scaled = [x / float(np.median(xs)) for xs in samples.values() for x in xs]
    return float(np.std(scaled) / np.mean(scaled)) if len(scaled) > 1 else 0.0


def _at_once(fn: Callable[[str], float], names: list[str]) -> list[float]:
    """Run ``fn(name)`` (a timed load or unload) for every name at once, one thread each; what
    each returned (an error in any is raised)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(names)) as pool:
        return list(pool.map(fn, names))


# ----------------------------------------------------------- measured on a fleet's canary


class LoadedFigures(BaseModel):
    """What a loaded model adds to Triton (host memory, by the one probe) and its service
    times: :func:`measure_loaded`'s answer."""

    model_config = ConfigDict(frozen=True)
    host_pss: float
    host_uss: float
    service_batch1_s: float
    service_max_batch_s: float
    max_batch: int


class CanaryTimes(BaseModel):
    """A canary's readings from the fleet build's verify step (tasks/fleet/verify.py):
    :func:`canary_footprint`'s input. ``loaded`` is None when measuring failed (``error``)."""

    model_config = ConfigDict(frozen=True)
    tarball_bytes: int
    unpacked_bytes: int
    extract_s: float
    load_s: float
    unload_s: float
    loaded: LoadedFigures | None = None
    error: str | None = None


def measure_loaded(run: LoadRun, inputs: dict[str, np.ndarray], max_batch: int,
                   repeats: int = 5) -> LoadedFigures:
    """What the model ``run`` loaded (and served once) adds to Triton's process tree (PSS and
    USS, against the reading ``run`` took before the load) and its service time at batch 1 and
    ``max_batch`` (medians). The fleet build calls it on one canary per template, in the
    Triton that verifies the canaries, so every variant's footprint is measured, not guessed;
    a template without batching (``max_batch`` 0) is served as its sample is."""
    added = run.memory_added()
    one = _batched(inputs, 1) if max_batch > 0 else inputs
    s1 = _service_time(run, one, repeats)
    sb = (_service_time(run, _batched(inputs, max_batch), max(3, repeats // 2))
          if max_batch > 1 else s1)
    return LoadedFigures(host_pss=float(max(0, added.pss)), host_uss=float(max(0, added.uss)),
                         service_batch1_s=s1, service_max_batch_s=sb, max_batch=max(1, max_batch))


def canary_footprint(canary: str, template_key: str, times: CanaryTimes, loaded: LoadedFigures,
                     gpu: bool, hardware: str, *, role: str = "canary") -> Footprint:
    """The footprint measured on one canary (``times`` from the verify step; ``loaded``:
    :func:`measure_loaded`), with its ``source`` naming the canary and the template key, so a
    manifest that carries it says which variant it was measured on (``role``: what it is, a
    ``canary`` or a fused ``shard`` measured on itself). GPU memory: zero on a CPU
    target (it uses none); on a GPU target estimated by formula (the verify step has no NVML
    reading), and said so."""
    m = _measured(f"fleet build, {role} {canary} (Triton)", hardware)
    est = estimate_footprint(canary, times.tarball_bytes, gpu=gpu)
    gpu_fig = (est.gpu_memory_bytes if gpu else
               Figure(value=0.0, status="measured", where="CPU target: no GPU used", hardware=hardware))
    return Footprint(
        target_model=canary, tarball_bytes=m(value=times.tarball_bytes),
        unpacked_bytes=m(value=times.unpacked_bytes),
        host_memory_bytes=m(value=loaded.host_pss, basis=MEMORY_BASIS),
        host_memory_uss_bytes=m(value=loaded.host_uss, basis="uss"),
        gpu_memory_bytes=gpu_fig, load_disk_s=m(value=times.load_s),
        load_cold_s=m(value=times.extract_s + times.load_s),
        unload_s=m(value=times.unload_s),
        service_batch1_s=m(value=loaded.service_batch1_s),
        service_max_batch_s=m(value=loaded.service_max_batch_s),
        max_batch=loaded.max_batch, source=FootprintSource(measured_on=canary, template_key=template_key))


def variant_footprint(measured: Footprint | None, reason: str | None, target_model: str,
                      tarball_bytes: int, gpu: bool) -> Footprint:
    """One variant's footprint: the template's canary measurement under the variant's name and
    its own tarball bytes (a variant differs from its canary in its weights, not its graph),
    else the named estimate with ``source.estimated`` saying why nothing was measured, so no
    manifest carries an estimate silently."""
    if measured is not None:
        return measured.model_copy(update={
            "target_model": target_model,
            "tarball_bytes": Figure(value=tarball_bytes, status="measured", where="manifest bytes")})
    est = estimate_footprint(target_model, tarball_bytes, gpu=gpu)
    return est.model_copy(update={"source": FootprintSource(estimated="formulas (FORMULAS)",
                                                            reason=reason or "not measured")})
