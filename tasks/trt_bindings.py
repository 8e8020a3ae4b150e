"""What a compiled TensorRT engine takes and returns, and whether Triton will load it.

Triton's ``tensorrt`` backend refuses a plan whose I/O does not match ``config.pbtxt``: another
tensor name, another data type (TensorRT before 10 has no INT64 I/O, so an ONNX INT64 input
becomes an INT32 binding), another rank, or a ``max_batch_size`` / fixed dim outside the
engine's optimization profile. That refusal only shows when the endpoint loads the model, on a
GPU instance, long after the build. So every compile reads the engine's I/O back and the render
step checks it against the rendered config *before* the plan is packed.

Two sources, best first:

* the engine itself, through the ``tensorrt`` Python API (:data:`INSPECT_SCRIPT`, run in-process
  on the host route and with ``python3`` inside the compile container after ``trtexec``), which
  prints one ``MME_ENGINE_IO {json}`` line;
* trtexec's own log, with ``--verbose`` (the ONNX parser's ``Adding network input: <name> with
  dtype: <type>, dimensions: (<d>, ...)`` and ``Marking <t> as output: <name>`` lines), the build
  options it echoes (``Input build shape: <name>=<min>+<opt>+<max>``, with ``(profile 0)`` from
  TensorRT 10) and, from TensorRT 10 with ``--dumpOptimizationProfile``, ``Model input <name>
  (profile 0): min=<dims>, opt=<dims>, max=<dims>``. trtexec also prints the device it built on
  (``Selected Device: <name>``, ``Compute Capability: <major.minor>``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ensembles.spec import SpecError

ENGINE_IO_MARKER = "MME_ENGINE_IO "
SIDECAR_NAME = "engine_io.json"

# Runs with ``python3 -c SCRIPT PLAN`` in the compile container (TensorRT 8.5+ / 10.x API), and
# is exec'd in-process by the host route, which calls ``describe(engine, trt)`` itself.
INSPECT_SCRIPT = r'''
import json, sys

def describe(engine, trt):
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        doc = {"name": name, "mode": "input" if is_input else "output",
               "dtype": engine.get_tensor_dtype(name).name,
               "shape": [int(d) for d in engine.get_tensor_shape(name)]}
        if is_input and engine.num_optimization_profiles > 0:
            try:
                mn, op, mx = engine.get_tensor_profile_shape(name, 0)
            except AttributeError:  # TensorRT 8.5 spells it get_profile_shape(profile, name)
                mn, op, mx = engine.get_profile_shape(0, name)
            doc["profile"] = {"min": [int(d) for d in mn], "opt": [int(d) for d in op],
                              "max": [int(d) for d in mx]}
        out.append(doc)
    return out

if __name__ == "__main__":
    import tensorrt as trt
    with open(sys.argv[1], "rb") as f:
        engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(f.read())
    if engine is None:
        sys.exit("could not deserialize " + sys.argv[1])
    print("MME_ENGINE_IO " + json.dumps({"tensorrt": trt.__version__, "tensors": describe(engine, trt)}))
'''

# TensorRT data types, as the Python API names them (DataType.X.name) and as the ONNX parser
# prints them (operator<< of nvinfer1::DataType), -> Triton config types.
_TRT_TO_TRITON: dict[str, str] = {
    "FLOAT": "TYPE_FP32", "float32": "TYPE_FP32", "float": "TYPE_FP32",
    "HALF": "TYPE_FP16", "float16": "TYPE_FP16", "half": "TYPE_FP16",
    "BF16": "TYPE_BF16", "bfloat16": "TYPE_BF16",
    "INT8": "TYPE_INT8", "int8": "TYPE_INT8",
    "INT32": "TYPE_INT32", "int32": "TYPE_INT32",
    "INT64": "TYPE_INT64", "int64": "TYPE_INT64",
    "BOOL": "TYPE_BOOL", "bool": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8", "uint8": "TYPE_UINT8",
}

_INPUT_RE = re.compile(r"Adding network input: (\S+) with dtype: (\w+), dimensions: \(([^)]*)\)")
_OUTPUT_RE = re.compile(r"Marking \S+ as output: (\S+)")
_BUILD_SHAPE_RE = re.compile(r"Input build shape(?: \(profile (\d+)\))?: (\S+?)=(\S+)")
_MODEL_INPUT_RE = re.compile(
    r"Model input (\S+) \(profile (\d+)\): min=(\S+), opt=(\S+), max=(\S+)")
_DEVICE_RE = re.compile(r"\] Selected Device: (.+?)\s*$")
_CC_RE = re.compile(r"\] Compute Capability: (\d+\.\d+)")
_RELEVANT = (ENGINE_IO_MARKER, "Adding network input:", "as output:", "Input build shape",
             "Model input ", "Selected Device:", "Compute Capability:")


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

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "device": self.device,
                "tensors": [asdict(t) for t in self.tensors.values()]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> EngineIO:
        tensors = {t["name"]: EngineTensor(**t) for t in doc.get("tensors", [])}
        return cls(source=str(doc.get("source", "?")), tensors=tensors, device=doc.get("device"))


def is_relevant(line: str) -> bool:
    """Lines worth keeping from a (huge) verbose trtexec log."""
    return any(k in line for k in _RELEVANT)


def triton_dtype(trt_name: str) -> str | None:
    return _TRT_TO_TRITON.get(trt_name.strip().removeprefix("DataType."))


def _dims(text: str, sep: str = "x") -> list[int]:
    return [int(d) for d in text.strip().split(sep) if d.strip()]


def parse_device(lines: Iterable[str]) -> dict[str, str] | None:
    """The GPU trtexec built on: ``{"name": ..., "compute_capability": "8.6"}``."""
    device: dict[str, str] = {}
    for line in lines:
        if m := _DEVICE_RE.search(line):
            device.setdefault("name", m.group(1))
        elif m := _CC_RE.search(line):
            device.setdefault("compute_capability", m.group(1))
    return device or None


def parse_api_json(lines: Iterable[str]) -> EngineIO | None:
    """The ``MME_ENGINE_IO {json}`` line that :data:`INSPECT_SCRIPT` prints, if any."""
    for line in lines:
        i = line.find(ENGINE_IO_MARKER)
        if i >= 0:
            return from_api(json.loads(line[i + len(ENGINE_IO_MARKER):])["tensors"])
    return None


def from_api(tensors: Iterable[Mapping[str, Any]]) -> EngineIO:
    io = EngineIO(source="tensorrt-api")
    for t in tensors:
        io.tensors[t["name"]] = EngineTensor(
            name=t["name"], is_input=t["mode"] == "input", dtype=triton_dtype(t["dtype"]),
            shape=list(t["shape"]), profile=t.get("profile"))
    return io


def parse_trtexec_log(lines: Iterable[str]) -> EngineIO | None:
    """Engine I/O from trtexec's verbose log (see the module doc); None when it names none."""
    lines = list(lines)
    api = parse_api_json(lines)
    device = parse_device(lines)
    if api is not None:
        api.device = device
        return api
    io = EngineIO(source="trtexec-log", device=device)
    engine_profiles: dict[str, dict[str, list[int]]] = {}
    option_profiles: dict[str, dict[str, list[int]]] = {}
    for line in lines:
        if m := _INPUT_RE.search(line):
            io.tensors[m.group(1)] = EngineTensor(
                name=m.group(1), is_input=True, dtype=triton_dtype(m.group(2)),
                shape=_dims(m.group(3), ","))
        elif m := _OUTPUT_RE.search(line):
            io.tensors.setdefault(m.group(1), EngineTensor(name=m.group(1), is_input=False))
        elif (m := _MODEL_INPUT_RE.search(line)) and m.group(2) == "0":
            engine_profiles[m.group(1)] = {"min": _dims(m.group(3)), "opt": _dims(m.group(4)),
                                           "max": _dims(m.group(5))}
        elif (m := _BUILD_SHAPE_RE.search(line)) and m.group(1) in (None, "0"):
            mn, op, mx = m.group(3).split("+")
            option_profiles[m.group(2)] = {"min": _dims(mn), "opt": _dims(op), "max": _dims(mx)}
    if not io.tensors:
        return None
    for name, t in io.tensors.items():
        if t.is_input:  # the engine's own report wins over the options trtexec echoed
            t.profile = engine_profiles.get(name) or option_profiles.get(name)
    return io


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
        for i, (e, c) in enumerate(zip(t.shape, full)):
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


def read_sidecar(plan_dir: Any) -> dict[str, Any] | None:
    """The ``engine_io.json`` that :func:`tasks.compile.compile_tensorrt` writes beside a plan."""
    from pathlib import Path

    path = Path(plan_dir) / SIDECAR_NAME
    return json.loads(path.read_text()) if path.is_file() else None
