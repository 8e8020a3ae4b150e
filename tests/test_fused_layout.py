"""A fleet file's ``layout`` and ``shard_size``, and the template's ``fusion`` section: the
defaults, the one-line refusals, and the fused step's label files left out of a shard."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ensembles.catalog import CATALOG_DIR
from ensembles.fleet_spec import DEFAULT_SHARD_SIZE, FleetError, check_fleet, load_fleet, load_template
from ensembles.fused import fused_spec
from ensembles.spec import EnsembleSpec, SpecError, load_spec, validate

TEMPLATE = "image_classifier_tenant"


def _fleet(tmp_path: Path, **doc: object) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"name": "f1", "template": TEMPLATE,
                                    "variants": [{"name": "a"}], **doc}))
    return path


def _template() -> EnsembleSpec:
    return load_spec(CATALOG_DIR / TEMPLATE / "ensemble.yaml")


def test_a_fleet_is_separate_with_shards_of_a_thousand_by_default(tmp_path: Path) -> None:
    fleet = load_fleet(_fleet(tmp_path))
    assert (fleet.layout, fleet.shard_size, fleet.fused) == ("separate", DEFAULT_SHARD_SIZE, False)
    fused = load_fleet(_fleet(tmp_path, layout="fused", shard_size=5))
    assert (fused.layout, fused.shard_size, fused.fused) == ("fused", 5, True)
    assert load_fleet(_fleet(tmp_path, layout="auto")).fused  # auto fuses what fuses, for now
    check_fleet(fused, load_template(fused)[0])


@pytest.mark.parametrize(("doc", "says"), [({"layout": "stacked"}, "layout"),
                                           ({"shard_size": 0}, "shard_size")])
def test_a_bad_layout_or_shard_size_is_refused_naming_the_field(tmp_path: Path, doc: dict,
                                                                  says: str) -> None:
    with pytest.raises(FleetError, match=says):
        load_fleet(_fleet(tmp_path, **doc))


def test_a_fused_layout_needs_a_template_that_names_what_fuses(tmp_path: Path) -> None:
    fleet = load_fleet(_fleet(tmp_path, layout="fused"))
    bare = _template().model_copy(update={"fusion": None})
    with pytest.raises(FleetError, match="needs a template that says what fuses"):
        check_fleet(fleet, bare)


def test_the_tenant_template_names_its_classifier_and_model() -> None:
    spec = _template()
    assert spec.fusion is not None
    assert spec.fusion.artifact == "classifier_onnx"
    # local-cpu runs the model in the one-stub `classify` step, the GPU in `classifier`
    assert [spec.fusion.step_for(t) for t in ("local-cpu", "sagemaker-gpu")] == ["classify", "classifier"]


@pytest.mark.parametrize(("fusion", "says"), [
    ({"step": "head", "artifact": "classifier_onnx"}, "fusion.step 'head' is not a step"),
    ({"step": "classifier", "artifact": "weights"}, "fusion.artifact 'weights' is not an artifact"),
    ({"step": "preprocess", "artifact": "classifier_onnx"}, "is not a file of step 'preprocess'"),
    ({"step": {"local-cpu": "classifier", "sagemaker-gpu": "classifier"}, "artifact": "classifier_onnx"},
     r"fusion.step.local-cpu 'classifier' does not run on target 'local-cpu'"),
    ({"step": {"local-cpu": "classify", "sagemaker-gpu": "preprocess"}, "artifact": "classifier_onnx"},
     "is not a file of step 'preprocess'"),
])
def test_a_fusion_section_naming_nothing_is_refused(fusion: dict, says: str) -> None:
    doc = _template().model_dump()
    doc["fusion"] = fusion
    with pytest.raises(SpecError, match=says):
        validate(EnsembleSpec.model_validate(doc))


def test_a_shard_step_carries_no_label_file() -> None:
    template = _template()
    assert template.fusion is not None
    spec = fused_spec(template, template.fusion.step, "f1_shard_000")
    for step in ("classify", "classifier"):  # the fused step of each target
        assert "TENANT" in spec.step(step).input_map
        for backend in spec.step(step).backends.values():
            assert "labels.txt" not in backend.files
            assert "1/model.onnx" in backend.files
