"""`mme iam-policy --deployer`: the least-privilege policy of whoever deploys and retires.

Two ways of finding what the code calls, both checked against the policy:
- a scan of flows/, tasks/, infra/ for every name that is a boto3 operation of the services a
  deploy uses (attribute calls, and strings such as ``Call(SAGEMAKER, "create_model", ...)``);
- the calls botocore actually sends during a create, a blue/green update with autoscaling, a
  rollback, the validation invoke, the S3 publish (multipart too) and a retire, on moto.
Each is mapped to the IAM action(s) AWS authorizes it with (and those AWS requires alongside,
e.g. Application Auto Scaling's CloudWatch alarms) and must be allowed on the resource it
touches, with the statement's conditions evaluated against the request.
"""

from __future__ import annotations

import ast
import json
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from typer.testing import CliRunner

import infra.aws.sagemaker as sm
from infra.aws import sagemaker_cleanup as cleanup
from infra.aws.deployer_policy import deployer_policy
from infra.errors import UserError
from infra.store.objects import S3Store

ROOT = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
ACCOUNT = DEFAULT_ACCOUNT_ID
BUCKET = "mme-deployer"
PREFIX = "mme"
ENDPOINT = "deployer-mme"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/mme-endpoint"
KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
# the services a deploy, its rollback and a retire call (the read-only pre-flight's own reads,
# infra/aws/preflight.py PREFLIGHT_ACTIONS, are optional: without them it says "could not check")
SCANNED_SERVICES = ("sagemaker", "sagemaker-runtime", "application-autoscaling", "s3", "cloudwatch")
# names the scan finds that are not AWS calls: Python's own re.search / str methods
NOT_AWS_CALLS = {"search"}
# boto3's managed transfers (not API operations) and what they send
TRANSFERS = {"upload_file": ["s3:PutObject", "s3:AbortMultipartUpload"], "download_file": ["s3:GetObject"]}
S3_ACTIONS = {"HeadObject": "s3:GetObject", "ListObjectsV2": "s3:ListBucket", "CreateMultipartUpload": "s3:PutObject",
              "UploadPart": "s3:PutObject", "CompleteMultipartUpload": "s3:PutObject"}
# actions on '*' because AWS has no resource-level form for them (Service Authorization Reference)
STAR_REQUIRED = {"sagemaker:ListEndpointConfigs", "application-autoscaling:DescribeScalableTargets",
                 "application-autoscaling:DescribeScalingPolicies", "application-autoscaling:RegisterScalableTarget",
                 "application-autoscaling:DeregisterScalableTarget", "application-autoscaling:PutScalingPolicy",
                 "application-autoscaling:DeleteScalingPolicy"}


def _policy(**kw: Any) -> dict[str, Any]:
    return deployer_policy(BUCKET, PREFIX, region=REGION, account_id=ACCOUNT, endpoint_name=ENDPOINT,
                           execution_role_arn=ROLE, **kw)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _condition_holds(condition: dict[str, Any] | None, context: dict[str, str]) -> bool:
    """IAM's StringEquals / StringLike, a key absent from the request failing the test."""
    for op, pairs in (condition or {}).items():
        match = {"StringEquals": lambda v, p: v == p, "StringLike": fnmatchcase}[op]
        for key, wanted in pairs.items():
            if key not in context or not any(match(context[key], w) for w in _as_list(wanted)):
                return False
    return True


def _allowed(policy: dict[str, Any], action: str, resource: str, context: dict[str, str] | None = None) -> bool:
    return any(s["Effect"] == "Allow" and action in _as_list(s["Action"])
               and any(fnmatchcase(resource, r) for r in _as_list(s["Resource"]))
               and _condition_holds(s.get("Condition"), context or {})
               for s in policy["Statement"])


# --------------------------------------------------------------------------- the code, scanned


