"""``mme preflight`` / ``mme deploy --backend sagemaker --preflight``: every check reported in
one run, exit 0 when ready and 2 naming each problem, and not one call that is not a read.

AWS here is moto (STS, S3, IAM GetRole) plus recorded answers where moto 5.2.5 lacks the API
(it raises NotImplementedError for iam SimulatePrincipalPolicy and service-quotas
ListServiceQuotas, and has no AWS-owned ECR registries): a botocore Stubber for the
service-quotas and ECR clients, a ``before-call`` answer for SimulatePrincipalPolicy on the
moto IAM client. The recorded answers are written to the shapes of the API references (no
real AWS account was used: nothing in this project has run against real AWS); each is
validated against botocore's output shape before it is returned, as Stubber does.
Every operation any client is asked for is recorded (``before-parameter-build``, which fires
for moto's, Stubber's and the hook's answers alike) and the tests assert only reads ran.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import NoCredentialsError
from botocore.stub import Stubber
from botocore.validate import validate_parameters
from moto import mock_aws
from typer.testing import CliRunner

from flows.cli import app
from infra.aws import preflight as pf
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
BUCKET = "mme-models"
ROLE = "mme-endpoint"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"
IMAGE_ACCOUNT = "763104351884"  # the DLC registry the project's table names for 24.09 in us-east-1
SAGEMAKER_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
EC2_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
READ = re.compile(r"^(Describe|Get|List|Simulate)")


# ----------------------------------------------------------------- recorded answers (API shapes)

def simulated(decision: str, role_arn: str = ROLE_ARN) -> dict[str, Any]:
    """SimulatePrincipalPolicy's answer for one action on one resource (IAM API reference)."""
    result: dict[str, Any] = {"EvalActionName": "iam:PassRole", "EvalResourceName": role_arn,
                              "EvalDecision": decision, "MissingContextValues": [],
                              "EvalDecisionDetails": {}}
    if decision == "allowed":
        result["MatchedStatements"] = [{
            "SourcePolicyId": "mme-deployer", "SourcePolicyType": "IAM Policy",
            "StartPosition": {"Line": 1, "Column": 212}, "EndPosition": {"Line": 1, "Column": 452}}]
    return {"EvaluationResults": [result], "IsTruncated": False}


def quota(instance_type: str, value: float, code: str = "L-EXAMPLE1") -> dict[str, Any]:
    """One ServiceQuota as ListServiceQuotas / ListAWSDefaultServiceQuotas list it (the code is
    made up: real quota codes were not looked up against an account)."""
    return {"ServiceCode": "sagemaker", "ServiceName": "Amazon SageMaker",
            "QuotaArn": f"arn:aws:servicequotas:{REGION}:{ACCOUNT}:sagemaker/{code}",
            "QuotaCode": code, "QuotaName": f"{instance_type} for endpoint usage", "Value": value,
            "Unit": "None", "Adjustable": True, "GlobalQuota": False, "QuotaAppliedAtLevel": "ACCOUNT"}


def other_quota() -> dict[str, Any]:
    return quota("ml.g5.xlarge", 4.0, "L-EXAMPLE2") | {"QuotaName": "ml.g5.xlarge for training job usage"}


