"""``mme preflight`` and ``mme deploy --backend sagemaker --preflight``: the read-only check of
what a first real deploy needs, one line per need (:mod:`infra.aws.preflight` does the checking;
this module only turns the deploy's options into its inputs and prints the lines).

Why both: ``mme preflight`` takes exactly ``mme deploy``'s options (swap the word to check a
deploy command before running it), and ``--preflight`` on the deploy itself does the same.
"""

from __future__ import annotations

from typing import Any, NoReturn

import typer

from flows.cli.common import _fail, _takes, app
from flows.cli.deploy_options import DEPLOY_OPTIONS, apply_plan

PREFLIGHT_FLAG: dict[str, tuple[Any, Any]] = {
    "preflight": (bool, typer.Option(
        False, "--preflight", help="sagemaker: check, read-only, what a first real deploy needs "
        "(credentials, region, bucket, role, PassRole, quota, image), one line each, and deploy "
        "nothing; exit 0 when ready, 2 naming each problem")),
}

PREFLIGHT_OPTIONS: dict[str, tuple[Any, Any]] = {
    "ctx": (typer.Context, None),  # which options were given: a defaulted --region is a problem
    **DEPLOY_OPTIONS,
    "backend": (str, typer.Option("sagemaker", help="sagemaker (a local deploy needs no AWS)")),
}


@app.command()
@_takes(PREFLIGHT_OPTIONS)
def preflight(**o: Any) -> None:
    """Check, read-only, what a first real SageMaker deploy needs (takes `mme deploy`'s options).

    Makes no create/update/delete call. Exits 0 when ready, 2 naming each problem."""
    run_preflight_command(o)


def run_preflight_command(o: dict[str, Any]) -> NoReturn:
    """Run every pre-flight check for the deploy options ``o`` (with its ``ctx``), print one
    line per check and a summary, and exit with :func:`infra.aws.preflight.exit_code`."""
    from flows.cli.deploy import _explicit_options
    from infra.aws.preflight import PreflightInputs, exit_code, run_preflight, summary

    if o["backend"] != "sagemaker":
        _fail(f"--preflight checks what a SageMaker deploy needs: --backend {o['backend']} needs "
              f"no AWS (give --backend sagemaker)")
    explicit = _explicit_options(o.pop("ctx", None))
    default_region = o["region"]
    # region None going in: whatever comes out was filled by the plan file
    o = apply_plan(o if "region" in explicit else {**o, "region": None}, explicit)
    source = "--region" if "region" in explicit else "the plan file" if o["region"] else None
    inputs = PreflightInputs(
        region=o["region"] or default_region, region_source=source, store=o["store"],
        role_arn=o["role_arn"], instance_type=o["instance_type"], triton_release=o["triton_release"],
        instance_count=o["instance_count"], autoscaling_max=o["autoscaling_max"])
    checks = run_preflight(inputs)
    for check in checks:
        print(check.line())
    print(summary(checks))
    raise typer.Exit(exit_code(checks))


FLEET_PREFLIGHT_FLAG: dict[str, tuple[Any, Any]] = {
    "preflight": (bool, typer.Option(
        False, "--preflight", help="sagemaker: check, read-only, what this fleet deploy needs "
        "(region, credentials, each endpoint, its store and bucket), one line each, and deploy "
        "nothing; exit 0 when ready, 2 naming each problem")),
}


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
