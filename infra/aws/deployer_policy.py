"""Least-privilege identity policy for the *deployer*: whoever runs ``mme deploy`` / ``mme retire``
with ``--backend sagemaker``.

Why a document of its own: the endpoint's execution role (:mod:`infra.aws.iam`) is what SageMaker
assumes; the deployer is the user or CI role that calls the control plane. Its permissions were
written down nowhere, so a first real deploy met AccessDenied one call at a time. Every action
here comes from a call the code makes (``tests/test_deployer_policy.py`` scans the code for boto3
operations and records the calls of a deploy/update/rollback/retire on moto, and checks that each
is allowed on the resource it touches):

- ``iam:PassRole`` of the execution role, only to ``sagemaker.amazonaws.com``
  (CreateModel hands the role to SageMaker);
- SageMaker create/describe/update/delete/tag on this endpoint's own names: the endpoint, and the
  models and endpoint configs whose content-hashed names start with the endpoint's name
  (:func:`infra.aws.sagemaker._derived_name`); describe/list-tags on any config whose name contains it
  (retire finds older blue/green configs with ``ListEndpointConfigs(NameContains=...)`` and
  deletes only those tagged ours); ``sagemaker:InvokeEndpoint`` for the validation invokes;
- Application Auto Scaling on SageMaker variants, with the actions AWS requires of its caller
  for a SageMaker target (``sagemaker:UpdateEndpointWeightsAndCapacities``, CloudWatch alarm
  put/describe/delete for target tracking) and ``iam:CreateServiceLinkedRole`` for its
  service-linked role (the first scaling policy in an account creates it);
- S3 on the store's bucket and prefix only (publish, the ledger, restore on rollback, retire),
  ``s3:GetBucketLocation`` for the bucket/endpoint region check;
- with ``kms_key_arns`` (a bucket with a customer-managed key): ``kms:GenerateDataKey`` for the
  uploads and ``kms:Decrypt`` (reads, and multipart uploads, need it).

``"*"`` appears only where AWS has no resource-level permission for the action
(:data:`STAR_ONLY_ACTIONS`); the Application Auto Scaling writes are then limited by condition
keys to SageMaker variants.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from infra.errors import InvalidInput
from infra.jsontypes import JsonObject, JsonValue
from infra.aws.iam import POLICY_VERSION, _check_literal, _checked_target, _statement, partition
from infra.aws.sagemaker import _NAME_RE, _derived_name

SAGEMAKER_PRINCIPAL = "sagemaker.amazonaws.com"
AUTOSCALING_PRINCIPAL = "sagemaker.application-autoscaling.amazonaws.com"
AUTOSCALING_ROLE_NAME = "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"

MODEL_ACTIONS = ["sagemaker:CreateModel", "sagemaker:DescribeModel", "sagemaker:DeleteModel",
                 "sagemaker:AddTags", "sagemaker:ListTags"]
CONFIG_ACTIONS = ["sagemaker:CreateEndpointConfig", "sagemaker:DeleteEndpointConfig",
                  "sagemaker:AddTags", "sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint"]
CONFIG_READ_ACTIONS = ["sagemaker:DescribeEndpointConfig", "sagemaker:ListTags"]
ENDPOINT_ACTIONS = ["sagemaker:CreateEndpoint", "sagemaker:DescribeEndpoint", "sagemaker:UpdateEndpoint",
                    "sagemaker:DeleteEndpoint", "sagemaker:AddTags", "sagemaker:ListTags",
                    "sagemaker:InvokeEndpoint", "sagemaker:UpdateEndpointWeightsAndCapacities"]
AUTOSCALING_READ_ACTIONS = ["application-autoscaling:DescribeScalableTargets",
                            "application-autoscaling:DescribeScalingPolicies"]
AUTOSCALING_WRITE_ACTIONS = ["application-autoscaling:RegisterScalableTarget",
                             "application-autoscaling:DeregisterScalableTarget",
                             "application-autoscaling:PutScalingPolicy",
                             "application-autoscaling:DeleteScalingPolicy"]
ALARM_ACTIONS = ["cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms", "cloudwatch:DeleteAlarms"]
OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]

#: The actions granted on ``"*"``: none of them has a resource-level form (Service Authorization
#: Reference): listing configs, describing scaling, and the scaling writes (a scalable target's
#: ARN is made by AWS at registration, so it cannot be named beforehand).
STAR_ONLY_ACTIONS = frozenset(["sagemaker:ListEndpointConfigs", *AUTOSCALING_READ_ACTIONS,
                               *AUTOSCALING_WRITE_ACTIONS])

_ROLE_ARN_RE = re.compile(r"^arn:aws(-cn|-us-gov)?:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_KMS_KEY_RE = re.compile(r"^arn:aws(-cn|-us-gov)?:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+$")


def check_kms_key_arn(arn: str) -> str:
    """A KMS *key* ARN, or refused naming it: an alias ARN in a policy's Resource does not grant
    use of the key behind it, so a policy with one would still fail to decrypt."""
    if not _KMS_KEY_RE.match(arn or ""):
        raise InvalidInput(f"--kms-key-arn {arn!r}: expected a KMS key ARN "
                           f"(arn:aws:kms:<region>:<account>:key/<key-id>; an alias ARN does not "
                           f"grant use of the key)")
    return arn


def deployer_policy(bucket: str, store_prefix: str, *, region: str, account_id: str,
                    endpoint_name: str, execution_role_arn: str,
                    kms_key_arns: Sequence[str] = ()) -> JsonObject:
    """The deployer's identity policy for one endpoint (see the module docstring for why each
    statement is there). ``store_prefix`` is the ``--store`` prefix (``s3://bucket/<prefix>``)."""
    prefix = _checked_target(bucket, store_prefix, region, account_id)
    if not _ROLE_ARN_RE.match(execution_role_arn or ""):
        raise InvalidInput(f"--execution-role-arn {execution_role_arn!r}: expected an IAM role ARN "
                           f"(arn:aws:iam::<account>:role/<name>)")
    _check_literal("execution role ARN", execution_role_arn)
    part = partition(region)
    statements = [
        _statement("PassExecutionRoleToSageMaker", ["iam:PassRole"], [execution_role_arn],
                   {"StringEquals": {"iam:PassedToService": SAGEMAKER_PRINCIPAL}}),
        *_sagemaker_statements(part, region, account_id, endpoint_name),
        *_autoscaling_statements(part, region, account_id),
        *_store_statements(part, bucket, prefix),
    ]
    if kms_key_arns:
        keys = [check_kms_key_arn(k) for k in kms_key_arns]
        statements.append(_statement("UseStoreKey", ["kms:Decrypt", "kms:GenerateDataKey"], keys))
    return {"Version": POLICY_VERSION, "Statement": statements}


def sagemaker_arn(part: str, region: str, account_id: str, kind: str, name: str) -> str:
    """``arn:aws:sagemaker:<region>:<account>:<kind>/<name>``; SageMaker writes resource names
    in ARNs in lower case, so a policy must too."""
    return f"arn:{part}:sagemaker:{region}:{account_id}:{kind}/{name.lower()}"


def _name_prefix(endpoint: str, kind: str) -> str:
    """The fixed part of this endpoint's model/config names (the endpoint name, cut as
    :func:`infra.aws.sagemaker._derived_name` cuts it, then ``-<kind>-``), for an ARN pattern."""
    return _derived_name(endpoint, kind, "0" * 8)[:-8]


def _sagemaker_statements(part: str, region: str, account_id: str, endpoint: str) -> list[JsonValue]:
    """Models, configs and the endpoint of this endpoint only; ListEndpointConfigs on '*'."""
    if not _NAME_RE.match(endpoint or ""):
        raise InvalidInput(f"--endpoint {endpoint!r}: not a SageMaker endpoint name (1-63 letters, "
                           f"digits, hyphens)")
    models = sagemaker_arn(part, region, account_id, "model", _name_prefix(endpoint, "model") + "*")
    configs = sagemaker_arn(part, region, account_id, "endpoint-config", _name_prefix(endpoint, "config") + "*")
    found = sagemaker_arn(part, region, account_id, "endpoint-config", f"*{endpoint}*")
    return [
        _statement("EndpointModels", MODEL_ACTIONS, [models]),
        _statement("EndpointConfigs", CONFIG_ACTIONS, [configs]),
        _statement("FindEndpointConfigs", CONFIG_READ_ACTIONS, [found]),
        _statement("Endpoint", ENDPOINT_ACTIONS, [sagemaker_arn(part, region, account_id, "endpoint", endpoint)]),
        _statement("ListEndpointConfigs", ["sagemaker:ListEndpointConfigs"], "*"),
    ]


def _autoscaling_statements(part: str, region: str, account_id: str) -> list[JsonValue]:
    """Scaling of SageMaker variants: reads on '*' (no resource-level form), writes on '*' held to
    SageMaker variant counts by condition keys, target-tracking alarms by name (AWS names them
    ``TargetTracking-...``, as its own service-linked role policy scopes them), and the
    service-linked role Application Auto Scaling creates on first use."""
    scoped: JsonObject = {"StringEquals": {"application-autoscaling:service-namespace": "sagemaker",
                               "application-autoscaling:scalable-dimension": SCALABLE_DIMENSION}}
    alarms = f"arn:{part}:cloudwatch:{region}:{account_id}:alarm:TargetTracking*"
    role = (f"arn:{part}:iam::{account_id}:role/aws-service-role/{AUTOSCALING_PRINCIPAL}/"
            f"{AUTOSCALING_ROLE_NAME}")
    return [
        _statement("DescribeScaling", AUTOSCALING_READ_ACTIONS, "*"),
        _statement("ScaleSageMakerVariants", AUTOSCALING_WRITE_ACTIONS, "*", scoped),
        _statement("TargetTrackingAlarms", ALARM_ACTIONS, [alarms]),
        _statement("AutoScalingServiceLinkedRole", ["iam:CreateServiceLinkedRole"], [role],
                   {"StringLike": {"iam:AWSServiceName": AUTOSCALING_PRINCIPAL}}),
    ]


def _store_statements(part: str, bucket: str, prefix: str) -> list[JsonValue]:
    """Objects under the store prefix, listing only that prefix, and the bucket's region."""
    return [
        _statement("StoreObjects", OBJECT_ACTIONS, [f"arn:{part}:s3:::{bucket}/{prefix}/*"]),
        _statement("ListStorePrefix", ["s3:ListBucket"], [f"arn:{part}:s3:::{bucket}"],
                   {"StringLike": {"s3:prefix": [f"{prefix}/", f"{prefix}/*"]}}),
        _statement("BucketRegion", ["s3:GetBucketLocation"], [f"arn:{part}:s3:::{bucket}"]),
    ]
