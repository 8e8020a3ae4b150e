"""Least-privilege IAM documents for the SageMaker endpoint's execution role.

The execution role is what SageMaker assumes to pull the Triton image, download
model tarballs from S3 and write the container's logs and metrics.  An MME loads
whatever ``TargetModel`` names under its model prefix, so the role is the real
boundary: it may read that prefix and nothing else in the bucket.  The documents
are plain dicts (``json.dumps`` them for IAM) so they can be reviewed, diffed and
tested without AWS.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from infra.errors import InvalidInput
from infra.jsontypes import JsonObject, JsonValue
from infra.aws.sagemaker import (
    TRITON_DLC_ACCOUNTS,
    TRITON_LEGACY_ACCOUNTS,
    TRITON_REPOSITORY,
)

POLICY_VERSION = "2012-10-17"
ENDPOINT_METRICS_NAMESPACE = "/aws/sagemaker/Endpoints"

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ACCOUNT_RE = re.compile(r"^\d{12}$")
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_IMAGE_RE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?"
    r"/(?P<repo>[a-z0-9][a-z0-9._/-]*?)(?::[\w.-]+)?(?:@sha256:[0-9a-f]{64})?$")
_WILDCARDS = ("*", "?", "$")  # '$' would start an IAM policy variable


def partition(region: str) -> str:
    """The ARN partition of a region (``aws``, ``aws-cn``, ``aws-us-gov``)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def _check_literal(what: str, value: str) -> str:
    """Refuse IAM wildcards/variables: they would silently widen a least-privilege grant."""
    if any(ch in value for ch in _WILDCARDS):
        raise InvalidInput(f"{what} {value!r} contains an IAM wildcard or variable ('*', '?', '$')")
    return value


def ecr_repository_arn(image_uri: str) -> str:
    """``arn:aws:ecr:<region>:<account>:repository/<repo>`` of an ECR image URI."""
    m = _IMAGE_RE.match(image_uri)
    if m is None:
        raise InvalidInput(f"not an ECR image URI: {image_uri!r}")
    return (f"arn:{partition(m['region'])}:ecr:{m['region']}:{m['account']}:"
            f"repository/{m['repo']}")


def triton_repository_arns(region: str) -> list[str]:
    """The ``sagemaker-tritonserver`` repositories SageMaker's Triton images live in, for ``region``."""
    accounts = sorted({a for a in (TRITON_LEGACY_ACCOUNTS.get(region), TRITON_DLC_ACCOUNTS.get(region)) if a})
    if not accounts:
        raise InvalidInput(f"no known Triton image account for region {region!r}; pass ecr_repository_arns")
    return [f"arn:{partition(region)}:ecr:{region}:{a}:repository/{TRITON_REPOSITORY}" for a in accounts]


def endpoint_execution_policy(
    bucket: str,
    model_prefix: str,
    *,
    region: str,
    account_id: str,
    ecr_repository_arns: Sequence[str] | None = None,
    log_group_prefix: str = "/aws/sagemaker/Endpoints",
    endpoint_name: str | None = None,
    kms_key_arns: Sequence[str] = (),
) -> JsonObject:
    """Identity policy for the endpoint's execution role, granting only what an MME needs.

    - ``s3:GetObject`` on ``bucket/model_prefix/*`` and ``s3:ListBucket`` on the bucket
      restricted by ``s3:prefix`` to ``model_prefix/``: the endpoint can read its models
      and nothing else (the trailing '/' keeps ``models/ep`` from reaching ``models/ep2``);
    - ECR pull: ``ecr:GetAuthorizationToken`` (which has no resource-level form, hence
      ``*``) and the layer/image reads on the Triton image repositories only (default:
      :func:`triton_repository_arns`; pass ``[ecr_repository_arn(plan.image_uri)]`` to pin one);
    - CloudWatch Logs on the endpoint's log group (``<log_group_prefix>/<endpoint_name>``,
      or every endpoint log group under the prefix when no name is given);
    - ``cloudwatch:PutMetricData`` only in the ``/aws/sagemaker/Endpoints`` namespace;
    - ``kms:Decrypt`` on ``kms_key_arns`` when the tarballs are SSE-KMS encrypted.
    """
    prefix = _checked_target(bucket, model_prefix, region, account_id)
    part = partition(region)
    repos = _checked_repositories(ecr_repository_arns, region, part)
    log_group_arn = _log_group_arn(part, region, account_id, log_group_prefix, endpoint_name)
    statements = [*_model_read_statements(part, bucket, prefix), *_image_pull_statements(repos),
                  _logs_statement(log_group_arn), _metrics_statement()]
    if kms_key_arns:
        keys = [_check_literal("KMS key ARN", k) for k in kms_key_arns]
        statements.append(_statement("DecryptModelObjects", ["kms:Decrypt"], keys))
    return {"Version": POLICY_VERSION, "Statement": statements}


