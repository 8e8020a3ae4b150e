"""Tests for infra.aws.sagemaker: image URIs, plans, apply/describe against moto, wait, rollback, delete."""

from __future__ import annotations

import sys
import types
from dataclasses import replace
from typing import Any

import boto3
import pytest
from botocore import xform_name
from botocore.exceptions import ClientError
from botocore.validate import validate_parameters
from moto import mock_aws
from fixtures.sagemaker_moto import SageMakerWithUpdate

import infra.aws.sagemaker as sm_mod
from infra.aws.sagemaker import (
    AUTOSCALING,
    SAGEMAKER,
    WAIT_IN_SERVICE,
    ApplySettings,
    Call,
    DeployState,
    EndpointBusy,
    EndpointFailed,
    EndpointPlan,
    EndpointTimeout,
    NotOwned,
    SageMakerDeployError,
    ScalableTarget,
    ScalingPolicy,
    apply,
    delete_endpoint_and_resources,
    describe_state,
    estimate_hourly_cost,
    format_calls,
    plan_calls,
    plan_delete,
    plan_for,
    rollback_endpoint,
    triton_image_uri,
    wait_in_service,
)

REGION = "us-east-1"
IMAGE = "785573368785.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:23.03-py3"
IMAGE_2 = "763104351884.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.09-py3"
# moto 5.2.5 validates InstanceType against an old enum without ml.g5: use g4dn here.
INSTANCE = "ml.g4dn.xlarge"


def _ops(calls: list[Call]) -> list[str]:
    return [c.operation for c in calls]


def _call(calls: list[Call], operation: str) -> Call:
    (found,) = [c for c in calls if c.operation == operation]
    return found


