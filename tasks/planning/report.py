"""The plan's report: the rows of its tables and the markdown artifact, every number traceable
(footprints measured or estimated, prices and their date, the traffic, the plans side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasks.planning.footprints import FORMULAS, Footprint
from tasks.planning.plan import Evaluated, PlanResult, instance_config, slot_sizes
from tasks.planning.simulate import che_hit_ratio
from tasks.planning.traffic import Traffic


def plan_rows(result: PlanResult, top: int = 6) -> list[dict[str, Any]]:
    """The chosen plan first, then the other simulated plans by cost: predicted figures and cost."""
    rows = sorted(result.simulated, key=lambda e: (e is not result.chosen, e.candidate.hourly_usd))[:top]
    return [_row(e, e is result.chosen) for e in rows]


def _row(e: Evaluated, chosen: bool) -> dict[str, Any]:
    f, c = e.figures or {}, e.candidate
    return {"plan": ("* " if chosen else "") + c.label(), "USD/month": f"{c.monthly_usd:,.0f}",
            "meets goal": "yes" if e.meets else "no", "warm hit": f"{f.get('warm_hit_ratio', 0):.4f}",
            "Che hit (screen)": f"{e.screen['che_hit_ratio']:.4f}", "p50 ms": f"{f.get('p50_ms', 0):.0f}",
            "p99 ms": f"{f.get('p99_ms', 0):.0f}", "loads/h": f"{f.get('loads_per_hour', 0):.0f}",
            "util": f"{f.get('utilisation', 0):.3f}", ">60s": f"{f.get('over_60s_share', 0):.4f}"}


def footprint_rows(footprints: list[Footprint], limit: int = 10) -> list[dict[str, Any]]:
    """Distinct footprints (a synthetic fleet has one), at most ``limit`` rows."""
    seen: dict[str, dict[str, Any]] = {}
    for fp in footprints:
        row = fp.summary()
        key = str({k: v for k, v in row.items() if k != "target_model"})
        seen.setdefault(key, row | {"variants": 0})["variants"] += 1
    return list(seen.values())[:limit]


def hit_curve(result: PlanResult, row: Any, fleet: Any, traffic: Traffic, options: Any) -> list[dict[str, Any]]:
    """Warm-hit ratio vs memory: Che's curve for the chosen type, and the simulated plans of it."""
    c = result.chosen.candidate
    cfg = instance_config(row, 1, "enabled", options)
    usable = min(cfg.gpu_bytes, cfg.host_bytes) * cfg.usable_fraction / 2 ** 30
    sizes = slot_sizes(fleet, cfg)
    idx = np.arange(0, len(traffic.rates), c.shards)
    pts = [{"memory_gib": usable * n, "warm_hit_ratio": che_hit_ratio(traffic.peak_rates[idx], sizes[idx], n),
            "source": "che"} for n in options.counts]
    pts += [{"memory_gib": usable * e.candidate.count, "warm_hit_ratio": (e.figures or {})["warm_hit_ratio"],
             "source": "simulated"} for e in result.simulated
            if e.candidate.instance_type == c.instance_type and e.candidate.model_cache == "enabled"
            and e.candidate.shards == c.shards]
    return pts


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)\n"
    head = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    return head + "".join("| " + " | ".join(str(v) for v in r.values()) + " |\n" for r in rows)


def markdown(result: PlanResult, footprints: list[Footprint], traffic: Traffic, price_line: str,
             charts: dict[str, Path]) -> str:
    """The Prefect artifact: goal, chosen plan, comparisons, inputs and charts."""
    c, b = result.chosen.candidate, result.baseline
    share = c.hourly_usd / b["hourly_usd"] if b["hourly_usd"] else float("nan")
    one = result.one_instance
    one_line = (f"everything on one {one['candidate'].instance_type}: p99 {one['figures']['p99_ms']:.0f} ms, "
                f"warm hit {one['figures']['warm_hit_ratio']:.3f}, USD {one['candidate'].monthly_usd:,.0f}/month"
                if one else "everything on one instance: no single type holds every model")
    a = result.autoscaling
    return "\n".join([
        f"# Plan: {c.label()}, USD {c.monthly_usd:,.0f}/month ({share:.1%} of one endpoint per variant)",
        f"- one endpoint per variant: {b['endpoints']} endpoints, {b['instances']}, USD {b['monthly_usd']:,.0f}/month",
        f"- {one_line}",
        f"- autoscaling per endpoint: min {a['min']}, max {a['max']}, target {a['target']} invocations/instance/min "
        f"({a['formula']}; s = {a['busy_s_per_request'] * 1000:.1f} ms)",
        f"- candidates evaluated: {result.candidates_evaluated} (screened out analytically: {result.screened_out}, "
        f"simulated: {len(result.simulated)})",
        f"- {price_line}",
        f"- traffic: {traffic.source}; mean {traffic.total_rate:.3g} req/s, peak factor {traffic.peak_factor:g}",
        "", "## Plans simulated", _md_table(plan_rows(result)),
        "## Footprints used", _md_table(footprint_rows(footprints)),
        "Estimate formulas: " + "; ".join(f"`{k}`: {v}" for k, v in FORMULAS.items()), "",
        "## Charts", *[f"- {name}: [{p.name}]({p.as_uri()})" for name, p in charts.items()]])
