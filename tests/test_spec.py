"""Tests for ensembles.spec: schema checks, DAG validation and loading ensemble.yaml."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from ensembles.catalog import CATALOG_DIR, load_ensemble
from ensembles.spec import EnsembleSpec, SpecError, load_spec, validate


def _py(model: str = "x/model.py", **extra) -> dict:
    return {"backend": "python", "files": {"1/model.py": model}, **extra}


def spec_dict(three: bool = True) -> dict:
    """A valid spec: INPUT0 -> pre -> (enc ->) post -> OUT. Mutate freely (a fresh copy each call)."""
    steps = [
        {
            "name": "pre",
            "inputs": [{"name": "TEXT", "dtype": "TYPE_STRING", "dims": [1]}],
            "outputs": [{"name": "ids", "dtype": "TYPE_INT64", "dims": [-1]},
                        {"name": "mask", "dtype": "TYPE_INT64", "dims": [-1]}],
            "input_map": {"TEXT": "INPUT0"},
            "output_map": {"ids": "t_ids", "mask": "t_mask"},
            "backends": {"local-cpu": _py("pre/model.py"), "sagemaker-gpu": _py("pre/model.py")},
        },
    ]
    if three:
        steps.append({
            "name": "enc",
            "inputs": [{"name": "input_ids", "dtype": "TYPE_INT64", "dims": [-1]},
                       {"name": "attention_mask", "dtype": "TYPE_INT64", "dims": [-1]}],
            "outputs": [{"name": "hidden", "dtype": "TYPE_FP32", "dims": [-1, 8]}],
            "input_map": {"input_ids": "t_ids", "attention_mask": "t_mask"},
            "output_map": {"hidden": "t_hidden"},
            "backends": {
                "local-cpu": {"backend": "onnxruntime", "files": {"1/model.onnx": "artifact:onnx"}},
                "sagemaker-gpu": {"backend": "tensorrt", "files": {"1/model.plan": "artifact:plan"}},
            },
        })
        post_in = [{"name": "emb", "dtype": "TYPE_FP32", "dims": [-1, 8]},
                   {"name": "mask", "dtype": "TYPE_INT64", "dims": [-1]}]
        post_map = {"emb": "t_hidden", "mask": "t_mask"}
    else:
        post_in = [{"name": "ids", "dtype": "TYPE_INT64", "dims": [-1]}]
        post_map = {"ids": "t_ids"}
    steps.append({
        "name": "post",
        "inputs": post_in,
        "outputs": [{"name": "vec", "dtype": "TYPE_FP32", "dims": [8]}],
        "input_map": post_map,
        "output_map": {"vec": "OUT"},
        "backends": {"local-cpu": _py("post/model.py"), "sagemaker-gpu": _py("post/model.py")},
    })
    return copy.deepcopy({
        "name": "demo",
        "max_batch_size": 4,
        "inputs": [{"name": "INPUT0", "dtype": "TYPE_STRING", "dims": [1]}],
        "outputs": [{"name": "OUT", "dtype": "TYPE_FP32", "dims": [8]}],
        "artifacts": {"onnx": {"producer": "export"}, "plan": {"producer": "compile"}},
        "steps": steps,
    })


def _step(d: dict, name: str) -> dict:
    return next(s for s in d["steps"] if s["name"] == name)


def _refused(d: dict) -> str:
    """validate() must refuse the spec; return the message."""
    spec = EnsembleSpec.model_validate(d)
    with pytest.raises(SpecError) as exc:
        validate(spec)
    return str(exc.value)


# --- valid specs -------------------------------------------------------------------------


@pytest.mark.parametrize("three", [True, False])
def test_valid_spec_order(three: bool) -> None:
    order = validate(EnsembleSpec.model_validate(spec_dict(three)))
    assert order == (["pre", "enc", "post"] if three else ["pre", "post"])


def test_topological_order_for_steps_listed_out_of_order() -> None:
    d = spec_dict()
    d["steps"] = list(reversed(d["steps"]))  # post, enc, pre
    assert [s["name"] for s in d["steps"]] == ["post", "enc", "pre"]
    assert validate(EnsembleSpec.model_validate(d)) == ["pre", "enc", "post"]


def test_independent_steps_keep_user_order() -> None:
    # two consumers of pre that do not depend on each other: listed order is preserved
    d = spec_dict(three=False)
    side = copy.deepcopy(_step(d, "post"))
    side["name"] = "side"
    side["output_map"] = {"vec": "SIDE"}
    d["steps"].insert(1, side)  # pre, side, post
    assert validate(EnsembleSpec.model_validate(d)) == ["pre", "side", "post"]
    d["steps"] = [d["steps"][2], d["steps"][1], d["steps"][0]]  # post, side, pre
    assert validate(EnsembleSpec.model_validate(d)) == ["pre", "post", "side"]


def test_wildcard_dims_are_accepted() -> None:
    d = spec_dict()
    # producer emits [-1, 8]; consumer wants [5, -1]: compatible through the wildcards
    _step(d, "post")["inputs"][0]["dims"] = [5, -1]
    validate(EnsembleSpec.model_validate(d))
    # producer fixed, consumer variable
    d = spec_dict()
    _step(d, "enc")["outputs"][0]["dims"] = [3, 8]
    _step(d, "post")["inputs"][0]["dims"] = [-1, -1]
    validate(EnsembleSpec.model_validate(d))


# --- DAG errors ----------------------------------------------------------------------------


def test_input_no_step_produces() -> None:
    d = spec_dict()
    _step(d, "enc")["input_map"]["attention_mask"] = "t_nowhere"
    msg = _refused(d)
    assert "'demo'" in msg and "'enc'" in msg and "'t_nowhere'" in msg and "'attention_mask'" in msg
    assert "no step or ensemble input produces" in msg


def test_dtype_mismatch_across_connection() -> None:
    d = spec_dict()
    _step(d, "post")["inputs"][0]["dtype"] = "TYPE_FP16"
    msg = _refused(d)
    assert "'demo'" in msg and "'post'" in msg and "'emb'" in msg and "'t_hidden'" in msg
    assert "dtype mismatch" in msg and "TYPE_FP32" in msg and "TYPE_FP16" in msg


@pytest.mark.parametrize("dims", [[-1], [-1, 8, 1], [-1, 9]], ids=["rank-lower", "rank-higher", "fixed-dim"])
def test_shape_mismatch(dims: list[int]) -> None:
    d = spec_dict()
    _step(d, "post")["inputs"][0]["dims"] = dims
    msg = _refused(d)
    assert "'demo'" in msg and "'post'" in msg and "'emb'" in msg and "'t_hidden'" in msg
    assert "shape mismatch" in msg and str(dims) in msg


def test_ensemble_output_shape_mismatch() -> None:
    d = spec_dict()
    d["outputs"][0]["dims"] = [16]
    msg = _refused(d)
    assert "'demo'" in msg and "'OUT'" in msg and "shape mismatch" in msg


def test_cycle_shows_path() -> None:
    d = spec_dict()
    # pre now also reads the encoder's output: pre -> enc -> pre
    pre = _step(d, "pre")
    pre["inputs"].append({"name": "feedback", "dtype": "TYPE_FP32", "dims": [-1, 8]})
    pre["input_map"]["feedback"] = "t_hidden"
    msg = _refused(d)
    assert "'demo'" in msg and "cycle" in msg
    assert "pre -> enc -> pre" in msg or "enc -> pre -> enc" in msg


def test_duplicate_step_names() -> None:
    d = spec_dict()
    _step(d, "enc")["name"] = "pre"
    msg = _refused(d)
    assert "'demo'" in msg and "duplicate step name 'pre'" in msg


def test_duplicate_tensor_producers() -> None:
    d = spec_dict()
    _step(d, "enc")["output_map"]["hidden"] = "t_mask"  # pre already writes t_mask
    msg = _refused(d)
    assert "'demo'" in msg and "'enc'" in msg and "'t_mask'" in msg
    assert "already produced by step 'pre'" in msg


def test_step_overwriting_ensemble_input() -> None:
    d = spec_dict()
    _step(d, "pre")["output_map"]["ids"] = "INPUT0"
    msg = _refused(d)
    assert "'pre'" in msg and "'INPUT0'" in msg and "already produced by an ensemble input" in msg


def test_unwired_model_input() -> None:
    d = spec_dict()
    del _step(d, "enc")["input_map"]["attention_mask"]
    msg = _refused(d)
    assert "'demo'" in msg and "'enc'" in msg and "'attention_mask'" in msg and "not wired" in msg


def test_input_map_names_unknown_model_input() -> None:
    d = spec_dict()
    _step(d, "enc")["input_map"]["token_type_ids"] = "t_ids"
    msg = _refused(d)
    assert "'demo'" in msg and "'enc'" in msg and "'token_type_ids'" in msg
    assert "not a model input" in msg


def test_output_map_names_unknown_model_output() -> None:
    d = spec_dict()
    _step(d, "enc")["output_map"]["pooled"] = "t_pooled"
    msg = _refused(d)
    assert "'enc'" in msg and "'pooled'" in msg and "not a model output" in msg


def test_ensemble_output_nothing_produces() -> None:
    d = spec_dict()
    d["outputs"].append({"name": "EXTRA", "dtype": "TYPE_FP32", "dims": [8]})
    msg = _refused(d)
    assert "'demo'" in msg and "'EXTRA'" in msg and "not produced by any step" in msg


def test_ensemble_output_that_is_just_an_input() -> None:
    d = spec_dict()
    d["outputs"].append({"name": "INPUT0", "dtype": "TYPE_STRING", "dims": [1]})
    msg = _refused(d)
    assert "'INPUT0'" in msg and "not produced by any step" in msg


def test_python_step_without_model_py() -> None:
    d = spec_dict()
    _step(d, "post")["backends"]["sagemaker-gpu"]["files"] = {"1/other.py": "post/model.py"}
    msg = _refused(d)
    assert "'demo'" in msg and "'post'" in msg and "'sagemaker-gpu'" in msg and "1/model.py" in msg


def test_step_without_any_backend() -> None:
    d = spec_dict()
    _step(d, "post")["backends"] = {}
    msg = _refused(d)
    assert "'post'" in msg and "no backend" in msg


def test_unknown_artifact_reference() -> None:
    d = spec_dict()
    _step(d, "enc")["backends"]["local-cpu"]["files"]["1/model.onnx"] = "artifact:nope"
    msg = _refused(d)
    assert "'demo'" in msg and "'enc'" in msg and "'local-cpu'" in msg and "'artifact:nope'" in msg
    assert "unknown artifact" in msg


@pytest.mark.parametrize("dest", ["../model.py", "1/../../escape.py", "/abs/model.onnx"])
def test_file_destination_outside_model_folder(dest: str) -> None:
    d = spec_dict()
    _step(d, "enc")["backends"]["local-cpu"]["files"][dest] = "artifact:onnx"
    msg = _refused(d)
    assert "'demo'" in msg and "'enc'" in msg and repr(dest) in msg and "relative path" in msg


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(name="bad-name"), ["'bad-name'", "name must be a valid identifier"]),
        (lambda d: d.update(name="1demo"), ["'1demo'", "valid identifier"]),
        (lambda d: _step(d, "enc").update(name="en c"), ["step name 'en c'", "not a valid identifier"]),
        (lambda d: d["inputs"][0].update(name="IN.0"), ["input name 'IN.0'", "not a valid identifier"]),
        (lambda d: d["outputs"][0].update(name="-OUT"), ["output name '-OUT'", "not a valid identifier"]),
        (lambda d: d["artifacts"].update({"bad/art": {"producer": "p"}}),
         ["artifact name 'bad/art'", "not a valid identifier"]),
    ],
    ids=["ensemble-dash", "ensemble-digit", "step", "input", "output", "artifact"],
)
def test_invalid_names(mutate, expected: list[str]) -> None:
    d = spec_dict()
    mutate(d)
    msg = _refused(d)
    for part in expected:
        assert part in msg


def test_invalid_model_tensor_name() -> None:
    d = spec_dict()
    enc = _step(d, "enc")
    enc["inputs"][0]["name"] = "input ids"
    enc["input_map"] = {"input ids": "t_ids", "attention_mask": "t_mask"}
    msg = _refused(d)
    assert "'demo'" in msg and "'enc'" in msg and "model input name 'input ids'" in msg


def test_duplicate_model_output_name() -> None:
    d = spec_dict()
    pre = _step(d, "pre")
    pre["outputs"].append(dict(pre["outputs"][0]))
    msg = _refused(d)
    assert "'pre'" in msg and "duplicate model output name 'ids'" in msg


# --- schema errors (pydantic) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: _step(d, "enc").update(timeout=3), "timeout"),
        (lambda d: d["inputs"][0].update(shape=[1]), "shape"),
        (lambda d: _step(d, "enc")["backends"]["local-cpu"].update(platform="x"), "platform"),
        (lambda d: d["artifacts"]["onnx"].update(cache=True), "cache"),
    ],
    ids=["ensemble", "step", "tensor", "backend", "artifact"],
)
def test_unknown_extra_fields_are_forbidden(mutate, field: str) -> None:
    d = spec_dict()
    mutate(d)
    with pytest.raises(ValidationError) as exc:
        EnsembleSpec.model_validate(d)
    errs = exc.value.errors()
    assert any(e["type"] == "extra_forbidden" and e["loc"][-1] == field for e in errs)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["inputs"][0].update(dtype="TYPE_FLOAT"),
        lambda d: d["inputs"][0].update(dims=[]),
        lambda d: d["inputs"][0].update(dims=[0]),
        lambda d: d["inputs"][0].update(dims=[-2]),
        lambda d: _step(d, "enc")["backends"].update({"edge-tpu": _py()}),
        lambda d: _step(d, "enc")["backends"]["local-cpu"].update(backend="pytorch"),
        lambda d: d.update(max_batch_size=-1),
        lambda d: d.update(steps=[]),
    ],
    ids=["dtype", "empty-dims", "zero-dim", "neg-dim", "target", "backend", "batch", "no-steps"],
)
def test_schema_errors(mutate) -> None:
    d = spec_dict()
    mutate(d)
    with pytest.raises(ValidationError):
        EnsembleSpec.model_validate(d)


# --- load_spec ----------------------------------------------------------------------------


def test_load_real_catalog_spec() -> None:
    spec = load_spec(CATALOG_DIR / "text_embedding" / "ensemble.yaml")
    assert spec.name == "text_embedding"
    assert validate(spec) == ["preprocess", "encoder", "postprocess"]
    assert spec.model_name("encoder") == "text_embedding__encoder"
    spec2, folder = load_ensemble("text_embedding")
    assert spec2 == spec and folder == CATALOG_DIR / "text_embedding"


def test_load_spec_miswired_tensor(tmp_path: Path) -> None:
    d = spec_dict()
    _step(d, "post")["input_map"]["emb"] = "t_hiden"  # typo
    path = tmp_path / "ensemble.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ")
    assert "'demo'" in msg and "'post'" in msg and "'t_hiden'" in msg


def test_load_spec_schema_error_names_file_and_field(tmp_path: Path) -> None:
    d = spec_dict()
    _step(d, "enc")["colour"] = "blue"
    path = tmp_path / "ensemble.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: invalid ensemble spec")
    assert "steps.1.colour" in msg


def test_load_spec_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "ensemble.yaml"
    path.write_text("name: demo\nsteps: [\n  - {name: a\n")
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    assert str(exc.value).startswith(f"{path}: cannot read ensemble spec")


def test_load_spec_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    assert str(path) in str(exc.value)


def test_load_spec_yaml_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "ensemble.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    assert str(exc.value).startswith(f"{path}: ")


# --- target-specific steps -------------------------------------------------------------------


def _per_target(d: dict) -> dict:
    """``spec_dict(three=False)`` where local-cpu runs one step ``both`` (pre and post in one
    model) and sagemaker-gpu runs ``pre`` -> ``post``."""
    pre, post = _step(d, "pre"), _step(d, "post")
    for s in (pre, post):
        s["targets"] = ["sagemaker-gpu"]
        del s["backends"]["local-cpu"]
    d["steps"].append({"name": "both", "targets": ["local-cpu"], "inputs": pre["inputs"],
                       "outputs": post["outputs"], "input_map": pre["input_map"],
                       "output_map": post["output_map"], "backends": {"local-cpu": _py("both/model.py")}})
    return d


def test_each_target_runs_its_own_steps() -> None:
    spec = EnsembleSpec.model_validate(_per_target(spec_dict(three=False)))
    assert validate(spec, "local-cpu") == ["both"]
    assert validate(spec, "sagemaker-gpu") == ["pre", "post"]
    assert [s.name for s in spec.steps_for("local-cpu")] == ["both"]
    # the default: every step on every target
    plain = EnsembleSpec.model_validate(spec_dict())
    assert validate(plain, "local-cpu") == validate(plain, "sagemaker-gpu") == validate(plain)


def test_a_target_left_without_a_path_is_refused_naming_it() -> None:
    d = _per_target(spec_dict(three=False))
    _step(d, "post")["targets"] = ["local-cpu"]  # the GPU: pre, and nothing writes OUT
    _step(d, "post")["backends"] = {"local-cpu": _py("post/model.py")}
    msg = _refused(d)
    assert "target 'local-cpu'" in msg and "'OUT' is already produced by step" in msg
    d = _per_target(spec_dict(three=False))
    d["steps"] = [s for s in d["steps"] if s["name"] != "post"]
    assert "target 'sagemaker-gpu': output 'OUT' is not produced by any step" in _refused(d)


def test_a_step_targets_and_backends_must_agree() -> None:
    d = _per_target(spec_dict(three=False))
    _step(d, "both")["backends"]["sagemaker-gpu"] = _py("both/model.py")
    assert "step 'both': backends has an entry for target 'sagemaker-gpu', which is not among its " \
        "targets" in _refused(d)
    d = _per_target(spec_dict(three=False))
    _step(d, "both")["targets"] = ["local-cpu", "sagemaker-gpu"]
    _step(d, "pre")["targets"] = _step(d, "post")["targets"] = ["local-cpu"]
    _step(d, "pre")["backends"] = _step(d, "post")["backends"] = {"sagemaker-gpu": _py()}
    assert "step 'pre': targets names 'local-cpu' but backends has no 'local-cpu' entry" in _refused(d)


def test_an_unknown_target_is_refused_naming_the_file_and_field(tmp_path: Path) -> None:
    d = _per_target(spec_dict(three=False))
    _step(d, "both")["targets"] = ["local-gpu"]
    path = tmp_path / "ensemble.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    msg = str(exc.value)
    assert str(path) in msg and "steps.2.targets.0" in msg and "\n" not in msg
