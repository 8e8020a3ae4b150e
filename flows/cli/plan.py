"""``mme plan`` (the capacity and cost planner, a Prefect flow run) and ``mme profile`` (measure
one ensemble's footprint in a real Triton, GPU memory through NVML where there is a GPU)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.common import JSON_OPTION, _fail, _quiet_env, _run_flow, app, console, emit_json, results
from flows.cli.dry_run import DRY_RUN_OPTION, profile_dry_run
from flows.cli.options import takes_options


@dataclass(frozen=True, kw_only=True)
class PlanOptions:
    """``mme plan``'s options, typed (more than a function's 8 parameters)."""

    fleet: Annotated[str | None, typer.Argument(help="the fleet: its name, file or build folder, "
                                                     "or a directory of build manifests "
                                                     "(*.manifest.json), or one manifest")] = None
    traffic: Annotated[str, typer.Option(help="zipf:S:TOTAL_RPS | csv:PATH | metrics:URL")]
    p99_ms: Annotated[float, typer.Option(help="the p99 latency goal at the peak rate (ms)")]
    max_cold_share: Annotated[float | None, typer.Option(help="most requests that may miss (0..1)")] = None
    region: Annotated[str, typer.Option()] = "us-east-1"
    out: Annotated[Path, typer.Option(help="the plan file (`mme deploy --plan` reads it)")] = Path("plan.yaml")
    peak_factor: Annotated[float, typer.Option(help="diurnal peak-to-mean rate factor")] = 1.0
    variants: Annotated[int | None, typer.Option(help="plan a synthetic fleet of N variants ...")] = None
    footprint_from: Annotated[Path | None, typer.Option(
        help="... each with this manifest's footprint (with a fused FLEET: a variant built "
             "separately, to compare layouts)")] = None
    fused_footprint_from: Annotated[Path | None, typer.Option(
        help="with --variants N: a fused shard's manifest (N tenants in shards of its size)")] = None
    layout: Annotated[str, typer.Option(
        help="separate | fused | auto (auto: the cheaper layout that meets the goal)")] = "auto"
    workers: Annotated[int | None, typer.Option(help="requests one instance serves at once "
                                                     "(default 4 on GPU types, the vCPUs on CPU types)")] = None
    max_instances: Annotated[int | None, typer.Option(
        help="the most instances the plan may use, all shards together (default 256: "
             "DEFAULT_MAX_INSTANCES)")] = None
    instance_types: Annotated[str | None, typer.Option(
        help="the instance types to consider, comma-separated (default: the catalog's types for "
             "the fleet's target)")] = None
    as_json: Annotated[bool, JSON_OPTION] = False


@app.command()
@takes_options(PlanOptions)
def plan(o: PlanOptions) -> None:
    """Find the cheapest endpoint plan that meets --p99-ms at the peak rate; write it to --out."""
    _quiet_env()
    from flows.plan import plan as plan_flow
    from tasks.planning.layouts import LayoutError, as_layout
    from tasks.planning.search import SearchOptions
    from tasks.planning.tasks import FleetSource

    if o.fleet is None and o.variants is None:
        _fail("give FLEET (a manifest directory) or --variants N --footprint-from MANIFEST")
    try:
        layout = as_layout(o.layout)
    except LayoutError as e:
        _fail(str(e))
    if o.p99_ms <= 0 or (o.max_cold_share is not None and not 0 <= o.max_cold_share <= 1):
        _fail(f"--p99-ms {o.p99_ms} must be > 0 and --max-cold-share {o.max_cold_share} within 0..1")
    if o.max_instances is not None and o.max_instances < 1:
        _fail(f"--max-instances {o.max_instances}: must be >= 1")
    types = tuple(t.strip() for t in (o.instance_types or "").split(",") if t.strip()) or None
    search = SearchOptions(workers=o.workers, instance_types=types, layout=layout)
    if o.max_instances is not None:
        search = replace(search, max_instances=o.max_instances)
    source = FleetSource(_fleet_source(o.fleet), o.variants, o.footprint_from,
                         fused_footprint_from=o.fused_footprint_from)
    result = _run_flow(plan_flow, source=source, traffic=o.traffic, p99_ms=o.p99_ms,
                       max_cold_share=o.max_cold_share, region=o.region, out=o.out,
                       peak_factor=o.peak_factor, options=search)
    if o.as_json:
        emit_json(result)
        return
    _print_plan(result, o.p99_ms)


def _fleet_source(fleet: str | None) -> Path | None:
    """``mme plan FLEET``: a manifest or a folder of manifests as given (the planner's own
    sources), else the fleet's build folder, found by :func:`flows.cli.fleet_ref.resolve_fleet`."""
    from flows.cli.fleet_ref import require_build_dir, resolved

    if fleet is None:
        return None
    path = Path(fleet).expanduser()
    if path.is_dir() or path.name.endswith(".json"):
        return path
    return require_build_dir(resolved(fleet))


