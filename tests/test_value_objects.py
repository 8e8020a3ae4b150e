"""The small value objects that each concept now has one of: ArtifactRef (``artifact:<name>``
parsed once, at spec validation), TritonRelease (one parser, ordering, TensorRT and Python
versions, the one default) and atomic_dir (stage a folder, then rename it into place)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from ensembles.catalog import CATALOG_DIR, load_ensemble
from ensembles.spec import ArtifactRef, EnsembleSpec, SpecError, artifact_refs, load_spec
from infra.store.objects import TMP_PREFIX, atomic_dir
from infra.triton.release import DEFAULT_RELEASE, TENSORRT_BY_RELEASE, TritonRelease

# --------------------------------------------------------------------------- ArtifactRef


def test_artifact_ref_parses_only_references() -> None:
    assert ArtifactRef.parse("artifact:encoder_onnx") == ArtifactRef("encoder_onnx")
    assert str(ArtifactRef("encoder_onnx")) == "artifact:encoder_onnx"
    for other in ("runtime:onnx_model.py", "preprocess/model.py", "artifacts:x", 3, None):
        assert ArtifactRef.parse(other) is None
    assert artifact_refs(["a", ArtifactRef("x"), 1, ArtifactRef("y")]) == [ArtifactRef("x"),
                                                                          ArtifactRef("y")]


def test_validated_spec_holds_refs_and_dumps_the_yaml_spelling() -> None:
    spec, _ = load_ensemble("text_embedding")
    encoder = spec.step("encoder").backends["local-cpu"]
    refs = [v for v in encoder.files.values() if isinstance(v, ArtifactRef)]
    assert refs and all(r.name in spec.artifacts for r in refs)
    # a non-artifact source stays a string
    assert any(isinstance(v, str) and v.startswith("runtime:") for v in encoder.files.values())
    chained = [n for n, a in spec.artifacts.items() if artifact_refs(a.params.values())]
    assert chained  # the tokenizer / ONNX export read the packaged model
    # dumped (JSON and Python) it reads like the YAML: cache keys and overrides see strings
    raw = yaml.safe_load((CATALOG_DIR / "text_embedding" / "ensemble.yaml").read_text())
    assert spec.model_dump(mode="json")["artifacts"] == {
        n: {"targets": spec.artifacts[n].targets, **a} for n, a in raw["artifacts"].items()}
    assert EnsembleSpec.model_validate(spec.model_dump()) == spec


def _spec_doc() -> dict:
    return yaml.safe_load((CATALOG_DIR / "image_classifier" / "ensemble.yaml").read_text())


def test_unknown_artifact_in_params_refused_at_validation(tmp_path: Path) -> None:
    doc = _spec_doc()
    doc["validation"]["params"]["pipeline"] = "artifact:no_such"
    (tmp_path / "ensemble.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(SpecError, match=r"validation: parameter 'pipeline' reads unknown "
                                        r"artifact 'artifact:no_such'"):
        load_spec(tmp_path / "ensemble.yaml")
    doc = _spec_doc()
    doc["artifacts"]["labels"]["params"] = {"source": "artifact:missing"}
    (tmp_path / "ensemble.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(SpecError, match=r"artifact 'labels': parameter 'source' reads unknown"):
        load_spec(tmp_path / "ensemble.yaml")


# --------------------------------------------------------------------------- TritonRelease


def test_triton_release_parse_and_order() -> None:
    r = TritonRelease.parse("24.09")
    assert (r.year, r.month, str(r)) == (24, 9, "24.09")
    assert TritonRelease.parse("23.12") < r < TritonRelease.parse("25.01")
    assert sorted(map(TritonRelease.parse, ["24.10", "24.09", "23.12"]))[0] == TritonRelease(23, 12)
    for bad in ("24.9", "2409", "24.13", "24.00", "v24.09", "24.09-py3", "", None, 24.09):
        with pytest.raises(ValueError, match="malformed Triton release"):
            TritonRelease.parse(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TritonRelease(24, 13)


def test_triton_release_of_image() -> None:
    assert TritonRelease.of_image("nvcr.io/nvidia/pytorch:23.03-py3") == TritonRelease(23, 3)
    assert TritonRelease.of_image("reg:5000/sagemaker-tritonserver:24.09-py3") == DEFAULT_RELEASE
    assert TritonRelease.of_image("24.09-py3") == TritonRelease.of_image("24.09")
    for bad in ("latest", "nvcr.io/nvidia/pytorch:latest", "localhost:5000/x", "x:24.9-py3"):
        with pytest.raises(ValueError):
            TritonRelease.of_image(bad)


def test_triton_release_versions() -> None:
    assert TritonRelease.parse("23.03").tensorrt_version == "8.5.3"
    assert TritonRelease.parse("24.09").tensorrt_version == "10.4.0"
    assert TritonRelease.parse("24.04").tensorrt_major == 8
    assert TritonRelease.parse("24.05").tensorrt_major == 10
    # off the table: the rule (TensorRT 10 from 24.05) decides
    assert TritonRelease.parse("22.01").tensorrt_version is None
    assert TritonRelease.parse("22.01").tensorrt_major == 8
    assert TritonRelease.parse("26.01").tensorrt_major == 10
    assert all(TritonRelease.parse(r).tensorrt_major == int(v.split(".")[0])
               for r, v in TENSORRT_BY_RELEASE.items())
    assert TritonRelease.parse("23.03").python_version == "3.8"
    assert TritonRelease.parse("24.09").python_version == "3.10"
    assert TritonRelease.parse("24.12").python_version == "3.12"
    with pytest.raises(ValueError, match="predates"):
        _ = TritonRelease.parse("19.01").python_version


def test_one_default_release() -> None:
    """The CLI, the SageMaker backend and compile_tensorrt all default to DEFAULT_RELEASE."""
    from tasks.deploy.backends.sagemaker import SageMakerOptions
    from tasks.producers.compile import CompileOptions, CompileSpec

    assert SageMakerOptions.model_fields["triton_release"].default == str(DEFAULT_RELEASE)
    assert CompileSpec.__dataclass_fields__["triton_release"].default == str(DEFAULT_RELEASE)
    assert CompileOptions.__dataclass_fields__["triton_release"].default == str(DEFAULT_RELEASE)


# --------------------------------------------------------------------------- atomic_dir


def _siblings(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_atomic_dir_publishes_only_on_success(tmp_path: Path) -> None:
    dest = tmp_path / "entry"
    with atomic_dir(dest) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(f"{TMP_PREFIX}entry-")
        assert not dest.exists()  # nothing at dest while the folder is being made
        (staging / "a.txt").write_text("a")
    assert (dest / "a.txt").read_text() == "a"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert _siblings(tmp_path) == ["entry"]

    with pytest.raises(RuntimeError, match="boom"), atomic_dir(tmp_path / "other") as staging:
        (staging / "half").write_text("x")
        raise RuntimeError("boom")
    assert _siblings(tmp_path) == ["entry"]  # no half folder, no staging left


def test_atomic_dir_if_exists(tmp_path: Path) -> None:
    dest = tmp_path / "entry"
    dest.mkdir()
    (dest / "old").write_text("old")
    with pytest.raises(FileExistsError), atomic_dir(dest) as staging:
        (staging / "new").write_text("new")
    assert _siblings(dest) == ["old"]

    with atomic_dir(dest, if_exists="keep") as staging:  # another writer won: theirs stays
        (staging / "new").write_text("new")
    assert _siblings(dest) == ["old"]

    with atomic_dir(dest, if_exists="replace") as staging:
        (staging / "new").write_text("new")
    assert _siblings(dest) == ["new"]
    assert _siblings(tmp_path) == ["entry"]  # the old folder and the trash are gone
