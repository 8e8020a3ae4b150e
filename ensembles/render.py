"""Render an ensemble spec into a Triton model repository for one target.

Configs are built as ``ModelConfig`` protobuf messages (Triton's own schema, shipped with
tritonclient) and written with protobuf's text format, so every ``config.pbtxt`` is valid by
construction rather than by string templating.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ensembles import engine_io
from ensembles.spec import (
    ArtifactRef,
    BackendSpec,
    EnsembleSpec,
    SpecError,
    StepSpec,
    Target,
    TensorSpec,
    validate,
)
from infra.triton.release import DEFAULT_RELEASE, TritonRelease

# shared model code usable by any ensemble (``runtime:onnx_model.py`` in a spec's files)
RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"

# backend -> (config field, value, default model file)
_BACKEND_CONFIG: dict[str, tuple[str, str, str | None]] = {
    "python": ("backend", "python", None),
    "onnxruntime": ("platform", "onnxruntime_onnx", "model.onnx"),
    "tensorrt": ("platform", "tensorrt_plan", "model.plan"),
    "dali": ("backend", "dali", "model.dali"),
    "tensorflow": ("platform", "tensorflow_graphdef", "model.graphdef"),
}


def _add_tensors(field, tensors: list[TensorSpec]) -> None:
    for t in tensors:
        io = field.add()
        io.name = t.name
        io.data_type = mc.DataType.Value(t.dtype)
        io.dims.extend(t.dims)
        if t.label_filename and hasattr(io, "label_filename"):
            io.label_filename = t.label_filename


def ensemble_config(spec: EnsembleSpec, target: Target) -> mc.ModelConfig:
    """The entry model: ``platform: "ensemble"`` with one scheduling step per composing model
    that ``target``'s ensemble runs."""
    order = validate(spec, target)
    cfg = mc.ModelConfig(name=spec.name, platform="ensemble", max_batch_size=spec.max_batch_size)
    _add_tensors(cfg.input, spec.inputs)
    _add_tensors(cfg.output, spec.outputs)
    for name in order:
        step = spec.step(name)
        s = cfg.ensemble_scheduling.step.add()
        s.model_name = spec.model_name(step.name)
        s.model_version = -1
        for k, v in sorted(step.input_map.items()):
            s.input_map[k] = v
        for k, v in sorted(step.output_map.items()):
            s.output_map[k] = v
    return cfg


def serving_release(spec: EnsembleSpec, target: Target) -> str | None:
    """The Triton release the target's TensorRT plans are compiled for (and so served with):
    the ``triton_release`` of its ``compile_tensorrt`` artifacts, default
    :data:`infra.triton.release.DEFAULT_RELEASE`; None when the target compiles no plan."""
    releases = {str(a.params.get("triton_release", DEFAULT_RELEASE))
                for a in spec.artifacts.values()
                if a.producer == "compile_tensorrt" and target in a.targets}
    if len(releases) > 1:
        raise SpecError(f"ensemble {spec.name!r}: the TensorRT plans for target {target!r} are "
                        f"compiled for different Triton releases {sorted(releases)}; one "
                        f"endpoint serves one release")
    return releases.pop() if releases else None


