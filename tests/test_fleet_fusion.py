"""Fused fleets' core: find the shared trunk and the per-tenant head, fuse the heads into one
model selected by a TENANT input, and check every tenant against its own model (ONNX Runtime,
no Triton). Synthetic graphs cover the three linear heads (1x1 Conv, Gemm, MatMul + Add) and
the refusals; the example fleet's SqueezeNet tenants are the real case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tasks.fleet.fusion import (
    TENANT_INPUT,
    FusionError,
    analyze_fleet,
    fuse,
    run_fused,
    verify_fused,
)

RNG = np.random.default_rng(7)
C = 8  # trunk features


def _init(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def _model(kind: str, trunk: np.ndarray, w: np.ndarray, b: np.ndarray, extra_relu: bool = False,
           tail_op: str = "Softmax") -> bytes:
    """A tiny classifier: trunk (one linear layer + ReLU) -> head -> per-class tail -> Softmax."""
    n = helper.make_node
    if kind == "conv":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 4])
        nodes = [n("Conv", ["x", "tw", "tb"], ["f0"]), n("Relu", ["f0"], ["f"]),
                 n("Conv", ["f", "hw", "hb"], ["s"], name="head"), n("Relu", ["s"], ["r"]),
                 n("ReduceMean", ["r"], ["z"], axes=[2, 3], keepdims=0)]
        inits = [_init("tw", trunk), _init("tb", np.zeros(C)), _init("hw", w[:, :, None, None]), _init("hb", b)]
    elif kind == "gemm":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])
        nodes = [n("Gemm", ["x", "tw", "tb"], ["f0"], transB=1), n("Relu", ["f0"], ["f"]),
                 n("Gemm", ["f", "hw", "hb"], ["z"], transB=1, name="head")]
        inits = [_init("tw", trunk), _init("tb", np.zeros(C)), _init("hw", w), _init("hb", b)]
    else:  # matmul + add, weight [C, K]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])
        nodes = [n("MatMul", ["x", "tw"], ["f0"]), n("Relu", ["f0"], ["f"]),
                 n("MatMul", ["f", "hw"], ["m"], name="head"), n("Add", ["m", "hb"], ["z"])]
        inits = [_init("tw", trunk.T), _init("hw", w.T), _init("hb", b)]
    if extra_relu:
        nodes.append(n("Relu", ["z"], ["z2"]))
    last = nodes[-1].output[0]
    nodes.append(n(tail_op, [last] if tail_op != "Concat" else [last, last], ["y"],
                   **({"axis": -1} if tail_op in ("Softmax", "Concat") else {})))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[0]])
    graph = helper.make_graph(nodes, "tenant", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _fleet(kind: str, counts: list[int]) -> tuple[dict[str, bytes], np.ndarray]:
    trunk = RNG.normal(size=(C, 3, 1, 1) if kind == "conv" else (C, 6)).astype(np.float32)
    models = {f"t{i:02d}": _model(kind, trunk, RNG.normal(size=(k, C)), RNG.normal(size=k))
              for i, k in enumerate(counts)}
    return models, trunk


def _inputs(kind: str, batch: int = 3) -> dict[str, np.ndarray]:
    shape = (batch, 3, 4, 4) if kind == "conv" else (batch, 6)
    return {"x": RNG.normal(size=shape).astype(np.float32)}


@pytest.mark.parametrize("kind", ["conv", "gemm", "matmul"])
def test_every_tenant_of_a_fused_model_answers_as_its_own_model(kind: str) -> None:
    counts = [3, 5, 7, 2, 4]
    models, _ = _fleet(kind, counts)
    analysis = analyze_fleet(models)
    assert analysis.refused == {} and analysis.head is not None and analysis.head.node == "head"
    assert analysis.classes == {f"t{i:02d}": k for i, k in enumerate(counts)}
    shard = fuse(models, analysis.fusable, analysis)
    checks = verify_fused(shard, models, _inputs(kind))
    assert [c.tenant for c in checks] == sorted(models)
    assert [c.classes for c in checks] == counts  # each tenant's own classes, no padding
    assert all(c.ok(1e-6) for c in checks), checks


def test_a_variant_whose_trunk_differs_is_refused_and_the_rest_fuse() -> None:
    models, trunk = _fleet("conv", [3, 4, 5, 6])
    other = trunk.copy()
    other[0, 0, 0, 0] += 1.0
    models["t99"] = _model("conv", other, RNG.normal(size=(4, C)), RNG.normal(size=4))
    analysis = analyze_fleet(models)
    assert set(analysis.refused) == {"t99"}
    assert "trunk weights differ" in analysis.refused["t99"] and "tw" in analysis.refused["t99"]
    assert analysis.fusable == ["t00", "t01", "t02", "t03"]
    with pytest.raises(FusionError, match="t99"):
        fuse(models, ["t00", "t99"], analysis)


def test_a_variant_with_another_graph_is_refused_naming_the_node() -> None:
    models, trunk = _fleet("gemm", [3, 4, 5])
    models["odd"] = _model("gemm", trunk, RNG.normal(size=(4, C)), RNG.normal(size=4), extra_relu=True)
    analysis = analyze_fleet(models)
    assert set(analysis.refused) == {"odd"} and "graph differs" in analysis.refused["odd"]


def test_an_unsupported_tail_is_refused_with_its_op() -> None:
    models, trunk = _fleet("gemm", [3, 4])
    models["cat"] = _model("gemm", trunk, RNG.normal(size=(4, C)), RNG.normal(size=4), tail_op="Concat")
    analysis = analyze_fleet(models)
    assert analysis.refused["cat"].startswith("op Concat")


def test_a_fleet_with_no_linear_head_fuses_nothing() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    analysis = analyze_fleet({"a": model, "b": model})
    assert analysis.head is None and analysis.fusable == []
    assert analysis.refused["a"] == "no Conv, Gemm or MatMul before the output"
    with pytest.raises(FusionError, match="no shared trunk"):
        fuse({"a": model}, ["a"], analysis)


@pytest.mark.parametrize("tenant", [-1, -5, 3, 1000])
def test_an_unknown_tenant_gets_no_scores_of_any_other(tenant: int) -> None:
    models, _ = _fleet("gemm", [3, 4, 5])
    analysis = analyze_fleet(models)
    shard = fuse(models, analysis.fusable, analysis)
    from tasks.fleet.fusion import _session

    try:
        out = run_fused(_session(shard.model), _inputs("gemm"), tenant)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's own error is an acceptable refusal
        assert "t0" not in str(e)
    else:
        assert out.shape[-1] == 0  # the empty head: nothing at all


def test_the_fused_model_takes_a_tenant_input_and_keeps_the_rest() -> None:
    models, _ = _fleet("conv", [3, 4])
    analysis = analyze_fleet(models)
    shard = fuse(models, ["t01", "t00"], analysis)
    fused = onnx.load_from_string(shard.model)
    assert [i.name for i in fused.graph.input] == ["x", TENANT_INPUT]
    assert shard.tenants == ("t01", "t00") and shard.classes == (4, 3) and shard.index_of("t00") == 1
    assert "hw" not in {i.name for i in fused.graph.initializer}  # read from the stacked table


def test_the_example_fleets_squeezenet_tenants_fuse_exactly(tmp_path: Path, monkeypatch) -> None:
    """The real case: SqueezeNet subsets of 5-100 ImageNet classes. 50 of 52 initializers are the
    shared trunk; every tenant's answer is its own model's within 1e-6, same top-5."""
    from tasks.fleet.example import SubsetModels, base_onnx_path, example_tenants

    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    subsets = SubsetModels(base_onnx_path())
    tenants = example_tenants(6)
    models = {t.name: subsets.model_bytes(t.classes) for t in tenants}
    analysis = analyze_fleet(models)
    assert analysis.refused == {} and analysis.head is not None and analysis.head.op == "Conv"
    assert analysis.trunk_bytes > 2_800_000  # the shared backbone
    assert analysis.classes == {t.name: len(t.classes) for t in tenants}
    shard = fuse(models, analysis.fusable, analysis)
    x = np.random.default_rng(1).normal(size=(2, 3, 227, 227)).astype(np.float32)
    checks = verify_fused(shard, models, {"preprocessed": x})
    assert all(c.ok(1e-6) for c in checks), checks