# --------------------------------------------------------------------------- moto harness


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch):
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(RoleName="triton-mme-endpoint", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        yield types.SimpleNamespace(
            sm=SageMakerWithUpdate(boto3.client("sagemaker", region_name=REGION)),
            aas=boto3.client("application-autoscaling", region_name=REGION),
            role=role,
        )


def _plan(role: str, **overrides: Any) -> EndpointPlan:
    options: dict[str, Any] = {
        "endpoint_name": "triton-mme-test", "image_uri": IMAGE,
        "model_data_url": "s3://models-bucket/models/triton-mme-test",
        "execution_role_arn": role, "instance_type": INSTANCE, "initial_instance_count": 1,
        "autoscaling_min": 1, "autoscaling_max": 3, "target_invocations_per_instance": 150.0,
        "tags": {"project": "triton-mme-tests"}}
    options.update(overrides)
    return EndpointPlan(**options)


def _deploy(aws: Any, plan: EndpointPlan) -> list[Call]:
    state = describe_state(aws.sm, aws.aas, plan)
    calls = plan_calls(plan, state)
    apply(calls, {SAGEMAKER: aws.sm, AUTOSCALING: aws.aas}, sleep=lambda s: None)
    return calls


def _tags(aws: Any, arn: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in aws.sm.list_tags(ResourceArn=arn)["Tags"]}


# --------------------------------------------------------------------------- image URI


@pytest.fixture
def no_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Table lookups regardless of whether a sagemaker SDK happens to be installed."""
    monkeypatch.setattr(sm_mod, "_sdk_image_uri", lambda *a: None)


def test_image_uri_from_tables(no_sdk: None) -> None:
    assert triton_image_uri("us-east-1", "23.03") == IMAGE
    assert triton_image_uri("us-west-2", "23.03") == (
        "301217895009.dkr.ecr.us-west-2.amazonaws.com/sagemaker-tritonserver:23.03-py3")
    assert triton_image_uri("ap-southeast-2", "22.12").startswith("355873309152.dkr.ecr.ap-southeast-2.")
    # 23.12 and later are DLC images: the SDK's registries for them
    assert triton_image_uri("us-east-1", "24.09") == IMAGE_2
    assert triton_image_uri("eu-central-1", "23.12") == (
        "763104351884.dkr.ecr.eu-central-1.amazonaws.com/sagemaker-tritonserver:23.12-py3")
    assert triton_image_uri("cn-north-1", "24.09").endswith(".amazonaws.com.cn/sagemaker-tritonserver:24.09-py3")
    for region in ("us-east-1", "us-east-2", "us-west-1", "us-west-2", "eu-west-1", "eu-central-1",
                   "ap-northeast-1", "ap-southeast-1", "ap-southeast-2"):
        assert triton_image_uri(region, "23.03", instance_type="ml.g4dn.xlarge").endswith(":23.03-py3")
    # CPU instance: the -cpu tags of 21.08/22.xx; 23.xx were published for GPU only (issue 8)
    assert triton_image_uri("us-east-1", "22.12", instance_type="ml.c5.xlarge").endswith(":22.12-py3-cpu")
    with pytest.raises(ValueError, match="no CPU Triton image"):
        triton_image_uri("us-east-1", "23.03", instance_type="ml.c5.xlarge")
    with pytest.raises(ValueError, match="not a GPU instance"):
        triton_image_uri("us-east-1", "24.09", instance_type="ml.c5.xlarge")


def test_image_uri_errors(no_sdk: None) -> None:
    with pytest.raises(ValueError, match="unknown region 'mars-north-1'"):
        triton_image_uri("mars-north-1", "24.09")
    with pytest.raises(ValueError, match="unknown region 'il-central-1'"):
        triton_image_uri("il-central-1", "23.03")  # only in the DLC table
    for bad in ("24.9", "2409", "24.13", "24.00", "v24.09", "24.09-py3", ""):
        with pytest.raises(ValueError, match="malformed Triton release"):
            triton_image_uri("us-east-1", bad)


def test_image_uri_prefers_the_sdk_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    def retrieve(**kwargs: Any) -> str:
        seen.append(kwargs)
        if kwargs["version"] == "23.03":
            raise ValueError("Unsupported sagemaker-tritonserver version: 23.03")
        return "111122223333.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.09-py3"

    core = types.ModuleType("sagemaker.core")
    core.image_uris = types.SimpleNamespace(retrieve=retrieve)  # type: ignore[attr-defined]
    package = types.ModuleType("sagemaker")
    package.core = core  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sagemaker", package)
    monkeypatch.setitem(sys.modules, "sagemaker.core", core)

    assert triton_image_uri("us-east-1", "24.09").startswith("111122223333.")
    assert seen[-1] == {"framework": "sagemaker-tritonserver", "region": "us-east-1",
                        "version": "24.09", "instance_type": "ml.g5.xlarge"}
    assert triton_image_uri("us-east-1", "23.03") == IMAGE  # unknown to the SDK: the table


# --------------------------------------------------------------------------- plan object


def test_endpoint_plan_names_and_validation() -> None:
    role = "arn:aws:iam::123456789012:role/r"
    plan = _plan(role)
    assert plan.model_data_url == "s3://models-bucket/models/triton-mme-test/"  # trailing slash added
    assert plan.model_name.startswith("triton-mme-test-model-")
    assert plan.endpoint_config_name.startswith("triton-mme-test-config-")
    assert _plan(role) == plan  # deterministic
    assert replace(plan, initial_instance_count=2).endpoint_config_name != plan.endpoint_config_name
    assert replace(plan, initial_instance_count=2).model_name == plan.model_name
    assert replace(plan, image_uri=IMAGE_2).model_name != plan.model_name
    assert replace(plan, image_uri=IMAGE_2).endpoint_config_name != plan.endpoint_config_name
    assert replace(plan, tags={"x": "y"}).endpoint_config_name == plan.endpoint_config_name
    long = _plan(role, endpoint_name="e" * 63)
    assert len(long.model_name) <= 63 and len(long.endpoint_config_name) <= 63
    assert {"Key": "managed-by", "Value": "triton-mme"} in plan.aws_tags()
    assert {"Key": "project", "Value": "triton-mme-tests"} in plan.aws_tags()

    with pytest.raises(ValueError, match="invalid endpoint name"):
        _plan(role, endpoint_name="bad_name")
    with pytest.raises(ValueError, match="s3://"):
        _plan(role, model_data_url="file:///tmp/models")
    with pytest.raises(ValueError, match="IAM role ARN"):
        _plan("not-a-role")
    with pytest.raises(ValueError, match="autoscaling needs"):
        _plan(role, initial_instance_count=4, autoscaling_max=3)
    with pytest.raises(ValueError, match="reserved"):
        _plan(role, tags={"managed-by": "someone"})
    with pytest.raises(ValueError, match="ModelCache|model_cache_setting"):
        _plan(role, model_cache_setting="On")


def test_plan_for_resolves_the_image(no_sdk: None) -> None:
    plan = plan_for("ep", "s3://b/models/ep/", "arn:aws:iam::123456789012:role/r",
                    region="us-east-1", release="24.09", initial_instance_count=2)
    assert plan.image_uri == IMAGE_2 and plan.initial_instance_count == 2


# --------------------------------------------------------------------------- plan calls


def test_plan_for_a_new_endpoint_lists_every_call() -> None:
    role = "arn:aws:iam::123456789012:role/triton-mme-endpoint"
    plan = _plan(role)
    calls = plan_calls(plan, DeployState())
    assert _ops(calls) == ["create_model", "create_endpoint_config", "create_endpoint", WAIT_IN_SERVICE,
                           "register_scalable_target", "put_scaling_policy"]

    model = _call(calls, "create_model")
    assert model.service == SAGEMAKER
    assert model.params["ModelName"] == plan.model_name
    assert model.params["ExecutionRoleArn"] == role
    assert model.params["PrimaryContainer"] == {
        "Image": IMAGE, "ModelDataUrl": "s3://models-bucket/models/triton-mme-test/", "Mode": "MultiModel",
        "MultiModelConfig": {"ModelCacheSetting": "Enabled"}}

    config = _call(calls, "create_endpoint_config")
    assert config.params["ProductionVariants"] == [{
        "VariantName": "AllTraffic", "ModelName": plan.model_name, "InstanceType": INSTANCE,
        "InitialInstanceCount": 1, "InitialVariantWeight": 1.0}]

    assert _call(calls, "create_endpoint").params["EndpointConfigName"] == plan.endpoint_config_name

    target = _call(calls, "register_scalable_target")
    assert target.service == AUTOSCALING
    assert target.params == {"ServiceNamespace": "sagemaker",
                             "ResourceId": "endpoint/triton-mme-test/variant/AllTraffic",
                             "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
                             "MinCapacity": 1, "MaxCapacity": 3}
    policy = _call(calls, "put_scaling_policy").params
    assert policy["ResourceId"] == "endpoint/triton-mme-test/variant/AllTraffic"
    assert policy["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 150.0
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}

    assert all(c.mutating for c in calls if c.operation != WAIT_IN_SERVICE)
    text = format_calls(calls)
    assert text.splitlines()[0].startswith(" 1. sagemaker.create_model(")
    assert format_calls([]).startswith("nothing to do")


def test_planned_requests_match_the_aws_api_shapes() -> None:
    """Every planned request validates against botocore's model of the AWS API."""
    plan = _plan("arn:aws:iam::123456789012:role/r", environment={"SAGEMAKER_TRITON_LOG_INFO": "false"})
    calls = plan_calls(plan, DeployState())
    calls += plan_calls(replace(plan, instance_type="ml.g4dn.2xlarge"), DeployState(
        model_exists=True, endpoint_status="InService", endpoint_config_name="old",
        endpoint_instance_type=INSTANCE, endpoint_instance_count=1,
        scalable_target=ScalableTarget(plan.scaling_resource_id, 1, 3)))
    calls += plan_calls(replace(plan, autoscaling_min=None, autoscaling_max=None), DeployState(
        model_exists=True, config_exists=True, endpoint_status="InService",
        endpoint_config_name=plan.endpoint_config_name,
        scalable_target=ScalableTarget(plan.scaling_resource_id, 1, 3), scaling_policy=ScalingPolicy("p")))
    session = boto3.session.Session(region_name=REGION)
    models = {s: session.client(s, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
              .meta.service_model for s in (SAGEMAKER, AUTOSCALING)}
    checked = set()
    for call in calls:
        if call.operation == WAIT_IN_SERVICE:
            continue
        model = models[call.service]
        op_name = next(n for n in model.operation_names if xform_name(n) == call.operation)
        validate_parameters(call.params, model.operation_model(op_name).input_shape)
        checked.add(call.operation)
    assert checked == {"create_model", "create_endpoint_config", "create_endpoint", "update_endpoint",
                       "register_scalable_target", "put_scaling_policy", "deregister_scalable_target",
                       "delete_scaling_policy"}


def test_plan_refuses_failed_and_busy_endpoints() -> None:
    plan = _plan("arn:aws:iam::123456789012:role/r")
    with pytest.raises(EndpointFailed, match="CannotStartContainerError"):
        plan_calls(plan, DeployState(endpoint_status="Failed", failure_reason="CannotStartContainerError: x"))
    with pytest.raises(EndpointBusy, match="Updating"):
        plan_calls(plan, DeployState(endpoint_status="Updating", endpoint_config_name="c"))


# --------------------------------------------------------------------------- against moto


def test_apply_creates_everything_and_a_rerun_plans_nothing(aws: Any) -> None:
    plan = _plan(aws.role)
    assert describe_state(aws.sm, aws.aas, plan) == DeployState()
    _deploy(aws, plan)

    model = aws.sm.describe_model(ModelName=plan.model_name)
    assert model["PrimaryContainer"]["Mode"] == "MultiModel"
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://models-bucket/models/triton-mme-test/"
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["MultiModelConfig"] == {"ModelCacheSetting": "Enabled"}
    assert model["ExecutionRoleArn"] == aws.role
    assert _tags(aws, model["ModelArn"])["managed-by"] == "triton-mme"

    config = aws.sm.describe_endpoint_config(EndpointConfigName=plan.endpoint_config_name)
    (variant,) = config["ProductionVariants"]
    assert (variant["VariantName"], variant["InstanceType"], variant["InitialInstanceCount"]) == (
        "AllTraffic", INSTANCE, 1)

    endpoint = aws.sm.describe_endpoint(EndpointName=plan.endpoint_name)
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == plan.endpoint_config_name
    assert _tags(aws, endpoint["EndpointArn"])["triton-mme:endpoint"] == plan.endpoint_name

    (target,) = aws.aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert target["ResourceId"] == "endpoint/triton-mme-test/variant/AllTraffic"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    (policy,) = aws.aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert policy["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"][
        "PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"

    state = describe_state(aws.sm, aws.aas, plan)
    assert state.model_exists and state.config_exists and state.endpoint_status == "InService"
    assert state.endpoint_instance_type == INSTANCE and state.endpoint_instance_count == 1
    assert plan_calls(plan, state) == []  # idempotent

    # a changed autoscaling limit only re-registers the target
    calls = plan_calls(replace(plan, autoscaling_max=5), state)
    assert _ops(calls) == ["register_scalable_target"]


def test_changed_instance_count_is_a_new_config_and_an_update(aws: Any) -> None:
    plan = _plan(aws.role)
    _deploy(aws, plan)
    bigger = replace(plan, initial_instance_count=2)
    calls = plan_calls(bigger, describe_state(aws.sm, aws.aas, bigger))
    assert _ops(calls) == ["create_endpoint_config", "update_endpoint", WAIT_IN_SERVICE]
    assert _call(calls, "update_endpoint").params == {
        "EndpointName": plan.endpoint_name, "EndpointConfigName": bigger.endpoint_config_name}
    apply(calls, {SAGEMAKER: aws.sm, AUTOSCALING: aws.aas}, sleep=lambda s: None)

    endpoint = aws.sm.describe_endpoint(EndpointName=plan.endpoint_name)
    assert endpoint["EndpointConfigName"] == bigger.endpoint_config_name
    assert endpoint["ProductionVariants"][0]["DesiredInstanceCount"] == 2
    assert plan_calls(bigger, describe_state(aws.sm, aws.aas, bigger)) == []


def test_new_image_keeps_the_scaled_instance_count(aws: Any) -> None:
    plan = _plan(aws.role)
    _deploy(aws, plan)
    newer = replace(plan, image_uri=IMAGE_2)
    calls = plan_calls(newer, describe_state(aws.sm, aws.aas, newer))
    assert _ops(calls) == ["create_model", "create_endpoint_config", "update_endpoint", WAIT_IN_SERVICE]
    assert _call(calls, "update_endpoint").params["RetainAllVariantProperties"] is True


def test_changed_instance_type_deregisters_autoscaling_around_the_update(aws: Any) -> None:
    plan = _plan(aws.role)
    _deploy(aws, plan)
    other = replace(plan, instance_type="ml.g4dn.2xlarge")
    calls = plan_calls(other, describe_state(aws.sm, aws.aas, other))
    assert _ops(calls) == ["create_endpoint_config", "deregister_scalable_target", "update_endpoint",
                           WAIT_IN_SERVICE, "register_scalable_target", "put_scaling_policy"]
    apply(calls, {SAGEMAKER: aws.sm, AUTOSCALING: aws.aas}, sleep=lambda s: None)
    assert plan_calls(other, describe_state(aws.sm, aws.aas, other)) == []


def test_switching_autoscaling_off_removes_our_policy_and_target(aws: Any) -> None:
    plan = _plan(aws.role)
    _deploy(aws, plan)
    fixed = replace(plan, autoscaling_min=None, autoscaling_max=None)
    calls = plan_calls(fixed, describe_state(aws.sm, aws.aas, fixed))
    assert _ops(calls) == ["delete_scaling_policy", "deregister_scalable_target"]
    apply(calls, {SAGEMAKER: aws.sm, AUTOSCALING: aws.aas})
    assert aws.aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert plan_calls(fixed, describe_state(aws.sm, aws.aas, fixed)) == []


def test_apply_names_the_failing_call(aws: Any) -> None:
    bad = Call(SAGEMAKER, "create_endpoint", {"EndpointName": "ep", "EndpointConfigName": "missing"})
    with pytest.raises(SageMakerDeployError, match="sagemaker.create_endpoint failed") as info:
        apply([bad], {SAGEMAKER: aws.sm})
    assert isinstance(info.value.__cause__, ClientError)
    with pytest.raises(SageMakerDeployError, match="no 'application-autoscaling' client"):
        apply([Call(AUTOSCALING, "register_scalable_target", {})], {SAGEMAKER: aws.sm})


# --------------------------------------------------------------------------- wait


class FakeSageMaker:
    """describe_endpoint answers from a script; the last answer repeats."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.polls = 0

    def describe_endpoint(self, EndpointName: str) -> dict[str, Any]:
        answer = self.answers[min(self.polls, len(self.answers) - 1)]
        self.polls += 1
        return {"EndpointName": EndpointName, "EndpointConfigName": "cfg-new", **answer}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_in_service_polls_until_in_service() -> None:
    fake = FakeSageMaker([{"EndpointStatus": "Creating"}, {"EndpointStatus": "Creating"},
                          {"EndpointStatus": "InService"}])
    clock, lines = FakeClock(), []
    desc = wait_in_service(fake, "ep", expected_config="cfg-new", poll_s=30, sleep=clock.sleep,
                           clock=clock, log=lines.append)
    assert desc.status == "InService"
    assert fake.polls == 3 and clock.sleeps == [30, 30]
    assert lines == ["endpoint ep: Creating", "endpoint ep: InService"]


def test_wait_in_service_reports_failure_reason() -> None:
    fake = FakeSageMaker([{"EndpointStatus": "Creating"},
                          {"EndpointStatus": "Failed",
                           "FailureReason": "The primary container for production variant AllTraffic "
                                            "did not pass the ping health check."}])
    clock = FakeClock()
    with pytest.raises(EndpointFailed, match="ep is Failed: The primary container .* ping health check"):
        wait_in_service(fake, "ep", sleep=clock.sleep, clock=clock, log=lambda m: None)


def test_wait_in_service_detects_an_update_that_did_not_take() -> None:
    fake = FakeSageMaker([{"EndpointStatus": "Updating"},
                          {"EndpointStatus": "InService", "EndpointConfigName": "cfg-old",
                           "FailureReason": "Model download failed"}])
    clock = FakeClock()
    with pytest.raises(EndpointFailed, match="InService on cfg-old, not cfg-new.*Model download failed"):
        wait_in_service(fake, "ep", expected_config="cfg-new", sleep=clock.sleep, clock=clock,
                        log=lambda m: None)


def test_wait_in_service_times_out() -> None:
    fake = FakeSageMaker([{"EndpointStatus": "Creating"}])
    clock = FakeClock()
    with pytest.raises(EndpointTimeout, match="ep still Creating after 100 s"):
        wait_in_service(fake, "ep", timeout_s=100, poll_s=30, sleep=clock.sleep, clock=clock,
                        log=lambda m: None)
    assert clock.sleeps == [30, 30, 30, 10]


# --------------------------------------------------------------------------- rollback


def test_rollback_updates_back_to_the_previous_config(aws: Any) -> None:
    plan = _plan(aws.role)
    _deploy(aws, plan)
    before = describe_state(aws.sm, aws.aas, plan)
    other = replace(plan, instance_type="ml.g4dn.2xlarge", autoscaling_max=4)
    _deploy(aws, other)
    assert aws.sm.describe_endpoint(EndpointName=plan.endpoint_name)["EndpointConfigName"] == \
        other.endpoint_config_name

    lines: list[str] = []
    calls = rollback_endpoint(aws.sm, plan.endpoint_name, before.endpoint_config_name,
                              aas_client=aws.aas, previous_state=before,
                              settings=ApplySettings(log=lines.append, sleep=lambda s: None))
    assert _ops(calls) == ["deregister_scalable_target", "update_endpoint", WAIT_IN_SERVICE,
                           "register_scalable_target", "put_scaling_policy"]
    assert aws.sm.updates[-1] == {"EndpointName": plan.endpoint_name,
                                  "EndpointConfigName": plan.endpoint_config_name}
    assert aws.sm.describe_endpoint(EndpointName=plan.endpoint_name)["EndpointConfigName"] == \
        plan.endpoint_config_name
    (target,) = aws.aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert target["MaxCapacity"] == 3
    assert any("rolling endpoint triton-mme-test back" in line for line in lines)
    assert plan_calls(plan, describe_state(aws.sm, aws.aas, plan)) == []


# --------------------------------------------------------------------------- delete


def test_delete_removes_only_what_it_owns(aws: Any) -> None:
    plan = _plan(aws.role)
    _deploy(aws, plan)
    second = replace(plan, initial_instance_count=2)  # leaves plan's config/model behind (blue/green)
    _deploy(aws, second)
    # someone else's model and config, named like ours but untagged
    aws.sm.create_model(ModelName="triton-mme-test-manual", ExecutionRoleArn=aws.role,
                        PrimaryContainer={"Image": IMAGE, "ModelDataUrl": "s3://b/p/", "Mode": "MultiModel"})
    aws.sm.create_endpoint_config(EndpointConfigName="triton-mme-test-manual-config", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "triton-mme-test-manual", "InstanceType": INSTANCE,
        "InitialInstanceCount": 1}])

    dry = delete_endpoint_and_resources(aws.sm, aws.aas, second, dry_run=True, log=lambda m: None)
    assert _ops(dry) == ["deregister_scalable_target", "delete_endpoint", "delete_endpoint_config",
                         "delete_endpoint_config", "delete_model"]
    assert aws.sm.describe_endpoint(EndpointName=plan.endpoint_name)["EndpointStatus"] == "InService"

    done = delete_endpoint_and_resources(aws.sm, aws.aas, second, log=lambda m: None)
    assert done == dry
    assert aws.sm.list_endpoints()["Endpoints"] == []
    assert [c["EndpointConfigName"] for c in aws.sm.list_endpoint_configs()["EndpointConfigs"]] == [
        "triton-mme-test-manual-config"]
    assert [m["ModelName"] for m in aws.sm.list_models()["Models"]] == ["triton-mme-test-manual"]
    assert aws.aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert plan_delete(aws.sm, aws.aas, second) == []  # nothing of ours left


def test_delete_keeps_configs_and_models_when_asked(aws: Any) -> None:
    plan = _plan(aws.role, autoscaling_min=None, autoscaling_max=None)
    _deploy(aws, plan)
    calls = delete_endpoint_and_resources(aws.sm, aws.aas, plan, delete_model=False, delete_config=False,
                                          log=lambda m: None)
    assert _ops(calls) == ["delete_endpoint"]
    assert aws.sm.describe_model(ModelName=plan.model_name)["ModelName"] == plan.model_name


def test_delete_refuses_an_endpoint_it_did_not_create(aws: Any) -> None:
    plan = _plan(aws.role)
    aws.sm.create_model(ModelName="m", ExecutionRoleArn=aws.role,
                        PrimaryContainer={"Image": IMAGE, "ModelDataUrl": "s3://b/p/", "Mode": "MultiModel"})
    aws.sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "m", "InstanceType": INSTANCE, "InitialInstanceCount": 1}])
    aws.sm.create_endpoint(EndpointName=plan.endpoint_name, EndpointConfigName="c")
    with pytest.raises(NotOwned, match="triton-mme-test does not carry the tags"):
        delete_endpoint_and_resources(aws.sm, aws.aas, plan, log=lambda m: None)
    assert aws.sm.describe_endpoint(EndpointName=plan.endpoint_name)["EndpointStatus"] == "InService"


# --------------------------------------------------------------------------- cost


def test_estimate_hourly_cost() -> None:
    assert estimate_hourly_cost("ml.g4dn.xlarge", 1) == pytest.approx(0.7364)  # catalog: infra/aws/instances.yaml
    assert estimate_hourly_cost("ml.g5.xlarge", 2) == pytest.approx(2.816)
    assert estimate_hourly_cost("ml.g5.4xlarge", 0) == 0
    assert estimate_hourly_cost("ml.unknown.xlarge", 1) is None
    with pytest.raises(ValueError):
        estimate_hourly_cost("ml.g5.xlarge", -1)
    assert _plan("arn:aws:iam::123456789012:role/r", initial_instance_count=2).hourly_cost() == \
        pytest.approx(1.4728)
