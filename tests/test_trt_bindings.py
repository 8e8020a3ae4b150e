"""TensorRT engine I/O vs the rendered config, and token dtypes by release (issue 8, point 13).

TensorRT before 10 (Triton before 24.05) has no INT64 I/O: its ONNX parser turns the encoder's
INT64 token inputs into INT32 bindings, and Triton refuses a plan whose bindings differ from
config.pbtxt. The render step makes the token dtype follow the serving release, and every
compiled plan's I/O (read back from the engine, or from trtexec's verbose log) is checked
against its rendered config before it is packed.

The trtexec logs in tests/fixtures/trtexec/ are hand-written in trtexec's format (see the
README there): no GPU was available to record real ones.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from ensembles.catalog import load_ensemble
from ensembles.engine_io import EngineMismatch, check_engine_io
from ensembles.render import (
    int64_free_tensors,
    parse_pbtxt,
    render_repository,
    serving_release,
    step_config,
)
from ensembles.spec import EnsembleSpec, SpecError
from tasks.producers import trt_bindings
from tasks.producers.trt_bindings import parse_trtexec_log

FIXTURES = Path(__file__).parent / "fixtures" / "trtexec"
ENS = "text_embedding"
TOKENS = ("input_ids", "attention_mask")


def _log(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


@pytest.fixture(scope="module")
def spec() -> EnsembleSpec:
    return load_ensemble(ENS)[0]


def _encoder_config(spec: EnsembleSpec, release: str, **update: Any):
    step = spec.step("encoder")
    be = step.backends["sagemaker-gpu"]
    cfg = step_config(spec, step, be, int64_free_tensors(spec, "sagemaker-gpu", release))
    for k, v in update.items():
        setattr(cfg, k, v)
    return cfg


def _rendered(spec: EnsembleSpec, target: str, release: str | None, tmp: Path) -> dict:
    repo = render_repository(spec, target, tmp / f"{target}-{release}", configs_only=True,
                             triton_release=release)
    return {p.parent.name: parse_pbtxt(p.read_text()) for p in repo.glob("*/config.pbtxt")}


def _dtypes(cfg, field: str) -> dict[str, str]:
    from tritonclient.grpc import model_config_pb2 as mc

    return {t.name: mc.DataType.Name(t.data_type) for t in getattr(cfg, field)}


# --------------------------------------------------------------------------- token dtype


@pytest.mark.parametrize("release,want", [("23.03", "TYPE_INT32"), ("24.04", "TYPE_INT32"),
                                          ("24.05", "TYPE_INT64"), ("24.09", "TYPE_INT64")])
def test_token_dtype_follows_the_serving_release(spec, tmp_path: Path, release: str,
                                                 want: str) -> None:
    cfgs = _rendered(spec, "sagemaker-gpu", release, tmp_path)
    pre, enc, post = (cfgs[f"{ENS}__{s}"] for s in ("preprocess", "encoder", "postprocess"))
    for name in TOKENS:
        assert _dtypes(pre, "output")[name] == want
        assert _dtypes(enc, "input")[name] == want
    assert _dtypes(post, "input") == {"token_embeddings": "TYPE_FP32", "attention_mask": want}
    assert _dtypes(enc, "output") == {"last_hidden_state": "TYPE_FP32"}
    ens = cfgs[ENS]
    assert _dtypes(ens, "input") == {"INPUT0": "TYPE_STRING"}  # callers see no change


def test_cli_render_takes_the_release(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    res = CliRunner().invoke(app, ["render", ENS, "--target", "sagemaker-gpu", "--out",
                                   str(tmp_path / "r"), "--triton-release", "23.03"])
    assert res.exit_code == 0, res.output
    enc = parse_pbtxt((tmp_path / "r" / f"{ENS}__encoder" / "config.pbtxt").read_text())
    assert _dtypes(enc, "input") == dict.fromkeys(TOKENS, "TYPE_INT32")
    res = CliRunner().invoke(app, ["render", ENS, "--target", "sagemaker-gpu", "--out",
                                   str(tmp_path / "bad"), "--triton-release", "23.3"])
    assert res.exit_code == 2 and "23.3" in res.output


def test_local_cpu_stays_int64_whatever_the_release(spec, tmp_path: Path) -> None:
    for release in ("23.03", None):
        cfgs = _rendered(spec, "local-cpu", release, tmp_path)
        assert _dtypes(cfgs[f"{ENS}__encoder"], "input") == dict.fromkeys(TOKENS, "TYPE_INT64")


def test_release_comes_from_the_compile_artifact(spec) -> None:
    assert serving_release(spec, "sagemaker-gpu") == "24.09"  # infra.triton.release.DEFAULT_RELEASE
    assert serving_release(spec, "local-cpu") is None  # no plan compiled for local-cpu
    arts = dict(spec.artifacts)
    arts["encoder_plan"] = arts["encoder_plan"].model_copy(update={"params": {
        **arts["encoder_plan"].params, "triton_release": "23.03"}})
    old = spec.model_copy(update={"artifacts": arts})
    assert serving_release(old, "sagemaker-gpu") == "23.03"
    assert int64_free_tensors(old, "sagemaker-gpu", "23.03") == set(TOKENS)


def test_int64_ensemble_input_into_tensorrt_8_is_refused(spec, tmp_path: Path) -> None:
    """Turning what callers send INT32 would change the endpoint's API: refused instead."""
    doc = spec.model_dump()
    doc["inputs"] = [{"name": "input_ids", "dtype": "TYPE_INT64", "dims": [-1]},
                     {"name": "attention_mask", "dtype": "TYPE_INT64", "dims": [-1]}]
    doc["steps"] = [s for s in doc["steps"] if s["name"] != "preprocess"]
    bare = EnsembleSpec.model_validate(doc)
    with pytest.raises(SpecError, match=r"TYPE_INT64 at a TensorRT step.*24\.05") as e:
        render_repository(bare, "sagemaker-gpu", tmp_path / "r", configs_only=True,
                          triton_release="23.03")
    assert "attention_mask" in str(e.value) and "input_ids" in str(e.value)
    render_repository(bare, "sagemaker-gpu", tmp_path / "ok", configs_only=True,
                      triton_release="24.09")


