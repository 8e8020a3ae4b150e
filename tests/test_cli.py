"""The `mme` command line, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MME = [sys.executable, "-m", "flows.cli"]


def _run(args: list[str], env_extra: dict[str, str] | None = None, timeout: int = 600):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(MME + args, capture_output=True, text=True, timeout=timeout, env=env)


def test_help_lists_main_steps():
    r = _run(["--help"])
    assert r.returncode == 0
    for cmd in ("demo", "build", "deploy", "retire", "render", "invoke", "endpoint"):
        assert cmd in r.stdout


def test_render_gpu_target(tmp_path: Path):
    r = _run(["render", "text_embedding", "--target", "sagemaker-gpu", "--out", str(tmp_path / "r")])
    assert r.returncode == 0, r.stderr
    assert 'platform: "tensorrt_plan"' in r.stdout
    assert "EXECUTION_ENV_PATH" in r.stdout
    bad = _run(["render", "nope", "--out", str(tmp_path / "r2")])
    assert bad.returncode == 2 and "unknown ensemble 'nope'" in bad.stderr


@pytest.mark.triton
@pytest.mark.prefect
def test_demo_writes_report(tmp_path: Path):
    """The main job, end to end, in a fresh MME_HOME and a fresh Prefect home."""
    report = tmp_path / "report.json"
    r = _run(["demo", "--report", str(report), "--endpoint", "cli-demo"],
             env_extra={"MME_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "pf")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(report.read_text())
    assert doc["endpoint"] == "cli-demo"
    text, image = doc["ensembles"]
    for e in (text, image):
        assert e["target"] == "local-cpu" and e["validation"]["passed"] is True
        assert e["artifact"].startswith("file://") and len(e["sha256"]) == 64 and e["bytes"] > 1e6
        assert e["latency_ms"]["cold"] > 0 and e["latency_ms"]["p99"] >= e["latency_ms"]["p50"] > 0
    assert text["name"] == "text_embedding" and text["validation"]["metric"] == "min_cosine"
    assert text["validation"]["value"] >= 0.999
    assert image["name"] == "image_classifier" and image["validation"]["metric"] == "top1_is_cat"
    assert image["validation"]["value"] == 1.0
    assert [t["label"] for t in image["top5"][:3]] == ["Egyptian cat", "tiger cat", "tabby"]
    assert image["top5"][0]["prob"] > 0.3
    assert "Egyptian cat" in r.stdout  # the top-5 table is printed
    # the demo stops its endpoint: no state file, no server left
    assert not (tmp_path / "home" / "endpoints" / "cli-demo" / "endpoint.json").exists()


@pytest.mark.prefect
def test_sagemaker_dry_run_prints_every_call_without_credentials(tmp_path: Path,
                                                                 built_image_classifier: dict):
    """`mme deploy --backend sagemaker --dry-run`: every AWS call, none made (no credentials)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), PREFECT_HOME=str(tmp_path / "pf"))
    r = subprocess.run(MME + ["deploy", "image_classifier", "--backend", "sagemaker", "--target",
                              "local-cpu", "--store", "s3://my-bucket/mme", "--endpoint", "dry-mme",
                              "--autoscaling-max", "3", "--dry-run", "--allow-target-mismatch"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    sha = built_image_classifier["manifest"].sha256
    ops = [f"s3.PutObject s3://my-bucket/mme/models/dry-mme/image_classifier-{sha[:12]}.tar.gz",
           "sagemaker.create_model", "sagemaker.create_endpoint_config", "sagemaker.create_endpoint(",
           "sagemaker.wait_in_service", "application-autoscaling.register_scalable_target",
           "application-autoscaling.put_scaling_policy", "sagemaker-runtime.InvokeEndpoint"]
    positions = [next(i for i, line in enumerate(lines) if op in line) for op in ops]
    assert positions == sorted(positions), "calls must be listed in the order they would run"
    assert '"Mode": "MultiModel"' in r.stdout and "sagemaker-tritonserver:24.09-py3" in r.stdout
    assert "/hour" in r.stdout


def test_iam_policy_is_scoped_to_the_model_prefix():
    bad = _run(["iam-policy", "--bucket", "b", "--prefix", "mme", "--endpoint", "ep",
                "--account-id", "123456789012"])
    assert bad.returncode == 2 and "invalid S3 bucket name 'b'" in bad.stderr
    r = _run(["iam-policy", "--bucket", "my-models", "--prefix", "mme", "--endpoint", "ep",
              "--account-id", "123456789012"])
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    resources = json.dumps(doc["PolicyDocument"])
    assert "arn:aws:s3:::my-models/mme/models/ep/*" in resources
    assert "arn:aws:s3:::my-models/*" not in resources
    assert doc["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"] == "sagemaker.amazonaws.com"


def test_cache_clear(tmp_path: Path):
    home = tmp_path / "home"
    (home / "cache" / "artifacts" / "k").mkdir(parents=True)
    r = _run(["cache-clear"], env_extra={"MME_HOME": str(home)})
    assert r.returncode == 0 and not (home / "cache").exists()
