"""The capacity planner's simulator checked against the real local endpoint (issue 12).

Usage:
    python bench/planner_check.py --dir FLEET_DIR [--budgets 0.02,0.05,0.2] [--requests 600]
        [--clients 4] [--limit N] [--profile 3] [--profile-each] [--seed 0] [--zipf 1.1]
    python bench/planner_check.py --again RESULT.json     # predict a run's records again

``FLEET_DIR`` holds a built fleet (``<variant>.tar.gz`` + ``<variant>.manifest.json`` with its
validation sample); ``--limit N`` uses its first N variants.

1. *Footprints on this machine*: ``measure_footprint`` (a real Triton) of ``--profile``
   variants: load cold (extract + load) and from the disk cache, unload, service at batch 1,
   host memory; the medians configure the simulator; ``measure_load_concurrency``: what a load
   (an unload) takes alone and with others at once, and how much they spread. With
   ``--profile-each``, measured again before each budget (a shared host's load moves).
2. *Measured*: per budget (a fraction of the N variants: the endpoint's loaded-model budget), a
   fresh local endpoint over a store holding the fleet's tarballs receives the same seeded
   Zipf sequence from ``--clients`` threads (``bench/fleet_traffic.py``'s sender). Per request:
   variant, arrival (when the endpoint admitted it), latency at the client, warm or cold -- the
   endpoint's own admission decision (loaded when the request came), captured in-process.
3. *Predicted*: the simulator replays that sequence in the order the endpoint saw it, as this
   endpoint: one instance; capacity = the budget (the budget counts models, so each model
   weighs 1); load slots = its ``max_concurrent_loads``; workers = this machine's cores (Triton
   runs requests for different models at once, and these CPU-bound ensembles share the cores:
   the planner's rule for CPU instance types); the measured times; the same closed loop of
   clients, so simulated arrivals follow simulated answers as the real ones followed real ones.
4. Warm-hit ratio, p50 and p99 (all requests), measured vs predicted, per budget; the targets
   are 3 points (warm-hit) and 30% (p99). JSON to ``bench/results/planner_check.json`` and one
   chart (``planner_check.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fleet_traffic, beside this file

from fleet_traffic import (  # noqa: E402
    HITS,
    Sender,
    Variant,
    note_hit,
    read_fleet,
    request_id,
    run_phase,
    zipf_sequence,
)

from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint  # noqa: E402
from infra.endpoint.app import Admission  # noqa: E402
from infra.endpoint.state import spare_slots  # noqa: E402
from tasks.planning.simulate import FleetArrays, InstanceConfig, SimResult, simulate_closed_loop  # noqa: E402
from tasks.runtime.hardware import hardware  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_HIT_POINTS = 3.0
TARGET_P99_SHARE = 0.30
ARRIVALS: dict[str, float] = {}


@dataclass
class Record:
    """One request as the endpoint saw it."""

    target: str
    arrival_s: float  # since the run's start
    latency_ms: float  # at the client
    warm: bool  # the endpoint found the model loaded when the request came
    status: int


# ---------------------------------------------------------------------------------- footprints
FIGURES = ("load_cold_s", "load_disk_s", "unload_s", "service_batch1_s", "service_max_batch_s",
           "host_memory_bytes", "unpacked_bytes", "tarball_bytes")


def profile(folder: Path, names: list[str], concurrent: int, max_batch: int = 8) -> dict[str, Any]:
    """Each variant's footprint measured in a real Triton, the medians of each figure, and the
    seconds a load and an unload take when 1 .. ``concurrent`` run at once."""
    from infra.records.manifest import load_manifest
    from tasks.build.footprints import measure_footprint, measure_load_concurrency
    from tasks.build.verify import Sample

    load_before = os.getloadavg()[0]
    per: dict[str, dict[str, float]] = {}
    for name in names:
        m = load_manifest(folder / f"{name}.manifest.json")
        sample = Sample.from_json(m.required_sample())
        fp = measure_footprint(folder / f"{name}.tar.gz", m.ensemble, sample.inputs, max_batch)
        per[name] = {k: float(getattr(fp, k).value) for k in FIGURES}
    median = {k: float(np.median([p[k] for p in per.values()])) for k in FIGURES}
    tarballs = [folder / f"{names[i % len(names)]}.tar.gz" for i in range(concurrent)]
    conc = measure_load_concurrency(tarballs).model_dump(mode="json")
    return {"variants": per, "median": median, "status": "measured", "load_concurrency": conc,
            "host_load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "where": "bench/planner_check.py: measure_footprint (a real Triton, one model at a time)",
            "hardware": hardware(with_node=False)}


def fleet_arrays(n: int, fp: dict[str, float]) -> FleetArrays:
    """``n`` variants of footprint ``fp`` (the medians). Each weighs 1 in memory: the local
    endpoint's budget counts models, not bytes. The first load of a variant extracts it from the
    store (cold); later ones load from the disk cache."""
    full = lambda x: np.full(n, float(x))  # noqa: E731
    return FleetArrays(gpu_bytes=full(0.0), host_bytes=full(1.0), disk_bytes=full(fp["unpacked_bytes"]),
                       load_disk_s=full(fp["load_disk_s"]),
                       download_s=full(max(0.0, fp["load_cold_s"] - fp["load_disk_s"])),
                       unload_s=full(fp["unload_s"]), service_s=full(fp["service_batch1_s"]))


def instance_config(cfg: EndpointConfig, workers: int, conc: dict[str, Any] | None = None) -> InstanceConfig:
    """The simulator's instance, read from the endpoint's settings; ``conc`` (measured load and
    unload seconds with 1, 2 ... at once) gives the slowdown of overlapping loads."""
    slow = lambda xs: tuple(x / xs[0] for x in xs) if xs else ()  # noqa: E731
    if cfg.max_loaded_models is None:
        raise ValueError("the check needs an endpoint with a loaded-model budget (max_loaded_models)")
    return InstanceConfig(count=1, gpu_bytes=float("inf"), host_bytes=float(cfg.max_loaded_models),
                          disk_bytes=float(cfg.disk_cache_bytes), workers=workers,
                          cache_enabled=cfg.model_cache_enabled, usable_fraction=1.0,
                          load_slots=cfg.max_concurrent_loads,
                          load_slowdown=slow((conc or {}).get("load_s", [])),
                          unload_slowdown=slow((conc or {}).get("unload_s", [])),
                          load_cv=float((conc or {}).get("load_cv", 0.0)),
                          unload_cv=float((conc or {}).get("unload_cv", 0.0)),
                          spare_slots=spare_slots(cfg), recency=cfg.recency)


def replay(records: list[Record], targets: list[str], fp: dict[str, float], cfg: EndpointConfig,
           clients: int, workers: int, conc: dict[str, Any] | None = None) -> SimResult:
    """The simulator's run of ``records`` in the order the endpoint saw them (``records`` must
    be in that order: the result's per-request arrays follow it)."""
    index = {t: i for i, t in enumerate(targets)}
    ids = np.array([index[r.target] for r in records], dtype=np.int64)
    return simulate_closed_loop(ids, fleet_arrays(len(targets), fp), instance_config(cfg, workers, conc), clients)