@pytest.mark.triton
def test_tokenizer_emits_the_dtype_its_config_declares(spec, built_text_embedding: dict,
                                                       tmp_path: Path) -> None:
    """The real preprocess model.py in a real Triton, rendered with INT32 token outputs."""
    import tarfile

    from infra.triton.server import TritonServer

    name = f"{ENS}__preprocess"
    with tarfile.open(built_text_embedding["archive"]) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    repo = tmp_path / "repo"
    (tmp_path / "x" / name).rename(repo.mkdir() or repo / name)
    step = spec.step("preprocess")
    cfg = step_config(spec, step, step.backends["local-cpu"], set(TOKENS))
    (repo / name / "config.pbtxt").write_text(trt_bindings_text(cfg))
    body = {"inputs": [{"name": "TEXT", "shape": [2, 1], "datatype": "BYTES",
                        "data": ["A man is eating food.", "Triton"]}]}
    with TritonServer(repo) as srv:
        srv.load(name)
        resp = httpx.post(f"{srv.url}/v2/models/{name}/infer", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    outs = {o["name"]: o for o in resp.json()["outputs"]}
    assert {outs[n]["datatype"] for n in TOKENS} == {"INT32"}
    assert outs["input_ids"]["shape"][0] == 2 and outs["input_ids"]["data"][0] == 101  # [CLS]


def trt_bindings_text(cfg) -> str:
    from ensembles.render import to_pbtxt

    return to_pbtxt(cfg)


# --------------------------------------------------------------------------- log parsing


def test_parse_tensorrt_8_6_log() -> None:
    io = parse_trtexec_log(_log("trt8.6_minilm.log"))
    assert io is not None and io.source == "trtexec-log"
    assert sorted(io.tensors) == ["attention_mask", "input_ids", "last_hidden_state"]
    ids = io.tensors["input_ids"]
    assert (ids.is_input, ids.dtype, ids.shape) == (True, "TYPE_INT32", [-1, -1])
    assert ids.profile == {"min": [1, 1], "opt": [16, 128], "max": [16, 128]}
    out = io.tensors["last_hidden_state"]
    assert (out.is_input, out.dtype, out.shape) == (False, None, None)  # the log does not say
    assert io.device == {"name": "NVIDIA A10G", "compute_capability": "8.6"}


def test_parse_tensorrt_10_log() -> None:
    lines = _log("trt10.4_minilm.log")
    io = parse_trtexec_log(lines)
    assert io is not None
    assert {n: t.dtype for n, t in io.tensors.items() if t.is_input} == dict.fromkeys(
        TOKENS, "TYPE_INT64")
    assert io.tensors["attention_mask"].profile == {"min": [1, 1], "opt": [16, 128],
                                                    "max": [16, 128]}
    assert io.device == {"name": "NVIDIA L4", "compute_capability": "8.9"}
    # the engine's own profile report wins over the options trtexec echoed
    edited = [ln.replace("Model input input_ids (profile 0): min=1x1, opt=16x128, max=16x128",
                         "Model input input_ids (profile 0): min=1x1, opt=8x64, max=8x64")
              for ln in lines]
    assert parse_trtexec_log(edited).tensors["input_ids"].profile["max"] == [8, 64]
    # no binding lines at all (a log without --verbose): nothing to check against
    assert parse_trtexec_log([ln for ln in lines if "[V]" not in ln]) is None


# --------------------------------------------------------------------------- the check


def test_engine_matching_its_release_config_passes(spec) -> None:
    check_engine_io(parse_trtexec_log(_log("trt8.6_minilm.log")), _encoder_config(spec, "24.01"),
                    where="encoder")
    check_engine_io(parse_trtexec_log(_log("trt10.4_minilm.log")),
                    _encoder_config(spec, "24.09"), where="encoder")


def test_tensorrt_8_engine_against_an_int64_config_is_refused(spec) -> None:
    """The seed's bug: an INT32 engine (TensorRT 8) with a TYPE_INT64 config."""
    with pytest.raises(EngineMismatch) as e:
        check_engine_io(parse_trtexec_log(_log("trt8.6_minilm.log")),
                        _encoder_config(spec, "24.09"), where="ensemble 'text_embedding'")
    msg = str(e.value)
    assert "tensor 'input_ids': engine dtype TYPE_INT32, config TYPE_INT64" in msg
    assert "tensor 'attention_mask'" in msg and "no INT64 I/O" in msg
    assert msg.startswith("ensemble 'text_embedding'")


def test_profile_must_cover_max_batch_size_and_fixed_dims(spec) -> None:
    io = parse_trtexec_log(_log("trt10.4_minilm.log"))
    with pytest.raises(EngineMismatch, match=r"'input_ids': config max_batch_size 32 exceeds "
                                             r"the engine profile's max batch 16"):
        check_engine_io(io, _encoder_config(spec, "24.09", max_batch_size=32), where="e")
    cfg = _encoder_config(spec, "24.09")
    cfg.input[0].dims[:] = [256]  # fixed sequence length beyond the profile's 128
    with pytest.raises(EngineMismatch, match=r"'input_ids': config dim 1 = 256 is outside the "
                                             r"engine profile's range \[1, 128\]"):
        check_engine_io(io, cfg, where="e")
    io.tensors["attention_mask"].profile["min"] = [4, 1]
    with pytest.raises(EngineMismatch, match="min batch is 4"):
        check_engine_io(io, _encoder_config(spec, "24.09"), where="e")


def test_names_and_ranks_must_match(spec) -> None:
    io = parse_trtexec_log(_log("trt10.4_minilm.log"))
    cfg = _encoder_config(spec, "24.09")
    cfg.input[1].name = "token_type_ids"
    with pytest.raises(EngineMismatch, match=r"input names differ: engine \['attention_mask', "
                                             r"'input_ids'\], config \['input_ids', "
                                             r"'token_type_ids'\]"):
        check_engine_io(io, cfg, where="e")
    io.tensors["input_ids"].shape = [-1, -1, -1]
    with pytest.raises(EngineMismatch, match="'input_ids': engine rank 3"):
        check_engine_io(io, _encoder_config(spec, "24.09"), where="e")


def test_engine_report_from_the_tensorrt_api(spec) -> None:
    """The MME_ENGINE_IO line the container's inspection prints: output dtype and shape too."""
    tensors = [
        {"name": "input_ids", "mode": "input", "dtype": "INT64", "shape": [-1, -1],
         "profile": {"min": [1, 1], "opt": [16, 128], "max": [16, 128]}},
        {"name": "attention_mask", "mode": "input", "dtype": "INT64", "shape": [-1, -1],
         "profile": {"min": [1, 1], "opt": [16, 128], "max": [16, 128]}},
        {"name": "last_hidden_state", "mode": "output", "dtype": "FLOAT", "shape": [-1, -1, 768]}]
    line = "MME_ENGINE_IO " + json.dumps({"tensorrt": "10.4.0", "tensors": tensors})
    io = parse_trtexec_log([*_log("trt10.4_minilm.log"), line])
    assert io.source == "tensorrt-api" and io.device["name"] == "NVIDIA L4"
    assert io.tensors["last_hidden_state"].dtype == "TYPE_FP32"
    with pytest.raises(EngineMismatch, match="'last_hidden_state': engine dim 2 is 768, "
                                             "config says 384"):
        check_engine_io(io, _encoder_config(spec, "24.09"), where="e")
    io.tensors["last_hidden_state"].shape = [-1, -1, 384]
    check_engine_io(io, _encoder_config(spec, "24.09"), where="e")
    # the JSON round trip the sidecar uses
    again = trt_bindings.EngineIO.from_json(json.loads(json.dumps(io.to_json())))
    assert again.tensors == io.tensors


class _FakeTrt:
    """Just enough of the tensorrt module for INSPECT_SCRIPT's describe()."""

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    class _D:
        def __init__(self, name: str) -> None:
            self.name = name


class _FakeEngine:
    num_io_tensors, num_optimization_profiles = 2, 1
    _t = (("input_ids", "in", "INT32", (-1, -1)), ("last_hidden_state", "out", "FLOAT", (-1, -1, 384)))

    def get_tensor_name(self, i: int) -> str:
        return self._t[i][0]

    def _row(self, name: str):
        return next(t for t in self._t if t[0] == name)

    def get_tensor_mode(self, name: str) -> str:
        return self._row(name)[1]

    def get_tensor_dtype(self, name: str):
        return _FakeTrt._D(self._row(name)[2])

    def get_tensor_shape(self, name: str):
        return self._row(name)[3]

    def get_tensor_profile_shape(self, name: str, profile: int):
        return (1, 1), (16, 128), (16, 128)


def test_inspect_script_describes_an_engine() -> None:
    ns: dict[str, Any] = {"__name__": "not_main"}
    exec(compile(trt_bindings.INSPECT_SCRIPT, "INSPECT_SCRIPT", "exec"), ns)  # noqa: S102
    io = trt_bindings.from_api(ns["describe"](_FakeEngine(), _FakeTrt))
    assert io.tensors["input_ids"].dtype == "TYPE_INT32"
    assert io.tensors["input_ids"].profile == {"min": [1, 1], "opt": [16, 128], "max": [16, 128]}
    assert io.tensors["last_hidden_state"].shape == [-1, -1, 384]


# --------------------------------------------------------------------------- compile + render


def _fake_artifacts(tmp: Path, sidecar: dict | None) -> dict[str, Path]:
    tok = tmp / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    env = tmp / "env.tar.gz"
    env.write_bytes(b"env")
    plan_dir = tmp / "plan"
    plan_dir.mkdir()
    (plan_dir / "model.plan").write_bytes(b"engine")
    if sidecar is not None:
        (plan_dir / trt_bindings.SIDECAR_NAME).write_text(json.dumps(sidecar))
    return {"tokenizer": tok, "processing_env": env, "encoder_plan": plan_dir / "model.plan"}


def _sidecar(log: str) -> dict:
    io = parse_trtexec_log(_log(log))
    return {"engine_io": io.to_json(), "build_gpu": io.device}


def test_render_refuses_a_mismatched_plan_before_packing(spec, tmp_path: Path) -> None:
    folder = load_ensemble(ENS)[1]
    arts = _fake_artifacts(tmp_path, _sidecar("trt8.6_minilm.log"))
    with pytest.raises(EngineMismatch, match=r"(?s)step 'encoder'.*artifact 'encoder_plan'.*"
                                             r"'input_ids': engine dtype TYPE_INT32") as e:
        render_repository(spec, "sagemaker-gpu", tmp_path / "bad", catalog_dir=folder,
                          artifacts=arts, triton_release="24.09")
    assert isinstance(e.value, SpecError)
    repo = render_repository(spec, "sagemaker-gpu", tmp_path / "good", catalog_dir=folder,
                             artifacts=arts, triton_release="24.01")
    assert (repo / f"{ENS}__encoder" / "1" / "model.plan").read_bytes() == b"engine"


def test_render_refuses_a_plan_without_an_engine_report(spec, tmp_path: Path) -> None:
    folder = load_ensemble(ENS)[1]
    for i, sidecar in enumerate((None, {"engine_io": None, "build_gpu": None})):
        sub = tmp_path / str(i)
        sub.mkdir()
        with pytest.raises(SpecError, match="unchecked plan"):
            render_repository(spec, "sagemaker-gpu", sub / "r", catalog_dir=folder,
                              artifacts=_fake_artifacts(sub, sidecar))


def _host(log: str, banner: str):
    class Host:
        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        def which(self, name: str) -> str | None:
            return {"trtexec": "/opt/trt/bin/trtexec"}.get(name)

        def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess:
            self.calls.append(list(argv))
            if argv[1:] == ["--help"]:
                return subprocess.CompletedProcess(argv, 0, banner)
            plan = next(a for a in argv if a.startswith("--saveEngine="))
            Path(plan.split("=", 1)[1]).write_bytes(b"engine")
            return subprocess.CompletedProcess(argv, 0, log)

    return Host()


@pytest.mark.parametrize("log,release,flags", [
    ("trt8.6_minilm.log", "24.01", ["--verbose"]),
    ("trt10.4_minilm.log", "24.09", ["--verbose", "--dumpOptimizationProfile"])])
def test_compile_writes_the_engine_report(tmp_path: Path, log: str, release: str,
                                          flags: list[str]) -> None:
    from tasks.producers.compile import CompileHost, CompileOptions, compile_tensorrt

    text = (FIXTURES / log).read_text()
    host = _host(text, text.splitlines()[0] + "\n")
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    lines: list[str] = []
    plan, meta = compile_tensorrt(tmp_path / "out", CompileOptions(
        onnx=onnx, min_shapes="input_ids:1x1,attention_mask:1x1",
        opt_shapes="input_ids:16x128,attention_mask:16x128",
        max_shapes="input_ids:16x128,attention_mask:16x128", triton_release=release,
        runner="host", timing_cache_dir=tmp_path / "c"),
        CompileHost(run=host.run, which=host.which, log=lines.append))
    build = host.calls[-1]
    assert build[-len(flags):] == flags
    report = json.loads((plan.parent / trt_bindings.SIDECAR_NAME).read_text())
    assert report["triton_release"] == release and report["build_gpu"] == meta["build_gpu"]
    io = trt_bindings.EngineIO.from_json(report["engine_io"])
    assert sorted(io.tensors) == ["attention_mask", "input_ids", "last_hidden_state"]
    # trtexec's [V] lines (asked for the report) stay out of the log and its tail
    assert not any("[V]" in ln for ln in lines) and not any("[V]" in ln for ln in meta["log_tail"])
    assert any("Engine built in" in ln for ln in lines)


def test_docker_route_reads_the_engine_with_the_image_tensorrt(tmp_path: Path) -> None:
    from fixtures.fake_docker import FakeDocker, compile_spec

    from tasks.producers.compile import compile_in_docker

    api = {"tensorrt": "10.4.0", "tensors": [
        {"name": "input_ids", "mode": "input", "dtype": "INT64", "shape": [-1, -1]},
        {"name": "last_hidden_state", "mode": "output", "dtype": "FLOAT", "shape": [-1, -1, 384]}]}
    chunks = [(FIXTURES / "trt10.4_minilm.log").read_bytes(),
              f"MME_ENGINE_IO {json.dumps(api)}\n".encode()]
    fake = FakeDocker(log_chunks=chunks)
    meta = compile_in_docker(compile_spec(tmp_path), client=fake, log=lambda line: None)
    kw = fake.run_kwargs()
    assert kw["environment"]["MME_ENGINE_INSPECT"] == trt_bindings.INSPECT_SCRIPT
    assert 'python3 -c "$MME_ENGINE_INSPECT" /workspace/build/model.plan' in kw["command"][2]
    assert (meta.engine_io or {})["source"] == "tensorrt-api"
    assert meta.build_gpu == {"name": "NVIDIA L4", "compute_capability": "8.9"}
    assert (meta.command or [])[-2:] == ["--verbose", "--dumpOptimizationProfile"]
