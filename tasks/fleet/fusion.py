"""Fleets whose variants share a trunk: find the trunk, stack the heads, check every tenant exactly.

Per-customer classifiers are very often one frozen backbone with a customer's own last linear
layer. :func:`analyze_fleet` compares the variants' ONNX graphs (structure) and initializers
(content hashes): the *head* is the last linear node (``Conv`` 1x1, ``Gemm``, or ``MatMul`` +
``Add``) whose weight and bias are the only initializers that differ, followed only by per-class
ops, pooling and a ``Softmax``; everything before it is the *trunk*, byte-identical in every
fused variant. A variant whose graph or trunk differs is refused, with the reason, and is built
as today.

:func:`fuse` writes one ONNX model for a shard of tenants: the reference variant's graph,
unchanged, except that the head's weight and bias are read from one stacked table of every
tenant's own rows, sliced by a ``TENANT`` input. The node that consumes them is the tenant's
own node with the tenant's own rows, so each answer is the tenant's model's answer: its own
classes only (no padding, nothing of another tenant), same top-5, and max abs difference
within 1e-6 in ONNX Runtime (:func:`verify_fused` checks every tenant). One request is one
tenant (the first row's ``TENANT`` value is used for the whole request); an out-of-range or
negative tenant selects an empty head and gets no scores at all.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from ensembles.fused import TENANT as TENANT_INPUT  # the fused model's input: the tenant's index, INT32 [batch, 1]
from infra.errors import UserError

if TYPE_CHECKING:
    import onnxruntime
    from onnx import ModelProto, NodeProto, TensorProto

#: A variant's model as the caller has it: the ONNX file's bytes, or the parsed proto.
ModelLike: TypeAlias = "bytes | ModelProto"
#: A node as the structure comparison sees it: op, inputs, outputs, serialized attributes.
NodeKey: TypeAlias = tuple[str, tuple[str, ...], tuple[str, ...], tuple[tuple[str, bytes], ...]]

LINEAR_OPS = ("Conv", "Gemm", "MatMul")
#: Ops allowed after the head: they act per class (or pool over space), so slicing the head's
#: rows slices their output the same way. A Softmax may only come last.
TAIL_OPS = frozenset({"Relu", "Sigmoid", "Tanh", "LeakyRelu", "Identity", "Add", "ReduceMean",
                      "GlobalAveragePool", "Flatten", "Reshape", "Squeeze", "Softmax"})


class FusionError(UserError, ValueError):
    """A fleet (or a shard) that cannot be fused as asked, said in one line."""


@dataclass(frozen=True)
class Head:
    """Where a variant's own rows are: the head node and its weight and bias initializers, and
    the axis of each along which the classes run."""

    node: str
    op: str
    weight: str
    bias: str
    weight_axis: int
    bias_axis: int = 0

    @property
    def identity(self) -> str:
        """The head as one string: what a fleet index records, so a rebuild can tell a
        changed tenant's head from the fleet's without reading any other tenant."""
        return f"{self.op} {self.node} w={self.weight}@{self.weight_axis} b={self.bias}@{self.bias_axis}"


@dataclass(frozen=True)
class TenantSignature:
    """What fusing needs to know of one tenant's model, computed from it alone: its head, class
    count, trunk hash (as :func:`analyze_fleet` computes the fleet's) and graph hash. Two
    tenants with equal trunk, graph and head fuse together."""

    head: Head
    classes: int
    trunk_sha256: str
    trunk_bytes: int
    graph_sha256: str


@dataclass
class FusionAnalysis:
    """What :func:`analyze_fleet` found: the head (``None`` when nothing can fuse), the trunk's
    content hash, each fusable variant's class count, and each refused variant's reason."""

    head: Head | None
    reference: str | None
    trunk_sha256: str = ""
    trunk_bytes: int = 0
    graph_sha256: str = ""  # the fused tenants' graph structure (see :func:`graph_sha256`)
    classes: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def fusable(self) -> list[str]:
        return sorted(self.classes)


@dataclass(frozen=True)
class TenantCheck:
    """One tenant of a fused shard against its own model, on the same input."""

    tenant: str
    index: int
    classes: int
    max_abs_diff: float
    same_top5: bool

    def ok(self, tolerance: float) -> bool:
        return self.same_top5 and self.max_abs_diff <= tolerance


# ------------------------------------------------------------------------------ analysis


def _load(model: ModelLike) -> ModelProto:
    import onnx

    return onnx.load_from_string(bytes(model)) if isinstance(model, bytes | bytearray) else model


def _node_key(node: NodeProto) -> NodeKey:
    attrs = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
    return node.op_type, tuple(node.input), tuple(node.output), attrs


def _digests(model: ModelProto) -> dict[str, str]:
    return {init.name: hashlib.sha256(init.SerializeToString()).hexdigest() for init in model.graph.initializer}


def _attr(node: NodeProto, name: str, default: object) -> object:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def find_head(model: ModelProto) -> tuple[Head | None, str]:
    """The model's head (the last linear node before a per-class tail), or why there is none."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    if len(graph.output) != 1:
        return None, f"{len(graph.output)} graph outputs (one class-score output is supported)"
    by_output = {o: n for n in graph.node for o in n.output}
    node = by_output.get(graph.output[0].name)
    tail: list[NodeProto] = []
    while node is not None and node.op_type not in LINEAR_OPS:
        if node.op_type not in TAIL_OPS:
            return None, f"op {node.op_type} ({node.name or node.output[0]}) after the head is not supported"
        if node.op_type == "Add" and not any(i in inits for i in node.input):
            return None, f"Add {node.name or node.output[0]} joins two computed tensors after the head"
        tail.append(node)
        node = next((by_output[i] for i in node.input if i in by_output), None)
    if node is None:
        return None, "no Conv, Gemm or MatMul before the output"
    if any(n.op_type == "Softmax" for n in tail[1:]):
        return None, "a Softmax before the last op mixes classes mid-tail"
    return _head_of(node, tail, inits)


def _head_of(node: NodeProto, tail: list[NodeProto], inits: Mapping[str, TensorProto]
             ) -> tuple[Head | None, str]:
    name = node.name or node.output[0]
    if node.op_type == "Conv":
        w = inits.get(node.input[1])
        if w is None or len(node.input) < 3 or node.input[2] not in inits:
            return None, f"Conv {name}: weight and bias must both be initializers"
        if list(w.dims[2:]) != [1, 1] or _attr(node, "group", 1) != 1:
            return None, f"Conv {name}: only a 1x1 convolution with group 1 is a linear head"
        return Head(name, "Conv", node.input[1], node.input[2], weight_axis=0), ""
    if node.op_type == "Gemm":
        if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
            return None, f"Gemm {name}: weight and bias must both be initializers"
        return Head(name, "Gemm", node.input[1], node.input[2],
                    weight_axis=0 if _attr(node, "transB", 0) else 1), ""
    add = tail[-1] if tail else None  # MatMul + Add: the Add right after it carries the bias
    if node.input[1] not in inits or add is None or add.op_type != "Add":
        return None, f"MatMul {name}: needs an initializer weight and a bias Add right after it"
    bias = next((i for i in add.input if i in inits), "")
    return Head(name, "MatMul", node.input[1], bias, weight_axis=1, bias_axis=0), ""


def analyze_fleet(models: Mapping[str, ModelLike]) -> FusionAnalysis:
    """Which variants of ``models`` (name -> ONNX bytes or ModelProto) share one trunk, and the
    head after it. The trunk is what most variants have byte for byte; a variant whose graph or
    trunk weights differ from it is refused with the reason."""
    loaded = {name: _load(m) for name, m in sorted(models.items())}
    heads = {name: find_head(m) for name, m in loaded.items()}
    out = FusionAnalysis(head=None, reference=None)
    for name, (head, why) in heads.items():
        if head is None:
            out.refused[name] = why
    candidates = [n for n in loaded if n not in out.refused]
    if not candidates:
        return out
    shapes = {n: tuple(_node_key(x) for x in loaded[n].graph.node) for n in candidates}
    common_shape, _ = Counter(shapes.values()).most_common(1)[0]
    head = next(heads[n][0] for n in candidates if shapes[n] == common_shape)
    assert head is not None
    own = {head.weight, head.bias}
    trunk = {n: {k: v for k, v in _digests(loaded[n]).items() if k not in own} for n in candidates}
    common_trunk = Counter(tuple(sorted(trunk[n].items())) for n in candidates
                           if shapes[n] == common_shape).most_common(1)[0][0]
    for name in candidates:
        reason = _differs(name, shapes[name], common_shape, trunk[name], dict(common_trunk))
        if reason:
            out.refused[name] = reason
        else:
            out.classes[name] = _class_count(loaded[name], head)
    out.head = head if out.classes else None
    out.reference = min(out.classes) if out.classes else None
    if out.reference is not None:
        ref = loaded[out.reference]
        out.trunk_sha256 = hashlib.sha256("".join(v for _, v in common_trunk).encode()).hexdigest()
        out.trunk_bytes = sum(len(i.SerializeToString()) for i in ref.graph.initializer if i.name not in own)
        out.graph_sha256 = _shape_sha256(common_shape)
    return out


def _shape_sha256(shape: tuple[NodeKey, ...]) -> str:
    return hashlib.sha256(repr(shape).encode()).hexdigest()


def tenant_signature(model: ModelLike) -> TenantSignature | str:
    """One model's :class:`TenantSignature`, or why it has no head (the reason
    :func:`analyze_fleet` would give). Why: a rebuild checks a changed tenant against the
    fleet's recorded trunk without fetching or parsing the unchanged tenants."""
    loaded = _load(model)
    head, why = find_head(loaded)
    if head is None:
        return why
    own = {head.weight, head.bias}
    trunk = sorted((k, v) for k, v in _digests(loaded).items() if k not in own)
    return TenantSignature(
        head=head, classes=_class_count(loaded, head),
        trunk_sha256=hashlib.sha256("".join(v for _, v in trunk).encode()).hexdigest(),
        trunk_bytes=sum(len(i.SerializeToString()) for i in loaded.graph.initializer if i.name not in own),
        graph_sha256=_shape_sha256(tuple(_node_key(x) for x in loaded.graph.node)))


def _differs(name: str, shape: tuple[NodeKey, ...], common: tuple[NodeKey, ...], trunk: Mapping[str, str],
             common_trunk: Mapping[str, str]) -> str:
    if shape != common:
        first = next((i for i, (a, b) in enumerate(zip(shape, common, strict=False)) if a != b),
                     min(len(shape), len(common)))
        return (f"its graph differs from the fleet's at node {first} "
                f"({len(shape)} nodes against {len(common)})")
    changed = sorted(k for k in common_trunk if trunk.get(k) != common_trunk[k])
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return f"its trunk weights differ from the fleet's: {', '.join(changed[:3])}{more}"
    return ""


def _class_count(model: ModelProto, head: Head) -> int:
    w = next(i for i in model.graph.initializer if i.name == head.weight)
    return int(w.dims[head.weight_axis])


# ------------------------------------------------------------------------------ fusing


@dataclass(frozen=True)
class FusedShard:
    """One fused model: its ONNX bytes and its tenants in index order (a tenant's index is its
    ``TENANT`` value), with each tenant's class count."""

    model: bytes
    tenants: tuple[str, ...]
    classes: tuple[int, ...]

    def index_of(self, tenant: str) -> int:
        return self.tenants.index(tenant)


def _rows(model: ModelProto, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def _stack(models: Sequence[ModelProto], head: Head) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every tenant's rows, class axis first, one after another; and each tenant's [start, end)."""
    weights = [np.moveaxis(_rows(m, head.weight), head.weight_axis, 0) for m in models]
    biases = [np.moveaxis(_rows(m, head.bias), head.bias_axis, 0) for m in models]
    ends = np.cumsum([w.shape[0] for w in weights]).astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    # an empty range past the last tenant: what an unknown tenant index selects
    return (np.concatenate(weights + [weights[0][:0]]), np.concatenate(biases + [biases[0][:0]]),
            np.stack([np.append(starts, 0), np.append(ends, 0)]))


def fuse(models: Mapping[str, ModelLike], tenants: Iterable[str], analysis: FusionAnalysis) -> FusedShard:
    """One ONNX model serving ``tenants`` (in that order: a tenant's index is its ``TENANT``
    value), from their own models. Refuses a tenant the analysis did not find fusable."""
    order = tuple(tenants)
    head = analysis.head
    if head is None or not order:
        raise FusionError("nothing to fuse: " + ("no shared trunk" if head is None else "no tenants"))
    bad = [t for t in order if t not in analysis.classes]
    if bad:
        raise FusionError(f"not fusable: {', '.join(bad[:5])} ({analysis.refused.get(bad[0], 'not analysed')})")
    loaded = [_load(models[t]) for t in order]
    weights, biases, ranges = _stack(loaded, head)
    fused = _load(models[order[0]])
    fused = fused.__class__.FromString(fused.SerializeToString())  # a copy: the caller's stays as it was
    _rewire(fused, head, weights, biases, ranges)
    return FusedShard(model=fused.SerializeToString(), tenants=order,
                      classes=tuple(analysis.classes[t] for t in order))


def _rewire(model: ModelProto, head: Head, weights: np.ndarray, biases: np.ndarray, ranges: np.ndarray) -> None:
    """Replace the head's weight and bias initializers by slices of the stacked tables chosen by
    the ``TENANT`` input; nothing else in the graph changes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    keep = [i for i in graph.initializer if i.name not in (head.weight, head.bias)]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    tenant = helper.make_tensor_value_info(TENANT_INPUT, TensorProto.INT32, [batch.dim_param or None, 1])
    graph.input.append(tenant)
    count = ranges.shape[1] - 1  # tenants; index `count` is the empty head
    tables = {"fused_head_weight": weights, "fused_head_bias": biases, "fused_starts": ranges[0],
              "fused_ends": ranges[1], "fused_count": np.array([count], np.int64),
              "fused_zero": np.array([0], np.int64), "fused_one": np.array([1], np.int64),
              "fused_axis0": np.array([0], np.int64)}
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in tables.items())
    n = helper.make_node
    nodes = [
        n("Cast", [TENANT_INPUT], ["fused_t_all"], to=TensorProto.INT64),
        n("Reshape", ["fused_t_all", "fused_minus1"], ["fused_t_flat"]),
        n("Slice", ["fused_t_flat", "fused_zero", "fused_one", "fused_axis0"], ["fused_t_raw"]),
        # t outside [0, count) -> count: the empty head (no scores, nobody else's rows)
        n("GreaterOrEqual", ["fused_t_raw", "fused_zero"], ["fused_t_ge0"]),
        n("Less", ["fused_t_raw", "fused_count"], ["fused_t_ltn"]),
        n("And", ["fused_t_ge0", "fused_t_ltn"], ["fused_t_ok"]),
        n("Where", ["fused_t_ok", "fused_t_raw", "fused_count"], ["fused_t"]),
        n("Gather", ["fused_starts", "fused_t"], ["fused_start"], axis=0),
        n("Gather", ["fused_ends", "fused_t"], ["fused_end"], axis=0),
        n("Slice", ["fused_head_weight", "fused_start", "fused_end", "fused_axis0"], ["fused_w_rows"]),
        n("Slice", ["fused_head_bias", "fused_start", "fused_end", "fused_axis0"], ["fused_b_rows"]),
    ]
    graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "fused_minus1"))
    nodes += _to_head_layout("fused_w_rows", head.weight, head.weight_axis, weights.ndim)
    nodes += _to_head_layout("fused_b_rows", head.bias, head.bias_axis, biases.ndim)
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    for out in graph.output:  # the class count is the tenant's own
        dims = out.type.tensor_type.shape.dim
        if len(dims) > 1:
            dims[-1].Clear()
            dims[-1].dim_param = "classes"
    del graph.value_info[:]
    onnx.checker.check_model(model)


