"""GPU MME instance types and the build GPU of TensorRT plans (issue 8, point 10).

The table of single-GPU instance types AWS documents for GPU multi-model endpoints
(infra/aws/gpu_instances.py) is looked up in planning: anything else is refused, with the list,
before any AWS call and in ``--dry-run``. A compile records the GPU it built on (trtexec's
"Selected Device" / "Compute Capability" lines, else nvidia-smi); a deploy whose instance has
another GPU architecture warns, and one serving another Triton release than the plans were
compiled for is refused.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from infra.aws.gpu_instances import (
    MME_GPU_INSTANCES,
    UnsupportedInstanceType,
    mme_gpu_instance,
    plan_gpu_warnings,
    plan_release_problems,
)
from infra.records.manifest import Manifest, parse_manifest

ROLE = "arn:aws:iam::123456789012:role/mme-endpoint"
STORE = "s3://mme-instances/mme"


def _manifest(**plan_meta: Any) -> Manifest:
    meta = {"plan_sha256": "cd" * 32, "plan_bytes": 10, "triton_release": "24.09",
            "tensorrt": "10.4.0", **plan_meta}
    return parse_manifest({"ensemble": "text_embedding", "target": "sagemaker-gpu",
                           "target_model": "text_embedding.tar.gz", "sha256": "ab" * 32, "bytes": 1,
                           "artifact": "s3://mme-instances/builds/text_embedding.tar.gz",
                           "sources": {"encoder_plan": meta, "tokenizer": {"model_id": "x"}}},
                          "test manifest")


A10G = {"name": "NVIDIA A10G", "compute_capability": "8.6"}
H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_table_lookups() -> None:
    g5 = mme_gpu_instance("ml.g5.2xlarge")
    assert (g5.gpu, g5.architecture, g5.compute_capability, g5.gpu_memory_gib) == (
        "NVIDIA A10G", "Ampere", "8.6", 24)
    t4 = mme_gpu_instance("ml.g4dn.xlarge")
    assert (t4.architecture, t4.compute_capability, t4.gpu_memory_gib) == ("Turing", "7.5", 16)
    assert mme_gpu_instance("ml.p3.2xlarge").compute_capability == "7.0"
    for name, row in MME_GPU_INSTANCES.items():
        assert row.instance_type == name and name.startswith("ml.")
        assert re.fullmatch(r"\d+\.\d+", row.compute_capability) and row.gpu_memory_gib > 0


@pytest.mark.parametrize("instance_type", [
    "ml.g5.12xlarge",   # 4 GPUs: not a GPU MME type
    "ml.p4d.24xlarge",  # 8 GPUs
    "ml.p2.xlarge",     # listed by AWS, but a Kepler K80 that CUDA 12 images cannot use
    "ml.c5.xlarge",     # no GPU
    "ml.g5.xlarge ",    # a typo is not silently accepted
])
def test_other_instance_types_are_refused_with_the_list(instance_type: str) -> None:
    with pytest.raises(UnsupportedInstanceType) as e:
        mme_gpu_instance(instance_type)
    msg = str(e.value)
    assert repr(instance_type) in msg
    for ok in ("ml.g4dn.xlarge", "ml.g5.xlarge", "ml.p3.2xlarge"):
        assert ok in msg


def test_planning_refuses_before_any_aws_call(tmp_path: Path) -> None:
    from infra.aws.sagemaker import plan_for
    from tasks.deploy.backends.sagemaker import SageMakerBackend, SageMakerOptions

    with pytest.raises(UnsupportedInstanceType, match="ml.g5.12xlarge"):
        plan_for("ep", f"{STORE}/models/ep/", ROLE, region="us-east-1", release="24.09",
                 instance_type="ml.g5.12xlarge")

    made: list[str] = []

    def no_aws(region: str, runtime_url: str | None) -> Any:
        made.append(region)
        raise AssertionError("an AWS client was made for a plan that must be refused")

    opts = SageMakerOptions(role_arn=ROLE, instance_type="ml.g5.12xlarge")
    # the deploy's first step (check), the dry run (plan) and the real run (begin) all refuse
    for step in ("check", "plan", "begin"):
        backend = SageMakerBackend("ep", STORE, opts, aws=no_aws)
        with pytest.raises(UnsupportedInstanceType, match="single-GPU types only"):
            getattr(backend, step)([_manifest(build_gpu=A10G)])
    assert made == []


@pytest.mark.prefect  # the dry run is a flow run
def test_cli_dry_run_refuses_the_instance_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """`mme deploy --dry-run` fails with the list (the flow's ValueError becomes one line)."""
    from typer.testing import CliRunner

    from flows import cli

    def fake_flow(**kw: Any) -> dict:  # the flow's planning step, without Prefect
        from tasks.deploy.backends.sagemaker import make_plan

        make_plan(kw["endpoint"], kw["store_uri"], kw["sagemaker"])
        raise AssertionError("planning must refuse first")

    import flows.deploy

    monkeypatch.setattr(flows.deploy, "deploy", fake_flow)
    res = CliRunner().invoke(cli.app, ["deploy", "--backend", "sagemaker", "--store", STORE,
                                       "--dry-run", "--instance-type", "ml.g5.12xlarge"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2, out
    assert "ml.g5.12xlarge" in out and "ml.g4dn.xlarge" in out


def test_gpu_architecture_warning() -> None:
    assert plan_gpu_warnings([_manifest(build_gpu=A10G)], "ml.g5.xlarge") == []
    (line,) = plan_gpu_warnings([_manifest(build_gpu=H100)], "ml.g5.xlarge")
    for part in ("text_embedding", "encoder_plan", "H100", "9.0", "NVIDIA A10G", "8.6",
                 "ml.g5.xlarge", "GPU architecture"):
        assert part in line, (part, line)
    # same GPU model, other instance family: T4 is Turing 7.5
    (line,) = plan_gpu_warnings([_manifest(build_gpu=A10G)], "ml.g4dn.2xlarge")
    assert "Tesla T4" in line and "7.5" in line
    # no compute capability recorded: compared by name
    assert plan_gpu_warnings([_manifest(build_gpu={"name": "NVIDIA A10G"})], "ml.g5.xlarge") == []
    assert plan_gpu_warnings([_manifest(build_gpu={"name": "NVIDIA L4"})], "ml.g5.xlarge")
    # nothing recorded at all: said so
    (line,) = plan_gpu_warnings([_manifest(build_gpu=None)], "ml.g5.xlarge")
    assert "does not record the GPU" in line
    # builds without TensorRT plans (local-cpu) have nothing to compare
    cpu_build = _manifest().model_copy(update={"sources": {"onnx": {"opset": 18}}})
    assert plan_gpu_warnings([cpu_build], "ml.g5.xlarge") == []


def test_deploy_planning_warns_and_refuses_another_release(tmp_path: Path) -> None:
    import tasks.deploy.backends.sagemaker as backend

    lines: list[str] = []
    opts = backend.SageMakerOptions(role_arn=ROLE, instance_type="ml.g5.xlarge")
    warnings = backend.check_builds([_manifest(build_gpu=H100)], opts, lines.append)
    assert len(warnings) == 1 and lines == [f"WARNING {warnings[0]}"]
    assert backend.check_builds([_manifest(build_gpu=A10G)], opts, lines.append) == []

    old = _manifest(build_gpu=A10G, triton_release="23.03", tensorrt="8.5.3")
    assert plan_release_problems([old], "23.03") == []
    with pytest.raises(ValueError, match="compiled for Triton 23.03") as e:
        backend.check_builds([old], opts, lines.append)
    assert "--triton-release 23.03" in str(e.value)


def test_compile_records_the_build_gpu(tmp_path: Path) -> None:
    """trtexec's own device lines win; nvidia-smi (name, compute_cap) is the fallback."""
    from tasks.producers.compile import CompileHost, CompileOptions, compile_tensorrt, host_gpu

    banner = "&&&& RUNNING TensorRT.trtexec [TensorRT v100400] # trtexec\n"
    device = ("[12/01/2026-04:00:00] [I] === Device Information ===\n"
              "[12/01/2026-04:00:00] [I] Selected Device: NVIDIA A10G\n"
              "[12/01/2026-04:00:00] [I] Compute Capability: 8.6\n")

    class Host:
        def __init__(self, log: str, smi: str) -> None:
            self.log, self.smi = log, smi

        def which(self, name: str) -> str | None:
            return {"trtexec": "/opt/trt/bin/trtexec", "nvidia-smi": "/usr/bin/nvidia-smi"}[name]

        def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess:
            if argv[0].endswith("nvidia-smi"):
                return subprocess.CompletedProcess(argv, 0, self.smi)
            if argv[1:] == ["--help"]:
                return subprocess.CompletedProcess(argv, 0, banner)
            plan = next(a for a in argv if a.startswith("--saveEngine="))
            Path(plan.split("=", 1)[1]).write_bytes(b"plan")
            return subprocess.CompletedProcess(argv, 0, banner + self.log)

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    shapes = {"min_shapes": "x:1x4", "opt_shapes": "x:8x4", "max_shapes": "x:8x4"}
    host = Host(device, "NVIDIA H100 80GB HBM3, 9.0\n")
    options = CompileOptions(onnx=onnx, runner="host", timing_cache_dir=tmp_path / "c", **shapes)
    _, meta = compile_tensorrt(tmp_path / "a", options, CompileHost(run=host.run, which=host.which))
    assert meta["build_gpu"] == A10G  # where trtexec ran, not nvidia-smi's first GPU
    host = Host("", "NVIDIA H100 80GB HBM3, 9.0\n")
    _, meta = compile_tensorrt(tmp_path / "b", options, CompileHost(run=host.run, which=host.which))
    assert meta["build_gpu"] == H100
    # an old driver without compute_cap: the name only
    old = Host("", "NVIDIA A10G\n")
    assert host_gpu(run=old.run, which=old.which) == {"name": "NVIDIA A10G"}
