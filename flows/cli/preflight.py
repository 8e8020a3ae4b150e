"""``mme preflight`` and ``mme deploy --backend sagemaker --preflight``: the read-only check of
what a first real deploy needs, one line per need (:mod:`infra.aws.preflight` does the checking;
this module only turns the deploy's options into its inputs and prints the lines).

Why both: ``mme preflight`` takes exactly ``mme deploy``'s options (swap the word to check a
deploy command before running it), and ``--preflight`` on the deploy itself does the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, NoReturn

import typer

from flows.cli.common import _fail, app
from flows.cli.deploy_options import DeployOptions, fill_from_plan, read_plan
from flows.cli.options import takes_options

#: ``--preflight`` on ``mme deploy``: the same checks as ``mme preflight``, then exit
PREFLIGHT_OPTION = typer.Option(
    "--preflight", help="sagemaker: check, read-only, what a first real deploy needs "
    "(credentials, region, bucket, role, PassRole, quota, image), one line each, and deploy "
    "nothing; exit 0 when ready, 2 naming each problem")


@dataclass(frozen=True, kw_only=True)
class PreflightOptions(DeployOptions):
    """``mme deploy``'s options, where a local deploy needs no pre-flight: the backend
    defaults to sagemaker (the field keeps its place among the deploy options)."""

    backend: Annotated[str, typer.Option(help="sagemaker (a local deploy needs no AWS)")] = "sagemaker"


@app.command()
@takes_options(PreflightOptions)
def preflight(o: PreflightOptions) -> None:
    """Check, read-only, what a first real SageMaker deploy needs (takes `mme deploy`'s options).

    Makes no create/update/delete call. Exits 0 when ready, 2 naming each problem."""
    run_preflight_command(o)


def run_preflight_command(o: DeployOptions) -> NoReturn:
    """Run every pre-flight check for the deploy options ``o`` (the plan file's values filled
    in), print one line per check and a summary, and exit with
    :func:`infra.aws.preflight.exit_code`."""
    from infra.aws.preflight import PreflightInputs, exit_code, run_preflight, summary

    if o.backend != "sagemaker":
        _fail(f"--preflight checks what a SageMaker deploy needs: --backend {o.backend} needs "
              f"no AWS (give --backend sagemaker)")
    plan = read_plan(o)  # a defaulted --region is a problem, a plan file's is not
    source = ("--region" if "region" in o.given else
              "the plan file" if plan is not None and plan.region else None)
    o = fill_from_plan(o, plan, o.given)
    inputs = PreflightInputs(
        region=o.region, region_source=source, store=o.store,
        role_arn=o.role_arn, instance_type=o.instance_type, triton_release=o.triton_release,
        instance_count=o.instance_count, autoscaling_max=o.autoscaling_max)
    checks = run_preflight(inputs)
    for check in checks:
        print(check.line())
    print(summary(checks))
    raise typer.Exit(exit_code(checks))


#: ``--preflight`` on ``mme fleet deploy``
FLEET_PREFLIGHT_OPTION = typer.Option(
    "--preflight", help="sagemaker: check, read-only, what this fleet deploy needs "
    "(region, credentials, each endpoint, its store and bucket), one line each, and deploy "
    "nothing; exit 0 when ready, 2 naming each problem")


def run_fleet_preflight(backend: str, endpoints: list[str], store: str | None, region: str | None) -> NoReturn:
    """``mme fleet deploy --backend sagemaker --preflight``: print
    :func:`tasks.fleet.endpoints.fleet_preflight`'s lines and a summary, exit 0 or 2."""
    from infra.aws.preflight import exit_code, summary
    from tasks.fleet.endpoints import fleet_preflight

    if backend != "sagemaker":
        _fail(f"--preflight checks what a SageMaker fleet deploy needs: --backend {backend} needs "
              f"no AWS (give --backend sagemaker)")
    checks = fleet_preflight(endpoints, store, region)
    for check in checks:
        print(check.line())
    print(summary(checks))
    raise typer.Exit(exit_code(checks))
