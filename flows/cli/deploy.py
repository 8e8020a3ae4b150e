"""``mme deploy``, ``mme iam-policy`` and ``mme retire``: the ship side of the CLI. The
deploy options and their checks are in :mod:`flows.cli.deploy_options`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

import typer

from flows.cli.common import JSON_OPTION, _fail, _print_deploy, _quiet_env, _run_flow, app, emit_json, say
from flows.cli.deploy_options import DeployOptions, _backend_options, apply_plan
from flows.cli.options import BackendName, checked_backend, takes_options
from flows.cli.preflight import PREFLIGHT_OPTION, run_preflight_command
from ensembles.spec import as_target
from infra.triton.release import DEFAULT_RELEASE


@dataclass(frozen=True, kw_only=True)
class DeployCommandOptions(DeployOptions):
    """``mme deploy``'s options and its ``--preflight`` (check, deploy nothing)."""

    preflight: Annotated[bool, PREFLIGHT_OPTION] = False
    as_json: Annotated[bool, JSON_OPTION] = False


@app.command()
@takes_options(DeployCommandOptions)
def deploy(o: DeployCommandOptions) -> None:
    """Publish built ensembles, create/update or reuse the endpoint, validate each by TargetModel."""
    _quiet_env()
    if o.preflight:
        run_preflight_command(o)  # read-only checks, then exit: deploys nothing
    from flows.deploy import deploy as deploy_flow
    from tasks.deploy.records import BuildSource, Rollout

    o = apply_plan(o, o.given)  # --plan: the plan file's values, flags given win
    backend = checked_backend(o.backend)
    target = as_target(o.target) if o.target else None  # an unknown one: one line, before any work
    result = _run_flow(deploy_flow, ensembles=o.ensembles or None, endpoint=o.endpoint,
                       backend=backend, store_uri=o.store, build=BuildSource(target=target),
                       rollout=Rollout(warm_invocations=o.warm_invocations,
                                       keep_versions=o.keep_versions),
                       dry_run=o.dry_run, sagemaker=_backend_options(o))
    if o.as_json:
        emit_json(result)
        return
    if not o.dry_run:
        _print_deploy(result)
        return
    print(f"# dry run: what deploying to {o.endpoint} ({o.backend}) would do, in order")
    for line in result.get("warnings") or []:
        print(f"# WARNING: {line}")
    for line in result["calls"]:
        print(line)
    if result.get("hourly_cost_usd") is not None:
        print(f"# instance cost: about ${result['hourly_cost_usd']:.2f}/hour "
              f"({o.instance_count} x {o.instance_type}, on-demand, before autoscaling)")


@dataclass(frozen=True, kw_only=True)
class IamPolicyOptions:
    """``mme iam-policy``'s options, typed (more than a function's 8 parameters)."""

    bucket: Annotated[str, typer.Option()]
    prefix: Annotated[str, typer.Option(help="the store prefix")]
    endpoint: Annotated[str, typer.Option()]
    region: Annotated[str, typer.Option()] = "us-east-1"
    account_id: Annotated[str, typer.Option(help="your AWS account id")]
    triton_release: Annotated[str, typer.Option()] = str(DEFAULT_RELEASE)
    kms_key_arn: Annotated[list[str] | None, typer.Option(
        "--kms-key-arn", help="the bucket's customer-managed KMS key (repeatable): kms:Decrypt for "
                              "the endpoint, and GenerateDataKey for the deployer")] = None
    deployer: Annotated[bool, typer.Option("--deployer", help="print the policy of whoever runs "
                        "`mme deploy`/`mme retire` (not the endpoint's role)")] = False
    execution_role_arn: Annotated[str | None, typer.Option(help="--deployer: the endpoint's execution "
                                  "role, which the deployer passes to SageMaker")] = None


