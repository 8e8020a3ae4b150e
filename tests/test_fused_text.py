"""The text fleet kind (tasks/fleet/example_text.py, template text_intent_tenant) and fusion
of its heads, without Triton: each customer's intent head is a two-input ONNX graph (token
embeddings and attention mask -> masked mean -> Gemm -> Softmax); ``analyze_fleet`` must find
the Gemm head, ``fuse`` must take the TENANT input beside both, and every tenant's fused answer
must equal its own within 1e-6 in ONNX Runtime."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from ensembles.catalog import load_ensemble
from ensembles.fleet_spec import check_fleet, load_fleet, load_template, resolve_variants
from tasks.build.verify import onnx_feed
from tasks.fleet.example_text import (
    HIDDEN,
    MAX_INTENTS,
    MIN_INTENTS,
    head_model,
    head_reference,
    head_weights,
    make_text_example_fleet,
)
from tasks.fleet.fusion import analyze_fleet, fuse, run_fused, verify_fused

COUNT = 6


def _features(seed: int = 3) -> dict[str, np.ndarray]:
    """Two padded sentences' worth of encoder output: [2, 9, 384] and a mask with padding."""
    rng = np.random.default_rng(seed)
    mask = np.ones((2, 9), np.int64)
    mask[1, 5:] = 0
    return {"token_embeddings": rng.normal(0, 0.5, (2, 9, HIDDEN)).astype(np.float32),
            "attention_mask": mask}


def _heads(count: int = COUNT, seed: int = 0) -> dict[str, bytes]:
    return {f"tenant-{i:04d}": head_model(*head_weights(i, seed)).SerializeToString()
            for i in range(1, count + 1)}


def _run(model: bytes, feed: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feed)[0])


def test_a_head_is_masked_mean_then_gemm_then_softmax_over_its_own_intents() -> None:
    feed = _features()
    for i in range(1, 5):
        w, b = head_weights(i)
        assert MIN_INTENTS <= w.shape[0] <= MAX_INTENTS and w.shape == (b.shape[0], HIDDEN)
        model = head_model(w, b)
        onnx.checker.check_model(model)
        got = _run(model.SerializeToString(), feed)
        assert got.shape == (2, w.shape[0])
        assert float(np.abs(got - head_reference(w, b, **feed)).max()) < 1e-5
    # padding is left out of the mean: the padded row equals the same row cut to its tokens
    w, b = head_weights(1)
    cut = {"token_embeddings": feed["token_embeddings"][1:, :5], "attention_mask": feed["attention_mask"][1:, :5]}
    assert float(np.abs(_run(head_model(w, b).SerializeToString(), cut)
                        - _run(head_model(w, b).SerializeToString(), feed)[1:]).max()) < 1e-6


def test_the_analysis_finds_the_gemm_head_and_every_tenant_fuses() -> None:
    heads = _heads()
    analysis = analyze_fleet(heads)
    assert analysis.refused == {}
    assert analysis.head is not None and analysis.head.op == "Gemm"
    assert (analysis.head.weight, analysis.head.bias, analysis.head.weight_axis) == ("head_weight", "head_bias", 0)
    assert analysis.classes == {n: head_weights(i + 1)[0].shape[0] for i, n in enumerate(sorted(heads))}
    assert len(set(analysis.classes.values())) > 1  # K differs per customer


def test_every_fused_tenant_answers_as_its_own_head_within_1e6() -> None:
    heads = _heads()
    analysis = analyze_fleet(heads)
    shard = fuse(heads, analysis.fusable, analysis)
    fused = onnx.load_from_string(shard.model)
    assert [i.name for i in fused.graph.input] == ["token_embeddings", "attention_mask", "TENANT"]
    feed = _features()
    checks = verify_fused(shard, heads, feed)
    assert [c.tenant for c in checks] == sorted(heads)
    assert all(c.ok(1e-6) for c in checks), checks
    sess = ort.InferenceSession(shard.model, providers=["CPUExecutionProvider"])
    for index, name in enumerate(shard.tenants):
        got = run_fused(sess, feed, index)
        own = _run(heads[name], feed)
        assert got.shape == own.shape == (2, analysis.classes[name])
        assert float(np.abs(got - own).max()) <= 1e-6
    # an unknown tenant selects the empty head: no scores, nobody else's
    assert run_fused(sess, feed, len(heads)).shape == (2, 0)
    assert run_fused(sess, feed, -1).shape == (2, 0)


