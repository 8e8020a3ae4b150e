"""Reading a compiled TensorRT engine's I/O back, so Triton's refusal shows at build time.

Triton's ``tensorrt`` backend refuses a plan whose I/O does not match ``config.pbtxt`` (see
:mod:`ensembles.engine_io`, which holds the engine description and the check the render step
runs). Every compile reads the engine's I/O back with this module and records it beside the
plan.

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
from typing import Any

# the engine description and the check against a rendered config (used by the render step)
from ensembles.engine_io import SIDECAR_NAME, EngineIO, EngineTensor

__all__ = ["INSPECT_SCRIPT", "SIDECAR_NAME", "EngineIO", "EngineTensor", "from_api",
           "is_relevant", "parse_api_json", "parse_device", "parse_trtexec_log", "triton_dtype"]

ENGINE_IO_MARKER = "MME_ENGINE_IO "

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
