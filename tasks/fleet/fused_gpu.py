"""A ``sagemaker-gpu`` fused shard's model, checked against the Triton release that will serve it.

Why: on ``local-cpu`` the fused step runs in the Python backend with this machine's ONNX Runtime,
the one that checked every tenant (:func:`tasks.fleet.fused.fuse_checked`). On ``sagemaker-gpu``
it runs in the release's native backend -- ``onnxruntime`` (the ONNX Runtime bundled in that
Triton image, CUDA execution provider) or ``tensorrt`` (that image's TensorRT ONNX parser) --
which may be older than this machine's and has no GPU here to try it on. So, before the shard is
packed, the fused ONNX is read (nothing is run) and refused, naming the op, the opset and the
release, when:

* its default-domain opset is newer than the release's runtime implements
  (:func:`infra.triton.release.onnxruntime_max_opset`, :func:`~infra.triton.release.tensorrt_parser_max_opset`);
* a node is not a standard ONNX op of the default domain at that opset (a custom domain, a
  ``com.microsoft`` contrib op the CUDA execution provider may lack, a model-local function);
* the ``TENANT`` input is not INT32 (what the shard's ensemble sends), or no ``Gather`` is
  indexed by it with an integer index (the head table's row lookup);
* the step is served by ``tensorrt`` and an op is not in that TensorRT major's parser list
  (:data:`infra.triton.release.TENSORRT_PARSER_OPS`).

The release is the one the project builds the target for: the template's TensorRT plans'
``triton_release`` (:func:`ensembles.render.serving_release`), else
:data:`infra.triton.release.DEFAULT_RELEASE`. What still needs a GPU -- loading the shard in that
release's Triton and comparing each tenant's answer -- is ``tests/test_fused_gpu.py``'s GPU test.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ensembles.fused import TENANT
from ensembles.render import serving_release
from ensembles.spec import EnsembleSpec, Target
from infra.triton.release import (
    DEFAULT_RELEASE_TEXT,
    TENSORRT_PARSER_OPS,
    TritonRelease,
    onnxruntime_max_opset,
    onnxruntime_version,
    tensorrt_parser_max_opset,
)
from tasks.fleet.fusion import FusionError

if TYPE_CHECKING:
    from onnx import ModelProto

#: The target whose fused shards are checked here (its steps run in native Triton backends).
GPU_TARGET: Target = "sagemaker-gpu"
#: The backends a fused step may be served by on :data:`GPU_TARGET`.
GpuBackend = Literal["onnxruntime", "tensorrt"]
_DEFAULT_DOMAINS = ("", "ai.onnx")
_GATHERS = ("Gather", "GatherElements", "GatherND")


class FusedGpuError(FusionError):
    """A fused model the release's GPU backend would refuse (or was not checked to take)."""


@dataclass(frozen=True)
class GpuCheck:
    """What a passing check saw: the release and backend it checked against, the model's
    default-domain opset and the runtime's highest, and how many nodes of each op."""

    release: str
    backend: GpuBackend
    runtime: str  # "ONNX Runtime 1.19.2" or "TensorRT 10.4.0"
    opset: int
    max_opset: int
    ops: dict[str, int]
    tenant_gathers: int


def shard_release(spec: EnsembleSpec, target: Target = GPU_TARGET) -> TritonRelease:
    """The release a ``target`` shard of ``spec`` is served with: its plans' ``triton_release``,
    else the project's default (what a GPU fleet build compiles for)."""
    return TritonRelease.parse(serving_release(spec, target) or DEFAULT_RELEASE_TEXT)


def _load(model: bytes | ModelProto) -> ModelProto:
    import onnx

    return onnx.load_from_string(bytes(model)) if isinstance(model, bytes | bytearray) else model


def _runtime(release: TritonRelease, backend: GpuBackend) -> tuple[str, int]:
    if backend == "tensorrt":
        return f"TensorRT {release.tensorrt_version or release.tensorrt_major}", tensorrt_parser_max_opset(release)
    return f"ONNX Runtime {onnxruntime_version(release)}", onnxruntime_max_opset(release)


