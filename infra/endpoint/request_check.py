"""Validate an ``invoke_endpoint`` request body before it reaches Triton.

Why: tritonserver trusts the shapes a request declares. A JSON body declaring
``"shape": [1, 1000000000000]`` with three values makes it allocate the whole tensor and abort
(``std::bad_alloc``), taking every model down with it; a shape whose element count overflows
int64 (``[2**62, 2**62]``) passes Triton's checks and kills the model's Python stub. So every
request is checked here, in pure Python, with nothing but length arithmetic on the binary
section (this runs on every request: a 50 KB JPEG sent as binary+json costs a few
microseconds, see ``bench/request_check.py``).

Content types follow SageMaker's Triton front end (``src/sagemaker_server.cc``,
``GetInferenceHeaderLength`` in triton-inference-server/server): the body has a binary section
only when the content type *starts with* exactly
``application/vnd.sagemaker-triton.binary+json;json-header-size=`` (case and spaces matter, the
number is read like C's ``atoi``); any other content type, ``application/octet-stream`` and
``application/json`` included, means the whole body is the JSON header. The AWS sample sends its
KServe JSON with ``ContentType="application/octet-stream"``, which therefore works. The only
content types SageMaker's front end refuses (the binary+json prefix somewhere other than at
the start; a header size that is negative or larger than the body) are refused here with its
wording.

Every refusal is a :class:`RequestRejected` with a one-line message naming the input (its name,
or ``inputs[i]``) and the field at fault.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from infra.errors import UserError

# InvokeEndpoint's ``Body``: "Maximum length of 6291456" (SageMaker Runtime API reference,
# InvokeEndpoint, Request Syntax / Body). Over it, SageMaker's front door answers HTTP 413 with
# no error type and the message "HTTP content length exceeded N bytes." (reported by users as
# ``ClientError: An error occurred (413) when calling the InvokeEndpoint operation: HTTP content
# length exceeded 5246976 bytes.`` in aws/sagemaker-python-sdk#171, when the limit was 5 MB).
MAX_PAYLOAD_BYTES: int = 6 * 1024 * 1024

BINARY_MIME_PREFIX = "application/vnd.sagemaker-triton.binary+json;json-header-size="
INT64_MAX = 2**63 - 1
# The smallest magnitude a double rounds to FP32 infinity (half an FP32 ulp past its maximum)
FP32_OVERFLOW = 2.0**128 - 2.0**103

# Triton's wire datatypes and their element sizes; BYTES elements are at least their 4-byte
# length prefix (Triton serializes JSON strings the same way before handing them to a model).
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8,
    "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
    "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8, "BYTES": 4,
}
_INT_RANGES: dict[str, tuple[int, int]] = {
    **{f"UINT{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)},
    **{f"INT{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)},
}
_FLOAT_TYPES = frozenset({"FP32", "FP64"})
_NO_JSON_DATA = frozenset({"FP16", "BF16"})  # Triton: "receiving FP16 data via JSON is not supported"
_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_LABEL_MAX = 64


# ---------------------------------------------------------------------------------- types
@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe/Triton wire datatype: "FP32", "UINT8", "INT64", "BYTES", "BOOL", ...
    dims: tuple[int, ...]  # per item, WITHOUT the batch dimension; -1 = any size
    optional: bool = False  # ModelInput.optional: a request may leave it out


@dataclass(frozen=True)
class ModelContract:
    """What the entry (ensemble) model accepts, read from its config.pbtxt."""

    name: str
    inputs: dict[str, TensorSpec]
    outputs: frozenset[str]
    max_batch_size: int  # 0: the model has no batch dimension; request shape == dims


class ContractError(UserError, ValueError):
    """A config.pbtxt that cannot be read as a model contract (names the file and field)."""


class RequestRejected(Exception):
    """A request refused before it reaches Triton: answered with ``status`` and ``code``."""

    def __init__(self, message: str, *, status: int = 400, code: str = "ValidationError"):
        super().__init__(message)
        self.status = status  # 400 for a bad request, 413 for an over-size payload
        self.code = code  # the SageMaker error type to answer with
        self.message = message


@dataclass(frozen=True)
class TritonRequest:
    headers: dict[str, str]  # headers for Triton's POST /v2/models/<m>/infer
    json_header_size: int | None  # None: the whole body is JSON


@dataclass
class _Input:
    """One validated entry of the request's "inputs" list."""

    label: str  # "input 'NAME'" or "inputs[i]": how messages name it
    name: str
    datatype: str
    shape: list[int]
    count: int  # element count (product of the shape)
    binary_size: int | None  # parameters.binary_data_size, None: data is in the JSON
    data: Any = field(default=None, repr=False)