def _operations_named_in_code() -> dict[str, set[str]]:
    """IAM action -> files, for every boto3 operation name of SCANNED_SERVICES in the code."""
    api = {svc: boto3.client(svc, region_name=REGION, aws_access_key_id="x",
                             aws_secret_access_key="x").meta.method_to_api_mapping
           for svc in SCANNED_SERVICES}
    found: dict[str, set[str]] = {}
    for package in ("flows", "tasks", "infra"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                name = node.attr if isinstance(node, ast.Attribute) else (
                    node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None)
                if name is None or name in NOT_AWS_CALLS:
                    continue
                for action in TRANSFERS.get(name, []):
                    found.setdefault(action, set()).add(str(path.relative_to(ROOT)))
                for svc, mapping in api.items():
                    if name in mapping:
                        prefix = "sagemaker" if svc == "sagemaker-runtime" else svc
                        op = mapping[name]
                        action = S3_ACTIONS.get(op, f"s3:{op}") if svc == "s3" else f"{prefix}:{op}"
                        found.setdefault(action, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_aws_operation_in_the_code_is_granted() -> None:
    found = _operations_named_in_code()
    # the scan sees the calls it must (not vacuous)
    assert {"sagemaker:CreateModel", "sagemaker:UpdateEndpoint", "sagemaker:ListTags", "sagemaker:InvokeEndpoint",
            "application-autoscaling:PutScalingPolicy", "s3:PutObject", "s3:ListBucket",
            "s3:GetBucketLocation"} <= set(found)
    policy = _policy()
    granted = {a for s in policy["Statement"] for a in _as_list(s["Action"])}
    missing = {a: sorted(files) for a, files in found.items() if a not in granted}
    assert not missing, f"operations the code calls that the deployer policy does not grant: {missing}"


# --------------------------------------------------------------------------- the calls, recorded


class Recorder:
    """Every request botocore is asked to send on the clients it is attached to:
    (service, operation, params), managed S3 transfers' part uploads included."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def attach(self, client: Any) -> Any:
        service = client.meta.service_model.service_name

        def record(params: dict[str, Any], model: Any, **kw: Any) -> None:
            self.calls.append((service, model.name, dict(params)))

        client.meta.events.register("provide-client-params", record)
        return client


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch):
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield


def _deploy_update_rollback_retire(rec: Recorder, tmp_path: Path) -> None:
    """The calls of a deploy's life, as the deploy and retire code makes them."""
    from fixtures.sagemaker_moto import SageMakerWithUpdate

    s3 = rec.attach(boto3.client("s3", region_name=REGION))
    s3.create_bucket(Bucket=BUCKET)
    rec.calls.clear()
    sm_client = SageMakerWithUpdate(rec.attach(boto3.client("sagemaker", region_name=REGION)))
    aas = rec.attach(boto3.client("application-autoscaling", region_name=REGION))
    runtime = rec.attach(boto3.client("sagemaker-runtime", region_name=REGION))
    clients = {sm.SAGEMAKER: sm_client, sm.AUTOSCALING: aas}
    models = f"s3://{BUCKET}/{PREFIX}/models/{ENDPOINT}/"

    sm.check_bucket_region(s3, models, REGION)
    store = S3Store(BUCKET, client=s3, transfer_config=TransferConfig(multipart_threshold=5 << 20,
                                                                      multipart_chunksize=5 << 20))
    big = tmp_path / "model.tar.gz"
    big.write_bytes(b"x" * (6 << 20))  # multipart
    key = f"{PREFIX}/models/{ENDPOINT}/text_embedding.tar.gz"
    store.put_file(key, big)
    store.head(key)
    store.get_file(key, tmp_path / "back.tar.gz")
    store.list(f"{PREFIX}/models/{ENDPOINT}/")
    store.put_bytes(f"{PREFIX}/deployments/{ENDPOINT}.json", b"{}")
    store.get_bytes(f"{PREFIX}/deployments/{ENDPOINT}.json")

    image = "763104351884.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.09-py3"
    plan = sm.EndpointPlan(endpoint_name=ENDPOINT, image_uri=image, model_data_url=models,
                           execution_role_arn=ROLE, instance_type="ml.g4dn.xlarge", autoscaling_max=3)
    sm.apply(sm.plan_calls(plan, sm.describe_state(sm_client, aas, plan)), clients, sleep=lambda s: None)
    before = sm.describe_state(sm_client, aas, plan)
    other = sm.EndpointPlan(endpoint_name=ENDPOINT, image_uri=image, model_data_url=models,
                            execution_role_arn=ROLE, instance_type="ml.g4dn.2xlarge", autoscaling_max=4)
    sm.apply(sm.plan_calls(other, sm.describe_state(sm_client, aas, other)), clients, sleep=lambda s: None)
    runtime.invoke_endpoint(EndpointName=ENDPOINT, TargetModel="text_embedding.tar.gz", Body=b"{}")
    sm.rollback_endpoint(sm_client, ENDPOINT, plan.endpoint_config_name, aas_client=aas, previous_state=before,
                         settings=sm.ApplySettings(log=lambda m: None, sleep=lambda s: None))
    rec.calls += [("sagemaker", "UpdateEndpoint", p) for p in sm_client.updates]  # moto lacks it

    seen = cleanup.gather(sm_client, aas, ENDPOINT, [], names={"model": [other.model_name]})
    outcomes = cleanup.delete_owned(sm_client, aas, ENDPOINT, seen, log=lambda m: None)
    assert {o.status for o in outcomes} == {cleanup.DELETED}
    store.delete(key)


def _checks(service: str, op: str, params: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(IAM action, resource ARN, condition context) that authorize one request."""
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
    if service == "s3":
        bucket = f"arn:aws:s3:::{params['Bucket']}"
        if op in ("ListObjectsV2", "GetBucketLocation"):
            return [(S3_ACTIONS.get(op, f"s3:{op}"), bucket, {"s3:prefix": params.get("Prefix", "")})]
        return [(S3_ACTIONS.get(op, f"s3:{op}"), f"{bucket}/{params['Key']}", {})]
    if service == "application-autoscaling":
        context = {"application-autoscaling:service-namespace": params.get("ServiceNamespace", ""),
                   "application-autoscaling:scalable-dimension": params.get("ScalableDimension", "")}
        out = [(f"application-autoscaling:{op}", "*", context)]
        alarm = f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:TargetTracking-{params.get('ResourceId')}-AlarmHigh-1"
        endpoint = f"{arn}:endpoint/{ENDPOINT}"
        implied = {"RegisterScalableTarget": [("sagemaker:DescribeEndpoint", endpoint),
                                              ("sagemaker:UpdateEndpointWeightsAndCapacities", endpoint),
                                              ("iam:CreateServiceLinkedRole", "arn:aws:iam::" + ACCOUNT +
                                               ":role/aws-service-role/sagemaker.application-autoscaling."
                                               "amazonaws.com/AWSServiceRoleForApplicationAutoScaling_"
                                               "SageMakerEndpoint")],
                   "PutScalingPolicy": [("cloudwatch:PutMetricAlarm", alarm), ("cloudwatch:DescribeAlarms", alarm)],
                   "DeleteScalingPolicy": [("cloudwatch:DeleteAlarms", alarm)],
                   "DeregisterScalableTarget": [("cloudwatch:DeleteAlarms", alarm)]}
        slr = {"iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"}
        return out + [(a, r, slr) for a, r in implied.get(op, [])]
    if op == "ListEndpointConfigs":
        return [("sagemaker:ListEndpointConfigs", "*", {})]
    if op == "ListTags":
        return [("sagemaker:ListTags", params["ResourceArn"], {})]
    kind, name = next((k, params[p]) for p, k in (("ModelName", "model"), ("EndpointName", "endpoint"),
                                                  ("EndpointConfigName", "endpoint-config")) if p in params)
    resource = f"{arn}:{kind}/{name.lower()}"
    out = [(f"sagemaker:{op}", resource, {})]
    if "Tags" in params:
        out.append(("sagemaker:AddTags", resource, {}))
    if op == "CreateModel":
        out.append(("iam:PassRole", params["ExecutionRoleArn"], {"iam:PassedToService": "sagemaker.amazonaws.com"}))
    return out


def test_every_call_of_a_deploy_update_rollback_and_retire_is_allowed(aws: None, tmp_path: Path) -> None:
    rec = Recorder()
    _deploy_update_rollback_retire(rec, tmp_path)
    ops = {(s, o) for s, o, _ in rec.calls}
    for needed in (("sagemaker", "CreateModel"), ("sagemaker", "UpdateEndpoint"), ("sagemaker", "DeleteModel"),
                   ("sagemaker", "ListTags"), ("sagemaker-runtime", "InvokeEndpoint"),
                   ("application-autoscaling", "DeregisterScalableTarget"), ("s3", "UploadPart"),
                   ("s3", "GetBucketLocation"), ("s3", "DeleteObject")):
        assert needed in ops, needed
    policy = _policy()
    refused = [(service, op, action, resource) for service, op, params in rec.calls
               for action, resource, context in _checks(service, op, params)
               if not _allowed(policy, action, resource, context)]
    assert not refused, f"calls the deployer policy would refuse: {refused}"


# --------------------------------------------------------------------------- the document


def test_nothing_is_star_except_where_aws_requires_it() -> None:
    policy = _policy(kms_key_arns=[KEY])
    for s in policy["Statement"]:
        actions = _as_list(s["Action"])
        assert not [a for a in actions if "*" in a], s  # no action wildcards
        if "*" in _as_list(s["Resource"]):
            assert set(actions) <= STAR_REQUIRED, s
        for r in _as_list(s["Resource"]):
            assert r == "*" or (":*:" not in r and "::*" not in r), r  # no region/account wildcard
    writes = [s for s in policy["Statement"] if "application-autoscaling:PutScalingPolicy" in s["Action"]]
    assert writes[0]["Condition"]["StringEquals"]["application-autoscaling:service-namespace"] == "sagemaker"
    # the role is passed to SageMaker only, and nothing else in the account
    assert not _allowed(policy, "iam:PassRole", ROLE, {"iam:PassedToService": "ec2.amazonaws.com"})
    assert not _allowed(policy, "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/admin",
                        {"iam:PassedToService": "sagemaker.amazonaws.com"})
    # another endpoint's resources and objects outside the store prefix are out of reach
    other = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
    assert not _allowed(policy, "sagemaker:DeleteEndpoint", f"{other}:endpoint/someone-elses")
    assert not _allowed(policy, "sagemaker:DeleteModel", f"{other}:model/someone-elses-model-1234abcd")
    assert not _allowed(policy, "s3:PutObject", f"arn:aws:s3:::{BUCKET}/other/x")
    assert not _allowed(policy, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {"s3:prefix": "other/"})
    kms = [s for s in policy["Statement"] if s["Resource"] == [KEY]]
    assert kms and sorted(kms[0]["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]


def test_names_are_matched_as_sagemaker_writes_them() -> None:
    """SageMaker ARNs carry names in lower case; a long endpoint name is cut in its model and
    config names as the deploy cuts it."""
    policy = deployer_policy(BUCKET, PREFIX, region=REGION, account_id=ACCOUNT, endpoint_name="My-MME",
                             execution_role_arn=ROLE)
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
    assert _allowed(policy, "sagemaker:DeleteEndpoint", f"{arn}:endpoint/my-mme")
    long_name = "e" * 60
    plan = sm.EndpointPlan(endpoint_name=long_name, image_uri="x", model_data_url="s3://b/p/",
                           execution_role_arn=ROLE)
    policy = deployer_policy(BUCKET, PREFIX, region=REGION, account_id=ACCOUNT, endpoint_name=long_name,
                             execution_role_arn=ROLE)
    assert _allowed(policy, "sagemaker:CreateModel", f"{arn}:model/{plan.model_name}")
    assert _allowed(policy, "sagemaker:CreateEndpointConfig", f"{arn}:endpoint-config/{plan.endpoint_config_name}")


def test_bad_inputs_are_refused_naming_them() -> None:
    for kw, needle in ((dict(execution_role_arn="my-role"), "--execution-role-arn 'my-role'"),
                       (dict(endpoint_name="bad_name"), "--endpoint 'bad_name'"),
                       (dict(kms_key_arns=[f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/models"]), "alias")):
        args: dict[str, Any] = dict(region=REGION, account_id=ACCOUNT, endpoint_name=ENDPOINT,
                                    execution_role_arn=ROLE) | kw
        with pytest.raises(UserError, match=None) as info:
            deployer_policy(BUCKET, PREFIX, **args)
        assert needle in str(info.value)


def test_the_document_is_accepted_by_iam(aws: None) -> None:
    iam = boto3.client("iam", region_name=REGION)
    created = iam.create_policy(PolicyName="mme-deployer", PolicyDocument=json.dumps(_policy(kms_key_arns=[KEY])))
    assert created["Policy"]["Arn"].endswith(":policy/mme-deployer")


# --------------------------------------------------------------------------- the command


def test_cli_prints_the_deployer_policy_and_the_kms_grant() -> None:
    from flows.cli import app

    runner = CliRunner()
    base = ["iam-policy", "--bucket", BUCKET, "--prefix", PREFIX, "--endpoint", ENDPOINT, "--account-id", ACCOUNT]
    res = runner.invoke(app, [*base, "--deployer", "--execution-role-arn", ROLE, "--kms-key-arn", KEY])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["PolicyDocument"] == _policy(kms_key_arns=[KEY])
    res = runner.invoke(app, [*base, "--deployer"])
    assert res.exit_code == 2 and "--deployer needs --execution-role-arn" in res.output
    # the endpoint's execution role may decrypt objects under a customer-managed key
    res = runner.invoke(app, [*base, "--kms-key-arn", KEY])
    assert res.exit_code == 0, res.output
    statements = json.loads(res.output)["PolicyDocument"]["Statement"]
    assert {"Sid": "DecryptModelObjects", "Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": [KEY]} in statements
    res = runner.invoke(app, [*base, "--kms-key-arn", f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/models"])
    assert res.exit_code == 2 and "alias" in res.output
