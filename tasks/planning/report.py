"""The plan's report: the rows of its tables and the markdown artifact, every number traceable
(footprints measured or estimated, prices and their date, the traffic, the plans side by side)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tasks.build.footprints import FORMULAS, MIB, Footprint, estimate_footprint
from tasks.planning.catalog import InstanceType
from tasks.planning.charts import HitPoint
from tasks.planning.search import Evaluated, PlanResult, SearchOptions, instance_config, slot_sizes
from tasks.planning.simulate import FleetArrays
from tasks.planning.cache_model import che_hit_ratio
from tasks.planning.traffic import Traffic


def plan_rows(result: PlanResult, top: int = 6) -> list[dict[str, str]]:
    """The chosen plan first, then the other simulated plans by cost: predicted figures and cost."""
    rows = sorted(result.simulated, key=lambda e: (e is not result.chosen, e.candidate.hourly_usd))[:top]
    return [_row(e, e is result.chosen) for e in rows]


def _row(e: Evaluated, chosen: bool) -> dict[str, str]:
    f, c = e.figures or {}, e.candidate
    return {"plan": ("* " if chosen else "") + c.label(), "USD/month": f"{c.monthly_usd:,.0f}",
            "meets goal": "yes" if e.meets else "no", "warm hit": f"{f.get('warm_hit_ratio', 0):.4f}",
            "Che hit (screen)": f"{e.screen['che_hit_ratio']:.4f}", "p50 ms": f"{f.get('p50_ms', 0):.0f}",
            "p99 ms": f"{f.get('p99_ms', 0):.0f}", "loads/h": f"{f.get('loads_per_hour', 0):.0f}",
            "util": f"{f.get('utilisation', 0):.3f}", ">60s": f"{f.get('over_60s_share', 0):.4f}"}


def footprint_rows(footprints: list[Footprint], limit: int = 10) -> list[dict[str, str | int]]:
    """Distinct footprints (a synthetic fleet has one), at most ``limit`` rows: a footprint's
    cells and how many ``variants`` have it (table rows, for the markdown artifact)."""
    seen: dict[str, dict[str, str]] = {}
    count: dict[str, int] = {}
    for fp in footprints:
        row = fp.summary().cells()
        key = str({k: v for k, v in row.items() if k != "target_model"})
        seen.setdefault(key, row)
        count[key] = count.get(key, 0) + 1
    return [{**row, "variants": count[key]} for key, row in list(seen.items())[:limit]]


def hit_curve(result: PlanResult, row: InstanceType, fleet: FleetArrays, traffic: Traffic,
              options: SearchOptions) -> list[HitPoint]:
    """Warm-hit ratio vs memory: Che's curve for the chosen type, and the simulated plans of it."""
    c = result.chosen.candidate
    cfg = instance_config(row, 1, "enabled", options)
    usable = min(cfg.gpu_bytes, cfg.host_bytes) * cfg.usable_fraction / 2 ** 30
    sizes = slot_sizes(fleet, cfg)
    idx = np.arange(0, len(traffic.rates), c.shards)
    pts = [HitPoint(memory_gib=usable * n, source="che",
                    warm_hit_ratio=che_hit_ratio(traffic.peak_rates[idx], sizes[idx], n)) for n in options.counts]
    pts += [HitPoint(memory_gib=usable * e.candidate.count, source="simulated",
                     warm_hit_ratio=(e.figures or {})["warm_hit_ratio"]) for e in result.simulated
            if e.candidate.instance_type == c.instance_type and e.candidate.model_cache == "enabled"
            and e.candidate.shards == c.shards]
    return pts


def _md_table(rows: Sequence[Mapping[str, object]]) -> str:
    if not rows:
        return "(none)\n"
    head = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    return head + "".join("| " + " | ".join(str(v) for v in r.values()) + " |\n" for r in rows)


