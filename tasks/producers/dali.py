"""Serialize the image ensemble's DALI pipelines and check them against the ensemble.

Producer (for :mod:`tasks.producers.produce`): :func:`serialize_pipeline` writes ``model.dali``, the file
Triton's DALI backend loads on the GPU target and that ``preprocess/model.py`` runs with DALI's
Python API on the local-cpu target.

Why the checks live here: Triton's DALI backend binds the model's inputs to the pipeline's
external sources *by name*; a mismatch only shows up when the model is loaded on the endpoint
(or, for the Python-backend stand-in, on the first request). :func:`check_external_source`
refuses it at build time, reading the names from the serialized protobuf, so it works the same
for a ``Pipeline`` object, serialized bytes or a file, and for ``mixed`` (GPU) pipelines on a
machine without a GPU, where such a pipeline cannot be deserialized by DALI itself.

DALI is imported lazily: importing this module (e.g. from the producer registry) must not need
DALI, which is a large, optional dependency.
"""

from __future__ import annotations

import hashlib
import importlib
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from infra.errors import UserError

if TYPE_CHECKING:  # protobuf is imported where a pipeline is parsed
    from google.protobuf.message import Message

# The subset of DALI's own schema (dali/pipeline/proto/dali.proto, package dali_proto) that a
# serialized pipeline uses. DALI ships no Python bindings for it, so the message classes are
# built from this description at run time. Every field of the four messages is declared (as
# proto2 ``optional``, to parse leniently), so re-serializing loses nothing.
_STRING, _INT64, _INT32, _BOOL, _FLOAT, _MESSAGE = "string", "int64", "int32", "bool", "float", "msg"
_DALI_SCHEMA: dict[str, list[tuple[str, int, str, bool, str | None]]] = {
    # message: [(field, number, type, repeated, message type)]
    "Argument": [
        ("name", 1, _STRING, False, None), ("type", 2, _STRING, False, None),
        ("floats", 3, _FLOAT, True, None), ("ints", 4, _INT64, True, None),
        ("strings", 5, _STRING, True, None), ("bools", 6, _BOOL, True, None),
        ("extra_args", 7, _MESSAGE, True, "Argument"), ("is_vector", 8, _BOOL, False, None),
    ],
    "InputOutput": [
        ("name", 1, _STRING, False, None), ("device", 2, _STRING, False, None),
        ("is_argument_input", 3, _BOOL, False, None), ("arg_name", 4, _STRING, False, None),
        ("dtype", 5, _INT32, False, None), ("ndim", 6, _INT32, False, None),
    ],
    "OpDef": [
        ("name", 1, _STRING, False, None), ("input", 2, _MESSAGE, True, "InputOutput"),
        ("output", 3, _MESSAGE, True, "InputOutput"), ("args", 4, _MESSAGE, True, "Argument"),
        ("inst_name", 5, _STRING, False, None), ("logical_id", 6, _INT32, False, None),
    ],
    "PipelineDef": [
        ("num_threads", 1, _INT64, False, None), ("batch_size", 2, _INT32, False, None),
        ("use_async", 3, _BOOL, False, None), ("pipeline", 4, _BOOL, False, None),
        ("op", 5, _MESSAGE, True, "OpDef"), ("external_inputs", 6, _STRING, True, None),
        ("pipe_outputs", 7, _MESSAGE, True, "InputOutput"), ("device_id", 8, _INT32, False, None),
        ("seed", 9, _INT64, False, None),
    ],
}
_PROTO_PACKAGE = "mme_dali_proto"
# Operator names an external source is serialized under (old DALI versions used the second).
_EXTERNAL_SOURCE_OPS = ("ExternalSource", "_ExternalSource")
# Arguments DALI records for error messages: the file, line and code of the Python that
# defined each operator. They hold the build machine's absolute paths, so they are stripped.
_ORIGIN_ARG_PREFIX = "_origin_stack_"


class DaliPipelineError(UserError, ValueError):
    """A DALI pipeline that does not fit the ensemble, or that cannot be built or read."""


@lru_cache(maxsize=1)
def _pipeline_def_class() -> type:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    types = {_STRING: F.TYPE_STRING, _INT64: F.TYPE_INT64, _INT32: F.TYPE_INT32,
             _BOOL: F.TYPE_BOOL, _FLOAT: F.TYPE_FLOAT, _MESSAGE: F.TYPE_MESSAGE}
    fdp = descriptor_pb2.FileDescriptorProto(name="mme_dali_subset.proto",
                                             package=_PROTO_PACKAGE, syntax="proto2")
    for msg_name, fields in _DALI_SCHEMA.items():
        msg = fdp.message_type.add(name=msg_name)
        for fname, number, ftype, repeated, type_name in fields:
            f = msg.field.add(name=fname, number=number, type=types[ftype],
                              label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = f".{_PROTO_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()  # private pool: no clash with any other proto
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PROTO_PACKAGE}.PipelineDef"))


