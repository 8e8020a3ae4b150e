"""The instance types a GPU multi-model endpoint may use, and the GPU each one has.

Source: AWS, "Supported algorithms, frameworks, and instances for multi-model endpoints",
section "... using GPU backed instances"
(https://docs.aws.amazon.com/sagemaker/latest/dg/multi-model-support.html), checked 2026-12-01.
That page lists single-GPU types only: a GPU MME runs one Triton per instance on one GPU.
To update: edit infra/aws/instances.yaml (rows with ``mme_gpu: true``; one per instance type the
page lists); the GPU model,
architecture and compute capability come from NVIDIA's CUDA GPUs list
(https://developer.nvidia.com/cuda-gpus) and the EC2 instance-type pages.

Rows read on the check date: ml.p2.xlarge, ml.p3.2xlarge, ml.g5.{xlarge, 2xlarge, 4xlarge,
8xlarge, 16xlarge}, ml.g4dn.{xlarge, 2xlarge, 4xlarge, 8xlarge}. Left out on purpose:
``ml.p2.xlarge``, whose Tesla K80 (Kepler, compute capability 3.7) CUDA 12 no longer supports,
and the Triton images from 23.02 on are CUDA 12 builds. Other single-GPU families (g6, g6e,
...) are accepted once that page lists them for MMEs: add their rows then.

Why the compute capability: a TensorRT plan runs only on the GPU architecture (compute
capability) it was built for (TensorRT 8.6's hardware-compatibility mode, not used here, is the
exception), so a deploy compares it with the one the build recorded (:func:`plan_gpu_warnings`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from infra.errors import UserError
from infra.records.manifest import Manifest


@dataclass(frozen=True)
class GpuInstance:
    instance_type: str
    gpu: str  # the name nvidia-smi reports on the instance
    architecture: str
    compute_capability: str  # "major.minor"
    gpu_memory_gib: int


def _mme_gpu_rows() -> dict[str, GpuInstance]:
    """The rows of the instance catalog (infra/aws/instances.yaml, the one source of truth shared
    with the capacity planner) marked ``mme_gpu``: the types the page above lists."""
    from infra.aws.instance_catalog import load_catalog

    rows = {}
    for name, row in load_catalog().instances.items():
        if row.mme_gpu and row.gpu is not None:
            g = row.gpu
            rows[name] = GpuInstance(name, g.name, g.architecture, g.compute_capability, g.memory_gib)
    return rows


MME_GPU_INSTANCES: dict[str, GpuInstance] = _mme_gpu_rows()


class UnsupportedInstanceType(UserError, ValueError):
    """Not an instance type AWS documents for GPU multi-model endpoints."""


def supported_list() -> str:
    return ", ".join(sorted(MME_GPU_INSTANCES))


def mme_gpu_instance(instance_type: str) -> GpuInstance:
    """The table row of ``instance_type``; refused (with the list) when it has none."""
    row = MME_GPU_INSTANCES.get(instance_type)
    if row is None:
        raise UnsupportedInstanceType(
            f"instance type {instance_type!r} is not one AWS supports for GPU multi-model "
            f"endpoints (single-GPU types only); use one of: {supported_list()} (table: "
            f"infra/aws/instances.yaml)")
    return row


def _cc(value: str) -> tuple[int, int]:
    major, _, minor = value.partition(".")
    return int(major), int(minor or 0)


def check_release_runs_on(instance_type: str, release: str) -> None:
    """Refuse (one line naming both) an instance type whose GPU the release's TensorRT no longer
    supports: ml.p3's V100 (Volta, 7.0) with Triton 24.10 and later (TensorRT 10.5 removed
    Volta). Why before any AWS call: the endpoint would come up and every TensorRT model on it
    would fail to load, after ~10 minutes of provisioning."""
    from infra.triton.release import TritonRelease

    row = mme_gpu_instance(instance_type)
    parsed = TritonRelease.parse(release)
    oldest = parsed.min_compute_capability
    if oldest is not None and _cc(row.compute_capability) < _cc(oldest):
        raise UnsupportedInstanceType(
            f"--instance-type {instance_type} ({row.gpu}, {row.architecture}, compute capability "
            f"{row.compute_capability}) cannot serve --triton-release {release}: its TensorRT "
            f"{parsed.tensorrt_version or '10.5+'} supports compute capability {oldest} and newer "
            f"(TensorRT 10.5 removed Volta); use a release before 24.10 or a g4dn/g5 instance type")


def _arch_key(gpu: Mapping[str, Any]) -> str | None:
    cc = gpu.get("compute_capability")
    return str(cc) if cc else None


def plan_gpu_warnings(manifests: Iterable[Manifest], instance_type: str) -> list[str]:
    """One line per TensorRT plan in the builds whose build GPU differs from the instance's.

    A manifest's ``sources`` hold each artifact's metadata; a compiled plan has ``plan_sha256``
    and ``build_gpu`` (``name``, ``compute_capability``). Compared by compute capability (the
    architecture a plan is built for); by name when the build did not record one.
    """
    row = mme_gpu_instance(instance_type)
    lines = []
    for m in manifests:
        for artifact, meta in m.sources.items():
            if not isinstance(meta, Mapping) or "plan_sha256" not in meta:
                continue
            where = f"{m.ensemble}: TensorRT plan {artifact!r}"
            gpu = meta.get("build_gpu") or {}
            built = _arch_key(gpu)
            if not gpu.get("name") and built is None:
                lines.append(f"{where} does not record the GPU it was built on; it runs only "
                             f"on that GPU architecture, and {instance_type} has a {row.gpu} "
                             f"({row.architecture}, compute capability {row.compute_capability})")
            elif (built != row.compute_capability if built is not None
                  else str(gpu.get("name")).lower() not in row.gpu.lower()):
                lines.append(f"{where} was built on a {gpu.get('name', '?')} (compute capability "
                             f"{built or '?'}), but {instance_type} has a {row.gpu} "
                             f"({row.architecture}, compute capability {row.compute_capability}): "
                             f"a TensorRT plan runs only on the GPU architecture it was built "
                             f"for, so the endpoint will likely fail to load it; build on a "
                             f"{row.gpu} or pick an instance type with the build GPU")
    return lines


def plan_release_problems(manifests: Iterable[Manifest], release: str) -> list[str]:
    """TensorRT plans compiled for another Triton release than the one the endpoint serves
    (a plan only deserializes in the TensorRT version that built it)."""
    out = []
    for m in manifests:
        for artifact, meta in m.sources.items():
            if isinstance(meta, Mapping) and "plan_sha256" in meta \
                    and meta.get("triton_release") not in (None, release):
                out.append(f"{m.ensemble}: TensorRT plan {artifact!r} was compiled "
                           f"for Triton {meta['triton_release']} (TensorRT "
                           f"{meta.get('tensorrt', '?')}), the endpoint would serve "
                           f"{release}: deploy with --triton-release {meta['triton_release']} "
                           f"or rebuild with --set {artifact}.triton_release={release}")
    return out
