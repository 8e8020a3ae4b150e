"""``mme fleet deploy``: a built fleet on endpoints (flows/fleet_deploy.py). Registered on
``fleet_app`` after ``show``, ``example`` and ``build``; ``routes``, ``retire`` and ``gc`` are in
:mod:`flows.cli.fleet_retire`, ``verify`` in :mod:`flows.cli.fleet_verify`, the dry run in
:mod:`flows.cli.fleet_dry_run`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.common import JSON_OPTION, _fail, _quiet_env, _run_flow, emit_json, say
from flows.cli.fleet import _exit_for, fleet_app
from flows.cli.fleet_ref import resolved
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

    fleet: Annotated[str, typer.Argument(help="the fleet: its name, file or build folder (its "
                                               "latest build is deployed)")]
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
    json_body: Annotated[bool, typer.Option("--json-body", help="validate with KServe v2 JSON "
                                            "bodies, not binary+json (runtimes that take only "
                                            "text, e.g. moto's InvokeEndpoint)")] = False
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the jobs it would publish, "
                                          "validate and route (and the variants leaving); "
                                          "change nothing")] = False
    as_json: Annotated[bool, JSON_OPTION] = False


@fleet_app.command("deploy")
@takes_options(FleetDeployOptions)
def deploy(o: FleetDeployOptions) -> None:
    """Publish the new and changed variants under versioned names, validate them, route them."""
    from flows.fleet_deploy import fleet_deploy
    from tasks.fleet.deploy import DeployPolicy

    backend = checked_backend(o.backend)
    endpoints = _endpoints(o.endpoint, o.endpoints, o.plan)
    if o.preflight:
        run_fleet_preflight(backend, endpoints, o.store, o.region)
    _quiet_env()
    ref = resolved(o.fleet)
    build_dir = str(o.build_dir) if o.build_dir else (
        str(ref.build_dir) if ref.build_dir and ref.file is None else None)
    policy = DeployPolicy(grace_s=o.grace, keep_versions=o.keep_versions, canary=o.canary,
                          concurrency=o.concurrency, region=o.region, verify=o.verify,
                          keep_loaded=o.keep_loaded, json_body=o.json_body)
    if o.dry_run:
        from flows.cli.fleet_dry_run import deploy_dry_run

        deploy_dry_run(ref.source, endpoints, backend, o.store, build_dir, policy, o.as_json)
        return
    got = _run_flow(fleet_deploy, fleet=ref.source, endpoints=endpoints, backend=backend,
                    store_uri=o.store, policy=policy, build_dir=build_dir)
    if o.as_json:
        emit_json(got)
        return
    say(f"fleet {got['fleet']}: {len(got['published'])} published, "
        f"{len(got['validated'])} validated ({len(got['canaries'])} canaries), "
        f"{got['unchanged']} unchanged, {len(got['retiring'])} marked retiring, "
        f"{len(got['unretired'])} un-retired, "
        f"{len(got['removed'])} removed, {len(got['deleted'])} objects deleted; "
        f"{got['routed']} routed -> {got['routes']}")
    if got.get("held"):
        held = got["held"]
        say(f"{len(held)} variant(s) failed their last build and stay on the version they are "
            f"routed by (not retired): {', '.join(held[:10])}{' ...' if len(held) > 10 else ''}")
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
    say(f"{len(got['unretired'])} retiring variant(s) un-retired: they are in build "
        f"{build.get('id')} ({build.get('index')}) again; remove them from the fleet "
        f"file and rebuild to retire them for good")
    for name, u in got["unretired"].items():
        say(f"  un-retired {name}: sha256 {u['sha256'][:12]}, manifest {u['manifest']}")
