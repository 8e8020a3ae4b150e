"""What a first real AWS deploy met, refused or handled before it costs a failed endpoint:

- the Triton settings of the container (shared memory of Python-backend models, verbose log) are
  explicit in the model's Environment, as options with defaults the user can override (issue 9);
- an InferenceAmiVersion without CUDA-compat mounting with a Triton whose CUDA needs it, Volta
  (ml.p3) with a TensorRT that dropped it, and tags SageMaker would refuse are refused before any
  AWS call, naming both values (issue 10 a, d, e);
- an UpdateEndpoint whose first DescribeEndpoint still answers InService on the old config is
  waited on, not taken as a failed update (issue 10 b; botocore Stubber);
- a model bucket in another region than the endpoint is refused before anything is created
  (issue 8; moto).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

import infra.aws.sagemaker as sm
from infra.errors import UserError

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/mme-endpoint"
STORE = "s3://mme-checks/mme"


@pytest.fixture
def sdk_knows_every_release(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the sagemaker SDK knew every release's image: only our own checks can refuse."""
    monkeypatch.setattr(sm, "_sdk_image_uri", lambda region, release, instance_type: (
        f"763104351884.dkr.ecr.{region}.amazonaws.com/sagemaker-tritonserver:{release}-py3"))


def _opts(**kw: Any) -> Any:
    from tasks.deploy.backends.sagemaker import SageMakerOptions

    return SageMakerOptions(region=REGION, role_arn=ROLE, **kw)


def _backend(opts: Any) -> Any:
    """A SageMaker backend whose AWS clients must never be made."""
    from tasks.deploy.backends.sagemaker import SageMakerBackend

    def no_aws(region: str, url: str | None) -> Any:
        raise AssertionError("an AWS client was made before the refusal")

    return SageMakerBackend("checks-mme", STORE, opts, aws=no_aws)


