"""``mme fleet routes | retire | rollback | gc``: a fleet's routing table, retiring its variants,
routing them back (:mod:`tasks.fleet.rollback`), and collecting what nothing references
(flows/fleet_retire.py). Registered on ``fleet_app`` after ``deploy``
(:mod:`flows.cli.fleet_deploy`), before ``verify``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import typer

from flows.cli.common import (JSON_OPTION, _fail, _print_table, _quiet_env, _run_flow, emit_json,
                              exit_for, say)
from flows.cli.fleet import fleet_app
from flows.cli.fleet_ref import fleet_name
from flows.cli.options import takes_options

FLEET_ARGUMENT = typer.Argument(help="the fleet: its name, file or build folder")
STORE_OPTION = typer.Option(help="default: the embedded store")


@fleet_app.command("routes")
def routes(fleet: Annotated[str, FLEET_ARGUMENT], store: Annotated[str | None, STORE_OPTION] = None,
           as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Print the fleet's routing table (a table; --json: the table document as stored); a fleet
    with none is refused (exit 2)."""
    from infra import paths
    from tasks.fleet.routes import require_routes

    name = fleet_name(fleet)
    try:
        table = require_routes(store or paths.store_uri(), name)
    except Exception as e:
        exit_for(e)
    if as_json:
        emit_json(table.model_dump(mode="json", exclude_none=True))
        return
    _print_table(f"Fleet {table.fleet}: {len(table.variants)} routed variant(s)",
                 [{"variant": v, "endpoint": r.endpoint, "TargetModel": r.target_model,
                   "tenant": "-" if r.tenant is None else r.tenant, "since": r.since,
                   "kept": len(r.previous), "retiring since": r.retiring_since or "-"}
                  for v, r in sorted(table.variants.items())])
    if not table.variants:
        say(f"fleet {table.fleet}: no routed variant")


@dataclass(frozen=True, kw_only=True)
class FleetRetireOptions:
    """``mme fleet retire``'s options, typed (more than a function's 8 parameters)."""

    fleet: Annotated[str, FLEET_ARGUMENT]
    variant: Annotated[list[str] | None, typer.Option(help="retire these variants (repeatable)")] = None
    shard: Annotated[str | None, typer.Option(help="retire every variant on this endpoint (to "
                                                   "move them instead, deploy without it)")] = None
    everything: Annotated[bool, typer.Option("--all", help="retire the whole fleet (required when "
                                                           "no --variant or --shard)")] = False
    now: Annotated[bool, typer.Option("--now", help="remove at once (no grace period)")] = False
    grace: Annotated[float, typer.Option(min=0, help="seconds a retiring variant is kept")] = 3600.0
    store: Annotated[str | None, STORE_OPTION] = None
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what it would mark, remove and "
                                          "delete; change nothing")] = False
    as_json: Annotated[bool, JSON_OPTION] = False


@fleet_app.command("retire")
@takes_options(FleetRetireOptions)
def retire(o: FleetRetireOptions) -> None:
    """Mark variants retiring (removed after the grace period), or remove them --now."""
    from flows.fleet_retire import fleet_retire

    if sum((bool(o.variant), o.shard is not None, o.everything)) > 1:
        _fail("give one of --variant, --shard or --all")
    name = fleet_name(o.fleet)
    if not (o.variant or o.shard or o.everything):
        _refuse_whole_fleet(name, o.store, o.now, o.grace)
    if o.dry_run:
        from flows.cli.fleet_dry_run import retire_plan

        try:
            got = retire_plan(name, o.variant or [], o.shard, o.everything, o.now, o.grace, o.store)
        except Exception as e:
            exit_for(e)
    else:
        _quiet_env()
        got = _run_flow(fleet_retire, fleet=name, variants=o.variant or None, shard=o.shard,
                        now=o.now, grace_s=o.grace, store_uri=o.store, all_variants=o.everything)
    if o.as_json:
        emit_json(got)
        return
    would = "would be " if o.dry_run else ""
    say(f"fleet {got['fleet']}: {len(got['marked'])} {would}marked retiring, {len(got['removed'])} "
        f"{would}removed, {len(got['deleted'])} objects {would}deleted; {got['routed']} "
        f"{'would stay' if o.dry_run else 'still'} routed" + (" (dry run)" if o.dry_run else ""))


def _refuse_whole_fleet(fleet: str, store: str | None, now: bool, grace: float) -> NoReturn:
    """A retire that names no variant or shard would take the whole fleet: say what it would do
    (one line, exit 2) and how to confirm it."""
    from infra import paths
    from tasks.fleet.routes import require_routes

    try:
        count = len(require_routes(store or paths.store_uri(), fleet).variants)
    except Exception as e:
        exit_for(e)
    what = "remove at once" if now else f"mark retiring (removed after {grace:g} s)"
    _fail(f"fleet {fleet}: no --variant or --shard: this would {what} all {count} routed "
          f"variants of the fleet; give --all to confirm (`mme fleet retire {fleet} --all"
          f"{' --now' if now else ''}`)")


@fleet_app.command("rollback")
def rollback(fleet: Annotated[str, FLEET_ARGUMENT],
             variant: Annotated[list[str], typer.Option(help="route this variant back (repeatable)")],
             store: Annotated[str | None, STORE_OPTION] = None,
             dry_run: Annotated[bool, typer.Option("--dry-run", help="check and print the way back; "
                                                   "change nothing")] = False,
             as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Route variants back to the version each replaced (kept in the table and the store):
    all of them or, when one cannot go back, none."""
    from datetime import UTC, datetime

    from flows.fleet_retire import fleet_rollback
    from infra import paths
    from tasks.fleet.rollback import rollback_fleet

    name, store_uri = fleet_name(fleet), store or paths.store_uri()
    try:  # every check, at once and without a flow run (the flow checks again under the locks)
        got: dict[str, Any] = rollback_fleet(store_uri, name, variant, datetime.now(UTC),
                                             dry_run=True).to_json()
    except Exception as e:
        exit_for(e)
    if not dry_run:
        _quiet_env()
        got = _run_flow(fleet_rollback, fleet=name, variants=variant, store_uri=store_uri)
    if as_json:
        emit_json(got)
        return
    would = "would route" if dry_run else "routed"
    for v in got["variants"]:
        back = v["to"]
        tenant = "" if back["tenant"] is None else f" (tenant {back['tenant']})"
        say(f"{v['variant']}: {would} back to {back['target_model']} on {back['endpoint']}{tenant}, "
            f"from {v['from']['target_model']}")
    say(f"fleet {got['fleet']}: {len(got['variants'])} variant(s) {would} back"
        + ("; nothing changed (dry run)" if dry_run else f" ({got['table']})"))


@fleet_app.command("gc")
def gc(dry_run: bool = typer.Option(False, "--dry-run", help="list, delete nothing"),
       store: Annotated[str | None, STORE_OPTION] = None, as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Delete model objects and local fleet artifacts that nothing references."""
    from flows.fleet_retire import fleet_gc

    _quiet_env()
    got = _run_flow(fleet_gc, store_uri=store, dry_run=dry_run)
    if as_json:
        emit_json({**got, "dry_run": dry_run})
        return
    verb = "would delete" if dry_run else "deleted"
    for uri in got["objects"]:
        say(f"{verb} {uri}")
    for path in got["files"]:
        say(f"{verb} {path}")
    say(f"{verb}: {len(got['objects'])} store objects, {len(got['files'])} local files")
