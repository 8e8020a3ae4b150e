"""``mme rollback``: an ensemble back to the version it replaced (:mod:`tasks.deploy.rollback`).

No flow run: nothing is uploaded or built, only two small documents change (the endpoint
record and the store's ledger), after a read of the kept object and one invoke."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from flows.cli.common import JSON_OPTION, _fail, _quiet_env, app, emit_json, exit_for, say
from flows.cli.dry_run import DRY_RUN_OPTION, show_plan

if TYPE_CHECKING:  # the CLI starts without numpy or the build modules
    from tasks.deploy.rollback import Invoke, RollbackPlan


@app.command()
def rollback(ensemble: Annotated[str, typer.Argument(help="the ensemble to roll back")],
             endpoint: Annotated[str, typer.Option()] = "local-mme",
             url: Annotated[str | None, typer.Option(help="local: default the running endpoint")] = None,
             no_invoke: Annotated[bool, typer.Option(
                 "--no-invoke", help="switch without invoking the kept version first (an endpoint "
                                     "not running, a build not here)")] = False,
             dry_run: Annotated[bool, DRY_RUN_OPTION] = False,
             as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Point an ensemble back to the version it replaced (kept in the store): check its object
    and that the endpoint answers it, then switch the endpoint record and the store's ledger."""
    _quiet_env()
    from tasks.deploy.rollback import (apply_rollback, check_kept_answers, check_kept_object,
                                       plan_rollback, sample_manifest)

    from flows.common import endpoint_lock

    try:
        if dry_run:
            plan = plan_rollback(endpoint, ensemble)
            check_kept_object(plan)
            lines = [f"would roll {ensemble} on {endpoint} back: {plan.current.target_model} -> "
                     f"{plan.back.target_model} (object {plan.back.uri}, there with its sha256)",
                     "would invoke it first" if not no_invoke else "would not invoke it (--no-invoke)",
                     "would point the endpoint record and the store's ledger to it"]
            return show_plan(plan.to_json(), lines, "would roll back 1 ensemble", as_json)
        with endpoint_lock(endpoint):  # no deploy or retire of the endpoint meanwhile
            plan = plan_rollback(endpoint, ensemble)
            check_kept_object(plan)
            shapes = None if no_invoke else check_kept_answers(plan, sample_manifest(plan),
                                                               _invoker(plan, url))
            new, ledger_line = apply_rollback(plan)
    except Exception as e:
        exit_for(e)
    if as_json:
        return emit_json({"dry_run": False, **plan.to_json(), "answered": shapes, "ledger": ledger_line})
    say(f"rolled {ensemble} on {endpoint} back: TargetModel {new.target_model} (was "
        f"{plan.current.target_model}, now kept)")
    say("not invoked (--no-invoke)" if shapes is None else
        "answered like the sample request expects: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))
    say(ledger_line)


def _invoker(plan: RollbackPlan, url: str | None) -> Invoke:
    """Invoke by TargetModel on the plan's endpoint, waiting out 429 while it loads (the
    deploy's own retry): the local endpoint at ``url`` (default: the running one), or
    SageMaker's runtime in the record's region."""
    from infra.aws.clients import aws_clients
    from infra.endpoint.process import find_running
    from tasks.deploy.validate import invoke_when_ready

    if plan.backend == "local" and url is None:
        info = find_running(plan.endpoint)
        if info is None:
            _fail(f"endpoint {plan.endpoint!r} is not running: start it (mme endpoint start) to "
                  f"check the kept version, or switch without the check (--no-invoke)")
        url = info.url
    client = aws_clients(plan.region or "us-east-1", runtime_url=url).runtime
    return lambda manifest, inputs: invoke_when_ready(client, plan.endpoint, manifest, inputs)[0]
