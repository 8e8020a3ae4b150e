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

from ensembles.spec import BackendSpec, EnsembleSpec, SpecError, StepSpec, TensorSpec, validate

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


def ensemble_config(spec: EnsembleSpec) -> mc.ModelConfig:
    """The entry model: ``platform: "ensemble"`` with one scheduling step per composing model."""
    order = validate(spec)
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


def step_config(spec: EnsembleSpec, step: StepSpec, be: BackendSpec) -> mc.ModelConfig:
    """A composing model's config for the backend chosen for this target."""
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
    target: str,
    out_dir: Path,
    *,
    catalog_dir: Path | None = None,
    artifacts: dict[str, Path] | None = None,
    configs_only: bool = False,
) -> Path:
    """Write a Triton model repository for ``target`` into the new directory ``out_dir``.

    Layout (the one SageMaker's Triton container expects at a tarball's root)::

        <ensemble>/config.pbtxt, <ensemble>/1/
        <ensemble>__<step>/config.pbtxt, <ensemble>__<step>/1/<files>

    ``configs_only`` renders the configs without copying files (to inspect a target whose
    artifacts cannot be built on this host, such as TensorRT plans without a GPU).
    """
    validate(spec)
    out_dir = Path(out_dir)
    artifacts = artifacts or {}
    missing = [s.name for s in spec.steps if target not in s.backends]
    if missing:
        raise SpecError(f"ensemble {spec.name!r}: steps {missing} have no backend for target {target!r}")
    out_dir.mkdir(parents=True, exist_ok=False)

    ens_dir = out_dir / spec.name
    (ens_dir / "1").mkdir(parents=True)
    (ens_dir / "config.pbtxt").write_text(to_pbtxt(ensemble_config(spec)))

    for step in spec.steps:
        be = step.backends[target]  # type: ignore[index]
        model_dir = out_dir / spec.model_name(step.name)
        (model_dir / "1").mkdir(parents=True)
        (model_dir / "config.pbtxt").write_text(to_pbtxt(step_config(spec, step, be)))
        if configs_only:
            continue
        for dest, src in sorted(be.files.items()):
            _copy_into(spec, step, target, model_dir / dest, src, catalog_dir, artifacts)
    return out_dir


def _copy_into(
    spec: EnsembleSpec, step: StepSpec, target: str, dest: Path, src: str,
    catalog_dir: Path | None, artifacts: dict[str, Path],
) -> None:
    where = f"ensemble {spec.name!r}, step {step.name!r}, target {target!r}"
    if src.startswith("artifact:"):
        name = src.removeprefix("artifact:")
        if name not in artifacts:
            raise SpecError(f"{where}: artifact {name!r} was not built")
        path = Path(artifacts[name])
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
