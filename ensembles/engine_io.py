"""What a compiled TensorRT engine takes and returns, and whether Triton will load it with a
rendered config.

Triton's ``tensorrt`` backend refuses a plan whose I/O does not match ``config.pbtxt``: another
tensor name, another data type (TensorRT before 10 has no INT64 I/O, so an ONNX INT64 input
becomes an INT32 binding), another rank, or a ``max_batch_size`` / fixed dim outside the
engine's optimization profile. That refusal only shows when the endpoint loads the model, on a
GPU instance, long after the build. So the compile step records the engine's I/O beside the
plan (:data:`SIDECAR_NAME`, read back by :mod:`tasks.producers.trt_bindings`) and the render step
(:func:`ensembles.render.render_repository`) checks it here against the rendered config
*before* the plan is packed. This half lives in ``ensembles/`` because rendering uses it and
``ensembles/`` imports nothing from ``tasks/``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ensembles.spec import SpecError
from infra.jsontypes import JsonObject

SIDECAR_NAME = "engine_io.json"


class EngineMismatch(SpecError):
    """The compiled engine's I/O does not match the rendered config: Triton would not load it."""


@dataclass
class EngineTensor:
    """One engine I/O tensor. ``shape`` includes the batch dim (explicit batch); -1 = dynamic.
    ``dtype`` is a Triton ``TYPE_*`` name, None when the source did not say."""

    name: str
    is_input: bool
    dtype: str | None = None
    shape: list[int] | None = None
    profile: dict[str, list[int]] | None = None


@dataclass
class EngineIO:
    source: str  # "tensorrt-api" or "trtexec-log"
    tensors: dict[str, EngineTensor] = field(default_factory=dict)
    device: dict[str, str] | None = None

    def to_json(self) -> JsonObject:
        """The I/O as the sidecar and the manifest's sources record it."""
        return {"source": self.source, "device": {**self.device} if self.device is not None else None,
                "tensors": [asdict(t) for t in self.tensors.values()]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> EngineIO:
        tensors = {t["name"]: EngineTensor(**t) for t in doc.get("tensors", [])}
        return cls(source=str(doc.get("source", "?")), tensors=tensors, device=doc.get("device"))


# --------------------------------------------------------------------------- the check


def _config_tensors(cfg: Any) -> dict[str, tuple[bool, str, list[int]]]:
    """name -> (is_input, TYPE_* name, dims) of a ``ModelConfig`` message."""
    from tritonclient.grpc import model_config_pb2 as mc

    out: dict[str, tuple[bool, str, list[int]]] = {}
    for is_input, tensors in ((True, cfg.input), (False, cfg.output)):
        for t in tensors:
            out[t.name] = (is_input, mc.DataType.Name(t.data_type), list(t.dims))
    return out


def _profile_problems(name: str, t: EngineTensor, full: list[int], batching: bool,
                      max_batch: int) -> list[str]:
    """``full`` is the config's shape with the batch dim (-1) in front when batching."""
    if not t.profile or not t.profile.get("min") or not t.profile.get("max"):
        return []
    mn, mx = t.profile["min"], t.profile["max"]
    if len(mn) != len(full) or len(mx) != len(full):
        return [f"tensor {name!r}: the engine's profile has rank {len(mn)}, the config {len(full)}"]
    problems = []
    if batching and mx[0] < max_batch:
        problems.append(f"tensor {name!r}: config max_batch_size {max_batch} exceeds the "
                        f"engine profile's max batch {mx[0]} (profile max {mx})")
    if batching and mn[0] > 1:
        problems.append(f"tensor {name!r}: the engine profile's min batch is {mn[0]}, so "
                        f"requests of batch 1 would be refused (profile min {mn})")
    for i, d in enumerate(full):
        if (batching and i == 0) or d == -1:
            continue
        if not mn[i] <= d <= mx[i]:
            problems.append(f"tensor {name!r}: config dim {i} = {d} is outside the engine "
                            f"profile's range [{mn[i]}, {mx[i]}]")
    return problems


def _tensor_problems(name: str, t: EngineTensor, want: tuple[bool, str, list[int]],
                     max_batch: int) -> list[str]:
    is_input, dtype, dims = want
    if t.is_input != is_input:
        return [(f"tensor {name!r} is an engine {'input' if t.is_input else 'output'} but a "
                 f"config {'input' if is_input else 'output'}")]
    problems = []
    if t.dtype is not None and t.dtype != dtype:
        hint = (" (TensorRT before 10 has no INT64 I/O: the ONNX parser made it INT32)"
                if {t.dtype, dtype} == {"TYPE_INT32", "TYPE_INT64"} else "")
        problems.append(f"tensor {name!r}: engine dtype {t.dtype}, config {dtype}{hint}")
    batching = max_batch > 0
    full = ([-1] if batching else []) + dims
    if t.shape is not None:
        if len(t.shape) != len(full):
            problems.append(f"tensor {name!r}: engine rank {len(t.shape)} {t.shape}, config rank "
                            f"{len(full)} ({'batch + ' if batching else ''}dims {dims})")
            return problems
        for i, (e, c) in enumerate(zip(t.shape, full, strict=True)):
            if e != -1 and c != -1 and e != c:
                problems.append(f"tensor {name!r}: engine dim {i} is {e}, config says {c}")
    if t.is_input:
        problems += _profile_problems(name, t, full, batching, max_batch)
    return problems


def check_engine_io(io: EngineIO, cfg: Any, *, where: str) -> None:
    """Refuse an engine that Triton would not load with ``cfg`` (a ``ModelConfig``).

    Checked: the set of input and output names, each tensor's data type (where the source
    names it), its rank and fixed dims (the engine's shape includes the batch dim when
    ``max_batch_size > 0``), and that ``max_batch_size`` and the config's fixed dims lie within
    the optimization profile's min/max. Raises :class:`EngineMismatch` naming each tensor.
    """
    want = _config_tensors(cfg)
    problems: list[str] = []
    eng_in = {n for n, t in io.tensors.items() if t.is_input}
    eng_out = {n for n, t in io.tensors.items() if not t.is_input}
    cfg_in = {n for n, w in want.items() if w[0]}
    cfg_out = {n for n, w in want.items() if not w[0]}
    for kind, eng, conf in (("input", eng_in, cfg_in), ("output", eng_out, cfg_out)):
        if eng != conf:
            problems.append(f"{kind} names differ: engine {sorted(eng)}, config {sorted(conf)}")
    for name, t in io.tensors.items():
        if name in want:
            problems += _tensor_problems(name, t, want[name], int(cfg.max_batch_size))
    if problems:
        raise EngineMismatch(f"{where}: the compiled TensorRT engine does not match the rendered "
                             f"config.pbtxt, Triton would refuse to load it (I/O read from "
                             f"{io.source}):\n  - " + "\n  - ".join(problems))


def read_sidecar(plan_dir: Path | str) -> JsonObject | None:
    """The ``engine_io.json`` that :func:`tasks.producers.compile.compile_tensorrt` writes beside a plan."""
    path = Path(plan_dir) / SIDECAR_NAME
    return json.loads(path.read_text()) if path.is_file() else None