def _checked_target(bucket: str, model_prefix: str, region: str, account_id: str) -> str:
    """Refuse a bad bucket, prefix, region or account id; return the prefix without slashes."""
    if not _BUCKET_RE.match(bucket or ""):
        raise InvalidInput(f"invalid S3 bucket name {bucket!r}")
    prefix = _check_literal("model prefix", (model_prefix or "").strip("/"))
    if not prefix:
        raise InvalidInput("model_prefix must not be empty: the role would read the whole bucket")
    if not _REGION_RE.match(region or ""):
        raise InvalidInput(f"invalid region {region!r}")
    if not _ACCOUNT_RE.match(account_id or ""):
        raise InvalidInput(f"invalid AWS account id {account_id!r}: 12 digits expected")
    return prefix


def _checked_repositories(ecr_repository_arns: Sequence[str] | None, region: str,
                          part: str) -> list[str]:
    """The ECR repositories the role may pull from (default: the region's Triton ones)."""
    repos = list(ecr_repository_arns) if ecr_repository_arns is not None else triton_repository_arns(region)
    if not repos:
        raise InvalidInput("ecr_repository_arns is empty: the endpoint could not pull its image")
    for arn in repos:
        if not arn.startswith(f"arn:{part}:ecr:") or ":repository/" not in arn:
            raise InvalidInput(f"not an ECR repository ARN: {arn!r}")
        _check_literal("ECR repository ARN", arn)
    return repos


def _log_group_arn(part: str, region: str, account_id: str, log_group_prefix: str,
                   endpoint_name: str | None) -> str:
    """The endpoint's log group, or every endpoint log group under the prefix without a name."""
    log_prefix = log_group_prefix.rstrip("/")
    if endpoint_name is not None:
        log_group = f"{log_prefix}/{_check_literal('endpoint name', endpoint_name)}"
    else:
        log_group = f"{log_prefix}/*"
    return f"arn:{part}:logs:{region}:{account_id}:log-group:{log_group}"


def _statement(sid: str, actions: list[str], resource: str | list[str],
               condition: JsonObject | None = None) -> JsonObject:
    """One ``Allow`` statement (with its ``Condition`` when given)."""
    out: JsonObject = {"Sid": sid, "Effect": "Allow", "Action": [*actions],
                       "Resource": resource if isinstance(resource, str) else [*resource]}
    if condition is not None:
        out["Condition"] = condition
    return out


def _model_read_statements(part: str, bucket: str, prefix: str) -> list[JsonValue]:
    """Read the objects under ``prefix/`` and list only that prefix (the trailing '/' keeps
    ``models/ep`` from reaching ``models/ep2``)."""
    return [
        _statement("ReadModelObjects", ["s3:GetObject"], [f"arn:{part}:s3:::{bucket}/{prefix}/*"]),
        _statement("ListModelPrefix", ["s3:ListBucket"], [f"arn:{part}:s3:::{bucket}"],
                   {"StringLike": {"s3:prefix": [f"{prefix}/", f"{prefix}/*"]}}),
    ]


def _image_pull_statements(repos: list[str]) -> list[JsonValue]:
    """ECR pull: the auth token (no resource-level form, hence ``*``) and the layer/image reads
    on ``repos`` only."""
    return [
        _statement("EcrAuthToken", ["ecr:GetAuthorizationToken"], "*"),
        _statement("PullTritonImage", ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
                                       "ecr:GetDownloadUrlForLayer"], repos),
    ]


def _logs_statement(log_group_arn: str) -> JsonObject:
    return _statement("EndpointLogs", ["logs:CreateLogGroup", "logs:CreateLogStream",
                                       "logs:DescribeLogStreams", "logs:PutLogEvents"],
                      [log_group_arn, f"{log_group_arn}:log-stream:*"])


def _metrics_statement() -> JsonObject:
    """PutMetricData has no resource-level form; the namespace is the limit."""
    return _statement("EndpointMetrics", ["cloudwatch:PutMetricData"], "*",
                      {"StringEquals": {"cloudwatch:namespace": ENDPOINT_METRICS_NAMESPACE}})


def trust_policy() -> JsonObject:
    """Trust policy letting SageMaker (and only SageMaker) assume the execution role."""
    return {
        "Version": POLICY_VERSION,
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "sagemaker.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }],
    }