# ---------------------------------------------------------------------------------- contract
def contract_from_config(path: Path) -> ModelContract:
    """Read what a model accepts from its ``config.pbtxt`` (Triton's text-format ModelConfig).

    The name defaults to the model's folder name, as Triton does when ``name`` is empty.
    Raises :class:`ContractError` naming the file when it cannot be parsed.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    path = Path(path)
    try:
        cfg = text_format.Parse(path.read_text(), mc.ModelConfig())
    except (OSError, UnicodeDecodeError, text_format.ParseError) as e:
        raise ContractError(f"{path}: cannot read the model config: {e}") from None
    inputs: dict[str, TensorSpec] = {}
    for t in cfg.input:
        if t.name in inputs:
            raise ContractError(f"{path}: input {t.name!r} is declared twice")
        dtype = _wire_dtype(mc.DataType.Name(t.data_type))
        if dtype is None:
            raise ContractError(f"{path}: input {t.name!r} has data_type "
                                f"{mc.DataType.Name(t.data_type)}, which a request cannot carry")
        inputs[t.name] = TensorSpec(t.name, dtype, tuple(int(d) for d in t.dims),
                                    optional=bool(getattr(t, "optional", False)))
    if cfg.max_batch_size < 0:
        raise ContractError(f"{path}: max_batch_size {cfg.max_batch_size} is negative")
    return ModelContract(name=cfg.name or path.parent.name, inputs=inputs,
                         outputs=frozenset(o.name for o in cfg.output),
                         max_batch_size=int(cfg.max_batch_size))


def _wire_dtype(config_type: str) -> str | None:
    """``TYPE_FP32`` -> ``FP32``, ``TYPE_STRING`` -> ``BYTES`` (Triton's own mapping)."""
    name = "BYTES" if config_type == "TYPE_STRING" else config_type.removeprefix("TYPE_")
    return name if name in DTYPE_SIZES else None


# ---------------------------------------------------------------------------------- entry point
def oversize(max_bytes: int = MAX_PAYLOAD_BYTES) -> RequestRejected:
    """SageMaker's answer to a body over the payload limit (413, no error type)."""
    return RequestRejected(f"HTTP content length exceeded {max_bytes} bytes.", status=413, code="413")


def check_request(content_type: str, body: bytes, contract: ModelContract | None,
                  *, max_bytes: int = MAX_PAYLOAD_BYTES) -> TritonRequest:
    """Check one request body; return the headers Triton needs to read it.

    ``contract`` None: structural checks only (the model's config is not known yet).
    Raises :class:`RequestRejected` (400, or 413 over ``max_bytes``) and nothing else.
    """
    content_type = content_type or ""
    if len(body) > max_bytes:
        raise oversize(max_bytes)
    header_size = _header_length(content_type, len(body))
    doc = _parse_header(body, header_size, content_type)
    inputs = _check_inputs(doc, max_bytes)
    outputs = _check_outputs(doc.get("outputs"))
    _check_parameters(doc.get("parameters"), "the request", _REQUEST_PARAMS)
    if "id" in doc and not isinstance(doc["id"], str):
        raise RequestRejected(f"request \"id\" must be a string, got {_kind(doc['id'])}")
    if contract is not None:
        _check_contract(inputs, outputs, contract)
    for inp in inputs:
        if inp.binary_size is None:
            _check_json_data(inp)
    binary = [i for i in inputs if i.binary_size is not None]
    _check_binary(body, header_size, binary, content_type)
    if header_size is not None and binary:
        return TritonRequest({"Content-Type": "application/octet-stream",
                              "Inference-Header-Content-Length": str(header_size)}, header_size)
    return TritonRequest({"Content-Type": "application/json"}, None)


# ---------------------------------------------------------------------------------- content type
def _header_length(content_type: str, body_len: int) -> int | None:
    """SageMaker's ``GetInferenceHeaderLength``: the JSON header's length, None = whole body."""
    pos = content_type.find(BINARY_MIME_PREFIX)
    if pos < 0:
        return None
    if pos != 0:
        raise RequestRejected(f"expect MIME type for binary data starts with "
                              f"'{BINARY_MIME_PREFIX}', got: {_clip(content_type)}")
    rest = content_type[len(BINARY_MIME_PREFIX):]
    m = _ATOI.match(rest)
    if m is None:  # atoi would read 0: an empty JSON header, which Triton refuses anyway
        raise RequestRejected(f"Unable to parse inference header size, got: {_clip(rest)!r}")
    size = int(m.group(1))
    if size < 0 or size > body_len:
        why = "negative" if size < 0 else f"larger than the {body_len}-byte body"
        raise RequestRejected(f"inference header size should be in range (0, {body_len}), "
                              f"got: {_clip(rest)} (json-header-size {why})")
    return size


def _parse_header(body: bytes, header_size: int | None, content_type: str) -> dict[str, Any]:
    raw = body if header_size is None else body[:header_size]
    try:
        # orjson: strict RFC 8259 like Triton's rapidjson (no NaN/Infinity, UTF-8 only, depth
        # limit, integers past 64 bits read as doubles) and 3-4x faster than json.loads here
        doc = orjson.loads(raw)
    except (ValueError, RecursionError) as e:  # orjson.JSONDecodeError is a ValueError
        where = (f"the first {header_size} bytes (json-header-size)" if header_size is not None
                 else "the body")
        reason = "nested too deeply" if isinstance(e, RecursionError) else _clip(str(e))
        raise RequestRejected(f"request JSON header ({where}) is not valid JSON: {reason}"
                              f"{_binary_hint(content_type, header_size)}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise RequestRejected("request JSON must be an object with a non-empty \"inputs\" list")
    return doc


def _binary_hint(content_type: str, header_size: int | None) -> str:
    if header_size is not None:
        return " (json-header-size must be the exact length of the JSON header)"
    ct = content_type.lower().replace(" ", "")
    if "binary+json" in ct or "json-header-size" in ct:
        return (f"; Content-Type {_clip(content_type)!r} is read as all JSON: a binary section "
                f"needs a Content-Type starting with exactly '{BINARY_MIME_PREFIX}N'")
    if content_type.startswith("application/json"):
        return ""
    return (f"; with Content-Type {_clip(content_type)!r} the whole body is the JSON request "
            f"(binary tensors need '{BINARY_MIME_PREFIX}N')")


# ---------------------------------------------------------------------------------- JSON header
def _check_inputs(doc: dict[str, Any], max_bytes: int) -> list[_Input]:
    out: list[_Input] = []
    seen: set[str] = set()
    for i, t in enumerate(doc["inputs"]):
        label = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise RequestRejected(f"{label} must be an object, got {_kind(t)}")
        name = t.get("name")
        if not isinstance(name, str):
            raise RequestRejected(f"{label}: \"name\" must be a string, got {_kind(name)}")
        label = f"input {_clip(name)!r}"
        if name in seen:
            raise RequestRejected(f"{label} is given twice")
        seen.add(name)
        dtype = t.get("datatype")
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise RequestRejected(f"{label}: \"datatype\" {_describe(dtype)} is not a Triton "
                                  f"datatype ({', '.join(DTYPE_SIZES)})")
        shape = t.get("shape")
        count = _element_count(label, shape, dtype, max_bytes)
        params = t.get("parameters")
        _check_parameters(params, label)
        binary_size = _binary_size(label, params, "data" in t)
        if binary_size is None and "data" not in t:
            raise RequestRejected(f"{label} has neither \"data\" nor parameters.binary_data_size")
        out.append(_Input(label, name, dtype, t["shape"], count, binary_size, t.get("data")))
    return out


def _element_count(label: str, shape: Any, dtype: str, max_bytes: int) -> int:
    """Product of the shape, overflow-checked like int64 arithmetic must be, and capped."""
    if not isinstance(shape, list) or not all(type(d) is int for d in shape):
        bad = next((d for d in shape if type(d) is not int), None) if isinstance(shape, list) \
            else shape
        raise RequestRejected(f"{label}: \"shape\" must be a list of integers, got "
                              f"{'a list holding ' if isinstance(shape, list) else ''}"
                              f"{_describe(bad)}")
    for d in shape:
        if d < 0:
            raise RequestRejected(f"{label}: shape {_shape(shape)} has a negative dimension")
        if d > INT64_MAX:
            raise RequestRejected(f"{label}: shape {_shape(shape)} has a dimension over int64")
    count = 0 if 0 in shape else 1
    if count:
        for d in shape:
            count *= d
            if count > INT64_MAX:
                raise RequestRejected(f"{label}: shape {_shape(shape)} has an element count that "
                                      f"overflows int64, over the {max_bytes}-byte payload limit")
    size = count * DTYPE_SIZES[dtype]
    if size > max_bytes:
        least = "at least " if dtype == "BYTES" else ""
        raise RequestRejected(f"{label}: shape {_shape(shape)} has {count} elements ({least}{size} "
                              f"bytes as {dtype}), over the {max_bytes}-byte payload limit")
    return count


def _check_parameters(params: Any, label: str, typed: tuple[str, ...] = ()) -> None:
    """A client may never address the server's shared memory (``shared_memory_region`` ...);
    the ``typed`` parameters Triton reads at this level must have the type it reads."""
    if params is None:
        return
    if not isinstance(params, dict):
        raise RequestRejected(f"{label}: \"parameters\" must be an object, got {_kind(params)}")
    for key in params:
        if key.startswith("shared_memory"):
            raise RequestRejected(f"{label}: parameter {_clip(key)!r} is refused: requests may "
                                  f"not use the server's shared memory")
    _check_typed(params, label, typed)


# Parameters Triton's HTTP front end reads, and what it needs them to be. Another type makes
# it answer 500 ("attempt to access JSON non-boolean as boolean"), which reaches the client as
# a 424 "server error (500) from primary" for what is the client's mistake (found by
# bench/fuzz.py). Request level: binary_data_output; output level: the other two.
_PARAM_TYPES: dict[str, tuple[str, Any]] = {
    "binary_data_output": ("true or false", lambda v: type(v) is bool),
    "binary_data": ("true or false", lambda v: type(v) is bool),
    "classification": ("a non-negative integer", lambda v: type(v) is int and 0 <= v < 2**64),
}
_REQUEST_PARAMS = ("binary_data_output",)
_OUTPUT_PARAMS = ("binary_data", "classification")


def _check_typed(params: dict[str, Any], label: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in params and not _PARAM_TYPES[key][1](params[key]):
            raise RequestRejected(f"{label}: parameter {key!r} must be {_PARAM_TYPES[key][0]}, "
                                  f"got {_describe(params[key])}")


def _binary_size(label: str, params: dict[str, Any] | None, has_data: bool) -> int | None:
    if not params or "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if type(size) is not int or size < 0:
        raise RequestRejected(f"{label}: parameters.binary_data_size must be a non-negative "
                              f"integer, got {_describe(size)}")
    if has_data:
        raise RequestRejected(f"{label} has both \"data\" and parameters.binary_data_size")
    return size


def _check_outputs(outputs: Any) -> list[str]:
    if outputs is None:
        return []
    if not isinstance(outputs, list):
        raise RequestRejected(f"request \"outputs\" must be a list, got {_kind(outputs)}")
    names: list[str] = []
    for i, o in enumerate(outputs):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise RequestRejected(f"outputs[{i}] must be an object with a string \"name\"")
        label = f"output {_clip(o['name'])!r}"
        if o["name"] in names:
            raise RequestRejected(f"{label} is requested twice")
        _check_parameters(o.get("parameters"), label, _OUTPUT_PARAMS)
        names.append(o["name"])
    return names


# ---------------------------------------------------------------------------------- model config
def _check_contract(inputs: list[_Input], outputs: list[str], contract: ModelContract) -> None:
    model = f"model {_clip(contract.name)!r}"
    known = ", ".join(sorted(contract.inputs)) or "none"
    given = {i.name for i in inputs}
    for inp in inputs:
        if inp.name not in contract.inputs:
            raise RequestRejected(f"{inp.label} is not an input of {model} (its inputs: {known})")
    for spec in contract.inputs.values():
        if spec.name not in given and not spec.optional:
            raise RequestRejected(f"{model} needs input {spec.name!r} ({spec.datatype}, shape "
                                  f"{_expected(spec, contract.max_batch_size)}): not given")
    batch: tuple[int, str] | None = None
    for inp in inputs:
        spec = contract.inputs[inp.name]
        if inp.datatype != spec.datatype:
            raise RequestRejected(f"{inp.label}: datatype {inp.datatype}, but {model} expects "
                                  f"{spec.datatype}")
        _check_dims(inp, spec, contract.max_batch_size, model)
        if contract.max_batch_size > 0:
            if batch is not None and inp.shape[0] != batch[0]:
                raise RequestRejected(f"{inp.label}: batch size {inp.shape[0]} differs from "
                                      f"{batch[1]}'s {batch[0]}")
            batch = (inp.shape[0], inp.label)
    for name in outputs:
        if name not in contract.outputs:
            raise RequestRejected(f"output {_clip(name)!r} is not an output of {model} (its "
                                  f"outputs: {', '.join(sorted(contract.outputs)) or 'none'})")


def _check_dims(inp: _Input, spec: TensorSpec, max_batch: int, model: str) -> None:
    expected = _expected(spec, max_batch)
    rank = len(spec.dims) + (1 if max_batch > 0 else 0)
    if len(inp.shape) != rank:
        raise RequestRejected(f"{inp.label}: shape {_shape(inp.shape)} has rank {len(inp.shape)}, "
                              f"{model} expects rank {rank}: {expected}")
    dims = inp.shape
    if max_batch > 0:
        if not 1 <= dims[0] <= max_batch:
            raise RequestRejected(f"{inp.label}: shape {_shape(dims)} has batch size {dims[0]}, "
                                  f"{model} takes 1..{max_batch}: {expected}")
        dims = dims[1:]
    for k, (got, want) in enumerate(zip(dims, spec.dims, strict=True)):
        if want != -1 and got != want:
            axis = k + (1 if max_batch > 0 else 0)
            raise RequestRejected(f"{inp.label}: shape {_shape(inp.shape)} has {got} at dimension "
                                  f"{axis}, {model} expects {want}: {expected}")


def _expected(spec: TensorSpec, max_batch: int) -> str:
    dims = [str(d) for d in spec.dims]
    if max_batch > 0:
        dims.insert(0, f"1..{max_batch}")
    return "[" + ", ".join(dims) + "]"


# ---------------------------------------------------------------------------------- data
def _check_json_data(inp: _Input) -> None:
    """Value count == element count; value types plausible for the datatype."""
    if inp.datatype in _NO_JSON_DATA:
        raise RequestRejected(f"{inp.label}: {inp.datatype} data cannot be sent as JSON "
                              f"(Triton refuses it): use the binary data format")
    if not isinstance(inp.data, list):
        raise RequestRejected(f"{inp.label}: \"data\" must be a list, got {_kind(inp.data)}")
    flat, types = _flatten(inp.data)
    if len(flat) != inp.count:
        raise RequestRejected(f"{inp.label}: shape {_shape(inp.shape)} has {inp.count} elements "
                              f"but \"data\" holds {len(flat)} values")
    if flat:
        _check_values(inp, flat, types)


def _flatten(data: list[Any]) -> tuple[list[Any], set[type]]:
    """All scalars of nested lists (Triton reads nested "data" row-major) and their types.
    Order is not kept: only the count and the value types matter here. C-level ``map``/``set``
    keep a 50 KB image sent as JSON numbers at about a millisecond."""
    types = set(map(type, data))
    if list not in types:
        return data, types
    out: list[Any] = []
    types = set()
    stack = [data]
    while stack:
        cur = stack.pop()
        cur_types = set(map(type, cur))
        if list not in cur_types:
            out.extend(cur)
            types |= cur_types
            continue
        for v in cur:
            if type(v) is list:
                stack.append(v)
            else:
                out.append(v)
                types.add(type(v))
    return out, types


def _check_values(inp: _Input, flat: list[Any], types: set[type]) -> None:
    dtype = inp.datatype
    if dtype == "BOOL":
        ok, want = types <= {bool}, "true/false"
    elif dtype == "BYTES":
        ok, want = types <= {str}, "strings"
    elif dtype in _INT_RANGES:
        lo, hi = _INT_RANGES[dtype]
        ok, want = types <= {int}, f"integers in [{lo}, {hi}]"
        low, high = (min(flat), max(flat)) if ok else (lo, hi)
        if low < lo or high > hi:
            bad = low if low < lo else high
            raise RequestRejected(f"{inp.label}: \"data\" needs {want} for {dtype}, got "
                                  f"{_clip(str(bad))}")
    else:  # FP32, FP64
        ok, want = types <= {int, float}, "finite numbers"
        if ok and not _all_finite(flat):
            raise RequestRejected(f"{inp.label}: \"data\" needs {want} for {dtype}, got a value "
                                  f"outside the range of a double")
        if ok and dtype == "FP32":
            _check_fp32_range(inp, flat)
    if not ok:
        found = ", ".join(sorted(_JSON_NAMES.get(t, t.__name__) for t in types))
        raise RequestRejected(f"{inp.label}: \"data\" needs {want} for {dtype}, got {found}")


def _check_fp32_range(inp: _Input, flat: list[Any]) -> None:
    """Triton casts each JSON number to float; one past FP32's range becomes infinity. The
    model then sees inf (a silently different input) and, when it answers in JSON, Triton
    writes ``Infinity``, which is not JSON: tritonclient's parser (the sample's) fails on the
    200 answer. Refused here instead, naming the value (found by bench/fuzz.py)."""
    low, high = min(flat), max(flat)
    if low <= -FP32_OVERFLOW or high >= FP32_OVERFLOW:
        bad = low if low <= -FP32_OVERFLOW else high
        raise RequestRejected(f"{inp.label}: \"data\" needs finite numbers for FP32, got "
                              f"{_clip(str(bad), 40)}, past FP32's largest value "
                              f"3.4028235e+38 (Triton would make it infinity)")


def _all_finite(values: list[Any]) -> bool:
    try:
        return all(map(math.isfinite, values))
    except OverflowError:  # an integer too large for a double
        return False


_JSON_NAMES = {bool: "true/false", int: "integer", float: "number", str: "string",
               dict: "object", type(None): "null", list: "list"}


def _check_binary(body: bytes, header_size: int | None, binary: list[_Input],
                  content_type: str) -> None:
    """The binary section: each input's declared size, in order, exactly filling it."""
    start = len(body) if header_size is None else header_size
    available = len(body) - start
    first = next((i for i in binary if i.binary_size), None)
    if first is not None and available == 0:
        why = (f" (json-header-size={header_size} is the whole body)" if header_size is not None
               else f" (Content-Type {_clip(content_type)!r}: a binary section needs "
                    f"'{BINARY_MIME_PREFIX}N')")
        raise RequestRejected(f"{first.label}: parameters.binary_data_size is "
                              f"{first.binary_size} but the body has no binary section{why}")
    offset = start
    for inp in binary:
        assert inp.binary_size is not None
        end = offset + inp.binary_size
        if end > len(body):
            raise RequestRejected(f"{inp.label}: parameters.binary_data_size is {inp.binary_size} "
                                  f"but only {len(body) - offset} bytes of the body are left "
                                  f"(truncated binary section)")
        if inp.datatype == "BYTES":
            _walk_bytes(inp, body, offset, end)
        elif inp.binary_size != inp.count * DTYPE_SIZES[inp.datatype]:
            raise RequestRejected(f"{inp.label}: parameters.binary_data_size is {inp.binary_size}, "
                                  f"but shape {_shape(inp.shape)} of {inp.datatype} needs "
                                  f"{inp.count * DTYPE_SIZES[inp.datatype]} bytes")
        offset = end
    if offset != len(body):
        raise RequestRejected(f"the body has {len(body) - offset} bytes after the JSON header and "
                              f"the inputs' binary data ({available} bytes after the header, "
                              f"{offset - start} claimed by parameters.binary_data_size)")


def _walk_bytes(inp: _Input, body: bytes, start: int, end: int) -> None:
    """BYTES: ``count`` elements, each a 4-byte little-endian length and its bytes, ending
    exactly at the input's end."""
    size = end - start
    if inp.count * 4 > size:
        raise RequestRejected(f"{inp.label}: shape {_shape(inp.shape)} has {inp.count} BYTES "
                              f"elements, which need at least {inp.count * 4} bytes; "
                              f"parameters.binary_data_size is {size}")
    pos = start
    unpack = struct.Struct("<I").unpack_from
    for k in range(inp.count):
        if pos + 4 > end:
            raise RequestRejected(f"{inp.label}: BYTES element {k} has no room for its 4-byte "
                                  f"length ({end - pos} bytes left of {size})")
        (n,) = unpack(body, pos)
        pos += 4 + n
        if pos > end:
            raise RequestRejected(f"{inp.label}: BYTES element {k} declares {n} bytes, past the "
                                  f"end of the input's {size} bytes of binary data")
    if pos != end:
        raise RequestRejected(f"{inp.label}: its {inp.count} BYTES elements end after "
                              f"{pos - start} bytes, but parameters.binary_data_size is {size}")


# ---------------------------------------------------------------------------------- messages
def _clip(text: str, limit: int = _LABEL_MAX) -> str:
    """One line, bounded: user-supplied names and values may be long or hold newlines."""
    cut = text[:limit]
    if not cut.isprintable():
        cut = cut.encode("unicode_escape", "replace").decode("ascii")
    return cut if len(text) <= limit else cut + "..."


def _shape(shape: list[int]) -> str:
    if len(shape) > 16:
        return "[" + ", ".join(map(str, shape[:8])) + f", ... ({len(shape)} dims)]"
    return _clip("[" + ", ".join(map(str, shape)) + "]", 400)


def _describe(value: Any) -> str:
    """A user-supplied value in a message: strings quoted, scalars as JSON, others by kind."""
    if isinstance(value, str):
        return repr(_clip(value))
    if value is None or isinstance(value, (bool, float)):
        return json.dumps(value)
    if isinstance(value, int):
        return _clip(str(value), 40)
    return _kind(value)


def _kind(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)

