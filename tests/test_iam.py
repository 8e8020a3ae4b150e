"""Tests for infra.aws.iam: the endpoint execution role's least-privilege policy and trust policy."""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.aws.iam import (
    ecr_repository_arn,
    endpoint_execution_policy,
    triton_repository_arns,
    trust_policy,
)

ACCOUNT = "123456789012"
BUCKET = "models-bucket"
PREFIX = "models/triton-mme-test"
TRITON_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.09-py3"


def _policy(**overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"region": "us-east-1", "account_id": ACCOUNT}
    options.update(overrides)
    return endpoint_execution_policy(BUCKET, PREFIX, **options)


def _statement(policy: dict[str, Any], sid: str) -> dict[str, Any]:
    (found,) = [s for s in policy["Statement"] if s["Sid"] == sid]
    return found


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _allowed(policy: dict[str, Any], action: str, resource: str) -> bool:
    """Does any Allow statement grant ``action`` on ``resource`` (IAM wildcards, no conditions)?"""
    for s in policy["Statement"]:
        if s["Effect"] != "Allow":
            continue
        if any(fnmatchcase(action, a) for a in _as_list(s["Action"])) and any(
                fnmatchcase(resource, r) for r in _as_list(s["Resource"])):
            return True
    return False


def test_policy_shape() -> None:
    policy = _policy(endpoint_name="triton-mme-test")
    assert policy["Version"] == "2012-10-17"
    assert [s["Sid"] for s in policy["Statement"]] == [
        "ReadModelObjects", "ListModelPrefix", "EcrAuthToken", "PullTritonImage", "EndpointLogs",
        "EndpointMetrics"]
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])

    assert _statement(policy, "ReadModelObjects") == {
        "Sid": "ReadModelObjects", "Effect": "Allow", "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{BUCKET}/{PREFIX}/*"]}
    listing = _statement(policy, "ListModelPrefix")
    assert listing["Action"] == ["s3:ListBucket"] and listing["Resource"] == [f"arn:aws:s3:::{BUCKET}"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{PREFIX}/", f"{PREFIX}/*"]}}

    assert _statement(policy, "EcrAuthToken")["Resource"] == "*"
    pull = _statement(policy, "PullTritonImage")
    assert sorted(pull["Action"]) == ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
                                      "ecr:GetDownloadUrlForLayer"]
    assert pull["Resource"] == [
        "arn:aws:ecr:us-east-1:763104351884:repository/sagemaker-tritonserver",
        "arn:aws:ecr:us-east-1:785573368785:repository/sagemaker-tritonserver"]

    logs = _statement(policy, "EndpointLogs")
    group = f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/triton-mme-test"
    assert logs["Resource"] == [group, f"{group}:log-stream:*"]
    assert "logs:PutLogEvents" in logs["Action"] and "logs:CreateLogStream" in logs["Action"]

    metrics = _statement(policy, "EndpointMetrics")
    assert metrics["Action"] == ["cloudwatch:PutMetricData"]
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": "/aws/sagemaker/Endpoints"}}


def test_policy_grants_nothing_outside_the_prefix() -> None:
    policy = _policy()
    inside = f"arn:aws:s3:::{BUCKET}/{PREFIX}/text_embedding.tar.gz"
    assert _allowed(policy, "s3:GetObject", inside)
    for outside in (f"arn:aws:s3:::{BUCKET}/{PREFIX}2/x.tar.gz",  # sibling prefix
                    f"arn:aws:s3:::{BUCKET}/{PREFIX}-other/x.tar.gz",
                    f"arn:aws:s3:::{BUCKET}/deployments/triton-mme-test.json",
                    f"arn:aws:s3:::{BUCKET}/x.tar.gz",
                    f"arn:aws:s3:::other-bucket/{PREFIX}/x.tar.gz"):
        assert not _allowed(policy, "s3:GetObject", outside), outside
    for write in ("s3:PutObject", "s3:DeleteObject", "s3:PutObjectAcl"):
        assert not _allowed(policy, write, inside)
    # the only statements on "*" are the two actions without a resource-level form
    star = [s for s in policy["Statement"] if "*" in _as_list(s["Resource"])]
    assert [a for s in star for a in s["Action"]] == ["ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"]
    assert "Condition" in star[1]
    # no action wildcards anywhere
    assert not [a for s in policy["Statement"] for a in s["Action"] if "*" in a]
    # a ListBucket prefix condition that is not '<prefix>/...' would expose sibling prefixes
    prefixes = _statement(policy, "ListModelPrefix")["Condition"]["StringLike"]["s3:prefix"]
    assert all(p.startswith(f"{PREFIX}/") for p in prefixes)
    assert not any(fnmatchcase(f"{PREFIX}-other/", p) for p in prefixes)


def test_policy_options() -> None:
    arn = ecr_repository_arn(TRITON_IMAGE)
    assert arn == "arn:aws:ecr:us-east-1:763104351884:repository/sagemaker-tritonserver"
    pinned = _policy(ecr_repository_arns=[arn])
    assert _statement(pinned, "PullTritonImage")["Resource"] == [arn]
    any_endpoint = _statement(_policy(), "EndpointLogs")["Resource"][0]
    assert any_endpoint.endswith(":log-group:/aws/sagemaker/Endpoints/*")
    with_kms = _policy(kms_key_arns=[f"arn:aws:kms:us-east-1:{ACCOUNT}:key/abcd"])
    assert _statement(with_kms, "DecryptModelObjects")["Action"] == ["kms:Decrypt"]
    china = endpoint_execution_policy(BUCKET, PREFIX, region="cn-north-1", account_id=ACCOUNT)
    assert _statement(china, "ReadModelObjects")["Resource"] == [f"arn:aws-cn:s3:::{BUCKET}/{PREFIX}/*"]
    assert triton_repository_arns("cn-north-1")[0].startswith("arn:aws-cn:ecr:cn-north-1:")
    # the prefix is normalised, so s3://bucket/prefix/ style input gives the same policy
    assert endpoint_execution_policy(BUCKET, f"/{PREFIX}/", region="us-east-1", account_id=ACCOUNT) == _policy()


def test_policy_refuses_wide_or_malformed_inputs() -> None:
    for prefix in ("", "/", "models/*", "models/?", "models/${aws:username}"):
        with pytest.raises(ValueError):
            endpoint_execution_policy(BUCKET, prefix, region="us-east-1", account_id=ACCOUNT)
    with pytest.raises(ValueError, match="bucket"):
        endpoint_execution_policy("Bad_Bucket", PREFIX, region="us-east-1", account_id=ACCOUNT)
    with pytest.raises(ValueError, match="account id"):
        _policy(account_id="1234")
    with pytest.raises(ValueError, match="region"):
        _policy(region="nowhere")
    with pytest.raises(ValueError, match="no known Triton image account"):
        _policy(region="us-gov-west-1")
    with pytest.raises(ValueError, match="ECR repository ARN"):
        _policy(ecr_repository_arns=["arn:aws:ecr:us-east-1:763104351884:repository/*"])
    with pytest.raises(ValueError, match="empty"):
        _policy(ecr_repository_arns=[])
    with pytest.raises(ValueError, match="not an ECR image URI"):
        ecr_repository_arn("nvcr.io/nvidia/tritonserver:24.09-py3")


def test_trust_policy() -> None:
    assert trust_policy() == {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


def test_documents_are_accepted_by_iam(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    policy = _policy(endpoint_name="triton-mme-test", kms_key_arns=[f"arn:aws:kms:us-east-1:{ACCOUNT}:key/k"])
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        role = iam.create_role(RoleName="triton-mme-endpoint",
                               AssumeRolePolicyDocument=json.dumps(trust_policy()))["Role"]
        created = iam.create_policy(PolicyName="triton-mme-endpoint", PolicyDocument=json.dumps(policy))["Policy"]
        iam.attach_role_policy(RoleName=role["RoleName"], PolicyArn=created["Arn"])
        stored = iam.get_policy_version(PolicyArn=created["Arn"],
                                        VersionId=created["DefaultVersionId"])["PolicyVersion"]["Document"]
        stored = json.loads(stored) if isinstance(stored, str) else stored
        assert stored == policy
        attached = iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"]
        assert [p["PolicyArn"] for p in attached] == [created["Arn"]]
        # moto validates documents: a malformed one is refused, so acceptance above means something
        with pytest.raises(iam.exceptions.MalformedPolicyDocumentException):
            iam.create_policy(PolicyName="bad", PolicyDocument=json.dumps({"Statement": [{"Effect": "Allow"}]}))
