"""Separate vs fused, planned on measured footprints: ``mme plan``'s layout comparison for
1,000 example tenants (Zipf(1.1) at 20 requests/s in all, p99 <= 1 s by default).

    python bench/fused_plan.py                 # 1,000 tenants, one shard of 1,000

Builds the example fleet fused through the real ``fleet-build`` flow (``bench/fused_fleet.py``'s
build: the shard's footprint is measured on the shard in the Triton that verifies it and recorded
in its manifest), and a separate fleet of 3 example tenants (its canary's footprint, measured the
same way, recorded in every variant's manifest); then plans ``--variants N`` with the separate
manifest's footprint and the shard manifest's (what ``mme plan --variants N --footprint-from SEP
--fused-footprint-from SHARD`` does, without Prefect's temporary server) and writes both plans'
cost to ``bench/results/fused_plan.json`` with the footprints they used and the host's load
average. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _separate(root: Path, count: int) -> Path:
    """A separately built example fleet of ``count`` tenants; returns one variant's manifest."""
    from flows.fleet_build import fleet_build
    from tasks.fleet.example import make_example_fleet

    make_example_fleet(count, (root / "models").as_uri(), seed=0, fleet_file=root / "fleet.yaml")
    shutil.rmtree(root / "build", ignore_errors=True)
    fleet_build(str(root / "fleet.yaml"), output_dir=str(root / "build"), triton_sample=1)
    return sorted((root / "build").glob("tenant-*.manifest.json"))[0]


def _figures(manifest: Path) -> dict[str, Any]:
    from infra.records.manifest import load_manifest
    from tasks.build.footprints import from_manifest

    fp = from_manifest(load_manifest(manifest))
    return {"host_memory_mib": round(fp.host_memory_bytes.value / 2**20, 1),
            "host_memory": fp.host_memory_bytes.status, "basis": fp.host_memory_bytes.basis,
            "load_disk_s": round(fp.load_disk_s.value, 3), "unload_s": round(fp.unload_s.value, 3),
            "service_batch1_ms": round(fp.service_batch1_s.value * 1e3, 1),
            "measured_on": fp.source.measured_on if fp.source else None,
            "tenants": (load_manifest(manifest).fleet or {}).get("tenants")}


def _plan(count: int, sep: Path, shard: Path, traffic: str, p99_ms: float) -> dict[str, Any]:
    from tasks.planning.catalog import load_catalog, select_types
    from tasks.planning.layouts import plan_layouts, synthetic_layouts
    from tasks.planning.search import Goal, SearchOptions
    from tasks.planning.traffic import parse_spec

    fleet = synthetic_layouts(count, sep, shard, None)
    rates = parse_spec(traffic, fleet.variants)
    types, _ = select_types(load_catalog(), "us-east-1", False, None)
    t0 = time.perf_counter()
    got = plan_layouts(types, fleet, rates, Goal(p99_ms), "us-east-1", SearchOptions())
    took = time.perf_counter() - t0
    costs = {k: round(v, 2) if v is not None else None for k, v in got.costs.items()}
    chosen = got.result.chosen
    return {"layout": got.layout, "monthly_usd": costs, "lines": got.lines,
            "chosen": chosen.candidate.label(), "predicted": chosen.figures,
            "separate_over_fused": (round(costs["separate"] / costs["fused"], 1)
                                    if costs.get("separate") and costs.get("fused") else None),
            "baseline_monthly_usd": round(got.result.baseline.monthly_usd, 2), "search_s": round(took, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--traffic", default="zipf:1.1:20")
    ap.add_argument("--p99-ms", type=float, default=1000.0)
    ap.add_argument("--root", default="", help="work folder (default: a folder under MME_HOME)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "fused_plan.json"))
    args = ap.parse_args()
    from bench.fused_fleet import _build
    from infra.paths import work_dir

    root = Path(args.root) if args.root else work_dir() / f"bench-fused-plan-{args.count}"
    shutil.rmtree(root / "fused" / "build", ignore_errors=True)
    (root / "fused").mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    out, _, _, build_s = _build(args.count, args.shard_size, root / "fused")
    shard = sorted(out.glob("*-shard-000.manifest.json"))[0]
    sep = _separate(root / "separate", 3)
    doc = {"count": args.count, "shard_size": args.shard_size, "traffic": args.traffic, "p99_ms": args.p99_ms,
           "fused_build_s": round(build_s, 1), "footprints": {"fused shard": _figures(shard),
                                                               "separate variant": _figures(sep)},
           "plan": _plan(args.count, sep, shard, args.traffic, args.p99_ms), "cpus": os.cpu_count(),
           "load_average_before": [round(x, 2) for x in load_before],
           "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    text = json.dumps(doc, indent=1, default=str).replace(str(root), "ROOT")  # no local paths
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