def int64_free_tensors(spec: EnsembleSpec, target: Target, release: str | None) -> set[str]:
    """Ensemble tensors a TensorRT step reads or writes as ``TYPE_INT64`` while the release's
    TensorRT has no INT64 I/O (TensorRT 8, Triton before 24.05): its ONNX parser turns such
    inputs and outputs into INT32 bindings, so these tensors are rendered ``TYPE_INT32`` on
    every step they connect (the tokenizer then emits INT32, as the seed did). An ensemble
    input or output among them is refused: that would change what callers send or get back.
    """
    if release is None or TritonRelease.parse(release).tensorrt_major >= 10:
        return set()
    marked: set[str] = set()
    for step in spec.steps_for(target):
        be = step.backends.get(target)
        if be is None or be.backend != "tensorrt":
            continue
        marked |= {step.input_map[t.name] for t in step.inputs if t.dtype == "TYPE_INT64"}
        marked |= {step.output_map[t.name] for t in step.outputs
                   if t.dtype == "TYPE_INT64" and t.name in step.output_map}
    public = sorted(marked & {t.name for t in [*spec.inputs, *spec.outputs]})
    if public:
        raise SpecError(f"ensemble {spec.name!r}, target {target!r}: ensemble tensors {public} "
                        f"are TYPE_INT64 at a TensorRT step, but Triton release {release} has "
                        f"TensorRT {TritonRelease.parse(release).tensorrt_major}, which has no INT64 I/O; serve "
                        f"with release 24.05 or later (TensorRT 10), or make them TYPE_INT32")
    return marked


def _with_dtypes(step: StepSpec, be: BackendSpec, int32: set[str]) -> StepSpec:
    """``step`` with the INT64 tensors that :func:`int64_free_tensors` names turned INT32
    (on a TensorRT step, all its INT64 I/O: those are the engine's bindings)."""
    if not int32:
        return step
    trt = be.backend == "tensorrt"

    def fix(tensors: list[TensorSpec], mapping: dict[str, str]) -> list[TensorSpec]:
        return [t.model_copy(update={"dtype": "TYPE_INT32"})
                if t.dtype == "TYPE_INT64" and (trt or mapping.get(t.name) in int32) else t
                for t in tensors]

    return step.model_copy(update={"inputs": fix(step.inputs, step.input_map),
                                   "outputs": fix(step.outputs, step.output_map)})


def step_config(spec: EnsembleSpec, step: StepSpec, be: BackendSpec,
                int32: set[str] | None = None) -> mc.ModelConfig:
    """A composing model's config for the backend chosen for this target (``int32``: the
    tensors :func:`int64_free_tensors` found for the serving release)."""
    step = _with_dtypes(step, be, int32 or set())
    field, value, default_file = _BACKEND_CONFIG[be.backend]
    cfg = mc.ModelConfig(name=spec.model_name(step.name), max_batch_size=spec.max_batch_size)
    setattr(cfg, field, value)
    model_file = be.default_model_filename or default_file
    if model_file:
        cfg.default_model_filename = model_file
    _add_tensors(cfg.input, step.inputs)
    _add_tensors(cfg.output, step.outputs)
    group = cfg.instance_group.add()
    group.kind = mc.ModelInstanceGroup.Kind.Value(be.instance_kind)
    group.count = be.instance_count
    if be.dynamic_batching and spec.max_batch_size > 0:
        cfg.dynamic_batching.SetInParent()
    for k, v in sorted(be.parameters.items()):
        cfg.parameters[k].string_value = v
    return cfg


