"""``mme deploy``'s options, declared once as data: the command takes them as one mapping and
turns them into the objects the flow takes (BuildSource, SageMakerOptions); a bad one fails
naming the option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from flows.cli.common import _fail
from infra.triton.release import DEFAULT_RELEASE

DEPLOY_OPTIONS: dict[str, tuple[Any, Any]] = {
    "ensembles": (list[str], typer.Argument(None)),
    "endpoint": (str, typer.Option("local-mme")),
    "backend": (str, typer.Option("local", help="local, or sagemaker")),
    "target": (str | None, typer.Option(None, help="default: local-cpu (local), sagemaker-gpu (sagemaker)")),
    "store": (str | None, typer.Option(None, help="object store: default the embedded one; "
                                                     "s3://bucket/prefix for sagemaker")),
    "region": (str, typer.Option("us-east-1", help="sagemaker: AWS region")),
    "role_arn": (str | None, typer.Option(None, help="sagemaker: the endpoint's execution role")),
    "instance_type": (str, typer.Option("ml.g4dn.xlarge", help="sagemaker: GPU instance type")),
    "instance_count": (int, typer.Option(1, help="sagemaker: initial instance count")),
    "triton_release": (str, typer.Option(str(DEFAULT_RELEASE), help="sagemaker: Triton container YY.MM")),
    "autoscaling_max": (int | None, typer.Option(None, help="sagemaker: enable autoscaling up to N")),
    "autoscaling_min": (int | None, typer.Option(None)),
    "target_invocations": (float, typer.Option(200.0, help="sagemaker: invocations per instance per minute")),
    "dry_run": (bool, typer.Option(False, "--dry-run", help="print every call, make none")),
    "allow_target_mismatch": (bool, typer.Option(
        False, "--allow-target-mismatch",
        help="sagemaker: deploy builds made for another target (e.g. local-cpu) anyway")),
    "load_wait": (float, typer.Option(360.0, help="sagemaker: seconds validation retries "
                                                  "429 ModelNotReadyException per model")),
    "model_cache": (str, typer.Option("enabled", help="sagemaker: the MME's ModelCacheSetting, "
                                                      "enabled or disabled")),
    "env": (list[str], typer.Option(None, "--env", help="sagemaker: container environment "
                                    "KEY=VALUE (repeatable), e.g. SAGEMAKER_TRITON_LOG_VERBOSE=false")),
    "inference_ami": (str | None, typer.Option(
        None, "--inference-ami", help="sagemaker: the variant's InferenceAmiVersion "
                                      "(NVIDIA driver/CUDA of the instances)")),
    "shm_default_bytes": (int | None, typer.Option(None, help="sagemaker: shared memory each Python-backend "
                          "model instance starts with (SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE; default 4 MiB)")),
    "shm_growth_bytes": (int | None, typer.Option(None, help="sagemaker: the step it grows by "
                         "(SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE; default 1 MiB)")),
    "triton_log_verbose": (int | None, typer.Option(None, help="sagemaker: Triton's --log-verbose level "
                           "(SAGEMAKER_TRITON_LOG_VERBOSE; default 0: off; the container's own default "
                           "logs every request)")),
    "tag": (list[str], typer.Option(None, "--tag", help="sagemaker: KEY=VALUE tag on the model, config "
                                    "and endpoint (repeatable)")),
    "warm_invocations": (int, typer.Option(20)),
    "keep_versions": (int, typer.Option(1, min=0, help="previous versions of each ensemble kept for "
                                        "rollback; older ones are deleted once the new one validated")),
    "plan": (Path | None, typer.Option(None, "--plan", help="sagemaker: a plan file from `mme plan`: fills "
                                       "instance type, count, autoscaling and model cache (flags given win)")),
}

# the deploy options a plan file fills (option name -> how to read it from the file)
PLAN_FIELDS: dict[str, Any] = {
    "instance_type": lambda p: p.instance_type, "instance_count": lambda p: p.instance_count,
    "autoscaling_min": lambda p: p.autoscaling.min, "autoscaling_max": lambda p: p.autoscaling.max,
    "target_invocations": lambda p: p.autoscaling.target, "model_cache": lambda p: p.model_cache,
}


def apply_plan(o: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """``o`` with the plan file's values (``--plan``) for the options not given on the command
    line (``explicit``: the names given there win). A bad file fails naming it and the field."""
    if not o.get("plan"):
        return o
    from infra.errors import UserError
    from tasks.planning.planfile import read_plan_file

    try:
        plan = read_plan_file(o["plan"])
    except UserError as e:
        _fail(str(e))
    filled = {name: get(plan) for name, get in PLAN_FIELDS.items() if name not in explicit}
    if plan.region and "region" not in explicit:
        filled["region"] = plan.region
    if plan.shards > 1:
        from flows.cli.common import console

        console.print(f"note: {o['plan']} plans {plan.shards} endpoints: this deploy makes one; deploy "
                      f"variant i to endpoint i mod {plan.shards}", markup=False, highlight=False)
    return o | filled


def _backend_options(o: dict[str, Any]) -> Any:
    """The options object of the chosen backend (None: the backend takes none)."""
    from tasks.deploy.backends import BACKENDS

    if o["backend"] not in BACKENDS:
        _fail(f"--backend {o['backend']!r}: expected {' or '.join(BACKENDS)}")
    return {"sagemaker": _sagemaker_options}.get(o["backend"], lambda o: None)(o)


def _sagemaker_options(o: dict[str, Any]) -> Any:
    """The SageMaker options of ``mme deploy``; a bad one fails naming the option."""
    from pydantic import ValidationError

    from tasks.deploy.backends.sagemaker import SageMakerOptions
    from infra.errors import UserError

    if not o["store"] or not o["store"].startswith("s3://"):
        _fail("--backend sagemaker needs --store s3://bucket/prefix")
    if not o["role_arn"] and not o["dry_run"]:
        _fail("--backend sagemaker needs --role-arn (see `mme iam-policy`)")
    environment = _parse_env(o["env"] or [])
    if o["model_cache"].strip().lower() not in ("enabled", "disabled"):
        _fail(f"--model-cache {o['model_cache']!r}: expected enabled or disabled")
    try:
        options = SageMakerOptions(
            region=o["region"],
            role_arn=o["role_arn"] or "arn:aws:iam::111111111111:role/YOUR-ENDPOINT-ROLE",
            instance_type=o["instance_type"], instance_count=o["instance_count"],
            triton_release=o["triton_release"],
            autoscaling_min=o["autoscaling_min"], autoscaling_max=o["autoscaling_max"],
            target_invocations_per_instance=o["target_invocations"],
            allow_target_mismatch=o["allow_target_mismatch"], load_wait_s=o["load_wait"],
            model_cache=o["model_cache"], environment=environment, inference_ami_version=o["inference_ami"],
            shm_default_bytes=o["shm_default_bytes"], shm_growth_bytes=o["shm_growth_bytes"],
            triton_log_verbose=o["triton_log_verbose"], tags=_parse_tags(o["tag"] or []))
    except (UserError, ValidationError) as e:  # pydantic's refusal of an option too
        from infra.errors import validation_problems

        ami, text = o["inference_ami"], validation_problems(e) if isinstance(e, ValidationError) else str(e)
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
