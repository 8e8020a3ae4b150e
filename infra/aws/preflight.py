"""A read-only pre-flight for a first real SageMaker deploy: what the run will need, checked
before it creates anything, one line per need (``mme preflight``, ``mme deploy --preflight``).

Why: a first deploy meets its missing pieces one at a time, each after minutes and some after
money: a bucket in another region fails the endpoint after ~10 minutes of provisioning, a role
SageMaker may not assume or may not be passed fails at CreateModel after the upload, a GPU
quota of 0 (the default of many new accounts) fails at CreateEndpoint. Every check here runs,
whatever the others found, so one run names every missing piece.

Read-only by construction: every client is wrapped by :func:`read_only`, which refuses (as a
bug) any operation whose name does not start with Describe/Get/List/Simulate before botocore
sends it. Where the caller may not read something (AccessDenied on a read the deploy itself
never makes, an identity the IAM simulator cannot simulate) the line says "could not check"
with AWS's reason: not a failure, since the deploy may still work.

The checks are plain functions of their clients and inputs (tests answer them with moto, or
with recorded answers where moto lacks the API); :func:`run_preflight` runs them all.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from infra.aws.clients import BotoClient, S3Client
from infra.aws.errors import aws_message, error_code
from infra.errors import MMEError, UserError
from infra.jsontypes import JsonObject, JsonValue

Status = Literal["ok", "problem", "unchecked"]
Clients = Callable[[str], BotoClient]
"""``service -> boto3 client`` in the pre-flight's region (``sts``, ``s3``, ``iam``,
``service-quotas``, ``ecr``)."""

READ_ONLY_PREFIXES = ("Describe", "Get", "List", "Simulate")
PREFLIGHT_ACTIONS = ("sts:GetCallerIdentity", "s3:GetBucketLocation", "iam:GetRole",
                     "iam:SimulatePrincipalPolicy", "servicequotas:ListServiceQuotas",
                     "servicequotas:ListAWSDefaultServiceQuotas", "ecr:DescribeImages")
"""Every action the pre-flight may call: a deployer without some of them gets "could not
check" on those lines (``iam:PassRole`` is *simulated*, never called)."""

SAGEMAKER_PRINCIPAL = "sagemaker.amazonaws.com"
DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
                          "UnauthorizedAccess", "AuthorizationError"})
_NO_CREDENTIALS = (NoCredentialsError, PartialCredentialsError)
_IMAGE_URI = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/([^:@]+):(.+)$")


class WriteRefused(MMEError, RuntimeError):
    """A pre-flight client was asked to make a call that is not a read: a bug in the
    pre-flight, stopped before botocore sent anything."""


@dataclass(frozen=True)
class Check:
    """One line of the pre-flight: what was checked, how it went, what to do about it."""

    name: str
    status: Status
    detail: str

    def line(self) -> str:
        label = {"ok": "ok", "problem": "PROBLEM", "unchecked": "could not check"}[self.status]
        return f"{label:<16} {self.name:<12} {self.detail}"


@dataclass(frozen=True)
class PreflightInputs:
    """What ``mme deploy --backend sagemaker`` was given. ``region_source`` says where the
    region came from (``--region``, the plan file); None when it is the option's default."""

    region: str
    region_source: str | None
    store: str | None
    role_arn: str | None
    instance_type: str
    triton_release: str
    instance_count: int = 1
    autoscaling_max: int | None = None

    @property
    def instances_needed(self) -> int:
        """The most instances this deploy may run at once (its count, or autoscaling's max)."""
        return max(self.instance_count, self.autoscaling_max or 0, 1)


@dataclass(frozen=True)
class Caller:
    """Who the credentials are (STS GetCallerIdentity)."""

    account: str
    arn: str


def _refuse_writes(model: Any, **_: object) -> None:  # model: a botocore OperationModel
    if not model.name.startswith(READ_ONLY_PREFIXES):
        raise WriteRefused(f"pre-flight is read-only, but {model.name} was called")


def read_only(client: BotoClient) -> BotoClient:
    """``client``, refusing every operation that is not a Describe/Get/List/Simulate before
    it is sent (registered first, so no later hook or stub can answer it instead)."""
    client.meta.events.register_first("before-call", _refuse_writes)
    return client


_bound: ContextVar[Callable[[str], Clients] | None] = ContextVar("mme_preflight_clients", default=None)