def to_pbtxt(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    """Parse a config.pbtxt (used by tests and by the local endpoint's namespacing)."""
    return text_format.Parse(text, mc.ModelConfig())


def render_repository(
    spec: EnsembleSpec,
    target: Target,
    out_dir: Path,
    *,
    catalog_dir: Path | None = None,
    artifacts: dict[str, Path] | None = None,
    configs_only: bool = False,
    triton_release: str | None = None,
) -> Path:
    """Write a Triton model repository for ``target`` into the new directory ``out_dir``.

    Layout (the one SageMaker's Triton container expects at a tarball's root)::

        <ensemble>/config.pbtxt, <ensemble>/1/
        <ensemble>__<step>/config.pbtxt, <ensemble>__<step>/1/<files>

    One composing model per step that runs on ``target`` (:attr:`ensembles.spec.StepSpec.targets`).

    ``configs_only`` renders the configs without copying files (to inspect a target whose
    artifacts cannot be built on this host, such as TensorRT plans without a GPU).
    ``triton_release`` (default: :func:`serving_release`) decides the token dtypes at TensorRT
    steps (:func:`int64_free_tensors`). A TensorRT plan made by ``compile_tensorrt`` is checked
    against its rendered config (:func:`ensembles.engine_io.check_engine_io`) before anything
    packs it.
    """
    validate(spec)
    out_dir = Path(out_dir)
    artifacts = artifacts or {}
    missing = [s.name for s in spec.steps_for(target) if target not in s.backends]
    if missing:
        raise SpecError(f"ensemble {spec.name!r}: steps {missing} have no backend for target {target!r}")
    release = triton_release or serving_release(spec, target)
    int32 = int64_free_tensors(spec, target, release)
    out_dir.mkdir(parents=True, exist_ok=False)

    ens_dir = out_dir / spec.name
    (ens_dir / "1").mkdir(parents=True)
    (ens_dir / "config.pbtxt").write_text(to_pbtxt(ensemble_config(spec, target)))

    for step in spec.steps_for(target):
        be = step.backends[target]
        model_dir = out_dir / spec.model_name(step.name)
        (model_dir / "1").mkdir(parents=True)
        cfg = step_config(spec, step, be, int32)
        (model_dir / "config.pbtxt").write_text(to_pbtxt(cfg))
        if configs_only:
            continue
        for dest, src in sorted(be.files.items()):
            _copy_into(spec, step, target, model_dir / dest, src, catalog_dir, artifacts)
        if be.backend == "tensorrt":
            _check_plan(spec, step, target, be, cfg, artifacts)
    return out_dir


def _check_plan(spec: EnsembleSpec, step: StepSpec, target: Target, be: BackendSpec,
                cfg: mc.ModelConfig, artifacts: dict[str, Path]) -> None:
    """Refuse a compiled plan whose engine I/O does not match ``cfg`` (see ensembles.engine_io).

    Only plans from ``compile_tensorrt`` carry the engine report (``engine_io.json`` beside the
    plan); a plan made another way is not checked here.
    """
    where = f"ensemble {spec.name!r}, step {step.name!r}, target {target!r}"
    model_file = f"1/{be.default_model_filename or _BACKEND_CONFIG['tensorrt'][2]}"
    ref = be.files.get(model_file)
    if not isinstance(ref, ArtifactRef) or spec.artifacts[ref.name].producer != "compile_tensorrt":
        return
    name = ref.name
    path = Path(artifacts[name])
    report = engine_io.read_sidecar(path if path.is_dir() else path.parent)
    io = report.get("engine_io") if report is not None else None
    if not isinstance(io, dict):
        raise SpecError(f"{where}: artifact {name!r} has no record of the engine's inputs and "
                        f"outputs ({engine_io.SIDECAR_NAME}), so it cannot be checked against "
                        f"config.pbtxt; refusing to pack an unchecked plan (rebuild the artifact)")
    engine_io.check_engine_io(engine_io.EngineIO.from_json(io), cfg,
                                 where=f"{where}, artifact {name!r}")


def _copy_into(
    spec: EnsembleSpec, step: StepSpec, target: Target, dest: Path, src: ArtifactRef | str,
    catalog_dir: Path | None, artifacts: dict[str, Path],
) -> None:
    where = f"ensemble {spec.name!r}, step {step.name!r}, target {target!r}"
    if isinstance(src, ArtifactRef):
        if src.name not in artifacts:
            raise SpecError(f"{where}: artifact {src.name!r} was not built")
        path = Path(artifacts[src.name])
    elif src.startswith("runtime:"):
        path = RUNTIME_DIR / src.removeprefix("runtime:")
    else:
        if catalog_dir is None:
            raise SpecError(f"{where}: file {src!r} needs the ensemble's catalog folder")
        path = Path(catalog_dir) / src
    if not path.exists():
        raise SpecError(f"{where}: source {path} for {dest.name!r} does not exist")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        shutil.copytree(path, dest, symlinks=False)
    else:
        shutil.copyfile(path, dest)