def check_fused_for_gpu(model: bytes | ModelProto, release: str | TritonRelease,
                        backend: GpuBackend = "onnxruntime", where: str = "fused model") -> GpuCheck:
    """Check ``model`` (a fused ONNX) against ``release``'s ``backend``; returns what it saw, or
    raises :class:`FusedGpuError` naming ``where``, the op, the opset and the release. A release
    whose runtime is not in :mod:`infra.triton.release`'s tables raises too (never a guess)."""
    rel = TritonRelease.parse(release)
    try:
        runtime, max_opset = _runtime(rel, backend)
    except ValueError as e:
        raise FusedGpuError(f"{where}: cannot check it for Triton {rel}'s {backend} backend: {e}") from None
    proto = _load(model)
    served = f"Triton {rel}'s {backend} backend ({runtime}, opset <= {max_opset})"
    opset = _default_opset(proto, where)
    if opset > max_opset:
        raise FusedGpuError(f"{where}: default-domain opset {opset} is newer than {served} runs; "
                            f"export the tenants' models at opset {max_opset} or serve a newer release")
    _check_ops(proto, opset, backend, rel, where, served)
    gathers = _tenant_gathers(proto, where, served)
    return GpuCheck(release=str(rel), backend=backend, runtime=runtime, opset=opset, max_opset=max_opset,
                    ops=dict(Counter(n.op_type for n in proto.graph.node)), tenant_gathers=gathers)


def _default_opset(model: ModelProto, where: str) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise FusedGpuError(f"{where}: imports no default-domain (ai.onnx) opset")
    return max(versions)


def _check_ops(model: ModelProto, opset: int, backend: GpuBackend, rel: TritonRelease, where: str,
               served: str) -> None:
    """Every node a standard default-domain op at ``opset`` (and, for TensorRT, in its parser's
    list); the first that is not raises."""
    import onnx

    allowed = TENSORRT_PARSER_OPS.get(rel.tensorrt_major, frozenset()) if backend == "tensorrt" else None
    for node in model.graph.node:
        name = f"op {node.op_type} (node {node.name or node.output[0]!r})"
        if node.domain not in _DEFAULT_DOMAINS:
            raise FusedGpuError(f"{where}: {name} is in domain {node.domain!r}, not a standard ONNX op; "
                                f"{served} may lack it (model opset {opset}): only default-domain ops fuse")
        try:
            onnx.defs.get_schema(node.op_type, max_inclusive_version=opset, domain="")
        except onnx.defs.SchemaError:
            raise FusedGpuError(f"{where}: {name} is not a standard ONNX op at opset {opset}; "
                                f"{served} cannot run it") from None
        if allowed is not None and node.op_type not in allowed:
            raise FusedGpuError(f"{where}: {name} (opset {opset}) is not among the ops checked for "
                                f"{served}'s ONNX parser (infra.triton.release.TENSORRT_PARSER_OPS)")


def _tenant_gathers(model: ModelProto, where: str, served: str) -> int:
    """How many gathers ``TENANT`` indexes; raises unless ``TENANT`` is an INT32 input and at
    least one gather takes an integer index computed from it."""
    import onnx
    from onnx import TensorProto

    tenant = next((i for i in model.graph.input if i.name == TENANT), None)
    if tenant is None or tenant.type.tensor_type.elem_type != TensorProto.INT32:
        got = "missing" if tenant is None else TensorProto.DataType.Name(tenant.type.tensor_type.elem_type)
        raise FusedGpuError(f"{where}: input {TENANT} must be INT32 (the shard's ensemble sends "
                            f"TYPE_INT32), got {got}")
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    types |= {i.name: i.data_type for i in model.graph.initializer}
    tainted = {TENANT}
    count = 0
    for node in model.graph.node:
        if not tainted.intersection(node.input):
            continue
        tainted.update(node.output)
        if node.op_type in _GATHERS and len(node.input) > 1 and node.input[1] in tainted:
            kind = types.get(node.input[1], TensorProto.UNDEFINED)
            if kind not in (TensorProto.INT32, TensorProto.INT64):
                raise FusedGpuError(f"{where}: op {node.op_type} (node {node.name or node.output[0]!r}) "
                                    f"selects the tenant's rows with a "
                                    f"{TensorProto.DataType.Name(kind)} index; {served} needs INT32 or INT64")
            count += 1
    if count == 0:
        raise FusedGpuError(f"{where}: no Gather is indexed by {TENANT}: the model does not select a "
                            f"tenant's head rows")
    return count


def check_staged_model(spec: EnsembleSpec, target: Target, step: str, model: bytes,
                       where: str) -> GpuCheck | None:
    """The check for a shard about to be packed: None (nothing to check) unless ``target`` is
    :data:`GPU_TARGET`; else ``model`` against the release and the backend that serve ``step``."""
    if target != GPU_TARGET:
        return None
    be = spec.step(step).backends.get(target)
    backend = be.backend if be is not None else ""
    if backend not in ("onnxruntime", "tensorrt"):
        raise FusedGpuError(f"{where}: step {step!r} is served by {backend or 'no backend'!r} on "
                            f"{target}; a fused head runs in onnxruntime or tensorrt there")
    kind: GpuBackend = "tensorrt" if backend == "tensorrt" else "onnxruntime"
    return check_fused_for_gpu(model, shard_release(spec, target), kind, where)
