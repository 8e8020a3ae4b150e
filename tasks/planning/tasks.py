"""Prefect tasks wrapping the planner's pure functions (the flow in ``flows/plan.py`` composes
them); each is thin: the work and its tests live in the modules beside this one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from tasks.planning import charts, report
from tasks.planning.catalog import load_catalog, price_age_line, select_types
from tasks.build.footprints import Footprint
from tasks.planning.layouts import LayoutPlan, PlanFleet, plan_layouts, read_fleet
from tasks.planning.search import Goal, PlanRefused, PlanResult, ScalingAdvice, SearchOptions, fleet_arrays, plan_file
from tasks.planning.planfile import write_plan_file
from tasks.planning.traffic import Traffic, parse_spec


# No result caching for these tasks: their inputs (10,000 footprints, the plan) are cheap to
# recompute but slow to hash for a cache key (seconds per task at 10,000 variants).


@dataclass(frozen=True)
class FleetSource:
    """Where the fleet comes from: a manifest directory, or N copies of one manifest; for
    comparing layouts, a separately built variant's manifest (``footprint_from``, with a fused
    build folder) and a fused shard's (``fused_footprint_from``, with ``variants``)."""

    path: Path | None = None
    variants: int | None = None
    footprint_from: Path | None = None
    gpu: bool | None = None
    fused_footprint_from: Path | None = None


@task(name="plan-fleet", cache_policy=NO_CACHE)
def fleet_task(source: FleetSource) -> PlanFleet:
    """The variants, every layout they can be planned as (footprints per model, which model
    serves each variant) and how many stale manifests (of variants no longer in their fleet's
    index) were skipped."""
    return read_fleet(source.path, source.variants, source.footprint_from, source.fused_footprint_from,
                      source.gpu)


@task(name="plan-traffic", cache_policy=NO_CACHE)
def traffic_task(spec: str, variants: list[str], peak_factor: float, seed: int) -> Traffic:
    return parse_spec(spec, variants, seed).with_peak(peak_factor)


@task(name="plan-search", cache_policy=NO_CACHE)
def search_task(fleet: PlanFleet, traffic: Traffic, goal: Goal, region: str,
                options: SearchOptions) -> tuple[LayoutPlan, str]:
    """The plan (of the layout chosen, :func:`tasks.planning.layouts.plan_layouts`), and the
    line saying which prices (and how old) it used."""
    catalog = load_catalog()
    footprints = [fp for m in fleet.layouts.values() for fp in m.footprints]
    needs_gpu = any(fp.gpu_memory_bytes.value > 0 for fp in footprints)
    types, skipped = select_types(catalog, region, needs_gpu, options.instance_types)
    try:
        chosen = plan_layouts(types, fleet, traffic, goal, region, options)
    except PlanRefused as e:  # a refusal made on estimated footprints must say so where it is read
        notes = report.estimate_lines(footprints)
        raise PlanRefused("\n".join([str(e), *(["footprints used:"] + notes if notes else [])])) from None
    chosen.result.notes.extend(skipped)
    return chosen, price_age_line(catalog, region)


@task(name="plan-charts", cache_policy=NO_CACHE)
def charts_task(result: PlanResult, footprints: list[Footprint], traffic: Traffic, goal: Goal,
                options: SearchOptions, out: Path) -> dict[str, Path]:
    """The plan's two charts beside its plan file ``out``, named after it
    (``<stem>-cost-vs-p99.png``, ``<stem>-hit-vs-memory.png``): two plans in one folder keep
    their own pictures."""
    out_dir, stem = out.parent, out.stem
    points = [{"label": e.candidate.label(), "monthly_usd": e.candidate.monthly_usd,
               "p99_ms": max((e.figures or {}).get("p99_ms", 0.0), 1e-3), "chosen": e is result.chosen}
              for e in result.simulated]
    row = load_catalog().get(result.chosen.candidate.instance_type)
    curve = report.hit_curve(result, row, fleet_arrays(footprints), traffic, options)
    return {"cost vs p99": charts.cost_vs_p99(points, result.baseline.monthly_usd, goal.p99_ms,
                                              out_dir / f"{stem}-cost-vs-p99.png"),
            "warm-hit vs memory": charts.hit_vs_memory(curve, out_dir / f"{stem}-hit-vs-memory.png")}


@task(name="plan-write", cache_policy=NO_CACHE)
def write_task(result: PlanResult, out: Path, layout: str = "separate") -> Path:
    return write_plan_file(plan_file(result, load_catalog().prices_checked.isoformat(), layout), out)


class PlanSummary(BaseModel):
    """What the flow returns (and the CLI prints): small and JSON-able. ``model_dump()`` is the
    document it always was (same keys, same order; ``autoscaling`` a plain object), with the
    layout's fields after them."""

    model_config = ConfigDict(frozen=True)

    plan: str
    instance_type: str
    instance_count: int
    shards: int
    model_cache: str
    monthly_usd: float
    baseline_monthly_usd: float
    share_of_baseline: float
    predicted: dict[str, float] | None
    autoscaling: ScalingAdvice
    candidates_evaluated: int
    simulated: int
    rows: list[dict[str, str]]
    notes: list[str]
    layout: str = "separate"
    layout_monthly_usd: dict[str, float | None] = {}
    layout_lines: list[str] = []


def summary(result: PlanResult, chosen: LayoutPlan | None = None) -> PlanSummary:
    """The chosen plan, its cost beside the one-endpoint-per-variant baseline, its figures and
    autoscaling, the table of the plans simulated, and the layout chosen and why."""
    c = result.chosen.candidate
    return PlanSummary(plan=c.label(), instance_type=c.instance_type, instance_count=c.count, shards=c.shards,
                       model_cache=c.model_cache, monthly_usd=c.monthly_usd,
                       baseline_monthly_usd=result.baseline.monthly_usd,
                       share_of_baseline=c.hourly_usd / result.baseline.hourly_usd,
                       predicted=result.chosen.figures, autoscaling=result.autoscaling,
                       candidates_evaluated=result.candidates_evaluated, simulated=len(result.simulated),
                       rows=report.plan_rows(result), notes=result.notes,
                       layout=chosen.layout if chosen else "separate",
                       layout_monthly_usd={str(k): v for k, v in chosen.costs.items()} if chosen else {},
                       layout_lines=chosen.lines if chosen else [])