def compare(records: list[Record], sim: SimResult) -> dict[str, Any]:
    """Measured vs predicted warm-hit ratio, p50, p99 (ms); within the issue's targets?"""
    lat = np.array([r.latency_ms for r in records])
    measured = {"warm_hit_ratio": float(np.mean([r.warm for r in records])),
                "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}
    fig = sim.figures()
    predicted = {k: float(fig[k]) for k in measured}
    hit_pts = 100 * (predicted["warm_hit_ratio"] - measured["warm_hit_ratio"])
    p99_share = predicted["p99_ms"] / measured["p99_ms"] - 1
    warm = sim.warm if sim.warm is not None else np.zeros(0, dtype=bool)
    return {"measured": measured, "predicted": predicted,
            "warm_hit_diff_points": round(hit_pts, 2), "p99_diff_share": round(p99_share, 3),
            "p50_diff_share": round(predicted["p50_ms"] / measured["p50_ms"] - 1, 3),
            "same_decision_share": float(np.mean(warm == np.array([r.warm for r in records]))),
            "within_targets": abs(hit_pts) <= TARGET_HIT_POINTS and abs(p99_share) <= TARGET_P99_SHARE}


# ---------------------------------------------------------------------------------- the endpoint
def note_admission(admission: Admission) -> None:
    """``LocalEndpoint(on_admission=...)``: note when the endpoint admits each request (under
    the id the sender put in a header), and fleet_traffic's note of its warm/cold decision."""
    ARRIVALS[request_id(admission)] = admission.started
    note_hit(admission)


def send_one_at_a_time(ep: LocalEndpoint, sender: Sender, sequence: list[str]) -> list[Record]:
    """Each request after the last is answered; warm/cold from the endpoint's per-model
    counters (its ``hits`` grew by one: it was warm), which needs no hook in the endpoint."""
    records, t0 = [], time.perf_counter()
    for i, target in enumerate(sequence):
        m = ep.manager.models.get(target)
        hits = m.hits if m else 0
        arrival = time.perf_counter() - t0
        r = sender.send(f"seq-{i}", target)
        records.append(Record(target, arrival, r.ms, ep.manager.models[target].hits > hits, r.status))
    return records


def send_concurrently(ep: LocalEndpoint, sender: Sender, sequence: list[str], clients: int) -> list[Record]:
    """``clients`` threads take the sequence's requests in turn (fleet_traffic's run phase);
    records in the order the endpoint admitted them."""
    t0 = time.perf_counter()
    results = run_phase(ep, sender, sequence, clients)
    return sorted((Record(r.target, ARRIVALS.get(r.rid, t0) - t0, r.ms, bool(HITS.get(r.rid)), r.status)
                   for r in results), key=lambda rec: rec.arrival_s)


def endpoint_run(variants: list[Variant], prefix: Path, cache: Path, budget: int, sequence: list[str],
                 clients: int, spare: int | None = None) -> tuple[list[Record], EndpointConfig, dict[str, Any]]:
    """A fresh endpoint (default settings, loaded-model budget ``budget``) over ``prefix``: the
    records, its settings, and its own load/unload metrics for the run."""
    cfg = EndpointConfig(name="planner-check", model_data_url=prefix.as_uri(), cache_dir=cache,
                         max_loaded_models=budget, spare_slots=spare)
    with LocalEndpoint(cfg, on_admission=note_admission) as ep:
        sender = Sender(ep.url, cfg.name, {v.target: v for v in variants})
        records = (send_one_at_a_time(ep, sender, sequence) if clients == 1
                   else send_concurrently(ep, sender, sequence, clients))
        m = ep.manager.report().model_dump()
        # the spare room the endpoint ended the run with (derived: sized by the loads and
        # unloads it timed), resolved into the settings the simulator replays with
        cfg.spare_slots = spare_slots(cfg, *ep.manager.metrics.load_unload_s())
    endpoint = {k: m.get(k) for k in ("TritonLoadCalls", "TritonUnloadCalls", "MemoryEvictions",
                                      "PeakLoadedModelCount", "ModelLoadingTime", "ModelUnloadingTime")}
    return records, cfg, endpoint


# ---------------------------------------------------------------------------------- the check
def measure_budget(variants: list[Variant], prefix: Path, fraction: float, sequence: list[str],
                   clients: int, spare: int | None = None) -> dict[str, Any]:
    """One budget on a fresh endpoint: its settings, metrics and every request's record."""
    budget = max(1, round(fraction * len(variants)))
    with tempfile.TemporaryDirectory(prefix="planner-check-cache-") as cache:
        t0 = time.perf_counter()
        load_before = os.getloadavg()[0]
        records, cfg, endpoint = endpoint_run(variants, prefix, Path(cache), budget, sequence, clients,
                                              spare)
        seconds = time.perf_counter() - t0
    return {"fleet_variants": len(variants), "budget_fraction": fraction, "budget_models": budget,
            "requests": len(records), "errors": sum(r.status != 200 for r in records),
            "run_seconds": round(seconds, 1), "clients": clients,
            # the host's 1-minute load average before and after (other work on a shared host)
            "host_load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "endpoint_settings": {"max_loaded_models": cfg.max_loaded_models,
                                  "max_concurrent_loads": cfg.max_concurrent_loads,
                                  "spare_slots": spare_slots(cfg),
                                  "recency": cfg.recency,
                                  "disk_cache_bytes": cfg.disk_cache_bytes,
                                  "model_cache_enabled": cfg.model_cache_enabled},
            "endpoint_metrics": endpoint, "records": [asdict(r) for r in records]}