def test_a_head_with_other_constants_is_refused_with_the_reason() -> None:
    heads = _heads(3)
    odd = onnx.load_from_string(heads["tenant-0002"])
    eps = next(i for i in odd.graph.initializer if i.name == "min_count")
    eps.CopyFrom(onnx.numpy_helper.from_array(np.array([1e-6], np.float32), "min_count"))
    heads["tenant-0002"] = odd.SerializeToString()
    analysis = analyze_fleet(heads)
    assert analysis.fusable == ["tenant-0001", "tenant-0003"]
    assert "min_count" in analysis.refused["tenant-0002"]


def test_a_one_input_model_takes_its_tensor_whatever_its_name() -> None:
    t = np.zeros((1, 3), np.float32)
    assert onnx_feed(["pixels"], {"preprocessed": t}) == {"pixels": t}
    feed = _features()
    assert list(onnx_feed(["attention_mask", "token_embeddings"], feed)) == ["attention_mask", "token_embeddings"]


# ------------------------------------------------------------------------------ the example


def test_the_text_example_writes_heads_labels_and_a_fleet_file_the_template_takes(tmp_path: Path) -> None:
    made = make_text_example_fleet(COUNT, tmp_path.as_uri(), seed=5, layout="fused")
    assert [t.name for t in made.tenants] == [f"tenant-{i:04d}" for i in range(1, COUNT + 1)]
    assert made.written == 2 * COUNT and made.fleet_file == (tmp_path / "fleet.yaml").resolve()
    for t in made.tenants:
        folder = tmp_path / "tenants" / t.name
        labels = (folder / "labels.txt").read_text().splitlines()
        assert labels == [f"intent-{i:02d}" for i in range(t.intents)]
        model = onnx.load(str(folder / "model.onnx"))
        assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == t.intents
    again = make_text_example_fleet(COUNT, tmp_path.as_uri(), seed=5, layout="fused")
    assert (again.written, again.unchanged) == (0, 2 * COUNT)
    fleet = load_fleet(str(made.fleet_file))
    assert fleet.layout == "fused" and fleet.template == "text_intent_tenant"
    template, _ = load_template(fleet)
    resolved = resolve_variants(fleet)
    assert resolved.problems == [] and len(resolved.variants) == COUNT
    check_fleet(fleet, template, resolved.variants)
    v = resolved.variants[0]
    assert v.params["head_onnx.source"].endswith("tenants/tenant-0001/model.onnx")


def test_the_text_template_names_its_head_as_what_fuses() -> None:
    spec, _ = load_ensemble("text_intent_tenant")
    assert spec.fusion is not None and (spec.fusion.step, spec.fusion.artifact) == ("intent", "head_onnx")
    step = spec.step("intent")
    assert [t.name for t in step.inputs] == ["token_embeddings", "attention_mask"]
    assert step.outputs[0].label_filename == "labels.txt"
    text, _ = load_ensemble("text_embedding")
    for name in ("hf_model", "tokenizer", "encoder_onnx", "encoder_plan"):  # the same trunk
        assert spec.artifacts[name] == text.artifacts[name]
    assert spec.validation is not None and spec.validation.kind == "text_classification"
    assert spec.validation.metric == "matches_reference"


def _mme(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MME_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.parametrize("layout", ["fused", "separate"])
def test_cli_example_kind_text(mme_home: Path, tmp_path: Path, layout: str) -> None:
    out = tmp_path / "prefix"
    r = _mme(["fleet", "example", "--kind", "text", "--count", "3", "--out", out.as_uri(),
              "--layout", layout], mme_home)
    assert r.returncode == 0, r.stderr
    assert "3 tenants" in r.stdout and "intent heads" in r.stdout  # results: stdout
    doc = yaml.safe_load((out / "fleet.yaml").read_text())
    assert (doc["template"], doc["layout"]) == ("text_intent_tenant", layout)
    shown = _mme(["fleet", "show", str(out / "fleet.yaml"), "--json"], mme_home)
    assert shown.returncode == 0, shown.stderr


def test_cli_example_refuses_an_unknown_kind_or_layout(mme_home: Path, tmp_path: Path) -> None:
    bad = _mme(["fleet", "example", "--kind", "audio", "--out", str(tmp_path)], mme_home)
    assert bad.returncode == 2 and "--kind 'audio': expected image or text" in bad.stderr
    bad = _mme(["fleet", "example", "--kind", "text", "--layout", "auto", "--out", str(tmp_path)], mme_home)
    assert bad.returncode == 2 and "--layout 'auto': expected fused or separate" in bad.stderr
    assert not (tmp_path / "tenants").exists()