def _describe(source: object) -> str:
    if isinstance(source, (str, Path)):
        return f"pipeline file {str(source)!r}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "serialized pipeline"
    return f"pipeline {type(source).__name__}"


def _serialized_bytes(source: object) -> bytes:
    """Bytes of a serialized pipeline from a ``Pipeline`` object, bytes or a file path."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, Path)):
        try:
            return Path(source).read_bytes()
        except OSError as e:
            raise DaliPipelineError(f"cannot read DALI pipeline file {str(source)!r}: {e}") from e
    if hasattr(source, "serialize"):
        try:
            return source.serialize()
        except Exception as e:  # noqa: BLE001 - DALI raises RuntimeError/TypeError/...
            raise DaliPipelineError(f"cannot serialize {_describe(source)}: {e}") from e
    raise TypeError(f"expected a DALI Pipeline, serialized bytes or a file path, "
                    f"got {type(source).__name__}")


def parse_serialized(source: object) -> Message:
    """The ``dali_proto.PipelineDef`` message of a pipeline (object, bytes or file)."""
    from google.protobuf.message import DecodeError

    data = _serialized_bytes(source)
    msg = _pipeline_def_class()()
    try:
        msg.ParseFromString(data)
    except DecodeError as e:
        raise DaliPipelineError(f"{_describe(source)} is not a serialized DALI pipeline: {e}") from e
    if not data or not msg.op:
        raise DaliPipelineError(f"{_describe(source)} is not a serialized DALI pipeline "
                                f"(no operators in {len(data)} bytes)")
    return msg


def external_source_names(source: object) -> list[str]:
    """Names of the pipeline's external sources (the inputs Triton feeds), in graph order.

    An external source is serialized as an ``ExternalSource`` operator whose instance name is
    the ``name`` given to ``fn.external_source`` (its output carries the same name); very old
    pipelines list them in ``PipelineDef.external_inputs`` instead.
    """
    msg = parse_serialized(source)
    names: list[str] = []
    for op in msg.op:
        if op.name in _EXTERNAL_SOURCE_OPS:
            name = op.inst_name or (op.output[0].name if op.output else "")
            if name and name not in names:
                names.append(name)
    for name in msg.external_inputs:
        if name not in names:
            names.append(name)
    return names


def check_external_source(source: object, expected_input_name: str, *,
                          pipeline_name: str | None = None) -> list[str]:
    """Refuse a pipeline whose single external source is not ``expected_input_name``.

    ``source`` is a DALI ``Pipeline``, serialized bytes or a ``model.dali`` path. Returns the
    names found. Raises :class:`DaliPipelineError` naming the pipeline, the ensemble input that
    was expected and the external sources found.
    """
    what = f"DALI pipeline {pipeline_name!r}" if pipeline_name else _describe(source)
    names = external_source_names(source)
    if names == [expected_input_name]:
        return names
    if not names:
        problem = "has no external source"
    elif expected_input_name not in names:
        problem = f"has external source(s) {names}, none named {expected_input_name!r}"
    else:
        problem = f"has {len(names)} external sources {names}, but the step has one input"
    raise DaliPipelineError(
        f"{what} {problem}: the ensemble step feeds its input {expected_input_name!r}, and "
        f"Triton's DALI backend binds inputs to external sources by name "
        f"(fn.external_source(name={expected_input_name!r}, ...))")


def strip_origin_info(data: bytes) -> bytes:
    """Drop the ``_origin_stack_*`` arguments (the defining file's absolute path, line numbers
    and code) from a serialized pipeline, so that the same pipeline serialized on two
    machines gives the same bytes, and no build-machine path ships inside the model."""
    msg = parse_serialized(data)
    for op in msg.op:
        for i in reversed(range(len(op.args))):
            if op.args[i].name.startswith(_ORIGIN_ARG_PREFIX):
                del op.args[i]
    return msg.SerializeToString(deterministic=True)


class SerializablePipeline(Protocol):
    """What :func:`build_pipeline` gives back: a DALI ``Pipeline``, of which only
    ``serialize()`` is used here."""

    def serialize(self) -> bytes: ...


class PipelineDef(Protocol):
    """What a spec's ``pipeline: "<module>:<name>"`` names (e.g. the ``squeezenet`` of
    ``ensembles.catalog.image_classifier.pipelines``): called, it builds a DALI ``Pipeline``;
    its output fields describe the tensor it produces (dims without the batch dimension)."""

    output_name: str
    output_dims: Sequence[int]
    output_layout: str

    def __call__(self, device: str, batch_size: int, *, input_name: str = ...,
                 **kw: object) -> SerializablePipeline: ...


def load_pipeline(pipeline: str) -> PipelineDef:
    """The pipeline definition named ``"<module>:<name>"``, imported with importlib.

    Why by name: a spec says which pipeline its artifact serializes, so this module needs no
    import of any catalog entry (``tasks/`` sits above ``ensembles/``) and a new ensemble
    brings its own pipelines without touching ``tasks/``.
    """
    module, sep, attr = str(pipeline).partition(":")
    if not sep or not module or not attr.isidentifier():
        raise DaliPipelineError(f"unknown DALI pipeline {pipeline!r}: name it by module path, "
                                f"'<module>:<name>', e.g. "
                                f"'ensembles.catalog.image_classifier.pipelines:squeezenet'")
    try:
        found = getattr(importlib.import_module(module), attr, None)
    except ImportError as e:
        raise DaliPipelineError(f"unknown DALI pipeline {pipeline!r}: cannot import {module!r}: "
                                f"{e}") from e
    if found is None or not callable(found) or not all(
            hasattr(found, a) for a in ("output_name", "output_dims", "output_layout")):
        raise DaliPipelineError(f"unknown DALI pipeline {pipeline!r}: {module!r} has no pipeline "
                                f"definition {attr!r} (a callable with output_name, output_dims "
                                f"and output_layout)")
    return found


def build_pipeline(pipeline: str, device: str, *, input_name: str = "INPUT",
                   batch_size: int = 16, **kw: object) -> SerializablePipeline:
    """The pipeline named ``"<module>:<name>"`` (:func:`load_pipeline`) as a DALI
    ``Pipeline`` with ``device_id=None`` unless ``device_id`` is given in ``kw``."""
    factory = load_pipeline(pipeline)
    if device not in ("cpu", "mixed"):
        raise DaliPipelineError(f"DALI pipeline {pipeline!r}: device must be 'cpu' (local-cpu) "
                                f"or 'mixed' (GPU decode), not {device!r}")
    try:
        return factory(device, int(batch_size), input_name=input_name, **kw)
    except TypeError as e:
        raise DaliPipelineError(f"DALI pipeline {pipeline!r}: bad parameters {sorted(kw)}: {e}") from e


def serialize_pipeline(out_dir: Path, *, pipeline: str, device: str, input_name: str = "INPUT",
                       batch_size: int = 16, filename: str = "model.dali",
                       **kw: object) -> tuple[Path, dict]:
    """Producer: serialize pipeline ``pipeline`` (``"<module>:<name>"``, see
    :func:`load_pipeline`) for ``device`` to ``out_dir/model.dali``.

    Serialized with ``device_id=None``, so it works on a machine without a GPU, also for a
    ``mixed`` pipeline: Triton's DALI backend sets the device when it loads the model. The
    batch size stored in the file is only a default (the DALI backend uses the model's
    ``max_batch_size``, and ``preprocess/model.py`` too). The external source name is checked
    against ``input_name`` and the build-machine paths DALI records are stripped.

    Extra ``kw`` (e.g. ``num_threads``) go to the pipeline factory. Returns the file and
    metadata: pipeline, device, tensor names/dtypes/dims, batch size, DALI version, size,
    sha256 and timings.
    """
    import nvidia.dali

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kw = {k: v for k, v in kw.items() if v is not None}
    t0 = time.perf_counter()
    pipe = build_pipeline(pipeline, device, input_name=input_name, batch_size=batch_size, **kw)
    try:
        raw = pipe.serialize()
    except Exception as e:  # noqa: BLE001
        raise DaliPipelineError(f"DALI pipeline {pipeline!r} (device {device!r}) cannot be "
                                f"serialized: {e}") from e
    seconds = time.perf_counter() - t0
    check_external_source(raw, input_name, pipeline_name=pipeline)
    data = strip_origin_info(raw)
    path = out_dir / filename
    path.write_bytes(data)
    definition = load_pipeline(pipeline)
    meta = {
        "pipeline": pipeline,
        "device": device,
        "target_backend": "dali" if device == "mixed" else "python (DALI Python API)",
        "input": {"name": input_name, "dtype": "TYPE_UINT8", "dims": [-1],
                  "content": "encoded image bytes, one image per batch item"},
        "output": {"name": definition.output_name, "dtype": "TYPE_FP32",
                   "dims": list(definition.output_dims), "layout": definition.output_layout},
        "batch_size": int(batch_size),
        "params": {k: v for k, v in kw.items()},
        "dali_version": nvidia.dali.__version__,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "serialize_seconds": round(seconds, 4),
    }
    return path, meta