def predict(row: dict[str, Any], targets: list[str], fp: dict[str, Any], workers: int) -> dict[str, Any]:
    """The simulator's figures for a measured budget, compared; also without the measured
    slowdown of overlapping loads (each load at its alone time), to show what that costs."""
    records = [Record(**r) for r in row["records"] if r["status"] == 200]
    s = row["endpoint_settings"]
    cfg = EndpointConfig(name="planner-check", model_data_url="file:///", cache_dir=Path("."),
                         max_loaded_models=s["max_loaded_models"], max_concurrent_loads=s["max_concurrent_loads"],
                         disk_cache_bytes=s["disk_cache_bytes"], model_cache_enabled=s["model_cache_enabled"],
                         spare_slots=s.get("spare_slots", 0),  # runs recorded before it had none
                         # runs recorded before the setting ranked a miss by its load's end
                         recency=s.get("recency", "served"))
    fp = row.get("footprint", fp)  # measured just before this budget's run (--profile-each)
    sim = replay(records, targets, fp["median"], cfg, row["clients"], workers, fp.get("load_concurrency"))
    alone = replay(records, targets, fp["median"], cfg, row["clients"], workers)
    conc = fp.get("load_concurrency") or {}
    fixed = replay(records, targets, fp["median"], cfg, row["clients"], workers,
                   {k: v for k, v in conc.items() if k not in ("load_cv", "unload_cv")})
    # a diagnosis, not a prediction: the endpoint's own mean load and unload times in this run
    # (overlaps included) in place of the profiled ones: what is left is the model's structure
    m = row["endpoint_metrics"]
    own = {**fp["median"], "load_disk_s": m["ModelLoadingTime"]["avg"] / 1000,
           "unload_s": m["ModelUnloadingTime"]["avg"] / 1000}
    diag = replay(records, targets, own, cfg, row["clients"], workers)
    keep = ("predicted", "warm_hit_diff_points", "p99_diff_share", "p50_diff_share")
    return {**compare(records, sim), "predicted_run_seconds": round(float(sim.duration_s), 1),
            "without_load_slowdown": {k: v for k, v in compare(records, alone).items() if k in keep},
            "without_spread": {k: v for k, v in compare(records, fixed).items() if k in keep},
            "with_the_endpoints_own_load_times": {k: v for k, v in compare(records, diag).items() if k in keep}}