@contextmanager
def using(factory: Callable[[str], Clients]) -> Iterator[None]:
    """``with using(factory):`` the pre-flight of a command run in this context gets its
    clients from ``factory(region)``: how a test answers it from moto and recorded answers."""
    token = _bound.set(factory)
    try:
        yield
    finally:
        _bound.reset(token)


def clients_for(region: str) -> Clients:
    """The pre-flight's clients: boto3's credential chain via :mod:`infra.aws.clients` (or the factory
    bound by :func:`using`), each made once and wrapped :func:`read_only`."""
    bound = _bound.get()
    if bound is not None:
        make = bound(region)
    else:
        from infra.aws import clients as aws
        def make(service: str) -> BotoClient:
            return aws.client(service, region)
    made: dict[str, BotoClient] = {}

    def get(service: str) -> BotoClient:
        if service not in made:
            made[service] = read_only(make(service))
        return made[service]
    return get


def _reason(exc: BaseException) -> str:
    """AWS's answer in one line: ``Code: message``."""
    if isinstance(exc, _NO_CREDENTIALS):
        return f"{type(exc).__name__}: {exc}"
    return f"{error_code(exc)}: {aws_message(exc)}"


def _not_answered(name: str, action: str, exc: BaseException) -> Check:
    """A read that AWS did not answer: no credentials, denied, unreachable. The deploy never
    makes this call itself, so none of these is the deploy's failure."""
    if isinstance(exc, _NO_CREDENTIALS):
        return Check(name, "unchecked", "no AWS credentials (see the credentials line)")
    why = "denied" if error_code(exc) in DENIED_CODES else "failed"
    return Check(name, "unchecked", f"{action} {why} ({_reason(exc)})")


# --------------------------------------------------------------------------- the checks


def check_region(inputs: PreflightInputs, configured: str | None, known: set[str]) -> Check:
    """The region must be chosen, not ``--region``'s silent default: the bucket, the role's
    use, the quotas and the image registry are all per region. ``configured`` is what boto3's
    config says (AWS_REGION, the profile), ``known`` botocore's SageMaker regions."""
    region = inputs.region
    if known and region not in known:
        return Check("region", "problem", f"{region!r} is not a SageMaker region botocore knows: "
                     f"pass --region (e.g. us-east-1)")
    if inputs.region_source is None:
        hint = f"; your AWS config says {configured}" if configured and configured != region else ""
        return Check("region", "problem", f"{region} is --region's default, not a choice{hint}: pass "
                     f"--region explicitly (bucket, quotas and image are per region)")
    return Check("region", "ok", f"{region} (from {inputs.region_source})")


def check_credentials(sts: BotoClient) -> tuple[Check, Caller | None]:
    """Credentials resolve and are valid: STS GetCallerIdentity answers who they are."""
    try:
        who = sts.get_caller_identity()
    except _NO_CREDENTIALS:
        return Check("credentials", "problem", "no AWS credentials found: run `aws configure`, set "
                     "AWS_PROFILE, or export AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"), None
    except (ClientError, BotoCoreError) as exc:
        return Check("credentials", "problem", f"sts.get_caller_identity refused them "
                     f"({_reason(exc)}): refresh or replace the credentials"), None
    caller = Caller(account=str(who["Account"]), arn=str(who["Arn"]))
    return Check("credentials", "ok", f"{caller.arn} (account {caller.account})"), caller


def bucket_of(store: str | None) -> str | None:
    """The bucket of an ``s3://bucket/prefix`` store; None for any other store."""
    if not store or not store.startswith("s3://"):
        return None
    return store.removeprefix("s3://").split("/", 1)[0] or None


