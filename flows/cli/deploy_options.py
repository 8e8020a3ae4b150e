"""``mme deploy``'s options, declared once as a typed dataclass (:class:`DeployOptions`, which
``mme preflight`` takes too): the command turns them into the objects the flow takes
(BuildSource, SageMakerOptions); a bad one fails naming the option."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from flows.cli.common import _fail
from flows.cli.options import GIVEN, checked_backend
from infra.triton.release import DEFAULT_RELEASE

if TYPE_CHECKING:
    from tasks.deploy.backends.sagemaker import SageMakerOptions
    from tasks.planning.planfile import PlanFile

T = TypeVar("T")

#: the options a plan fills: ``mme deploy``'s, or a command's that extends them
OptionsT = TypeVar("OptionsT", bound="DeployOptions")

@dataclass(frozen=True, kw_only=True)
class DeployOptions:
    """``mme deploy``'s options, typed (more than a function's 8 parameters)."""

    ensembles: Annotated[list[str] | None, typer.Argument()] = None
    endpoint: Annotated[str, typer.Option()] = "local-mme"
    backend: Annotated[str, typer.Option(help="local, or sagemaker")] = "local"
    target: Annotated[str | None, typer.Option(
        help="default: local-cpu (local), sagemaker-gpu (sagemaker)")] = None
    store: Annotated[str | None, typer.Option(help="object store: default the embedded one; "
                                                   "s3://bucket/prefix for sagemaker")] = None
    region: Annotated[str, typer.Option(help="sagemaker: AWS region")] = "us-east-1"
    role_arn: Annotated[str | None, typer.Option(help="sagemaker: the endpoint's execution role")] = None
    instance_type: Annotated[str, typer.Option(help="sagemaker: GPU instance type")] = "ml.g4dn.xlarge"
    instance_count: Annotated[int, typer.Option(help="sagemaker: initial instance count")] = 1
    triton_release: Annotated[str, typer.Option(help="sagemaker: Triton container YY.MM")] = str(DEFAULT_RELEASE)
    autoscaling_max: Annotated[int | None, typer.Option(help="sagemaker: enable autoscaling up to N")] = None
    autoscaling_min: Annotated[int | None, typer.Option()] = None
    target_invocations: Annotated[float, typer.Option(
        help="sagemaker: invocations per instance per minute")] = 200.0
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print every call, make none")] = False
    allow_target_mismatch: Annotated[bool, typer.Option(
        "--allow-target-mismatch",
        help="sagemaker: deploy builds made for another target (e.g. local-cpu) anyway")] = False
    load_wait: Annotated[float, typer.Option(help="sagemaker: seconds validation retries "
                                                  "429 ModelNotReadyException per model")] = 360.0
    model_cache: Annotated[str, typer.Option(help="sagemaker: the MME's ModelCacheSetting, "
                                                  "enabled or disabled")] = "enabled"
    env: Annotated[list[str] | None, typer.Option("--env", help="sagemaker: container environment "
                   "KEY=VALUE (repeatable), e.g. SAGEMAKER_TRITON_LOG_VERBOSE=false")] = None
    inference_ami: Annotated[str | None, typer.Option(
        "--inference-ami", help="sagemaker: the variant's InferenceAmiVersion "
                                "(NVIDIA driver/CUDA of the instances)")] = None
    shm_default_bytes: Annotated[int | None, typer.Option(
        help="sagemaker: shared memory each Python-backend model instance starts with "
             "(SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE; default 4 MiB)")] = None
    shm_growth_bytes: Annotated[int | None, typer.Option(help="sagemaker: the step it grows by "
                                "(SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE; default 1 MiB)")] = None
    triton_log_verbose: Annotated[int | None, typer.Option(
        help="sagemaker: Triton's --log-verbose level (SAGEMAKER_TRITON_LOG_VERBOSE; default 0: "
             "off; the container's own default logs every request)")] = None
    tag: Annotated[list[str] | None, typer.Option("--tag", help="sagemaker: KEY=VALUE tag on the model, "
                   "config and endpoint (repeatable)")] = None
    warm_invocations: Annotated[int, typer.Option()] = 20
    keep_versions: Annotated[int, typer.Option(min=0, help="previous versions of each ensemble kept for "
                             "rollback; older ones are deleted once the new one validated")] = 1
    plan: Annotated[Path | None, typer.Option("--plan", help="sagemaker: a plan file from `mme plan`: fills "
                    "instance type, count, autoscaling and model cache (flags given win)")] = None
    #: the options given on the command line (not an option): they win over a plan file's values
    given: frozenset[str] = field(default=frozenset(), metadata=GIVEN)


def read_plan(o: DeployOptions) -> PlanFile | None:
    """The plan file ``--plan`` names (None without one); a bad file fails naming it and the field."""
    if not o.plan:
        return None
    from infra.errors import UserError
    from tasks.planning.planfile import read_plan_file

    try:
        return read_plan_file(o.plan)
    except UserError as e:
        _fail(str(e))


def fill_from_plan(o: OptionsT, plan: PlanFile | None, explicit: AbstractSet[str]) -> OptionsT:
    """``o`` with the plan's instance type, count, autoscaling, model cache and region for the
    options not given on the command line (``explicit``: the names given there win)."""
    if plan is None:
        return o

    def pick(name: str, given: T, planned: T) -> T:
        return given if name in explicit else planned

    filled = replace(
        o, instance_type=pick("instance_type", o.instance_type, plan.instance_type),
        instance_count=pick("instance_count", o.instance_count, plan.instance_count),
        autoscaling_min=pick("autoscaling_min", o.autoscaling_min, plan.autoscaling.min),
        autoscaling_max=pick("autoscaling_max", o.autoscaling_max, plan.autoscaling.max),
        target_invocations=pick("target_invocations", o.target_invocations, plan.autoscaling.target),
        model_cache=pick("model_cache", o.model_cache, plan.model_cache),
        region=pick("region", o.region, plan.region or o.region))
    if plan.shards > 1:
        from flows.cli.common import console

        console.print(f"note: {o.plan} plans {plan.shards} endpoints: this deploy makes one; deploy "
                      f"variant i to endpoint i mod {plan.shards}", markup=False, highlight=False)
    return filled


def apply_plan(o: OptionsT, explicit: AbstractSet[str]) -> OptionsT:
    """``o`` with the plan file's values (``--plan``) for the options not given on the command
    line (``explicit``: the names given there win). A bad file fails naming it and the field."""
    return fill_from_plan(o, read_plan(o), explicit)


def _backend_options(o: DeployOptions) -> SageMakerOptions | None:
    """The options object of the chosen backend (None: the backend takes none)."""
    return _sagemaker_options(o) if checked_backend(o.backend) == "sagemaker" else None


def _sagemaker_options(o: DeployOptions) -> SageMakerOptions:
    """The SageMaker options of ``mme deploy``; a bad one fails naming the option."""
    from pydantic import ValidationError

    from tasks.deploy.backends.sagemaker import SageMakerOptions
    from infra.errors import UserError

    if not o.store or not o.store.startswith("s3://"):
        _fail("--backend sagemaker needs --store s3://bucket/prefix")
    if not o.role_arn and not o.dry_run:
        _fail("--backend sagemaker needs --role-arn (see `mme iam-policy`)")
    environment = _parse_env(o.env or [])
    if o.model_cache.strip().lower() not in ("enabled", "disabled"):
        _fail(f"--model-cache {o.model_cache!r}: expected enabled or disabled")
    try:
        options = SageMakerOptions(
            region=o.region,
            role_arn=o.role_arn or "arn:aws:iam::111111111111:role/YOUR-ENDPOINT-ROLE",
            instance_type=o.instance_type, instance_count=o.instance_count,
            triton_release=o.triton_release,
            autoscaling_min=o.autoscaling_min, autoscaling_max=o.autoscaling_max,
            target_invocations_per_instance=o.target_invocations,
            allow_target_mismatch=o.allow_target_mismatch, load_wait_s=o.load_wait,
            model_cache=o.model_cache, environment=environment, inference_ami_version=o.inference_ami,
            shm_default_bytes=o.shm_default_bytes, shm_growth_bytes=o.shm_growth_bytes,
            triton_log_verbose=o.triton_log_verbose, tags=_parse_tags(o.tag or []))
    except (UserError, ValidationError) as e:  # pydantic's refusal of an option too
        from infra.errors import validation_problems

        ami, text = o.inference_ami, validation_problems(e) if isinstance(e, ValidationError) else str(e)
        _fail(f"--inference-ami {ami!r}: {text}" if ami and "AMI" in text else text)
    return options


def _parse_env(items: list[str]) -> dict[str, str]:
    """``--env KEY=VALUE`` options -> the container Environment; a bad one fails naming it."""
    from infra.errors import UserError
    from infra.aws.sagemaker import check_environment

    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--env {item!r}: expected KEY=VALUE, e.g. SAGEMAKER_TRITON_LOG_VERBOSE=false")
        if key in out:
            _fail(f"--env {item!r}: {key} is given twice")
        try:
            check_environment({key: value})
        except UserError as e:
            _fail(f"--env {item!r}: {e}")
        out[key] = value
    return out


def _parse_tags(items: list[str]) -> dict[str, str]:
    """``--tag KEY=VALUE`` options -> the tags; a malformed or repeated one fails naming it (the
    tag rules themselves are SageMakerOptions' check)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--tag {item!r}: expected KEY=VALUE, e.g. team=search")
        if key in out:
            _fail(f"--tag {item!r}: {key} is given twice")
        out[key] = value
    return out