def chart(rows: list[dict[str, Any]], path: Path) -> Path:
    """Warm-hit ratio and p99 vs budget, measured and predicted, on one figure (two axes)."""
    from tasks.planning.charts import _pyplot

    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    x = [100 * r["budget_fraction"] for r in rows]
    for key, ax, label in (("warm_hit_ratio", a1, "warm-hit ratio"), ("p99_ms", a2, "p99 latency (ms)")):
        ax.plot(x, [r["measured"][key] for r in rows], marker="o", label="measured (local endpoint)")
        ax.plot(x, [r["predicted"][key] for r in rows], marker="x", linestyle="--", label="predicted (simulator)")
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:g}%" for v in x])
        ax.tick_params(axis="x", which="minor", labelbottom=False)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("loaded-model budget (share of the fleet)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    a1.set_ylim(0, 1.02)
    n = rows[0]["fleet_variants"] if rows else 0
    fig.suptitle(f"Simulator vs local endpoint: {n} variants, Zipf({rows[0]['zipf'] if rows else ''})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    args = _args()
    if args.again:  # the endpoint's records of an earlier run, predicted again (no endpoint)
        doc = json.loads(args.again.read_text())
        targets = doc["targets_order"]
    else:
        doc, targets = measure_all(args)
    for row in doc["budgets"]:
        row.update(predict(row, targets, doc["footprint"], args.workers))
        print(json.dumps({k: row[k] for k in ("budget_fraction", "measured", "predicted", "within_targets")}),
              flush=True)
    doc["simulated_workers"] = args.workers
    doc["chart"] = chart(doc["budgets"], args.out.with_suffix(".png")).name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({"out": str(args.out)}))


def measure_all(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Footprints, then the same sequence on a fresh endpoint per budget."""
    variants = read_fleet(args.dir)[:args.limit]
    targets = [v.target for v in variants]
    names = [t.removesuffix(".tar.gz") for t in targets[:args.profile]]
    concurrent = EndpointConfig(name="x", model_data_url="file:///", cache_dir=Path(".")).max_concurrent_loads
    fp = profile(args.dir, names, concurrent)
    print(json.dumps({"footprint_median": fp["median"], "load_concurrency": fp["load_concurrency"]}), flush=True)
    sequence, _ = zipf_sequence(targets, args.requests, args.zipf, args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="planner-check-") as tmp:
        prefix = Path(tmp) / "models"
        prefix.mkdir()
        for v in variants:
            (prefix / v.target).symlink_to((args.dir / v.target).resolve())
        for n, fraction in enumerate(float(b) for b in args.budgets.split(",")):
            fresh = profile(args.dir, names, concurrent) if args.profile_each and n else fp
            rows.append(measure_budget(variants, prefix, fraction, sequence, args.clients, args.spare_slots))
            rows[-1]["zipf"] = args.zipf
            if args.profile_each:
                rows[-1]["footprint"] = fresh
            partial = {"footprint": fp, "targets_order": targets, "budgets": rows}  # survives a cut-short run
            args.out.with_suffix(".partial.json").write_text(json.dumps(partial) + "\n")
    doc = {"fleet_variants": len(variants), "requests": args.requests, "clients": args.clients,
           "zipf": args.zipf, "seed": args.seed,
           "targets": {"warm_hit_points": TARGET_HIT_POINTS, "p99_share": TARGET_P99_SHARE},
           "footprint": fp, "targets_order": targets, "budgets": rows}
    return doc, targets


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--dir", type=Path, help="a built fleet: *.tar.gz with manifests")
    src.add_argument("--again", type=Path, help="an earlier run's JSON: predict its records again")
    ap.add_argument("--limit", type=int, help="use the first N variants only")
    ap.add_argument("--budgets", default="0.02,0.05,0.2", help="loaded-model budgets, shares of the fleet")
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="requests the simulated instance serves at once (default: this machine's cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--profile", type=int, default=3, help="variants whose footprint is measured")
    ap.add_argument("--profile-each", action="store_true",
                    help="measure the footprints again just before each budget's run (a shared "
                         "host's other load changes within minutes)")
    ap.add_argument("--spare-slots", type=int, default=None,
                    help="the endpoint's spare room (default: derived, as the endpoint's own; 0: none)")
    ap.add_argument("--out", type=Path, default=RESULTS / "planner_check.json")
    return ap.parse_args()


if __name__ == "__main__":
    main()