def _refused(opts: Any) -> str:
    with pytest.raises(UserError) as info:
        _backend(opts).check([])
    text = str(info.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- issue 9


def test_triton_settings_are_explicit_in_the_container_environment(sdk_knows_every_release) -> None:
    from tasks.deploy.backends.sagemaker import make_plan

    env = make_plan("checks-mme", STORE, _opts()).environment
    assert env == {"SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE": str(4 * 1024 * 1024),
                   "SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE": str(1024 * 1024),
                   "SAGEMAKER_TRITON_LOG_VERBOSE": "0"}  # the container's default is verbose
    tuned = make_plan("checks-mme", STORE, _opts(shm_default_bytes=8 << 20, shm_growth_bytes=2 << 20,
                                                  triton_log_verbose=1)).environment
    assert tuned["SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE"] == str(8 << 20)
    assert tuned["SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE"] == str(2 << 20)
    assert tuned["SAGEMAKER_TRITON_LOG_VERBOSE"] == "1"
    # --env overrides the default, kept as written; other Triton variables pass through
    own = make_plan("checks-mme", STORE, _opts(environment={
        "SAGEMAKER_TRITON_LOG_VERBOSE": "true", "SAGEMAKER_TRITON_LOG_INFO": "false"})).environment
    assert own["SAGEMAKER_TRITON_LOG_VERBOSE"] == "true" and own["SAGEMAKER_TRITON_LOG_INFO"] == "false"
    # a changed setting is a new model (content-hashed name): the deploy rolls it out
    assert make_plan("checks-mme", STORE, _opts(shm_default_bytes=8 << 20)).model_name != \
        make_plan("checks-mme", STORE, _opts()).model_name


def test_bad_triton_settings_are_refused_naming_the_option(sdk_knows_every_release) -> None:
    for opts, needle in (
            (_opts(shm_default_bytes=1024), "--shm-default-bytes 1024: Triton refuses less than 4194304"),
            (_opts(shm_growth_bytes=0), "--shm-growth-bytes 0"),
            (_opts(triton_log_verbose=-1), "--triton-log-verbose -1"),
            (_opts(environment={"SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE": "lots"}),
             "--env SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE=lots"),
            (_opts(shm_default_bytes=8 << 20, environment={"SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE": "4194304"}),
             "--shm-default-bytes 8388608 and --env SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE=4194304 disagree")):
        assert needle in _refused(opts)


# --------------------------------------------------------------------------- issue 10 (a)


@pytest.mark.parametrize("ami", ["al2-ami-sagemaker-inference-gpu-2-1", "al2-ami-sagemaker-inference-gpu-3-1"])
def test_an_ami_without_cuda_compat_is_refused_with_a_newer_cuda(sdk_knows_every_release, ami: str) -> None:
    text = _refused(_opts(triton_release="24.09", inference_ami_version=ami))
    assert f"--inference-ami {ami}" in text and "--triton-release 24.09 (CUDA 12.6)" in text


def test_amis_that_can_run_the_release_pass(sdk_knows_every_release) -> None:
    from tasks.deploy.backends.sagemaker import make_plan

    for release, ami in (("24.09", "al2-ami-sagemaker-inference-gpu-2"),  # compat mounted
                         ("24.09", "al2023-ami-sagemaker-inference-gpu-4-1"),  # CUDA 13.0 driver
                         ("24.03", "al2-ami-sagemaker-inference-gpu-3-1"),  # CUDA 12.4 on 12.4
                         ("23.03", "al2-ami-sagemaker-inference-gpu-2-1")):  # CUDA 12.1 on 12.2
        make_plan("checks-mme", STORE, _opts(triton_release=release, inference_ami_version=ami))
    # a release whose CUDA is not known is not guessed on such an AMI
    assert "CUDA version of Triton 26.01 is not known" in _refused(
        _opts(triton_release="26.01", inference_ami_version="al2-ami-sagemaker-inference-gpu-3-1"))


# --------------------------------------------------------------------------- issue 10 (d)


def test_volta_is_refused_with_a_tensorrt_that_dropped_it(sdk_knows_every_release) -> None:
    from tasks.deploy.backends.sagemaker import make_plan

    for release in ("24.10", "25.04"):
        text = _refused(_opts(instance_type="ml.p3.2xlarge", triton_release=release))
        assert "--instance-type ml.p3.2xlarge" in text and f"--triton-release {release}" in text
        assert "Volta" in text
    make_plan("checks-mme", STORE, _opts(instance_type="ml.p3.2xlarge", triton_release="24.09"))
    make_plan("checks-mme", STORE, _opts(instance_type="ml.g4dn.xlarge", triton_release="24.10"))


# --------------------------------------------------------------------------- issue 10 (e)


def test_tags_are_checked_against_sagemakers_rules() -> None:
    from pydantic import ValidationError

    good = {"team": "search", "cost-center": "a/b:c=d+e@f_g.h", "empty": "", "naïve key": "ü 1"}
    assert sm.check_tags(good) == good
    for tags, needle in (
            ({"": "x"}, "--tag =x: a tag key is 1-128"),
            ({"k" * 129: "x"}, "a tag key is 1-128"),
            ({"bad*key": "x"}, "--tag bad*key=x"),
            ({"ok": "v" * 257}, "a tag value is 0-256"),
            ({"ok": "semi;colon"}, "--tag ok=semi;colon"),
            ({"aws:createdBy": "me"}, "--tag aws:createdBy=me: keys starting 'aws:' are reserved"),
            ({"AWS:x": "me"}, "'aws:' are reserved"),
            ({"managed-by": "me"}, "reserved: it marks what this tool owns"),
            ({f"k{i}": "v" for i in range(49)}, "49 tags given")):
        with pytest.raises(UserError, match=None) as info:
            sm.check_tags(tags)
        assert needle in str(info.value), (tags, str(info.value))
        with pytest.raises((UserError, ValidationError)):  # refused as an option too
            _opts(tags=tags)
    assert len(sm.check_tags({f"k{i}": "v" for i in range(48)})) == 48  # + our 2 = SageMaker's 50


def test_tags_reach_every_resource(sdk_knows_every_release) -> None:
    from tasks.deploy.backends.sagemaker import make_plan

    plan = make_plan("checks-mme", STORE, _opts(tags={"team": "search"}))
    calls = sm.plan_calls(plan, sm.DeployState())
    for call in calls:
        if "Tags" in call.params:
            assert {"Key": "team", "Value": "search"} in call.params["Tags"]
    assert [c.operation for c in calls if "Tags" in c.params] == [
        "create_model", "create_endpoint_config", "create_endpoint"]


# --------------------------------------------------------------------------- issue 10 (b)


def _description(status: str, config: str, reason: str | None = None) -> dict[str, Any]:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    out: dict[str, Any] = {"EndpointName": "checks-mme", "EndpointStatus": status,
                           "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/checks-mme",
                           "EndpointConfigName": config, "CreationTime": now, "LastModifiedTime": now}
    if reason:
        out["FailureReason"] = reason
    return out


def _update_calls(sdk: None) -> tuple[sm.EndpointPlan, list[sm.Call]]:
    from tasks.deploy.backends.sagemaker import make_plan

    plan = make_plan("checks-mme", STORE, _opts())
    state = sm.DeployState(model_exists=True, config_exists=True, endpoint_status="InService",
                           endpoint_config_name="checks-mme-config-old",
                           endpoint_instance_type=plan.instance_type, endpoint_instance_count=1)
    calls = sm.plan_calls(plan, state)
    assert [c.operation for c in calls] == ["update_endpoint", sm.WAIT_IN_SERVICE]
    return plan, calls


def _stubbed(answers: list[tuple[str, str, str | None]], plan: sm.EndpointPlan) -> tuple[Any, Stubber]:
    client = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    stub.add_response("update_endpoint", {"EndpointArn": _description("", "")["EndpointArn"]},
                      {"EndpointName": "checks-mme", "EndpointConfigName": plan.endpoint_config_name})
    for status, config, reason in answers:
        stub.add_response("describe_endpoint", _description(status, config, reason),
                          {"EndpointName": "checks-mme"})
    return client, stub


def test_in_service_right_after_update_endpoint_is_waited_on(sdk_knows_every_release) -> None:
    plan, calls = _update_calls(None)
    new = plan.endpoint_config_name
    client, stub = _stubbed([("InService", "checks-mme-config-old", None),  # the update not shown yet
                             ("Updating", "checks-mme-config-old", None),
                             ("InService", new, None)], plan)
    lines: list[str] = []
    with stub:
        results = sm.apply(calls, {sm.SAGEMAKER: client}, sleep=lambda s: None, poll_s=0, log=lines.append)
    stub.assert_no_pending_responses()
    assert results[-1].config_name == new
    assert "endpoint checks-mme: Updating" in lines


def test_a_failed_update_is_still_reported_once_it_started(sdk_knows_every_release) -> None:
    plan, calls = _update_calls(None)
    client, stub = _stubbed([("InService", "checks-mme-config-old", None),
                             ("Updating", "checks-mme-config-old", None),
                             ("InService", "checks-mme-config-old", "Model download failed")], plan)
    with stub, pytest.raises(sm.EndpointFailed, match="InService on checks-mme-config-old.*Model download failed"):
        sm.apply(calls, {sm.SAGEMAKER: client}, sleep=lambda s: None, poll_s=0, log=lambda m: None)


def test_an_update_that_never_shows_times_out_saying_so(sdk_knows_every_release) -> None:
    plan, calls = _update_calls(None)
    client, stub = _stubbed([("InService", "checks-mme-config-old", None)] * 3, plan)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with stub, pytest.raises(sm.EndpointTimeout, match="never showed as started"):
        sm.apply(calls, {sm.SAGEMAKER: client}, sleep=sleep, clock=lambda: now[0], timeout_s=60, poll_s=30,
                 log=lambda m: None)
    stub.assert_no_pending_responses()


# --------------------------------------------------------------------------- issue 8: bucket region


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield boto3.client("s3", region_name=REGION)


def test_bucket_region_is_compared_with_the_endpoints(s3: Any) -> None:
    s3.create_bucket(Bucket="in-virginia")
    s3.create_bucket(Bucket="in-ireland", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert sm.bucket_region(s3, "in-virginia") == "us-east-1"  # GetBucketLocation says None
    assert sm.bucket_region(s3, "in-ireland") == "eu-west-1"
    sm.check_bucket_region(s3, "s3://in-virginia/mme/models/ep/", "us-east-1")
    with pytest.raises(UserError) as info:
        sm.check_bucket_region(s3, "s3://in-ireland/mme/models/ep/", "us-east-1")
    assert str(info.value).startswith("bucket in-ireland is in eu-west-1 but the endpoint would be in us-east-1")


def test_a_deploy_refuses_a_bucket_in_another_region_before_creating_anything(
        s3: Any, sdk_knows_every_release, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.aws.clients import AwsClients
    from tasks.deploy.backends.sagemaker import SageMakerBackend

    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    s3.create_bucket(Bucket="in-ireland", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    made: list[str] = []

    def clients(region: str, url: str | None) -> AwsClients:
        made.append(region)
        return AwsClients(region=region, sagemaker=boto3.client("sagemaker", region_name=region),
                          autoscaling=boto3.client("application-autoscaling", region_name=region))

    backend = SageMakerBackend("checks-mme", "s3://in-ireland/mme", _opts(), aws=clients)
    with pytest.raises(UserError, match="bucket in-ireland is in eu-west-1 but the endpoint would be in us-east-1"):
        backend.begin([])
    assert made == []  # refused before any SageMaker call (GetBucketLocation is read-only)
    assert boto3.client("sagemaker", region_name=REGION).list_models()["Models"] == []
