"""``mme fleet deploy | routes | retire | gc``: a built fleet on endpoints (flows/fleet_deploy.py,
flows/fleet_retire.py). Registered on ``fleet_app`` beside ``show``, ``example`` and ``build``;
``verify`` is in :mod:`flows.cli.fleet_verify`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape

from flows.cli.common import _fail, _quiet_env, _run_flow, console
from flows.cli.fleet import _exit_for, fleet_app
from flows.cli.options import checked_backend, takes_options
from flows.cli.preflight import FLEET_PREFLIGHT_OPTION, run_fleet_preflight


def _endpoints(endpoint: str | None, endpoints: str | None, plan: Path | None = None) -> list[str]:
    """``--endpoint E`` or ``--endpoints E1,E2`` (one of them) as a list. With ``--plan`` (a
    capacity plan, ``mme plan --out``) of N shards, ``--endpoint E`` means E-1 ... E-N, and
    ``--endpoints`` must name N endpoints."""
    if bool(endpoint) == bool(endpoints):
        _fail("give --endpoint E or --endpoints E1,E2,... (one of them)")
    names = [endpoint] if endpoint else [e.strip() for e in (endpoints or "").split(",")]
    if not all(names):
        _fail(f"--endpoints {endpoints!r}: an empty endpoint name")
    if plan is None:
        return [n for n in names if n]
    from tasks.planning.planfile import read_plan_file

    try:
        shards = read_plan_file(plan).shards
    except Exception as e:
        _exit_for(e)
    if endpoint and shards > 1:
        return [f"{endpoint}-{i}" for i in range(1, shards + 1)]
    if len(names) != shards:
        _fail(f"--plan {plan} has {shards} shard(s) but --endpoints names {len(names)}")
    return [n for n in names if n]


@dataclass(frozen=True, kw_only=True)
class FleetDeployOptions:
    """``mme fleet deploy``'s options, typed (more than a function's 8 parameters)."""

    fleet: Annotated[str, typer.Argument(help="the fleet's name or file (its latest build is deployed)")]
    endpoint: Annotated[str | None, typer.Option(help="one endpoint")] = None
    endpoints: Annotated[str | None, typer.Option(help="several endpoints (shards): E1,E2,...")] = None
    plan: Annotated[Path | None, typer.Option(help="a capacity plan (mme plan --out): its shard "
                                                   "count; --endpoint E then means E-1 ... E-N")] = None
    backend: Annotated[str, typer.Option(help="local | sagemaker (an existing MME: read with "
                                              "describe calls, never changed)")] = "local"
    store: Annotated[str | None, typer.Option(help="default: the embedded store; sagemaker: the "
                                                   "store of the endpoint's ModelDataUrl (another is refused)")] = None
    region: Annotated[str | None, typer.Option(help="SageMaker region (default: AWS_REGION, "
                                                    "AWS_DEFAULT_REGION or the AWS profile's; required)")] = None
    build_dir: Annotated[Path | None, typer.Option(
        help="default: $MME_HOME/artifacts/<target>/fleets/<fleet>")] = None
    grace: Annotated[float, typer.Option(min=0, help="seconds before a variant that left the "
                                                     "fleet is removed")] = 3600.0
    keep_versions: Annotated[int, typer.Option(min=0, help="previous versions kept per variant")] = 1
    canary: Annotated[int, typer.Option(min=0, help="unchanged variants invoked as canaries")] = 0
    concurrency: Annotated[int, typer.Option(min=1, help="validation invokes in flight")] = 8
    keep_loaded: Annotated[int | None, typer.Option(min=0, help="local endpoint: validated variants "
                                                                "left loaded (default: --concurrency)")] = None
    verify: Annotated[bool, typer.Option("--verify", help="first check every routed object in the "
                                                          "store; re-publish missing or corrupt "
                                                          "ones from the build and validate them")] = False
    preflight: Annotated[bool, FLEET_PREFLIGHT_OPTION] = False


@fleet_app.command("deploy")
@takes_options(FleetDeployOptions)
def deploy(o: FleetDeployOptions) -> None:
    """Publish the new and changed variants under versioned names, validate them, route them."""
    from flows.fleet_deploy import fleet_deploy
    from tasks.fleet.deploy import DeployPolicy

    backend = checked_backend(o.backend)
    if o.preflight:
        run_fleet_preflight(backend, _endpoints(o.endpoint, o.endpoints, o.plan), o.store, o.region)
    _quiet_env()
    policy = DeployPolicy(grace_s=o.grace, keep_versions=o.keep_versions, canary=o.canary,
                          concurrency=o.concurrency, region=o.region, verify=o.verify,
                          keep_loaded=o.keep_loaded)
    got = _run_flow(fleet_deploy, fleet=o.fleet, endpoints=_endpoints(o.endpoint, o.endpoints, o.plan),
                    backend=backend, store_uri=o.store, policy=policy,
                    build_dir=str(o.build_dir) if o.build_dir else None)
    console.print(f"fleet {got['fleet']}: {len(got['published'])} published, "
                  f"{len(got['validated'])} validated ({len(got['canaries'])} canaries), "
                  f"{got['unchanged']} unchanged, {len(got['retiring'])} marked retiring, "
                  f"{len(got['unretired'])} un-retired, "
                  f"{len(got['removed'])} removed, {len(got['deleted'])} objects deleted; "
                  f"{got['routed']} routed -> {got['routes']}", highlight=False)
    _print_unretired(got)
    if got.get("verify"):
        from flows.cli.fleet_verify import print_findings

        print_findings(got["verify"])


def _print_unretired(got: dict[str, Any]) -> None:
    """Say which retiring variants the deploy brought back, and by which build (it is the
    desired state: a variant still in it is routed again)."""
    if not got["unretired"]:
        return
    build = got.get("build") or {}
    console.print(f"{len(got['unretired'])} retiring variant(s) un-retired: they are in build "
                  f"{build.get('id')} ({build.get('index')}) again; remove them from the fleet "
                  f"file and rebuild to retire them for good", highlight=False, soft_wrap=True)
    for name, u in got["unretired"].items():
        console.print(f"  un-retired {name}: sha256 {u['sha256'][:12]}, manifest {u['manifest']}",
                      highlight=False, soft_wrap=True)


@fleet_app.command("routes")
def routes(fleet: str = typer.Argument(..., help="the fleet's name"),
           store: str | None = typer.Option(None, help="default: the embedded store")) -> None:
    """Print the fleet's routing table (JSON); a fleet with none is refused (exit 2)."""
    from infra import paths
    from tasks.fleet.routes import require_routes

    try:
        table = require_routes(store or paths.store_uri(), fleet)
    except Exception as e:
        _exit_for(e)
    print(json.dumps(table.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True))