def markdown(result: PlanResult, footprints: list[Footprint], traffic: Traffic, price_line: str,
             charts: dict[str, Path], layout_lines: Sequence[str] = ()) -> str:
    """The Prefect artifact: goal, chosen plan, comparisons (the layouts too), inputs and charts."""
    c, b = result.chosen.candidate, result.baseline
    share = c.hourly_usd / b.hourly_usd if b.hourly_usd else float("nan")
    one = result.one_instance
    one_line = (f"everything on one {one.candidate.instance_type}: p99 {one.figures['p99_ms']:.0f} ms, "
                f"warm hit {one.figures['warm_hit_ratio']:.3f}, USD {one.candidate.monthly_usd:,.0f}/month"
                if one else "everything on one instance: no single type holds every model")
    a = result.autoscaling
    return "\n".join([
        f"# Plan: {c.label()}, USD {c.monthly_usd:,.0f}/month ({share:.1%} of one endpoint per variant)",
        f"- one endpoint per variant: {b.endpoints} endpoints, {b.instances}, USD {b.monthly_usd:,.0f}/month",
        f"- {one_line}",
        f"- autoscaling per endpoint: min {a.min}, max {a.max}, target {a.target} invocations/instance/min "
        f"({a.formula}; s = {a.busy_s_per_request * 1000:.1f} ms)",
        f"- candidates evaluated: {result.candidates_evaluated} (screened out analytically: {result.screened_out}, "
        f"simulated: {len(result.simulated)})",
        f"- {price_line}",
        f"- traffic: {traffic.source}; mean {traffic.total_rate:.3g} req/s, peak factor {traffic.peak_factor:g}",
        *(["", "## Layout", *[f"- {line.strip()}" for line in layout_lines]] if layout_lines else []),
        "", "## Plans simulated", _md_table(plan_rows(result)),
        "## Footprints used", _md_table(footprint_rows(footprints)),
        *[f"- {line}" for line in estimate_lines(footprints)], "",
        "Estimate formulas: " + "; ".join(f"`{k}`: {v}" for k, v in FORMULAS.items()), "",
        "## Charts", *[f"- {name}: [{p.name}]({p.as_uri()})" for name, p in charts.items()]])


# The figures the terminal says are estimated or measured: field, label, scale, unit.
_SHOWN = (("host_memory_bytes", "host memory", MIB, "MiB"), ("gpu_memory_bytes", "GPU memory", MIB, "MiB"),
          ("load_disk_s", "load from disk", 1.0, "s"), ("service_batch1_s", "service at batch 1", 1e-3, "ms"))


def _template(fp: Footprint) -> str:
    """The template a variant was made from (inputs.py tags it), else its own name."""
    return str((fp.model_extra or {}).get("template") or fp.target_model.removesuffix(".tar.gz"))


def _fmt(value: float, scale: float, unit: str) -> str:
    return f"{value / scale:,.3g} {unit}"


def estimate_lines(footprints: list[Footprint], templates: int = 5) -> list[str]:
    """What the terminal says about the footprints the plan used, per template: which figures
    are estimated (and from what), and where a variant of the template was measured, how far
    the estimate was off -- an estimate 3x low makes a plan 3x too small, so it must be seen
    where the plan is read, not only in the Prefect artifact. The first ``templates`` templates
    are described (a folder of unrelated ensembles would otherwise print a line per ensemble)."""
    groups: dict[str, list[Footprint]] = {}
    for fp in footprints:
        groups.setdefault(_template(fp), []).append(fp)
    lines = []
    for name, fps in list(groups.items())[:templates]:
        gpu = any(fp.gpu_memory_bytes.value > 0 for fp in fps)
        for key, label, scale, unit in _SHOWN:
            if key == "gpu_memory_bytes" and not gpu:
                continue
            lines.extend(_figure_lines(name, fps, key, label, (scale, unit), gpu))
    if len(groups) > templates:
        lines.append(f"... and {len(groups) - templates} more templates (the markdown artifact lists the footprints)")
    return lines


def _figure_lines(name: str, fps: list[Footprint], key: str, label: str, shown: tuple[float, str],
                  gpu: bool) -> list[str]:
    """One template's lines for one figure: the estimate and its basis (when some variants
    have it estimated), and the estimate against a measurement (when one variant has one)."""
    est = [fp for fp in fps if getattr(fp, key).status == "estimated"]
    measured = next((fp for fp in fps if getattr(fp, key).status == "measured"), None)
    out = []
    if est:
        fig = getattr(est[0], key)
        value = float(np.mean([getattr(fp, key).value for fp in est]))
        basis = FORMULAS.get(fig.formula or "", fig.formula or "?")
        out.append(f"(e) {name}: {label} estimated {_fmt(value, *shown)} per variant for {len(est)} of "
                   f"{len(fps)} variants; basis: {basis} ({fig.where or 'no input named'})")
    if measured is not None:
        m = getattr(measured, key)
        guess = (value if est else
                 getattr(estimate_footprint(measured.target_model, int(measured.tarball_bytes.value), gpu=gpu),
                         key).value)
        ratio = m.value / guess if guess else float("inf")
        verdict = (f"estimate was {ratio:.1f}x low" if ratio >= 1.05 else
                   f"estimate was {1 / ratio:.1f}x high" if ratio <= 1 / 1.05 else "estimate was within 5%")
        basis = getattr(m, "basis", None)  # memory: pss / uss / rss (old records: an overcount)
        out.append(f"{name}: {label} estimated {_fmt(guess, *shown)} per variant, measured {_fmt(m.value, *shown)}"
                   f"{f' ({basis})' if basis else ''} "
                   f"on {measured.target_model.removesuffix('.tar.gz')} ({m.where or 'measured'}"
                   f"{', ' + m.hardware if m.hardware else ''}): {verdict}")
    return out
