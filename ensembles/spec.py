"""The ensemble spec: a typed, validated description of a Triton ensemble.

A user describes an ensemble once (``ensemble.yaml`` in its catalog folder): the ensemble's
inputs and outputs, its steps, the tensors each step consumes and produces, and, per target,
which Triton backend runs each step. The renderer (:mod:`ensembles.render`) turns one spec
into a Triton model repository per target. Everything that can be checked without running a
model is checked here, before any build work starts, and every error names the ensemble, the
step and the tensor at fault.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    field_validator,
)
from pydantic_core import core_schema

from infra.errors import UserError, validation_problems

Target = Literal["local-cpu", "sagemaker-gpu"]
TARGETS: tuple[Target, ...] = get_args(Target)  # ("local-cpu", "sagemaker-gpu"), in that order


def as_target(value: str) -> Target:
    """``value`` (a command line's string) as a :data:`Target`; an unknown one is the caller's
    one-line error, naming the known targets, before any work starts."""
    for known in TARGETS:
        if value == known:
            return known
    raise SpecError(f"unknown target {value!r}: use one of {', '.join(TARGETS)}")

DType = Literal[
    "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64",
    "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64",
    "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_BF16", "TYPE_STRING",
]

# Which Triton backend runs a step. "python" covers every Python-backend model, including
# the local-cpu stand-ins that run ONNX Runtime or DALI's Python API inside the model.
Backend = Literal["python", "onnxruntime", "tensorrt", "dali", "tensorflow"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# a model's own tensor names follow its framework: TensorFlow graphs say
# "InceptionV3/Predictions/Softmax", ONNX exports "input.1" or "output:0"
_MODEL_TENSOR = re.compile(r"^[A-Za-z_][A-Za-z0-9_./:-]*$")


class SpecError(UserError, ValueError):
    """A spec that cannot be built. The message names the ensemble, step and tensor."""


@dataclass(frozen=True)
class ArtifactRef:
    """A reference to an artifact the build makes: ``"artifact:<name>"`` in ``ensemble.yaml``.

    Why a type: the YAML spelling is parsed once, when the spec is validated, so every user
    (rendering, the producer chain, the cache keys, the reference sample) asks
    ``isinstance(v, ArtifactRef)`` and reads ``.name`` instead of re-parsing strings. It
    serializes back to the same string, so a dumped spec (and every cache key made from one)
    reads as the YAML did.
    """

    name: str
    PREFIX: ClassVar[str] = "artifact:"

    def __str__(self) -> str:
        return f"{self.PREFIX}{self.name}"

    @classmethod
    def parse(cls, value: object) -> ArtifactRef | None:
        """The reference ``value`` spells, or None when it is not one."""
        if isinstance(value, ArtifactRef):
            return value
        if isinstance(value, str) and value.startswith(cls.PREFIX):
            return cls(value[len(cls.PREFIX):])
        return None

    @classmethod
    def _validate(cls, value: object) -> ArtifactRef:
        ref = cls.parse(value)
        if ref is None:
            raise ValueError(f"{value!r} is not an artifact reference ('artifact:<name>')")
        return ref

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        # the serializer also sees the other members of the unions below: pass those through
        return core_schema.no_info_plain_validator_function(
            cls._validate, serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: str(v) if isinstance(v, ArtifactRef) else v))


def artifact_refs(values: Iterable[object]) -> list[ArtifactRef]:
    """The artifact references among ``values`` (a spec's files or parameters), in order."""
    return [v for v in values if isinstance(v, ArtifactRef)]


# A step file's source: an artifact, or a string (``runtime:<file>`` or a catalog path).
FileSource = Annotated[ArtifactRef | str, Field(union_mode="left_to_right")]
# A producer's or validation's parameter: an artifact (its path is passed), or any value.
Param = Annotated[ArtifactRef | Any, Field(union_mode="left_to_right")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """A tensor as Triton sees it: dims exclude the batch dimension; -1 is a variable dim."""

    name: str
    dtype: DType
    dims: list[int] = Field(min_length=1)
    label_filename: str | None = None

    @field_validator("dims")
    @classmethod
    def _dims_valid(cls, dims: list[int]) -> list[int]:
        if any(d == 0 or d < -1 for d in dims):
            raise ValueError(f"dims must be positive or -1, got {dims}")
        return dims


class BackendSpec(_Strict):
    """How one step runs on one target.

    ``files`` maps a path inside the model folder (``1/model.py``, ``1/model.onnx``, or
    ``processing_env.tar.gz`` beside ``config.pbtxt``) to its source: either
    ``artifact:<name>`` (made by the build, see ``EnsembleSpec.artifacts``),
    ``runtime:<file>`` (shared model code in ``ensembles/runtime``, e.g. the ONNX Runtime
    runner), or a path relative to the ensemble's catalog folder. For ``python`` steps
    ``1/model.py`` must be among them.
    """

    backend: Backend
    files: dict[str, FileSource] = Field(default_factory=dict)
    default_model_filename: str | None = None
    parameters: dict[str, str] = Field(default_factory=dict)
    instance_kind: Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"] = "KIND_AUTO"
    instance_count: int = Field(default=1, ge=1)
    dynamic_batching: bool = False


class StepSpec(_Strict):
    """One composing model of the ensemble.

    ``inputs``/``outputs`` are the model's own tensors; ``input_map`` maps each model input to
    the ensemble tensor it reads, ``output_map`` each model output to the ensemble tensor it
    writes (the same meaning as Triton's ensemble_scheduling maps).
    """

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    input_map: dict[str, str]
    output_map: dict[str, str]
    backends: dict[Target, BackendSpec]
    #: The targets whose ensemble runs this step (default: every target). Why: a target may
    #: compose a pipeline differently, e.g. local-cpu runs pre-processing and classifier in one
    #: Python stub where sagemaker-gpu runs Triton's native DALI and ONNX Runtime backends (issue
    #: 19); each target's steps must form the whole ensemble on their own (:func:`validate`).
    targets: list[Target] = Field(default_factory=lambda: list(TARGETS), min_length=1)

    def runs_on(self, target: Target) -> bool:
        return target in self.targets


class ArtifactSpec(_Strict):
    """Something the build makes before rendering, e.g. an ONNX export or tokenizer files.

    ``producer`` names a function registered in :mod:`tasks.producers.produce`; ``params`` are its
    keyword arguments. Artifacts are produced once per build and shared by every target.
    """

    producer: str
    params: dict[str, Param] = Field(default_factory=dict)
    targets: list[Target] = Field(default_factory=lambda: list(TARGETS))


class ValidationSpec(_Strict):
    """How the build verifies the ensemble against its framework reference."""

    kind: str
    metric: str
    threshold: float
    params: dict[str, Param] = Field(default_factory=dict)


class FusionSpec(_Strict):
    """What a fused fleet of this template stacks (:mod:`tasks.fleet.fusion`): the ``step`` that
    runs each tenant's own model and the ``artifact`` that model comes from. Why the template
    says so: a template may run several models; only it knows which one is the tenant's own.
    ``step`` is one name, or one per target where the targets run different steps."""

    step: str | dict[Target, str]
    artifact: str

    def step_for(self, target: Target) -> str:
        """The fused step on ``target``; a target the mapping leaves out is refused."""
        if isinstance(self.step, str):
            return self.step
        if target not in self.step:
            raise SpecError(f"fusion.step names no step for target {target!r} "
                            f"(it names: {', '.join(self.step)})")
        return self.step[target]


class EnsembleSpec(_Strict):
    name: str
    description: str = ""
    max_batch_size: int = Field(ge=0)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    steps: list[StepSpec] = Field(min_length=1)
    artifacts: dict[str, ArtifactSpec] = Field(default_factory=dict)
    validation: ValidationSpec | None = None
    fusion: FusionSpec | None = None

    def model_name(self, step: str) -> str:
        """Composing-model name, unique to this ensemble so thousands can share one server."""
        return f"{self.name}__{step}"

    def steps_for(self, target: Target) -> list[StepSpec]:
        """The steps ``target``'s ensemble runs (:attr:`StepSpec.targets`), in spec order."""
        return [s for s in self.steps if s.runs_on(target)]

    def step(self, name: str) -> StepSpec:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"ensemble {self.name!r} has no step {name!r}")


def _dims_compatible(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


def _check_names(where: str, names: list[str], what: str, pattern: re.Pattern = _NAME) -> None:
    seen: set[str] = set()
    for n in names:
        if not pattern.match(n):
            raise SpecError(f"{where}: {what} name {n!r} is not a valid identifier")
        if n in seen:
            raise SpecError(f"{where}: duplicate {what} name {n!r}")
        seen.add(n)


#: Each ensemble tensor's producer (None for an ensemble input, else the step name) and spec.
_Produced = dict[str, tuple[str | None, TensorSpec]]


def validate(spec: EnsembleSpec, target: Target | None = None) -> list[str]:
    """Check the spec on every target; return the step names ``target``'s ensemble runs in
    execution (topological) order (without a target: every step, target by target).

    Refuses: invalid or duplicate names, unmapped or unknown model tensors, an ensemble
    tensor that nothing produces or that two producers write, dtype or shape mismatches
    across a connection, cycles, and ensemble outputs that no step writes. Where the targets
    run different steps (:attr:`StepSpec.targets`), each target's steps must form the whole
    DAG from the ensemble's inputs to its outputs on their own.
    """
    ens = f"ensemble {spec.name!r}"
    if not _NAME.match(spec.name):
        raise SpecError(f"{ens}: name must be a valid identifier (letters, digits, _)")
    _check_names(ens, [t.name for t in spec.inputs], "input")
    _check_names(ens, [t.name for t in spec.outputs], "output")
    _check_names(ens, [s.name for s in spec.steps], "step")
    for step in spec.steps:
        _check_step(f"{ens}, step {step.name!r}", step)
    same = all(set(s.targets) == set(TARGETS) for s in spec.steps)
    orders = {t: _check_dag(ens if same else f"{ens}, target {t!r}", spec, spec.steps_for(t))
              for t in TARGETS}
    _check_artifact_refs(spec, ens)
    _check_fusion(spec, ens)
    if target is not None:
        return orders[target]
    return list(dict.fromkeys(name for t in TARGETS for name in orders[t]))


def _check_dag(where: str, spec: EnsembleSpec, steps: list[StepSpec]) -> list[str]:
    """``steps`` (one target's) as a DAG from the ensemble's inputs to its outputs; their
    execution order."""
    # producer of each ensemble tensor: None for ensemble inputs, else the step name
    produced: _Produced = {t.name: (None, t) for t in spec.inputs}
    for step in steps:
        _record_outputs(f"{where}, step {step.name!r}", step, produced)
    deps = _step_dependencies(where, steps, produced)
    _check_outputs(where, spec, produced)
    return _toposort(where, deps)


def _check_fusion(spec: EnsembleSpec, ens: str) -> None:
    """A ``fusion`` section names a step of the ensemble (per target, where it names one for
    each) and an artifact that step's backend reads as a file (the model a fused shard
    replaces)."""
    fusion = spec.fusion
    if fusion is None:
        return
    if fusion.artifact not in spec.artifacts:
        raise SpecError(f"{ens}: fusion.artifact {fusion.artifact!r} is not an artifact "
                        f"(artifacts: {', '.join(sorted(spec.artifacts))})")
    named = ({t: fusion.step for t in TARGETS} if isinstance(fusion.step, str) else fusion.step)
    for target, name in named.items():
        field = "fusion.step" if isinstance(fusion.step, str) else f"fusion.step.{target}"
        if name not in {s.name for s in spec.steps}:
            raise SpecError(f"{ens}: {field} {name!r} is not a step "
                            f"(steps: {', '.join(s.name for s in spec.steps)})")
        step = spec.step(name)
        if isinstance(fusion.step, dict) and not step.runs_on(target):
            raise SpecError(f"{ens}: {field} {name!r} does not run on target {target!r} "
                            f"(its targets: {', '.join(step.targets)})")
        backends = (step.backends.values() if isinstance(fusion.step, str)
                    else [step.backends[target]] if target in step.backends else [])
        read = {src.name for be in backends for src in be.files.values() if isinstance(src, ArtifactRef)}
        if fusion.artifact not in read:
            raise SpecError(f"{ens}: fusion.artifact {fusion.artifact!r} is not a file of step "
                            f"{name!r}")


def _check_step(where: str, step: StepSpec) -> None:
    """One step's tensor names, input and output maps, targets and backends."""
    _check_names(where, [t.name for t in step.inputs], "model input", _MODEL_TENSOR)
    _check_names(where, [t.name for t in step.outputs], "model output", _MODEL_TENSOR)
    model_in = {t.name for t in step.inputs}
    model_out = {t.name for t in step.outputs}
    for k in step.input_map:
        if k not in model_in:
            raise SpecError(f"{where}: input_map names {k!r}, which is not a model input "
                            f"(model inputs: {sorted(model_in)})")
    for t in step.inputs:
        if t.name not in step.input_map:
            raise SpecError(f"{where}: model input {t.name!r} is not wired (missing from input_map)")
    for k in step.output_map:
        if k not in model_out:
            raise SpecError(f"{where}: output_map names {k!r}, which is not a model output "
                            f"(model outputs: {sorted(model_out)})")
    if not step.backends:
        raise SpecError(f"{where}: no backend given for any target")
    _check_step_targets(where, step)
    for target, be in step.backends.items():
        if be.backend == "python" and "1/model.py" not in be.files:
            raise SpecError(f"{where}, target {target!r}: a python step needs files['1/model.py']")


def _check_step_targets(where: str, step: StepSpec) -> None:
    """A step that names its targets has a backend for each of them and for no other target
    (one it does not run on would be dead configuration)."""
    if len(set(step.targets)) != len(step.targets):
        raise SpecError(f"{where}: targets {step.targets} names a target twice")
    if set(step.targets) == set(TARGETS):
        return  # the default: a missing backend is refused when that target is rendered
    missing = [t for t in step.targets if t not in step.backends]
    if missing:
        raise SpecError(f"{where}: targets names {missing[0]!r} but backends has no {missing[0]!r} entry")
    extra = [t for t in step.backends if t not in step.targets]
    if extra:
        raise SpecError(f"{where}: backends has an entry for target {extra[0]!r}, which is not "
                        f"among its targets {step.targets}")


def _record_outputs(where: str, step: StepSpec, produced: _Produced) -> None:
    """Record the ensemble tensors ``step`` writes in ``produced``, refusing one that another
    producer already writes."""
    model_out = {t.name: t for t in step.outputs}
    for k, tensor in step.output_map.items():
        if tensor in produced:
            other = produced[tensor][0]
            by = "an ensemble input" if other is None else f"step {other!r}"
            raise SpecError(f"{where}: tensor {tensor!r} is already produced by {by}")
        produced[tensor] = (step.name, model_out[k])


def _step_dependencies(ens: str, steps: list[StepSpec], produced: _Produced) -> dict[str, set[str]]:
    """The steps each step reads from; every consumed tensor must exist with a matching
    dtype and shape."""
    deps: dict[str, set[str]] = {s.name: set() for s in steps}
    for step in steps:
        where = f"{ens}, step {step.name!r}"
        for t in step.inputs:
            tensor = step.input_map[t.name]
            if tensor not in produced:
                raise SpecError(f"{where}: input {t.name!r} reads tensor {tensor!r}, "
                                f"which no step or ensemble input produces")
            producer, src = produced[tensor]
            _check_link(f"{where}: input {t.name!r} <- tensor {tensor!r}", src, t)
            if producer is not None:
                deps[step.name].add(producer)
    return deps


def _check_outputs(ens: str, spec: EnsembleSpec, produced: _Produced) -> None:
    """Every ensemble output is written by a step, with a matching dtype and shape."""
    for out in spec.outputs:
        if out.name not in produced or produced[out.name][0] is None:
            raise SpecError(f"{ens}: output {out.name!r} is not produced by any step")
        _check_link(f"{ens}: output {out.name!r}", produced[out.name][1], out)


def _check_artifact_refs(spec: EnsembleSpec, ens: str) -> None:
    """Every ``artifact:`` reference (step files, artifact and validation parameters) names
    an artifact of the spec; file destinations stay inside the model folder."""
    for name in spec.artifacts:
        if not _NAME.match(name):
            raise SpecError(f"{ens}: artifact name {name!r} is not a valid identifier")
    for step in spec.steps:
        for target, be in step.backends.items():
            for dest, src in be.files.items():
                if isinstance(src, ArtifactRef) and src.name not in spec.artifacts:
                    raise SpecError(f"{ens}, step {step.name!r}, target {target!r}: file {dest!r} "
                                    f"comes from unknown artifact {str(src)!r}")
                if Path(dest).is_absolute() or ".." in Path(dest).parts:
                    raise SpecError(f"{ens}, step {step.name!r}: file destination {dest!r} "
                                    f"must be a relative path inside the model folder")
    params = [(f"artifact {n!r}", a.params) for n, a in spec.artifacts.items()]
    if spec.validation is not None:
        params.append(("validation", spec.validation.params))
    for where, values in params:
        for key, value in values.items():
            if isinstance(value, ArtifactRef) and value.name not in spec.artifacts:
                raise SpecError(f"{ens}, {where}: parameter {key!r} reads unknown artifact "
                                f"{str(value)!r}")


def _check_link(where: str, src: TensorSpec, dst: TensorSpec) -> None:
    if src.dtype != dst.dtype:
        raise SpecError(f"{where}: dtype mismatch, {src.dtype} produced but {dst.dtype} expected")
    if not _dims_compatible(src.dims, dst.dims):
        raise SpecError(f"{where}: shape mismatch, {src.dims} produced but {dst.dims} expected")


def _toposort(ens: str, deps: dict[str, set[str]]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = path[path.index(n):] + [n]
            raise SpecError(f"{ens}: cycle between steps: {' -> '.join(cycle)}")
        state[n] = 1
        for d in sorted(deps[n]):
            visit(d, path + [n])
        state[n] = 2
        order.append(n)

    for n in deps:  # keep the user's order where the DAG allows it
        visit(n, [])
    return order


_Model = TypeVar("_Model", bound=BaseModel)


def read_yaml_model(path: Path, model: type[_Model], error: type[UserError], file_kind: str,
                    kind: str) -> _Model:
    """The YAML file at ``path`` as ``model``, refused as ``error`` on one line naming the file:
    ``<path>: cannot read <file_kind>: ...`` or ``<path>: invalid <kind>: <field problems>``
    (an ensemble spec and a fleet file are read and refused the same way)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise error(f"{path}: cannot read {file_kind}: {e}") from e
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise error(f"{path}: invalid {kind}: {validation_problems(e)}") from e


def load_spec(path: Path) -> EnsembleSpec:
    """Load and validate ``ensemble.yaml``; errors name the file and the field."""
    path = Path(path)
    spec = read_yaml_model(path, EnsembleSpec, SpecError, "ensemble spec", "ensemble spec")
    try:
        validate(spec)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from e
    return spec
