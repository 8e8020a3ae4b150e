"""Tests for ensembles.render: configs of the real text_embedding ensemble, and file layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from ensembles.catalog import load_ensemble
from ensembles.render import parse_pbtxt, render_repository
from ensembles.spec import EnsembleSpec, SpecError

ENS = "text_embedding"
STEPS = ["preprocess", "encoder", "postprocess"]
MODELS = [ENS] + [f"{ENS}__{s}" for s in STEPS]


@pytest.fixture(scope="module")
def catalog() -> tuple[EnsembleSpec, Path]:
    return load_ensemble(ENS)


def _configs(repo: Path) -> dict[str, mc.ModelConfig]:
    """Parse every config.pbtxt of a rendered repository, keyed by model folder."""
    out = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        out[path.parent.name] = parse_pbtxt(path.read_text())
    return out


def _io(tensors) -> list[tuple[str, str, list[int]]]:
    return [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


def _params(cfg: mc.ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


@pytest.fixture(scope="module", params=["local-cpu", "sagemaker-gpu"])
def rendered(request, catalog, tmp_path_factory) -> tuple[str, Path, dict[str, mc.ModelConfig]]:
    spec, _ = catalog
    target = request.param
    repo = tmp_path_factory.mktemp(target) / "repo"
    assert render_repository(spec, target, repo, configs_only=True) == repo
    return target, repo, _configs(repo)


def test_every_model_rendered_with_version_folder(rendered) -> None:
    _, repo, cfgs = rendered
    assert sorted(cfgs) == sorted(MODELS)
    assert sorted(p.name for p in repo.iterdir()) == sorted(MODELS)
    for name, cfg in cfgs.items():
        assert cfg.name == name
        assert (repo / name / "1").is_dir()
        # configs_only: nothing but the version folder
        assert list((repo / name / "1").iterdir()) == []


def test_ensemble_config(rendered) -> None:
    _, _, cfgs = rendered
    ens = cfgs[ENS]
    assert ens.platform == "ensemble"
    assert ens.backend == ""
    assert ens.max_batch_size == 16
    assert _io(ens.input) == [("INPUT0", "TYPE_STRING", [1])]
    assert _io(ens.output) == [("finaloutput", "TYPE_FP32", [384])]
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [f"{ENS}__{s}" for s in STEPS]
    assert all(s.model_version == -1 for s in steps)
    maps = [(dict(s.input_map), dict(s.output_map)) for s in steps]
    assert maps == [
        ({"TEXT": "INPUT0"}, {"input_ids": "input_ids", "attention_mask": "attention_mask"}),
        ({"input_ids": "input_ids", "attention_mask": "attention_mask"},
         {"last_hidden_state": "token_embeddings"}),
        ({"token_embeddings": "token_embeddings", "attention_mask": "attention_mask"},
         {"embedding": "finaloutput"}),
    ]


def test_step_tensors(rendered) -> None:
    _, _, cfgs = rendered
    pre, enc, post = (cfgs[f"{ENS}__{s}"] for s in STEPS)
    for cfg in (pre, enc, post):
        assert cfg.max_batch_size == 16
    assert _io(pre.input) == [("TEXT", "TYPE_STRING", [1])]
    assert _io(pre.output) == [("input_ids", "TYPE_INT64", [-1]), ("attention_mask", "TYPE_INT64", [-1])]
    assert _io(enc.input) == [("input_ids", "TYPE_INT64", [-1]), ("attention_mask", "TYPE_INT64", [-1])]
    assert _io(enc.output) == [("last_hidden_state", "TYPE_FP32", [-1, 384])]
    assert _io(post.input) == [("token_embeddings", "TYPE_FP32", [-1, 384]),
                               ("attention_mask", "TYPE_INT64", [-1])]
    assert _io(post.output) == [("embedding", "TYPE_FP32", [384])]


def test_python_steps_on_both_targets(rendered) -> None:
    _, _, cfgs = rendered
    for step in ("preprocess", "postprocess"):
        cfg = cfgs[f"{ENS}__{step}"]
        assert cfg.backend == "python" and cfg.platform == ""
        assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    assert _params(cfgs[f"{ENS}__preprocess"])["max_length"] == "128"


def test_target_specific_configs(rendered) -> None:
    target, _, cfgs = rendered
    enc = cfgs[f"{ENS}__encoder"]
    pre = cfgs[f"{ENS}__preprocess"]
    if target == "local-cpu":
        assert enc.backend == "python" and enc.platform == ""
        assert _params(enc) == {"onnx_file": "model.onnx"}
        assert enc.default_model_filename == ""
        assert [g.kind for g in enc.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
        assert "EXECUTION_ENV_PATH" not in _params(pre)
    else:
        assert enc.platform == "tensorrt_plan" and enc.backend == ""
        assert enc.default_model_filename == "model.plan"
        assert [g.kind for g in enc.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        assert _params(pre)["EXECUTION_ENV_PATH"] == "$$TRITON_MODEL_DIRECTORY/processing_env.tar.gz"


# --- rendering with files ------------------------------------------------------------------


@pytest.fixture
def fake_artifacts(tmp_path: Path) -> dict[str, Path]:
    tok = tmp_path / "artifacts" / "tokenizer"
    tok.mkdir(parents=True)
    (tok / "tokenizer.json").write_text('{"fake": true}')
    onnx = tmp_path / "artifacts" / "model.onnx"
    onnx.write_bytes(b"not really onnx")
    return {"tokenizer": tok, "encoder_onnx": onnx}


def test_render_local_cpu_with_files(catalog, fake_artifacts, tmp_path: Path) -> None:
    spec, folder = catalog
    repo = render_repository(spec, "local-cpu", tmp_path / "repo", catalog_dir=folder,
                             artifacts=fake_artifacts)
    pre = repo / f"{ENS}__preprocess"
    enc = repo / f"{ENS}__encoder"
    post = repo / f"{ENS}__postprocess"
    assert (pre / "1" / "model.py").read_text() == (folder / "preprocess" / "model.py").read_text()
    assert (pre / "1" / "tokenizer" / "tokenizer.json").read_text() == '{"fake": true}'
    assert (enc / "1" / "model.onnx").read_bytes() == b"not really onnx"
    onnx_runtime_model = folder.parent.parent / "runtime" / "onnx_model.py"
    assert (enc / "1" / "model.py").read_text() == onnx_runtime_model.read_text()
    assert (post / "1" / "model.py").read_text() == (folder / "postprocess" / "model.py").read_text()
    # nothing for the other target leaks in
    assert not (pre / "processing_env.tar.gz").exists()
    assert not (enc / "1" / "model.plan").exists()
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    assert files == sorted([
        f"{ENS}/config.pbtxt",
        f"{ENS}__preprocess/config.pbtxt",
        f"{ENS}__preprocess/1/model.py",
        f"{ENS}__preprocess/1/tokenizer/tokenizer.json",
        f"{ENS}__encoder/config.pbtxt",
        f"{ENS}__encoder/1/model.py",
        f"{ENS}__encoder/1/model.onnx",
        f"{ENS}__postprocess/config.pbtxt",
        f"{ENS}__postprocess/1/model.py",
    ])
    assert (repo / ENS / "1").is_dir()


def test_missing_artifact_names_step_and_artifact(catalog, fake_artifacts, tmp_path: Path) -> None:
    spec, folder = catalog
    del fake_artifacts["encoder_onnx"]
    with pytest.raises(SpecError) as exc:
        render_repository(spec, "local-cpu", tmp_path / "repo", catalog_dir=folder,
                          artifacts=fake_artifacts)
    msg = str(exc.value)
    assert "'text_embedding'" in msg and "step 'encoder'" in msg and "'encoder_onnx'" in msg
    assert "'local-cpu'" in msg


def test_artifact_path_that_does_not_exist(catalog, fake_artifacts, tmp_path: Path) -> None:
    spec, folder = catalog
    fake_artifacts["tokenizer"] = tmp_path / "gone"
    with pytest.raises(SpecError) as exc:
        render_repository(spec, "local-cpu", tmp_path / "repo", catalog_dir=folder,
                          artifacts=fake_artifacts)
    msg = str(exc.value)
    assert "step 'preprocess'" in msg and str(tmp_path / "gone") in msg and "does not exist" in msg


def test_catalog_file_needs_catalog_dir(catalog, fake_artifacts, tmp_path: Path) -> None:
    spec, _ = catalog
    with pytest.raises(SpecError) as exc:
        render_repository(spec, "local-cpu", tmp_path / "repo", artifacts=fake_artifacts)
    assert "catalog folder" in str(exc.value) and "step 'preprocess'" in str(exc.value)


def test_out_dir_must_not_exist(catalog, tmp_path: Path) -> None:
    spec, _ = catalog
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        render_repository(spec, "local-cpu", out, configs_only=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_target_without_backend_for_a_step(catalog, tmp_path: Path) -> None:
    spec, _ = catalog
    raw = spec.model_dump()
    for step in raw["steps"]:
        if step["name"] == "encoder":
            del step["backends"]["sagemaker-gpu"]
    partial = EnsembleSpec.model_validate(raw)
    out = tmp_path / "repo"
    with pytest.raises(SpecError) as exc:
        render_repository(partial, "sagemaker-gpu", out, configs_only=True)
    msg = str(exc.value)
    assert "'text_embedding'" in msg and "encoder" in msg and "'sagemaker-gpu'" in msg
    assert not out.exists()
    # the other target still renders
    render_repository(partial, "local-cpu", out, configs_only=True)
    assert (out / f"{ENS}__encoder" / "config.pbtxt").exists()


def test_render_refuses_invalid_spec(catalog, tmp_path: Path) -> None:
    spec, _ = catalog
    raw = spec.model_dump()
    raw["steps"][2]["input_map"]["token_embeddings"] = "nowhere"
    bad = EnsembleSpec.model_validate(raw)
    out = tmp_path / "repo"
    with pytest.raises(SpecError, match="nowhere"):
        render_repository(bad, "local-cpu", out, configs_only=True)
    assert not out.exists()
