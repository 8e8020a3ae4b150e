"""The planner's pictures (matplotlib, Agg: no display needed): cost vs predicted p99 for the
plans simulated (the chosen one marked, the one-endpoint-per-variant baseline as a line), and
warm-hit ratio vs memory per instance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cost_vs_p99(points: list[dict[str, Any]], baseline_monthly: float, goal_ms: float, path: Path) -> Path:
    """``points``: {label, monthly_usd, p99_ms, chosen}. Log-scaled axes: costs span decades."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, p in enumerate(points):
        ax.scatter(p["p99_ms"], p["monthly_usd"], marker="*" if p.get("chosen") else "o",
                   s=160 if p.get("chosen") else 30, color="tab:red" if p.get("chosen") else "tab:blue",
                   zorder=3)
        # every plan is labelled (the chosen one larger); offsets alternate so neighbours that
        # share a cost (the same instance count) do not print over each other
        ax.annotate(f"chosen: {p['label']}" if p.get("chosen") else p["label"],
                    (p["p99_ms"], p["monthly_usd"]), fontsize=8 if p.get("chosen") else 5,
                    xytext=(5, 5 if p.get("chosen") or i % 2 else -8), textcoords="offset points",
                    color="black" if p.get("chosen") else "dimgray")
    ax.axhline(baseline_monthly, color="tab:gray", linestyle="--", label="one endpoint per variant")
    ax.axvline(goal_ms, color="tab:green", linestyle=":", label="p99 goal")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted p99 latency (ms)")
    ax.set_ylabel("cost (USD / month, 730 h)")
    ax.set_title("Plans simulated: cost vs predicted p99")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class HitPoint:
    """One point of the warm-hit vs memory chart: usable model memory per endpoint (GiB, all
    its instances), the warm-hit ratio there, and where it came from (Che's approximation or a
    simulated plan)."""

    memory_gib: float
    warm_hit_ratio: float
    source: Literal["che", "simulated"]


def hit_vs_memory(points: list[HitPoint], path: Path) -> Path:
    """One line per source (``simulated`` and ``che``: the screen's approximation beside what
    the simulation gave)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for source in sorted({p.source for p in points}):
        pts = sorted((p for p in points if p.source == source), key=lambda p: p.memory_gib)
        ax.plot([p.memory_gib for p in pts], [p.warm_hit_ratio for p in pts],
                marker="o" if source == "simulated" else None,
                linestyle="none" if source == "simulated" else "-", label=source)
    ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("usable model memory per endpoint (GiB, all its instances)")
    ax.set_ylabel("warm-hit ratio")
    ax.set_ylim(0, 1.02)
    ax.set_title("Warm-hit ratio vs memory")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