def _print_plan(result: dict[str, Any], p99_ms: float) -> None:
    from rich.table import Table

    table = Table(title=f"Plans simulated (goal p99 <= {p99_ms:g} ms; * = chosen)", title_justify="left")
    for col in result["rows"][0] if result["rows"] else []:
        table.add_column(str(col))
    for r in result["rows"]:
        table.add_row(*[str(v) for v in r.values()])
    results().print(table)  # the plans side by side: never wrapped when piped
    a = result["autoscaling"]
    print(f"fleet: {result['variants']} variants; {result['stale_manifests_skipped']} stale manifests skipped "
          f"(variants no longer in their fleet index, left on disk until gc)")
    if result.get("footprints"):
        print("footprints used ((e) = estimated, not measured: `mme profile --write` measures one):")
        for line in result["footprints"]:
            print(f"  {line}")
    for line in result.get("layout_lines") or []:
        print(line)
    print(f"chosen: {result['plan']}: USD {result['monthly_usd']:,.0f}/month = "
          f"{result['share_of_baseline']:.1%} of one endpoint per variant (USD {result['baseline_monthly_usd']:,.0f})")
    print(f"autoscaling per endpoint: min {a['min']}, max {a['max']}, target {a['target']} invocations/instance/min")
    print(f"candidates evaluated: {result['candidates_evaluated']} (simulated {result['simulated']})")
    print(result["prices"])
    for name, path in result["charts"].items():
        print(f"chart ({name}): {path}")
    print(f"plan file: {result['plan_file']}")


@app.command()
def profile(target: Path = typer.Argument(..., help="a built tarball (its manifest beside it) or a manifest"),
            max_batch: int = typer.Option(8, help="the batch size of the max-batch service time"),
            write: bool = typer.Option(False, "--write", help="record the footprint in the manifest"),
            dry_run: Annotated[bool, DRY_RUN_OPTION] = False,
            as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Measure an ensemble's footprint in a real Triton (GPU memory by NVML where a GPU is): a
    table, or --json (the footprint document as the manifest records it)."""
    _quiet_env()
    from infra.errors import UserError
    from infra.records.manifest import MANIFEST_SUFFIX, load_manifest
    from tasks.build.footprints import measure_footprint, nvml_used_bytes
    from tasks.build.verify import Sample

    manifest_path = target if target.name.endswith(MANIFEST_SUFFIX) else \
        target.with_name(target.name.removesuffix(".tar.gz") + MANIFEST_SUFFIX)
    try:
        manifest = load_manifest(manifest_path)
        tarball = Path(manifest.artifact) if target.name.endswith(MANIFEST_SUFFIX) else target
        sample = Sample.from_json(manifest.required_sample())
        if dry_run:  # the tarball a measurement would open, checked as it would be
            if not tarball.is_file():
                raise FileNotFoundError(2, "No such file or directory", str(tarball))
            return profile_dry_run(manifest_path, tarball, manifest.ensemble, max_batch, write, as_json)
        fp = measure_footprint(tarball, manifest.ensemble, sample.inputs, max_batch, nvml_used_bytes())
    except FileNotFoundError as e:
        _fail(f"{e.filename}: not found (profile takes a built tarball with its manifest beside it)")
    except UserError as e:
        _fail(str(e))
    console.print("GPU memory: " + ("measured (NVML)" if fp.gpu_memory_bytes.status == "measured"
                                    else f"estimated ({fp.gpu_memory_bytes.formula}): no GPU/NVML here"))
    doc = fp.model_dump(mode="json")
    if as_json:
        emit_json(doc)
    else:
        _print_footprint(doc)
    if write:
        manifest_path.write_text(manifest.model_copy(update={"footprint": fp.model_dump(mode="json")}).to_json())
        console.print(f"footprint recorded in {manifest_path}")


def _print_footprint(doc: dict[str, Any]) -> None:
    """``mme profile`` for people: one row per measure (a nested one flattened, ``a.b``)."""
    from flows.cli.common import _print_table

    def flat(prefix: str, value: Any) -> list[dict[str, str]]:
        if isinstance(value, dict):
            return [row for k, v in value.items() for row in flat(f"{prefix}.{k}" if prefix else k, v)]
        return [{"measure": prefix, "value": json.dumps(value) if isinstance(value, list) else str(value)}]

    _print_table(f"Footprint of {doc.get('ensemble', 'the ensemble')}", flat("", doc))
