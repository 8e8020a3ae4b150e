"""``mme rollback``: an ensemble back to the version it replaced (the ``rollback`` flow,
:mod:`flows.rollback`; the dry run reads the record and the store without a flow run)."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.common import JSON_OPTION, _quiet_env, _run_flow, app, emit_json, exit_for, say
from flows.cli.dry_run import DRY_RUN_OPTION, show_plan


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
    from tasks.deploy.rollback import check_kept_object, plan_rollback

    try:  # refused at once, before a flow run starts (the flow checks again under the lock)
        plan = plan_rollback(endpoint, ensemble)
        check_kept_object(plan)
    except Exception as e:
        exit_for(e)
    if dry_run:
        lines = [f"would roll {ensemble} on {endpoint} back: {plan.current.target_model} -> "
                 f"{plan.back.target_model} (object {plan.back.uri}, there with its sha256)",
                 "would invoke it first" if not no_invoke else "would not invoke it (--no-invoke)",
                 "would point the endpoint record and the store's ledger to it"]
        return show_plan(plan.to_json(), lines, "would roll back 1 ensemble", as_json)
    from flows.rollback import rollback as rollback_flow

    doc = _run_flow(rollback_flow, ensemble=ensemble, endpoint=endpoint, invoke=not no_invoke, url=url)
    if as_json:
        return emit_json(doc)
    say(f"rolled {ensemble} on {endpoint} back: TargetModel {doc['to']} (was {doc['from']}, now kept)")
    answered = doc["answered"]
    say("not invoked (--no-invoke)" if answered is None else
        "answered like the sample request expects: " + ", ".join(f"{k} {v}" for k, v in answered.items()))
    say(doc["ledger"])