def check_bucket(s3: S3Client, store: str | None, region: str) -> Check:
    """The bucket exists and is in the endpoint's region: SageMaker reads model data from its
    own region only, and says so after ~10 minutes of provisioning."""
    bucket = bucket_of(store)
    if bucket is None:
        return Check("bucket", "problem", f"--store {store or '(none)'}: --backend sagemaker needs "
                     f"--store s3://bucket/prefix")
    try:
        where = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    except ClientError as exc:
        if error_code(exc) == "NoSuchBucket":
            return Check("bucket", "problem", f"s3://{bucket} does not exist: create it in {region} "
                         f"(aws s3 mb s3://{bucket} --region {region})")
        return Check("bucket", "problem", f"s3://{bucket}: s3.get_bucket_location refused "
                     f"({_reason(exc)}); the deploy needs it: see `mme iam-policy --deployer`, or "
                     f"the bucket is another account's")
    except BotoCoreError as exc:
        return _not_answered("bucket", "s3.get_bucket_location", exc)
    found = {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(where, where)
    if found != region:
        return Check("bucket", "problem", f"s3://{bucket} is in {found}, the endpoint would be in "
                     f"{region}: deploy with --region {found} or use a bucket in {region}")
    return Check("bucket", "ok", f"s3://{bucket} exists, in {found}")


def role_name_of(role_arn: str) -> str | None:
    """``arn:aws:iam::123456789012:role/path/name`` -> ``name``; None if not a role ARN."""
    resource = role_arn.split(":", 5)[5] if role_arn.count(":") >= 5 else ""
    if not role_arn.startswith("arn:") or ":iam::" not in role_arn or not resource.startswith("role/"):
        return None
    return resource.rsplit("/", 1)[-1] or None


def _listed(value: JsonValue) -> list[JsonValue]:
    """A policy field that holds one value or a list of them, as a list."""
    return value if isinstance(value, list) else [value]


def _statement_lets_sagemaker(statement: JsonObject) -> bool:
    actions = _listed(statement.get("Action", []))
    principal = statement.get("Principal", {})
    services = _listed(principal.get("Service", []) if isinstance(principal, dict) else principal)
    return (any(a in ("sts:AssumeRole", "sts:*", "*") for a in actions)
            and (SAGEMAKER_PRINCIPAL in services or "*" in services))


def trusts_sagemaker(document: str | JsonObject) -> bool:
    """True when a role's trust policy (a dict, or IAM's URL-encoded JSON) lets
    ``sagemaker.amazonaws.com`` assume it: an Allow that names it, and no Deny that does."""
    doc = json.loads(urllib.parse.unquote(document)) if isinstance(document, str) else document
    statements = _listed(doc.get("Statement", []) if isinstance(doc, dict) else [])
    matching = [s for s in statements if isinstance(s, dict) and _statement_lets_sagemaker(s)]
    return (any(s.get("Effect") == "Allow" for s in matching)
            and not any(s.get("Effect") == "Deny" for s in matching))


def check_role(iam: BotoClient, role_arn: str | None) -> Check:
    """The execution role exists and SageMaker may assume it (else CreateModel refuses it)."""
    name = role_name_of(role_arn) if role_arn else None
    if role_arn is None or name is None:
        return Check("role", "problem", f"--role-arn {role_arn or '(none)'}: give the endpoint's "
                     f"execution role ARN (create it from `mme iam-policy`)")
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except ClientError as exc:
        if error_code(exc) == "NoSuchEntity":
            return Check("role", "problem", f"role {name} does not exist: create it from `mme "
                         f"iam-policy` (README, AWS setup step 2)")
        return _not_answered("role", "iam.get_role", exc)
    except BotoCoreError as exc:
        return _not_answered("role", "iam.get_role", exc)
    if role.get("Arn") and role["Arn"] != role_arn:
        return Check("role", "problem", f"--role-arn {role_arn}: the role named {name} is "
                     f"{role['Arn']}: pass that ARN")
    if not trusts_sagemaker(role.get("AssumeRolePolicyDocument", {})):
        return Check("role", "problem", f"role {name}'s trust policy does not let "
                     f"{SAGEMAKER_PRINCIPAL} assume it: set it to `mme iam-policy`'s "
                     f"AssumeRolePolicyDocument (aws iam update-assume-role-policy --role-name {name})")
    return Check("role", "ok", f"{name} exists; {SAGEMAKER_PRINCIPAL} may assume it")


def simulation_source(iam: BotoClient, caller: Caller) -> tuple[str | None, str]:
    """The IAM ARN the policy simulator evaluates for ``caller``, or None and why there is
    none. An assumed role's STS ARN has lost the role's path: GetRole gives it back when
    allowed (SSO roles live under ``/aws-reserved/...``), else the path-less ARN is tried."""
    parts = caller.arn.split(":", 5)
    if len(parts) < 6:
        return None, f"{caller.arn} is not an ARN"
    partition, service, resource = parts[1], parts[2], parts[5]
    if resource == "root":
        return None, ("the caller is the account's root user, which the simulator cannot "
                      "simulate (root may pass any role: deploy as an IAM user or role instead)")
    if resource.startswith("user/"):
        return f"arn:{partition}:iam::{caller.account}:{resource}", ""
    if service == "sts" and resource.startswith("assumed-role/"):
        role = resource.split("/")[1]
        try:
            return str(iam.get_role(RoleName=role)["Role"]["Arn"]), ""
        except (ClientError, BotoCoreError, KeyError):
            return f"arn:{partition}:iam::{caller.account}:role/{role}", ""
    return None, f"{caller.arn} is not an IAM user or role the simulator can evaluate"


def check_pass_role(iam: BotoClient, caller: Caller | None, role_arn: str | None) -> Check:
    """The caller may pass the role to SageMaker (CreateModel needs ``iam:PassRole``), asked of
    the IAM policy simulator: identity policies and boundaries, not a session policy."""
    if caller is None or not role_arn or role_name_of(role_arn) is None:
        what = "no caller identity (see the credentials line)" if caller is None else "no role ARN to check"
        return Check("passrole", "unchecked", what)
    source, why = simulation_source(iam, caller)
    if source is None:
        return Check("passrole", "unchecked", why)
    try:
        answer = iam.simulate_principal_policy(
            PolicySourceArn=source, ActionNames=["iam:PassRole"], ResourceArns=[role_arn],
            ContextEntries=[{"ContextKeyName": "iam:PassedToService", "ContextKeyType": "string",
                             "ContextKeyValues": [SAGEMAKER_PRINCIPAL]}])
    except (ClientError, BotoCoreError) as exc:
        return _not_answered("passrole", f"iam.simulate_principal_policy for {source}", exc)
    results = answer.get("EvaluationResults") or [{}]
    decision = str(results[0].get("EvalDecision", "no decision"))
    if decision != "allowed":
        return Check("passrole", "problem", f"{source} may not iam:PassRole {role_arn} to "
                     f"{SAGEMAKER_PRINCIPAL} (simulator: {decision}): grant it, see `mme iam-policy "
                     f"--deployer --execution-role-arn {role_arn}`")
    return Check("passrole", "ok", f"{source} may pass {role_name_of(role_arn)} to "
                 f"{SAGEMAKER_PRINCIPAL} (IAM policy simulator)")


def check_instance(instance_type: str, region: str) -> Check:
    """The instance type is one a GPU MME may use, and what it costs an hour (the catalog's
    list price): the line a user reads before something starts billing."""
    from infra.aws.gpu_instances import mme_gpu_instance
    from infra.aws.instance_catalog import load_catalog

    try:
        gpu = mme_gpu_instance(instance_type)
    except UserError as e:
        return Check("instance", "problem", str(e))
    catalog = load_catalog()
    price = catalog.get(instance_type).hourly(region)
    cost = (f"${price:.4f}/h each in {region} (catalog list price, checked "
            f"{catalog.prices_checked.isoformat()})" if price is not None
            else f"no catalog price for {region} (infra/aws/instances.yaml)")
    return Check("instance", "ok", f"{instance_type}: {gpu.gpu}, {gpu.gpu_memory_gib} GiB; {cost}")


@dataclass(frozen=True)
class Quota:
    """One SageMaker service quota: its name, its code (what an increase request names) and
    its value (applied, else the default)."""

    name: str
    code: str
    value: float


def find_quota(quotas: BotoClient, name: str) -> Quota | None:
    """The SageMaker quota called ``name``: its applied value, else its default (Service
    Quotas lists a quota's applied value only once the account has one)."""
    for operation in ("list_service_quotas", "list_aws_default_service_quotas"):
        for page in quotas.get_paginator(operation).paginate(ServiceCode="sagemaker"):
            for quota in page.get("Quotas", []):
                if quota.get("QuotaName") == name:
                    return Quota(name=name, code=str(quota.get("QuotaCode", "?")),
                                 value=float(quota.get("Value", 0)))
    return None


def check_quota(quotas: BotoClient, instance_type: str, region: str, needed: int) -> Check:
    """The account may run ``needed`` instances of the type on endpoints: a quota of 0 (the
    default for many GPU types in a new account) fails CreateEndpoint with
    ResourceLimitExceeded, after the upload."""
    name = f"{instance_type} for endpoint usage"
    try:
        quota = find_quota(quotas, name)
    except (ClientError, BotoCoreError) as exc:
        return _not_answered("quota", "service-quotas listing", exc)
    if quota is None:
        return Check("quota", "unchecked", f"Service Quotas lists no SageMaker quota {name!r} in {region}")
    value, code = quota.value, quota.code
    if value < needed:
        return Check("quota", "problem", f"SageMaker quota {name!r} ({code}) is {value:g} in {region}, "
                     f"this deploy needs {needed}: request an increase (aws service-quotas "
                     f"request-service-quota-increase --service-code sagemaker --quota-code {code} "
                     f"--desired-value {needed} --region {region}, or the Service Quotas console)")
    return Check("quota", "ok", f"{name!r} ({code}) is {value:g} in {region}, this deploy needs "
                 f"{needed} (account-wide: running endpoints count too)")


def check_image(ecr: BotoClient, region: str, release: str, instance_type: str) -> Check:
    """The Triton image the deploy will name exists in the region's registry: a wrong URI fails
    the endpoint only after ~10 minutes of provisioning. The URI is the deploy's own
    (:func:`infra.aws.sagemaker.triton_image_uri`: the SDK, else the project's tables)."""
    from infra.aws.sagemaker import triton_image_uri

    try:
        uri = triton_image_uri(region, release, instance_type=instance_type)
    except UserError as e:
        return Check("image", "problem", str(e))
    match = _IMAGE_URI.match(uri)
    if match is None:
        return Check("image", "unchecked", f"{uri}: not an ECR image URI")
    account, _, repository, tag = match.groups()
    try:
        found = ecr.describe_images(registryId=account, repositoryName=repository,
                                    imageIds=[{"imageTag": tag}]).get("imageDetails") or []
    except ClientError as exc:
        if error_code(exc) == "ImageNotFoundException":
            return Check("image", "problem", f"{uri}: no such tag in {account}/{repository} "
                         f"({_reason(exc)}): choose another --triton-release")
        return _not_answered("image", f"{uri}: ecr.describe_images", exc)
    except BotoCoreError as exc:
        return _not_answered("image", f"{uri}: ecr.describe_images", exc)
    if not found:
        return Check("image", "problem", f"{uri}: ECR lists no such image: choose another --triton-release")
    pushed = found[0].get("imagePushedAt")
    when = f" (pushed {pushed:%Y-%m-%d})" if hasattr(pushed, "strftime") else ""
    return Check("image", "ok", f"{uri} exists{when}")


# --------------------------------------------------------------------------- all of them


def region_facts() -> tuple[str | None, set[str]]:
    """What boto3's config says the region is (no call), and the SageMaker regions botocore
    knows in every partition: what :func:`check_region` compares ``--region`` with."""
    from infra.aws import clients as aws
    s = aws.session()
    known = {r for p in s.get_available_partitions() for r in s.get_available_regions("sagemaker", p)}
    return s.region_name, known


def run_preflight(inputs: PreflightInputs, clients: Clients | None = None,
                  facts: tuple[str | None, set[str]] | None = None) -> list[Check]:
    """Every check, each run whatever the others found (one run names every missing piece).
    ``clients`` default: :func:`clients_for` the region; ``facts``: :func:`region_facts`."""
    configured, known = facts if facts is not None else region_facts()
    region_line = check_region(inputs, configured, known)
    instance_line = check_instance(inputs.instance_type, inputs.region)
    if known and inputs.region not in known:
        skipped = "the region is unknown (see the region line)"
        return [region_line, *(Check(n, "unchecked", skipped) for n in
                               ("credentials", "bucket", "role", "passrole")), instance_line,
                *(Check(n, "unchecked", skipped) for n in ("quota", "image"))]
    get = clients or clients_for(inputs.region)
    credentials, caller = check_credentials(get("sts"))
    return [region_line, credentials, check_bucket(get("s3"), inputs.store, inputs.region),
            check_role(get("iam"), inputs.role_arn), check_pass_role(get("iam"), caller, inputs.role_arn),
            instance_line,
            check_quota(get("service-quotas"), inputs.instance_type, inputs.region, inputs.instances_needed),
            check_image(get("ecr"), inputs.region, inputs.triton_release, inputs.instance_type)]


def exit_code(checks: list[Check]) -> int:
    """0 when nothing is a problem ("could not check" is not one), else 2: the user's to fix."""
    return 2 if any(c.status == "problem" for c in checks) else 0


def summary(checks: list[Check]) -> str:
    """The last line: how many passed, which are problems, how many could not be checked."""
    problems = [c.name for c in checks if c.status == "problem"]
    unchecked = sum(c.status == "unchecked" for c in checks)
    ok = sum(c.status == "ok" for c in checks)
    head = f"preflight: {ok} ok, {len(problems)} problem{'s' * (len(problems) != 1)}"
    named = f" ({', '.join(problems)})" if problems else ""
    verdict = (": fix them and run it again" if problems else
               ": nothing missing among what could be checked" if unchecked else ": ready to deploy")
    return f"{head}{named}, {unchecked} could not be checked{verdict}"
