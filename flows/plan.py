"""The ``plan`` flow: the cheapest endpoint fleet meeting a latency goal (issue 12), for the
fleet's layout or, where it can be planned both ways, the cheaper of separate and fused (issue 20).

Composes the planner's tasks (tasks/planning/tasks.py): read the fleet's footprints (per layout),
the traffic, search + simulate (each layout asked for), draw the charts, write the plan file; the
report is published as a markdown artifact (layout chosen and why, footprints, prices and their
date, traffic, top plans, baseline, chart links) and a table artifact (the plans side by side).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.planning import report
from tasks.planning.search import Goal, SearchOptions
from tasks.planning.tasks import (FleetSource, charts_task, fleet_task, search_task, summary, traffic_task,
                                  write_task)


def fleet_build_source(fleet: str) -> FleetSource:
    """A fleet name's (or fleet file's) latest build: its folder under the artifacts dir, where
    ``fleet-build`` writes it and ``fleet-deploy`` reads it."""
    from ensembles.fleet_spec import load_fleet
    from tasks.fleet.build import fleet_build_dir

    return FleetSource(path=fleet_build_dir(load_fleet(fleet)))


@flow(name="plan")
def plan(source: FleetSource | str, traffic: str, p99_ms: float, max_cold_share: float | None = None,
         region: str = "us-east-1", out: Path | None = None, peak_factor: float = 1.0,
         options: SearchOptions | None = None) -> dict[str, Any]:
    """Plan the cheapest endpoint fleet that serves a fleet's traffic within a latency goal.

    Offline: prices come from the bundled catalog (the report says how old), no AWS call.

    Args:
        source (FleetSource | str): A fleet name or fleet file (its latest build, e.g. tenants-example), or
            {path: <build folder>} / {variants: N, ...} (see FleetSource).
        traffic (str): zipf:S:RPS (Zipf exponent, requests per second), csv:PATH or metrics:URL.
        p99_ms (float): The latency goal: 99th percentile in milliseconds.
        max_cold_share (float | None): The largest share of requests allowed to meet a cold
            model (none: no limit).
        region (str): The AWS region whose prices are used.
        out (Path | None): Where the plan file goes (default: plan.yaml in the build folder for a fleet name,
            else in the current folder).
        peak_factor (float): Multiply the traffic's rate by this (plan for the peak, not the mean).
        options (SearchOptions | None): Search options: layouts, instance types, simulation sizes, seed.
    """
    if isinstance(source, str):
        source = fleet_build_source(source)
        out = out or (source.path / "plan.yaml" if source.path else None)
    options = options or SearchOptions()
    goal = Goal(p99_ms, max_cold_share)
    fleet = fleet_task(source)
    rates = traffic_task(traffic, fleet.variants, peak_factor, options.seed)
    chosen, price_line = search_task(fleet, rates, goal, region, options)
    result, footprints = chosen.result, chosen.models.footprints
    out = Path(out or "plan.yaml")
    chart_paths = charts_task(result, footprints, chosen.traffic, goal, options, out.resolve())
    written = write_task(result, out, chosen.layout)
    create_markdown_artifact(key="capacity-plan", markdown=report.markdown(
        result, footprints, chosen.traffic, price_line, chart_paths, chosen.lines))
    create_table_artifact(key="capacity-plan-table", table=report.plan_rows(result))
    return summary(result, chosen).model_dump() | {
        "variants": len(fleet.variants), "stale_manifests_skipped": fleet.stale,
        "footprints": report.estimate_lines(footprints), "plan_file": str(written), "prices": price_line,
        "charts": {k: str(v) for k, v in chart_paths.items()}}