@fleet_app.command("retire")
def retire(fleet: str = typer.Argument(..., help="the fleet's name"),
           variant: list[str] = typer.Option(None, help="retire these variants (repeatable)"),
           shard: str | None = typer.Option(None, help="retire every variant on this endpoint "
                                                       "(to move them instead, deploy without it)"),
           everything: bool = typer.Option(False, "--all", help="retire the whole fleet (required "
                                                                "when no --variant or --shard)"),
           now: bool = typer.Option(False, "--now", help="remove at once (no grace period)"),
           grace: float = typer.Option(3600.0, min=0, help="seconds a retiring variant is kept"),
           store: str | None = typer.Option(None, help="default: the embedded store")) -> None:
    """Mark variants retiring (removed after the grace period), or remove them --now."""
    from flows.fleet_retire import fleet_retire

    if sum((bool(variant), shard is not None, everything)) > 1:
        _fail("give one of --variant, --shard or --all")
    if not (variant or shard or everything):
        _refuse_whole_fleet(fleet, store, now, grace)
    _quiet_env()
    got = _run_flow(fleet_retire, fleet=fleet, variants=variant or None, shard=shard, now=now,
                    grace_s=grace, store_uri=store, all_variants=everything)
    console.print(f"fleet {got['fleet']}: {len(got['marked'])} marked retiring, "
                  f"{len(got['removed'])} removed, {len(got['deleted'])} objects deleted; "
                  f"{got['routed']} still routed", highlight=False)


def _refuse_whole_fleet(fleet: str, store: str | None, now: bool, grace: float) -> None:
    """A retire that names no variant or shard would take the whole fleet: say what it would do
    (one line, exit 2) and how to confirm it."""
    from infra import paths
    from tasks.fleet.routes import require_routes

    try:
        count = len(require_routes(store or paths.store_uri(), fleet).variants)
    except Exception as e:
        _exit_for(e)
    what = "remove at once" if now else f"mark retiring (removed after {grace:g} s)"
    _fail_line(f"fleet {fleet}: no --variant or --shard: this would {what} all {count} routed "
               f"variants of the fleet; give --all to confirm (`mme fleet retire {fleet} --all"
               f"{' --now' if now else ''}`)")


def _fail_line(message: str) -> NoReturn:
    """``error: message`` on one line however narrow the terminal, exit 2."""
    console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False,
                  soft_wrap=True)
    raise typer.Exit(2)


@fleet_app.command("gc")
def gc(dry_run: bool = typer.Option(False, "--dry-run", help="list, delete nothing"),
       store: str | None = typer.Option(None, help="default: the embedded store")) -> None:
    """Delete model objects and local fleet artifacts that nothing references."""
    from flows.fleet_retire import fleet_gc

    _quiet_env()
    got = _run_flow(fleet_gc, store_uri=store, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    for uri in got["objects"]:
        console.print(f"{verb} {uri}", highlight=False, soft_wrap=True)
    for path in got["files"]:
        console.print(f"{verb} {path}", highlight=False, soft_wrap=True)
    console.print(f"{verb}: {len(got['objects'])} store objects, {len(got['files'])} local files",
                  highlight=False)