def _to_head_layout(rows: str, name: str, axis: int, ndim: int) -> list[NodeProto]:
    """The node writing tensor ``name`` (the head's original input) from the class-first slice."""
    from onnx import helper

    if axis == 0:
        return [helper.make_node("Identity", [rows], [name])]
    perm = list(range(1, ndim))
    perm.insert(axis, 0)
    return [helper.make_node("Transpose", [rows], [name], perm=perm)]


# ------------------------------------------------------------------------------ checking


def _session(model: bytes) -> onnxruntime.InferenceSession:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def run_fused(session: onnxruntime.InferenceSession, inputs: Mapping[str, np.ndarray], tenant: int) -> np.ndarray:
    """The fused model's answer for one tenant (every row of ``inputs`` as that tenant)."""
    batch = next(iter(inputs.values())).shape[0]
    feed = dict(inputs) | {TENANT_INPUT: np.full((batch, 1), tenant, np.int32)}
    return np.asarray(session.run(None, feed)[0])


def verify_fused(shard: FusedShard, models: Mapping[str, ModelLike], inputs: Mapping[str, np.ndarray]
                 ) -> list[TenantCheck]:
    """Every tenant of ``shard`` against its own model on the same ``inputs``: the max abs
    difference and whether the top-5 classes (in order) agree."""
    fused = _session(shard.model)
    checks = []
    for index, tenant in enumerate(shard.tenants):
        own = models[tenant]
        own_bytes = own if isinstance(own, bytes | bytearray) else own.SerializeToString()
        want = np.asarray(_session(bytes(own_bytes)).run(None, dict(inputs))[0])
        got = run_fused(fused, inputs, index)
        checks.append(_compare(tenant, index, want, got))
    return checks


def _compare(tenant: str, index: int, want: np.ndarray, got: np.ndarray) -> TenantCheck:
    if want.shape != got.shape:
        return TenantCheck(tenant, index, int(want.shape[-1]), float("inf"), False)
    k = min(5, want.shape[-1])
    top = np.argsort(-want, axis=-1, kind="stable")[..., :k]
    top_got = np.argsort(-got, axis=-1, kind="stable")[..., :k]
    diff = float(np.max(np.abs(want.astype(np.float64) - got))) if want.size else 0.0
    return TenantCheck(tenant, index, int(want.shape[-1]), diff, bool(np.array_equal(top, top_got)))
