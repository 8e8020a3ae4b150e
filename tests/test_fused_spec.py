"""A fused shard's ensemble: the template plus a TENANT input routed to the fused step, with
no shard-wide labels; bad templates are refused naming the problem."""

from __future__ import annotations

import pytest

from ensembles.catalog import CATALOG_DIR
from ensembles.fused import TENANT, fused_spec
from ensembles.render import ensemble_config, to_pbtxt
from ensembles.spec import SpecError, load_spec


def _template():
    return load_spec(CATALOG_DIR / "image_classifier_tenant" / "ensemble.yaml")


def test_the_fused_ensemble_takes_a_tenant_and_hands_it_to_the_head_step() -> None:
    spec = fused_spec(_template(), "classifier", "tenants_example_shard_000")
    assert spec.name == "tenants_example_shard_000"
    assert [t.name for t in spec.inputs] == ["INPUT", TENANT]
    head = spec.step("classifier")
    assert head.input_map[TENANT] == TENANT and [t.name for t in head.inputs] == ["preprocessed", TENANT]
    assert spec.step("preprocess") == _template().step("preprocess")  # the rest is the template's
    assert all(o.label_filename is None for o in [*spec.outputs, *head.outputs])
    cfg = to_pbtxt(ensemble_config(spec, "sagemaker-gpu"))
    assert f'name: "{TENANT}"' in cfg and f'key: "{TENANT}"' in cfg  # an input, and mapped to the head


def test_one_fused_step_per_target_each_gets_the_tenant() -> None:
    """The tenant template runs its model in a different step per target (local-cpu: the
    one-stub `classify`); each target's ensemble hands TENANT to its own."""
    template = _template()
    assert template.fusion is not None
    spec = fused_spec(template, template.fusion.step, "x")
    for target, step in (("local-cpu", "classify"), ("sagemaker-gpu", "classifier")):
        cfg = ensemble_config(spec, target)
        (scheduled,) = [s for s in cfg.ensemble_scheduling.step if s.input_map.get(TENANT)]
        assert scheduled.model_name == f"x__{step}"
    assert [t.name for t in spec.step("classify").inputs] == ["INPUT", TENANT]


def test_a_step_the_template_lacks_is_refused() -> None:
    with pytest.raises(SpecError, match="no step 'head'"):
        fused_spec(_template(), "head", "x")


def test_a_template_with_a_tenant_input_already_is_refused() -> None:
    spec = fused_spec(_template(), "classifier", "x")
    with pytest.raises(SpecError, match="already has an input named TENANT"):
        fused_spec(spec, "classifier", "y")
