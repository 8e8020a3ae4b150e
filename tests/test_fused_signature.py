"""A tenant's fusion signature, computed from its model alone, agrees with the whole fleet's
analysis: what lets a rebuild check a changed tenant against the fleet index's records (trunk
hash, graph hash, head) without fetching or parsing the unchanged tenants."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tasks.fleet.fusion import TenantSignature, analyze_fleet, tenant_signature

RNG = np.random.default_rng(11)
C = 8  # trunk features


def _model(kind: str, trunk: np.ndarray, w: np.ndarray, b: np.ndarray, extra_relu: bool = False,
           tail_op: str = "Softmax") -> bytes:
    """A tiny classifier: Gemm trunk + ReLU -> Gemm head (``kind`` is always gemm here) -> tail."""
    assert kind == "gemm"
    n = helper.make_node
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])
    nodes = [n("Gemm", ["x", "tw", "tb"], ["f0"], transB=1), n("Relu", ["f0"], ["f"]),
             n("Gemm", ["f", "hw", "hb"], ["z"], transB=1, name="head")]
    if extra_relu:
        nodes.append(n("Relu", ["z"], ["z2"]))
    last = nodes[-1].output[0]
    nodes.append(n(tail_op, [last] if tail_op != "Concat" else [last, last], ["y"], axis=-1))
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), k)
             for k, a in (("tw", trunk), ("tb", np.zeros(C)), ("hw", w), ("hb", b))]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[0]])
    model = helper.make_model(helper.make_graph(nodes, "tenant", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def test_a_tenants_signature_is_the_fleets_analysis_for_it() -> None:
    trunk = RNG.normal(size=(C, 6)).astype(np.float32)
    models = {f"t{i}": _model("gemm", trunk, RNG.normal(size=(k, C)), RNG.normal(size=k))
              for i, k in enumerate((3, 5, 4))}
    analysis = analyze_fleet(models)
    assert analysis.head is not None and sorted(analysis.classes) == sorted(models)
    for name, model in models.items():
        sig = tenant_signature(model)
        assert isinstance(sig, TenantSignature)
        assert (sig.trunk_sha256, sig.graph_sha256, sig.head.identity, sig.trunk_bytes) == (
            analysis.trunk_sha256, analysis.graph_sha256, analysis.head.identity, analysis.trunk_bytes)
        assert sig.classes == analysis.classes[name]


def test_a_changed_trunk_or_graph_changes_the_signature() -> None:
    trunk = RNG.normal(size=(C, 6)).astype(np.float32)
    w, b = RNG.normal(size=(4, C)), RNG.normal(size=4)
    base = tenant_signature(_model("gemm", trunk, w, b))
    other_trunk = tenant_signature(_model("gemm", trunk * 2, w, b))
    other_graph = tenant_signature(_model("gemm", trunk, w, b, extra_relu=True))
    new_head = tenant_signature(_model("gemm", trunk, RNG.normal(size=(6, C)), RNG.normal(size=6)))
    assert isinstance(base, TenantSignature) and isinstance(other_trunk, TenantSignature)
    assert isinstance(other_graph, TenantSignature) and isinstance(new_head, TenantSignature)
    assert other_trunk.trunk_sha256 != base.trunk_sha256
    assert other_graph.graph_sha256 != base.graph_sha256
    assert (new_head.trunk_sha256, new_head.graph_sha256, new_head.head) == (
        base.trunk_sha256, base.graph_sha256, base.head)
    assert new_head.classes == 6


def test_a_model_without_a_head_says_why() -> None:
    trunk = RNG.normal(size=(C, 6)).astype(np.float32)
    got = tenant_signature(_model("gemm", trunk, RNG.normal(size=(4, C)), RNG.normal(size=4),
                                  tail_op="Concat"))
    assert isinstance(got, str) and "Concat" in got