TRITON_IMAGE = {"imageDetails": [{
    "registryId": IMAGE_ACCOUNT, "repositoryName": "sagemaker-tritonserver",
    "imageDigest": "sha256:" + "0" * 64, "imageTags": ["24.09-py3"], "imageSizeInBytes": 9_876_543_210,
    "imagePushedAt": dt.datetime(2024, 10, 8, 19, 43, tzinfo=dt.UTC),
    "imageManifestMediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "artifactMediaType": "application/vnd.docker.container.image.v1+json"}]}


def aws_error(code: str, message: str, status: int = 400) -> dict[str, Any]:
    return {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}


def denied(action: str, resource: str) -> dict[str, Any]:
    """An AccessDenied as IAM-authorized APIs word it."""
    return aws_error("AccessDenied", f"User: arn:aws:iam::{ACCOUNT}:user/moto is not authorized to "
                     f"perform: {action} on resource: {resource} because no identity-based policy "
                     f"allows the {action} action", 403)


# ----------------------------------------------------------------- the AWS the pre-flight sees

class Aws:
    """A pre-flight client factory: moto for STS, S3 and IAM, Stubber for service-quotas and
    ECR, one ``before-call`` answer for SimulatePrincipalPolicy; every operation recorded."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.simulate_answer: dict[str, Any] = simulated("allowed")
        self.simulate_params: list[dict[str, Any]] = []
        self.applied_quotas: list[dict[str, Any]] = [quota("ml.g4dn.xlarge", 2.0)]
        self.default_quotas: list[dict[str, Any]] | None = None  # None: not asked
        self.image_answer: tuple[str, dict[str, Any]] = ("ok", TRITON_IMAGE)
        self.stubbers: list[Stubber] = []

    def _record(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.calls.append(model.name)
        if model.name == "SimulatePrincipalPolicy":
            self.simulate_params.append(dict(params))

    def _simulate(self, model: Any, **_: Any) -> Any:
        if model.name != "SimulatePrincipalPolicy":
            return None
        answer = self.simulate_answer
        if "Error" in answer:
            return AWSResponse(None, answer["ResponseMetadata"]["HTTPStatusCode"], {}, None), answer
        validate_parameters(answer, model.output_shape)  # what Stubber checks of its answers
        return AWSResponse(None, 200, {}, None), answer

    def _stub(self, client: Any, service: str) -> None:
        stubber = Stubber(client)
        if service == "service-quotas":
            stubber.add_response("list_service_quotas", {"Quotas": [other_quota(), *self.applied_quotas]},
                                 {"ServiceCode": "sagemaker"})
            if self.default_quotas is not None:
                stubber.add_response("list_aws_default_service_quotas", {"Quotas": self.default_quotas},
                                     {"ServiceCode": "sagemaker"})
        else:
            kind, answer = self.image_answer
            params = {"registryId": IMAGE_ACCOUNT, "repositoryName": "sagemaker-tritonserver",
                      "imageIds": [{"imageTag": "24.09-py3"}]}
            if kind == "ok":
                stubber.add_response("describe_images", answer, params)
            else:
                stubber.add_client_error("describe_images", answer["Error"]["Code"], answer["Error"]["Message"],
                                         answer["ResponseMetadata"]["HTTPStatusCode"], expected_params=params)
        stubber.activate()
        self.stubbers.append(stubber)

    def factory(self, region: str) -> pf.Clients:
        def make(service: str) -> Any:
            client = boto3.client(service, region_name=region)
            client.meta.events.register_first("before-parameter-build", self._record)
            if service == "iam":
                client.meta.events.register("before-call.iam.SimulatePrincipalPolicy", self._simulate)
            if service in ("service-quotas", "ecr"):
                self._stub(client, service)
            return client
        return make

    def only_reads(self) -> None:
        writes = [c for c in self.calls if not READ.match(c)]
        assert not writes, f"the pre-flight made calls that are not reads: {writes}"
        for stubber in self.stubbers:
            stubber.assert_no_pending_responses()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        boto3.client("iam", region_name=REGION).create_role(
            RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(SAGEMAKER_TRUST))
        fake = Aws()
        with pf.using(fake.factory):
            yield fake


def args(command: str = "preflight", **over: str) -> list[str]:
    """A deploy command line (``mme deploy`` needs ``--backend sagemaker`` given)."""
    options = {"--region": REGION, "--store": f"s3://{BUCKET}/mme", "--role-arn": ROLE_ARN,
               "--instance-type": "ml.g4dn.xlarge", "--triton-release": "24.09"} | over
    head = ["deploy", "text_embedding", "--backend", "sagemaker", "--preflight"] if command == "deploy" else [command]
    return head + [x for k, v in options.items() if v != "" for x in (k, v)]


def lines(output: str) -> dict[str, str]:
    """``{check name: its line}`` of a pre-flight's output."""
    found = {}
    for line in output.splitlines():
        m = re.match(r"^(ok|PROBLEM|could not check)\s+(\S+)\s+(.*)$", line)
        if m:
            found[m.group(2)] = f"{m.group(1)}: {m.group(3)}"
    return found


CHECKS = ["region", "credentials", "bucket", "role", "passrole", "instance", "quota", "image"]


# ----------------------------------------------------------------- the command


@pytest.mark.parametrize("command", ["preflight", "deploy"])
def test_all_ready_exits_0_with_only_reads(aws: Aws, command: str) -> None:
    r = CliRunner().invoke(app, args(command))
    assert r.exit_code == 0, r.output
    got = lines(r.output)
    assert list(got) == CHECKS and all(v.startswith("ok: ") for v in got.values()), r.output
    assert "ready to deploy" in r.output
    assert "ml.g4dn.xlarge: Tesla T4, 16 GiB; $0.7364/h each in us-east-1 (catalog list price, checked 2026-12-01)" \
        in got["instance"]
    assert f"{IMAGE_ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.09-py3 exists " \
           f"(pushed 2024-10-08)" in got["image"]
    aws.only_reads()
    assert sorted(set(aws.calls)) == ["DescribeImages", "GetBucketLocation", "GetCallerIdentity", "GetRole",
                                      "ListServiceQuotas", "SimulatePrincipalPolicy"]
    (asked,) = aws.simulate_params  # PassRole of this role, to SageMaker, for moto's caller
    assert asked["PolicySourceArn"] == f"arn:aws:iam::{ACCOUNT}:user/moto"
    assert asked["ActionNames"] == ["iam:PassRole"] and asked["ResourceArns"] == [ROLE_ARN]
    assert asked["ContextEntries"][0]["ContextKeyValues"] == ["sagemaker.amazonaws.com"]
    # nothing was made: no object, no SageMaker model, no endpoint (the deploy did not run)
    assert boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0
    sm = boto3.client("sagemaker", region_name=REGION)
    assert sm.list_models()["Models"] == [] and sm.list_endpoints()["Endpoints"] == []


def test_missing_bucket_role_and_zero_quota_exit_2_naming_each(aws: Aws) -> None:
    aws.applied_quotas = []  # a new account: no applied value listed, the default is 0
    aws.default_quotas = [quota("ml.g4dn.xlarge", 0.0, "L-EXAMPLE3")]
    r = CliRunner().invoke(app, args(**{"--store": "s3://no-such-bucket/mme",
                                        "--role-arn": f"arn:aws:iam::{ACCOUNT}:role/no-such-role",
                                        "--autoscaling-max": "3", "--autoscaling-min": "1"}))
    assert r.exit_code == 2, r.output
    got = lines(r.output)
    assert list(got) == CHECKS, r.output  # every check reported, none stopped the run
    assert got["bucket"].startswith("PROBLEM: s3://no-such-bucket does not exist: create it in us-east-1")
    assert got["role"].startswith("PROBLEM: role no-such-role does not exist")
    assert got["quota"].startswith("PROBLEM: SageMaker quota 'ml.g4dn.xlarge for endpoint usage' (L-EXAMPLE3) "
                                   "is 0 in us-east-1, this deploy needs 3")
    assert "--service-code sagemaker --quota-code L-EXAMPLE3 --desired-value 3" in got["quota"]
    assert all(got[c].startswith("ok: ") for c in ("region", "credentials", "passrole", "instance", "image"))
    assert "3 problems (bucket, role, quota)" in r.output
    aws.only_reads()
    assert "ListAWSDefaultServiceQuotas" in aws.calls


def test_bucket_in_another_region(aws: Aws) -> None:
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket="mme-models-eu", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    r = CliRunner().invoke(app, args(**{"--store": "s3://mme-models-eu/mme"}))
    assert r.exit_code == 2, r.output
    assert lines(r.output)["bucket"] == ("PROBLEM: s3://mme-models-eu is in eu-west-1, the endpoint would be in "
                                         "us-east-1: deploy with --region eu-west-1 or use a bucket in us-east-1")
    assert "1 problem (bucket)" in r.output
    aws.only_reads()


def test_role_sagemaker_may_not_assume(aws: Aws) -> None:
    boto3.client("iam", region_name=REGION).create_role(
        RoleName="ec2-role", AssumeRolePolicyDocument=json.dumps(EC2_TRUST))
    aws.simulate_answer = simulated("allowed", f"arn:aws:iam::{ACCOUNT}:role/ec2-role")
    r = CliRunner().invoke(app, args(**{"--role-arn": f"arn:aws:iam::{ACCOUNT}:role/ec2-role"}))
    assert r.exit_code == 2, r.output
    assert lines(r.output)["role"].startswith(
        "PROBLEM: role ec2-role's trust policy does not let sagemaker.amazonaws.com assume it")
    aws.only_reads()


def test_defaulted_region_is_a_problem(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")  # what the user's config says
    r = CliRunner().invoke(app, args(**{"--region": ""}))
    assert r.exit_code == 2, r.output
    assert lines(r.output)["region"] == (
        "PROBLEM: us-east-1 is --region's default, not a choice; your AWS config says eu-west-1: "
        "pass --region explicitly (bucket, quotas and image are per region)")


def test_denied_reads_are_could_not_check_not_failures(aws: Aws) -> None:
    """The deployer policy need not allow the simulator or ECR's listing of AWS's registry:
    those lines say so, with AWS's reason, and the run still passes."""
    aws.simulate_answer = denied("iam:SimulatePrincipalPolicy", f"arn:aws:iam::{ACCOUNT}:user/moto")
    aws.image_answer = ("error", aws_error(
        "AccessDeniedException", f"User: arn:aws:iam::{ACCOUNT}:user/moto is not authorized to perform: "
        f"ecr:DescribeImages on resource: arn:aws:ecr:us-east-1:{IMAGE_ACCOUNT}:repository/sagemaker-tritonserver "
        f"because no resource-based policy allows the ecr:DescribeImages action"))
    r = CliRunner().invoke(app, args())
    assert r.exit_code == 0, r.output
    got = lines(r.output)
    assert got["passrole"].startswith(f"could not check: iam.simulate_principal_policy for "
                                      f"arn:aws:iam::{ACCOUNT}:user/moto denied (AccessDenied: User:")
    assert got["image"].startswith("could not check: ") and "ecr.describe_images denied (AccessDeniedException" \
        in got["image"]
    assert "0 problems, 2 could not be checked: nothing missing among what could be checked" in r.output
    aws.only_reads()


def test_passrole_implicit_deny_and_missing_image_are_problems(aws: Aws) -> None:
    aws.simulate_answer = simulated("implicitDeny")
    aws.image_answer = ("error", aws_error(
        "ImageNotFoundException", "The image with imageId {imageDigest:'null', imageTag:'24.09-py3'} does not "
        f"exist within the repository with name 'sagemaker-tritonserver' in the registry with id '{IMAGE_ACCOUNT}'"))
    r = CliRunner().invoke(app, args())
    assert r.exit_code == 2, r.output
    got = lines(r.output)
    assert got["passrole"].startswith(f"PROBLEM: arn:aws:iam::{ACCOUNT}:user/moto may not iam:PassRole {ROLE_ARN} "
                                      "to sagemaker.amazonaws.com (simulator: implicitDeny)")
    assert "mme iam-policy --deployer" in got["passrole"]
    assert got["image"].startswith("PROBLEM: ") and "no such tag" in got["image"]
    aws.only_reads()


def test_deploy_preflight_needs_the_sagemaker_backend() -> None:
    r = CliRunner().invoke(app, ["deploy", "--preflight"])
    assert r.exit_code == 2 and "--backend local needs no AWS" in " ".join(r.output.split())


# ----------------------------------------------------------------- the functions


def test_read_only_refuses_a_write_before_it_is_sent(aws: Aws) -> None:
    s3 = pf.read_only(boto3.client("s3", region_name=REGION))
    with pytest.raises(pf.WriteRefused, match="CreateBucket"):
        s3.create_bucket(Bucket="made-by-preflight")
    assert "made-by-preflight" not in [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
    assert s3.get_bucket_location(Bucket=BUCKET)["LocationConstraint"] is None  # reads go through


def test_no_credentials() -> None:
    class Sts:
        def get_caller_identity(self) -> dict[str, Any]:
            raise NoCredentialsError()

    check, caller = pf.check_credentials(Sts())
    assert check.status == "problem" and "no AWS credentials found" in check.detail and caller is None
    assert pf.check_pass_role(None, None, ROLE_ARN).status == "unchecked"


@pytest.mark.parametrize(("document", "expected"), [
    (SAGEMAKER_TRUST, True),
    (EC2_TRUST, False),
    ({"Statement": {"Effect": "Allow", "Action": ["sts:AssumeRole"],
                    "Principal": {"Service": ["ec2.amazonaws.com", "sagemaker.amazonaws.com"]}}}, True),
    ({"Statement": [SAGEMAKER_TRUST["Statement"][0],  # type: ignore[index]
                    {**SAGEMAKER_TRUST["Statement"][0], "Effect": "Deny"}]}, False),  # type: ignore[index]
    ("%7B%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Principal%22%3A%7B%22Service%22%3A%22"
     "sagemaker.amazonaws.com%22%7D%2C%22Action%22%3A%22sts%3AAssumeRole%22%7D%5D%7D", True),  # IAM's encoding
])
def test_trusts_sagemaker(document: Any, expected: bool) -> None:
    assert pf.trusts_sagemaker(document) is expected


def test_simulation_source_of_each_kind_of_caller(aws: Aws) -> None:
    iam = boto3.client("iam", region_name=REGION)
    iam.create_role(RoleName="deployer", Path="/ci/", AssumeRolePolicyDocument=json.dumps(EC2_TRUST))
    assumed = pf.Caller(ACCOUNT, f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/session-1")
    assert pf.simulation_source(iam, assumed) == (f"arn:aws:iam::{ACCOUNT}:role/ci/deployer", "")
    unknown = pf.Caller(ACCOUNT, f"arn:aws:sts::{ACCOUNT}:assumed-role/gone/s")  # GetRole fails: no path
    assert pf.simulation_source(iam, unknown) == (f"arn:aws:iam::{ACCOUNT}:role/gone", "")
    root, why = pf.simulation_source(iam, pf.Caller(ACCOUNT, f"arn:aws:iam::{ACCOUNT}:root"))
    assert root is None and "root user" in why
    fed, why = pf.simulation_source(iam, pf.Caller(ACCOUNT, f"arn:aws:sts::{ACCOUNT}:federated-user/bob"))
    assert fed is None and "not an IAM user or role" in why


def test_unknown_region_reports_every_check() -> None:
    inputs = pf.PreflightInputs(region="us-east1", region_source="--region", store=f"s3://{BUCKET}",
                                role_arn=ROLE_ARN, instance_type="ml.g4dn.xlarge", triton_release="24.09")

    def no_clients(service: str) -> Any:
        raise AssertionError(f"no AWS call for an unknown region ({service})")

    checks = pf.run_preflight(inputs, no_clients, facts=(None, {"us-east-1", "eu-west-1"}))
    assert [c.name for c in checks] == CHECKS
    assert checks[0].status == "problem" and "'us-east1' is not a SageMaker region" in checks[0].detail
    assert pf.exit_code(checks) == 2


def test_unsupported_instance_type_is_a_problem() -> None:
    check = pf.check_instance("ml.m5.large", REGION)
    assert check.status == "problem" and "not one AWS supports for GPU multi-model endpoints" in check.detail


# ----------------------------------------------------------------- mme fleet deploy --preflight
def existing_mme(endpoint: str, model_data_url: str, release: str = "24.09") -> None:
    """A multi-model endpoint in moto, as `mme deploy` makes it (tests/test_fleet_deploy.py's
    shape): its model loads from ``model_data_url`` with SageMaker's Triton image."""
    sm = boto3.client("sagemaker", region_name=REGION)
    image = f"785573368785.dkr.ecr.{REGION}.amazonaws.com/sagemaker-tritonserver:{release}-py3"
    sm.create_model(ModelName=f"{endpoint}-model", ExecutionRoleArn=ROLE_ARN,
                    PrimaryContainer={"Image": image, "Mode": "MultiModel", "ModelDataUrl": model_data_url})
    sm.create_endpoint_config(EndpointConfigName=f"{endpoint}-config", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": f"{endpoint}-model",
        "InstanceType": "ml.g4dn.xlarge", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-config")


def fleet_args(*extra: str) -> list[str]:
    return ["fleet", "deploy", "tenants", "--backend", "sagemaker", "--preflight",
            "--region", REGION, *extra]


def test_fleet_preflight_ready_exits_0_with_only_reads(aws: Aws) -> None:
    existing_mme("fleet-ep", f"s3://{BUCKET}/mme/models/fleet-ep/")
    r = CliRunner().invoke(app, fleet_args("--endpoint", "fleet-ep"))
    assert r.exit_code == 0, r.output
    got = lines(r.output)
    assert set(got) == {"region", "credentials", "endpoint", "store", "bucket"}, r.output
    assert all(v.startswith("ok") for v in got.values()), got
    assert f"s3://{BUCKET}/mme" in got["store"]
    aws.only_reads()
    assert "CreateBucket" not in aws.calls and "PutObject" not in aws.calls


def test_fleet_preflight_names_every_problem_in_one_run(aws: Aws) -> None:
    existing_mme("old-ep", f"s3://{BUCKET}/mme/models/old-ep/", release="23.03")
    existing_mme("far-ep", "s3://elsewhere/mme/models/far-ep/")
    r = CliRunner().invoke(app, fleet_args("--endpoints", "old-ep,far-ep,no-ep"))
    assert r.exit_code == 2, r.output
    text = r.output
    assert "23.03" in text and "namespacing" in text, text  # Triton too old for fleets
    assert "no-ep does not exist" in text, text
    assert "could not check" in text and "store" in text  # not checked with an endpoint unread
    assert "endpoint" in text.splitlines()[-1], text  # the summary names the problems
    aws.only_reads()


def test_fleet_preflight_refuses_another_store_and_a_missing_bucket(aws: Aws) -> None:
    existing_mme("gone-ep", "s3://no-such-bucket/mme/models/gone-ep/")
    r = CliRunner().invoke(app, fleet_args("--endpoint", "gone-ep", "--store", f"s3://{BUCKET}/mme"))
    assert r.exit_code == 2 and "SageMaker would never see them" in r.output, r.output
    r = CliRunner().invoke(app, fleet_args("--endpoint", "gone-ep"))
    got = lines(r.output)
    assert r.exit_code == 2 and got["bucket"].startswith("PROBLEM"), r.output
    aws.only_reads()


def test_fleet_preflight_needs_the_sagemaker_backend() -> None:
    r = CliRunner().invoke(app, ["fleet", "deploy", "tenants", "--preflight", "--endpoint", "e"])
    assert r.exit_code == 2 and "--backend sagemaker" in r.output
