"""Endpoint options a user sets on a SageMaker MME (issue 8, point 11), against moto.

ModelCacheSetting (``--model-cache``), the container Environment (``--env KEY=VALUE``) and the
variant's InferenceAmiVersion (``--inference-ami``) flow from the CLI through the deploy options
into the plan: they show in ``--dry-run``, land on the created model / endpoint config, and a
change of any of them makes new content-hashed names (so the deploy is an update). Without the
sagemaker SDK a Triton release with no known image tag is refused.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from typer.testing import CliRunner

import infra.aws.sagemaker as sm
from infra.records.manifest import Manifest, parse_manifest

REGION = "us-east-1"
BUCKET = "mme-options"
STORE = f"s3://{BUCKET}/mme"
ROLE = "arn:aws:iam::123456789012:role/mme-endpoint"
AMI = "al2-ami-sagemaker-inference-gpu-2"
ENV = {"SAGEMAKER_TRITON_LOG_VERBOSE": "false", "SAGEMAKER_TRITON_MODEL_LOAD_GPU_LIMIT": "0.8"}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch):
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield {sm.SAGEMAKER: boto3.client("sagemaker", region_name=REGION),
               sm.AUTOSCALING: boto3.client("application-autoscaling", region_name=REGION)}


@pytest.fixture
def no_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sm, "_sdk_image_uri", lambda *a: None)


def _opts(**kw: Any):
    from tasks.deploy.backends.sagemaker import SageMakerOptions

    base: dict[str, Any] = {"region": REGION, "role_arn": ROLE, "triton_release": "24.09",
                            "model_cache": "disabled", "environment": ENV,
                            "inference_ami_version": AMI, "poll_s": 0}
    base.update(kw)
    return SageMakerOptions(**base)


def _manifest() -> Manifest:
    return parse_manifest({"ensemble": "text_embedding", "target": "sagemaker-gpu",
                           "target_model": "text_embedding.tar.gz", "sha256": "ab" * 32, "bytes": 1234,
                           "artifact": "s3://mme-instances/builds/text_embedding.tar.gz", "sources": {}},
                          "test manifest")


def test_options_reach_the_created_model_and_config(aws, no_sdk) -> None:
    from tasks.deploy.backends.sagemaker import make_plan

    plan = make_plan("opts-mme", STORE, _opts())
    calls = sm.plan_calls(plan, sm.describe_state(aws[sm.SAGEMAKER], aws[sm.AUTOSCALING], plan))
    sm.apply(calls, aws, sleep=lambda s: None)

    model = aws[sm.SAGEMAKER].describe_model(ModelName=plan.model_name)["PrimaryContainer"]
    # the Triton settings the container's serve script reads are always explicit (issue 9)
    assert model["Environment"] == {"SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE": "4194304",
                                    "SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE": "1048576", **ENV}
    assert model["MultiModelConfig"] == {"ModelCacheSetting": "Disabled"}
    assert model["Mode"] == "MultiModel"
    config = aws[sm.SAGEMAKER].describe_endpoint_config(
        EndpointConfigName=plan.endpoint_config_name)
    (variant,) = config["ProductionVariants"]
    assert variant["InferenceAmiVersion"] == AMI
    assert variant["ModelName"] == plan.model_name


def test_a_changed_option_makes_new_names(no_sdk) -> None:
    from tasks.deploy.backends.sagemaker import make_plan

    plan = make_plan("opts-mme", STORE, _opts())
    assert make_plan("opts-mme", STORE, _opts()) == plan  # same options: same names, no update

    env = make_plan("opts-mme", STORE, _opts(environment={**ENV, "EXTRA": "1"}))
    assert env.model_name != plan.model_name
    assert env.endpoint_config_name != plan.endpoint_config_name  # the config names the model
    cache = make_plan("opts-mme", STORE, _opts(model_cache="enabled"))
    assert cache.model_name != plan.model_name
    ami = make_plan("opts-mme", STORE, _opts(inference_ami_version="al2023-ami-sagemaker-inference-gpu-4-1"))
    assert ami.model_name == plan.model_name  # a variant setting: only the config changes
    assert ami.endpoint_config_name != plan.endpoint_config_name
    # an update from the old config to the new one is what the planner makes of it
    state = sm.DeployState(model_exists=True, config_exists=False, endpoint_status="InService",
                           endpoint_config_name=plan.endpoint_config_name,
                           endpoint_instance_type=plan.instance_type, endpoint_instance_count=1)
    ops = [c.operation for c in sm.plan_calls(ami, state)]
    assert ops == ["create_endpoint_config", "update_endpoint", sm.WAIT_IN_SERVICE]
    # a plan without an AMI keeps the config name it had before the option existed
    bare = replace(plan, inference_ami_version=None)
    assert bare.endpoint_config_name == sm._derived_name("opts-mme", "config", sm._short_hash(
        {"model": bare.model_name, "variant": "AllTraffic", "instance_type": bare.instance_type,
         "count": 1}))


def test_dry_run_shows_the_options(aws, no_sdk, tmp_path: Path) -> None:
    from infra.aws.clients import AwsClients
    from tasks.deploy.backends.sagemaker import SageMakerBackend

    backend = SageMakerBackend("opts-mme", STORE, _opts(), aws=lambda region, url: AwsClients(
        region=region, sagemaker=aws[sm.SAGEMAKER], autoscaling=aws[sm.AUTOSCALING]))
    backend.check([_manifest()])
    out = backend.plan([_manifest()]).to_json()
    text = "\n".join(out["calls"])
    assert '"SAGEMAKER_TRITON_LOG_VERBOSE": "false"' in text
    assert '"ModelCacheSetting": "Disabled"' in text
    assert f'"InferenceAmiVersion": "{AMI}"' in text
    assert aws[sm.SAGEMAKER].list_models()["Models"] == []  # a dry run makes nothing


def test_bad_options_are_refused_naming_the_argument() -> None:
    from flows.cli import app

    runner = CliRunner()
    base = ["deploy", "--backend", "sagemaker", "--store", STORE, "--dry-run"]
    for args, needle in (
            (["--env", "NO_EQUALS_SIGN"], "--env 'NO_EQUALS_SIGN': expected KEY=VALUE"),
            (["--env", "=value"], "--env '=value': expected KEY=VALUE"),
            (["--env", "1BAD=x"], "--env '1BAD=x'"),
            (["--env", "A=1", "--env", "A=2"], "A is given twice"),
            (["--model-cache", "sometimes"], "--model-cache 'sometimes'"),
            (["--inference-ami", "al2-ami-nope"], "--inference-ami 'al2-ami-nope'")):
        res = runner.invoke(app, base + args)
        assert res.exit_code == 2, (args, res.output)
        assert needle in " ".join(res.output.split()), (args, res.output)
    res = runner.invoke(app, base + ["--inference-ami", "al2-ami-nope"])
    assert AMI in " ".join(res.output.split())  # the message lists the allowed values


def test_inference_ami_values_come_from_botocore() -> None:
    allowed = sm.inference_ami_versions()
    assert AMI in allowed and all(v.startswith("al2") for v in allowed)
    with pytest.raises(ValueError, match="not one SageMaker accepts"):
        sm.check_inference_ami_version("ubuntu-22.04")
    with pytest.raises(ValueError, match="not valid for a SageMaker container"):
        sm.check_environment({"HAS-DASH": "x"})
    with pytest.raises(ValueError, match="at most 100"):
        sm.check_environment({f"K{i}": "v" for i in range(101)})


def test_unknown_release_is_refused_without_the_sdk(no_sdk) -> None:
    with pytest.raises(ValueError, match="no known sagemaker-tritonserver image") as e:
        sm.triton_image_uri(REGION, "24.07")
    msg = str(e.value)
    for tag in ("23.03-py3", "24.05-py3", "24.09-py3", "22.12-py3-cpu"):
        assert tag in msg
    assert sm.triton_image_uri(REGION, "24.05").endswith("/sagemaker-tritonserver:24.05-py3")
    assert sm.triton_image_uri(REGION, "21.08").endswith("/sagemaker-tritonserver:21.08-py3")
    # 23.xx were published with GPU tags only
    with pytest.raises(ValueError, match="no CPU Triton image"):
        sm.triton_image_uri(REGION, "23.03", instance_type="ml.c5.xlarge")
    # and the planner refuses before any AWS call
    from tasks.deploy.backends.sagemaker import make_plan

    with pytest.raises(ValueError, match="24.07"):
        make_plan("opts-mme", STORE, _opts(triton_release="24.07"))