@app.command("iam-policy")
@takes_options(IamPolicyOptions)
def iam_policy(o: IamPolicyOptions) -> None:
    """Print the least-privilege policy (and trust policy) for the endpoint's execution role, or
    with --deployer the policy of the identity that deploys and retires."""
    from infra.aws import deployer_policy
    from infra.aws import iam
    from infra.aws import sagemaker as sm
    from infra.errors import UserError

    keys = o.kms_key_arn or []
    try:
        if o.deployer:
            if not o.execution_role_arn:
                _fail("--deployer needs --execution-role-arn (the role `mme deploy --role-arn` names)")
            policy = deployer_policy.deployer_policy(
                o.bucket, o.prefix, region=o.region, account_id=o.account_id,
                endpoint_name=o.endpoint, execution_role_arn=o.execution_role_arn, kms_key_arns=keys)
            print(json.dumps({"PolicyDocument": policy}, indent=2))
            return
        image = sm.triton_image_uri(o.region, o.triton_release)
        policy = iam.endpoint_execution_policy(
            o.bucket, f"{o.prefix.strip('/')}/models/{o.endpoint}", region=o.region,
            account_id=o.account_id, ecr_repository_arns=[iam.ecr_repository_arn(image)],
            endpoint_name=o.endpoint, kms_key_arns=[deployer_policy.check_kms_key_arn(k) for k in keys])
    except UserError as e:
        _fail(str(e))
    print(json.dumps({"PolicyDocument": policy, "AssumeRolePolicyDocument": iam.trust_policy()}, indent=2))


@dataclass(frozen=True, kw_only=True)
class RetireOptions:
    """``mme retire``'s options, typed (more than a function's 8 parameters)."""

    ensembles: Annotated[list[str] | None, typer.Argument()] = None
    endpoint: Annotated[str, typer.Option()] = "local-mme"
    stop_endpoint: Annotated[bool, typer.Option("--stop", help="also stop (local) or delete "
                                                "(sagemaker) the endpoint")] = False
    store: Annotated[str | None, typer.Option(help="default: from the endpoint's record "
                                              "($MME_HOME/endpoints/<name>/record.json)")] = None
    backend: Annotated[str | None, typer.Option(help="local or sagemaker; default: from the "
                                                "endpoint's record")] = None
    region: Annotated[str | None, typer.Option(help="sagemaker: default from the record")] = None
    missing_ok: Annotated[bool, typer.Option("--missing-ok", help="exit 0 when there is nothing "
                                             "(left) to delete")] = False
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what it would remove (from the "
                                          "endpoint's record and ledger); change nothing")] = False
    as_json: Annotated[bool, JSON_OPTION] = False


@app.command()
@takes_options(RetireOptions)
def retire(o: RetireOptions) -> None:
    """Remove ensembles from an endpoint (only what we deployed), or remove the endpoint.

    Exits 1 when something could not be found or deleted, or nothing was deleted."""
    _quiet_env()
    from flows.retire import retire as retire_flow

    checked = None if o.backend is None else checked_backend(o.backend)
    if o.dry_run:
        lines = _retire_plan(o, checked)
    else:
        lines = _run_flow(retire_flow, ensembles=o.ensembles or None, endpoint=o.endpoint,
                          stop_endpoint=o.stop_endpoint, store_uri=o.store, backend=checked,
                          region=o.region, missing_ok=o.missing_ok)
    if o.as_json:
        emit_json({"endpoint": o.endpoint, "dry_run": o.dry_run, "lines": lines})
        return
    for line in lines:
        say(line)


def _retire_plan(o: RetireOptions, backend: BackendName | None) -> list[str]:
    """What ``mme retire`` would do, one line each, read from the endpoint's record and ledger
    (:func:`flows.retire.locate`: the flow's own lookup); nothing is deleted."""
    from flows.retire import locate

    where = locate(o.endpoint, backend, o.store, o.region)
    entries = where.entries()
    names = list(o.ensembles) if o.ensembles else list(entries)
    lines = [f"would retire {n}: " + (f"TargetModel {entries[n].target_model} ({entries[n].uri})"
                                       if n in entries else "not deployed here (nothing to delete)")
             for n in names]
    if o.stop_endpoint or not o.ensembles:
        verb = "delete" if where.backend == "sagemaker" else "stop"
        lines.append(f"would {verb} endpoint {o.endpoint} ({where.backend})")
    return lines + ["dry run: nothing changed"]
