"""Search instance type x count x shards x cache setting for the cheapest plan that meets a
p99 latency goal (and a cold-start share) at the peak rate; compare with one endpoint per
variant and with everything on one instance; recommend autoscaling; write the plan file that
``mme deploy --plan`` reads.

How the search stays fast (the 60 s budget for 10,000 variants): every candidate is first
*screened* analytically (Che's approximation for the warm-hit ratio, the offered load for
utilisation, a rough p99); candidates that pass are then *simulated* (one hour of Poisson
traffic at the peak rate, :mod:`tasks.planning.simulate`) in order of cost until one meets the
goal, plus a few more for the comparison table. Every figure in the report comes from the
simulation; the screen's hit ratio is printed beside it so the shortcut can be checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infra.errors import UserError
from tasks.planning.catalog import InstanceType
from tasks.planning.footprints import Footprint
from tasks.planning.planfile import Autoscaling, PlanFile
from tasks.planning.simulate import FleetArrays, InstanceConfig, che_hit_ratio, simulate
from tasks.planning.traffic import Traffic, poisson_sequence

HOURS_PER_MONTH = 730.0
NO_DISK = float("inf")
# The screen treats p99 as a miss's cost once more than this share of requests miss (a p99 is
# the 99th percentile: with over 1% misses it is a miss); a little above 1% to allow for the
# approximation's error (the simulation decides).
SCREEN_MISS_SHARE = 0.0125
SCREEN_P99_SLACK = 1.25  # the screen passes plans up to 25% over the goal to the simulation
COUNTS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64)


class PlanRefused(UserError, ValueError):
    """No candidate meets the goal: the message says what came closest and what to change."""


@dataclass(frozen=True)
class Goal:
    p99_ms: float
    max_cold_share: float | None = None

    def met_by(self, fig: dict[str, float]) -> bool:
        return fig["p99_ms"] <= self.p99_ms and (self.max_cold_share is None
                                                 or fig["cold_share"] <= self.max_cold_share)


@dataclass(frozen=True)
class SearchOptions:
    workers: int | None = None  # requests an instance serves at once; None: 4 on GPU, vCPUs on CPU
    shards: tuple[int, ...] = (1, 2, 4)
    caches: tuple[str, ...] = ("enabled", "disabled")
    counts: tuple[int, ...] = COUNTS
    sim_hours: float = 1.0
    warmup_hours: float = 0.25  # simulated first, not counted (the endpoint is warm in service)
    seed: int = 0
    extra_simulated: int = 5  # plans simulated after the first that meets the goal (for the table)
    max_simulations: int = 40
    usable_fraction: float = 0.9


@dataclass(frozen=True)
class Candidate:
    instance_type: str
    count: int  # instances per endpoint
    shards: int  # endpoints; variant i goes to endpoint i % shards
    model_cache: str
    hourly_usd: float  # all instances of all shards

    @property
    def monthly_usd(self) -> float:
        return self.hourly_usd * HOURS_PER_MONTH

    def label(self) -> str:
        return f"{self.shards}x{self.count} {self.instance_type} cache={self.model_cache}"


@dataclass
class Evaluated:
    candidate: Candidate
    screen: dict[str, float]
    figures: dict[str, float] | None = None
    meets: bool | None = None


@dataclass
class PlanResult:
    chosen: Evaluated
    simulated: list[Evaluated]
    candidates_evaluated: int
    screened_out: int
    baseline: dict[str, Any]
    one_instance: dict[str, Any] | None
    autoscaling: dict[str, Any]
    region: str
    notes: list[str] = field(default_factory=list)


def fleet_arrays(footprints: list[Footprint]) -> FleetArrays:
    """The footprints as the simulator's arrays (in the traffic's variant order)."""
    def col(get: Any) -> np.ndarray:
        return np.array([float(get(fp)) for fp in footprints])
    return FleetArrays(
        gpu_bytes=col(lambda f: f.gpu_memory_bytes.value), host_bytes=col(lambda f: f.host_memory_bytes.value),
        disk_bytes=col(lambda f: f.unpacked_bytes.value + f.tarball_bytes.value),
        load_disk_s=col(lambda f: f.load_disk_s.value),
        download_s=col(lambda f: max(0.0, f.load_cold_s.value - f.load_disk_s.value)),
        unload_s=col(lambda f: f.unload_s.value), service_s=col(lambda f: f.service_batch1_s.value))


def request_sequence(rates: np.ndarray, options: SearchOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Poisson requests every candidate is simulated on (warm-up, then the counted hours),
    with the rates they were drawn at (the prewarm order)."""
    times, ids = poisson_sequence(rates, (options.warmup_hours + options.sim_hours) * 3600.0, options.seed)
    return times, ids, rates


def workers_of(row: InstanceType, options: SearchOptions) -> int:
    return options.workers or (4 if row.gpu is not None else row.vcpus)


def instance_config(row: InstanceType, count: int, cache: str, options: SearchOptions) -> InstanceConfig:
    return InstanceConfig(count=count, gpu_bytes=row.gpu_memory_bytes or NO_DISK,
                          host_bytes=row.memory_gib * 2 ** 30,
                          disk_bytes=NO_DISK if row.disk_gb is None else row.disk_gb * 1e9,
                          workers=workers_of(row, options), cache_enabled=cache == "enabled",
                          usable_fraction=options.usable_fraction)


def slot_sizes(fleet: FleetArrays, cfg: InstanceConfig) -> np.ndarray:
    """Each variant's share of one instance's usable memory (the tightest of GPU and host)."""
    return np.maximum(fleet.gpu_bytes / (cfg.gpu_bytes * cfg.usable_fraction),
                      fleet.host_bytes / (cfg.host_bytes * cfg.usable_fraction))


def screen(cand: Candidate, row: InstanceType, fleet: FleetArrays, rates: np.ndarray,
           options: SearchOptions) -> dict[str, float]:
    """The analytic estimate of one candidate (no simulation): Che hit ratio per shard, offered
    load (utilisation) and a rough p99 (a miss's cost when more than 1% miss, else the service
    time stretched by M/M/1 queueing)."""
    cfg = instance_config(row, cand.count, cand.model_cache, options)
    hit = cost = 0.0
    total = float(rates.sum())
    for s in range(cand.shards):
        idx = np.arange(s, len(rates), cand.shards)
        r = rates[idx]
        h = che_hit_ratio(r, slot_sizes(fleet, cfg)[idx], cand.count) if cfg.cache_enabled else 0.0
        d = 1.0 if cfg.disk_bytes == NO_DISK else che_hit_ratio(r, fleet.disk_bytes[idx] / cfg.disk_bytes, cand.count)
        w = r / total if total else r
        miss = (1 - h) * (fleet.load_disk_s[idx] + fleet.unload_s[idx]) + (1 - max(d, h)) * fleet.download_s[idx]
        hit += h * float(w.sum())
        cost += float((w * (fleet.service_s[idx] + miss)).sum())
    util = total * cost / (cand.count * cand.shards * cfg.workers)
    service = float(np.average(fleet.service_s, weights=rates)) if total else 0.0
    miss_cost = float(np.average(fleet.load_disk_s + fleet.download_s))
    p99 = (miss_cost + service if 1 - hit > SCREEN_MISS_SHARE
           else service / max(1e-3, 1 - util) * (1 + math.log(100) * util))
    return {"che_hit_ratio": hit, "utilisation": util, "p99_ms": p99 * 1000, "cold_share": 1 - hit}


def simulate_candidate(cand: Candidate, row: InstanceType, fleet: FleetArrays,
                       seq: tuple[np.ndarray, np.ndarray, np.ndarray], options: SearchOptions) -> dict[str, float]:
    """Simulate each shard (its variants' share of the sequence) and pool the figures;
    ``seq`` is (times, variant ids, rates)."""
    times, ids, rates = seq
    cfg = instance_config(row, cand.count, cand.model_cache, options)
    duration, warmup = options.sim_hours * 3600.0, options.warmup_hours * 3600.0
    order = np.argsort(rates, kind="stable")  # least popular first: the prewarm order
    parts = [simulate(times[m], ids[m], fleet, cfg, duration, warmup,
                      order[(order % cand.shards) == s])
             for s, m in ((s, (ids % cand.shards) == s) for s in range(cand.shards))]
    lat = np.concatenate([p.latencies_s for p in parts]) if parts else np.zeros(0)
    n = sum(p.requests for p in parts)
    q = np.percentile(lat, [50, 95, 99]) * 1000 if n else np.zeros(3)
    hits = sum(p.hits for p in parts)
    return {"requests": float(n), "warm_hit_ratio": hits / n if n else 1.0, "cold_share": 1 - hits / n if n else 0.0,
            "p50_ms": float(q[0]), "p95_ms": float(q[1]), "p99_ms": float(q[2]),
            "loads_per_hour": sum(p.loads for p in parts) / options.sim_hours,
            "downloads_per_hour": sum(p.downloads for p in parts) / options.sim_hours,
            "utilisation": sum(p.busy_s for p in parts) / (duration * cand.count * cand.shards * cfg.workers),
            "over_60s_share": float((lat > 60.0).mean()) if n else 0.0,
            "busy_s_per_request": sum(p.busy_s for p in parts) / n if n else 0.0}


def candidates(types: list[InstanceType], fleet: FleetArrays, region: str,
               options: SearchOptions) -> list[tuple[Candidate, InstanceType]]:
    """Every combination whose models each fit one instance, cheapest first."""
    out = []
    for row in types:
        cfg = instance_config(row, 1, "enabled", options)
        if float(slot_sizes(fleet, cfg).max()) > 1.0:
            continue
        price = row.hourly(region)
        assert price is not None
        for count in options.counts:
            for shards in options.shards:
                for cache in options.caches:
                    out.append((Candidate(row.name, count, shards, cache, price * count * shards), row))
    out.sort(key=lambda c: (c[0].hourly_usd, c[0].shards, c[0].model_cache != "enabled", c[0].count))
    return out


def run_search(types: list[InstanceType], fleet: FleetArrays, traffic: Traffic, goal: Goal,
               region: str, options: SearchOptions) -> tuple[list[Evaluated], int, int]:
    """Screen all candidates, simulate the ones that pass in cost order. Returns the simulated
    plans, the number of candidates evaluated and how many the screen ruled out."""
    rates = traffic.peak_rates
    seq = request_sequence(rates, options)
    cold = None if goal.max_cold_share is None else min(1.0, goal.max_cold_share * 1.5)
    loose = Goal(goal.p99_ms * SCREEN_P99_SLACK, cold)
    done: list[Evaluated] = []
    evaluated = screened_out = 0
    first_ok: int | None = None
    for cand, row in candidates(types, fleet, region, options):
        evaluated += 1
        sc = screen(cand, row, fleet, rates, options)
        if sc["utilisation"] >= 0.95 or not loose.met_by(sc):
            screened_out += 1
            continue
        ev = Evaluated(cand, sc, simulate_candidate(cand, row, fleet, seq, options))
        ev.meets = goal.met_by(ev.figures or {})
        done.append(ev)
        if ev.meets and first_ok is None:
            first_ok = len(done)
        if (first_ok is not None and len(done) >= first_ok + options.extra_simulated) \
                or len(done) >= options.max_simulations:
            break
    return done, evaluated, screened_out


def per_variant_baseline(types: list[InstanceType], fleet: FleetArrays, traffic: Traffic,
                         region: str, options: SearchOptions) -> dict[str, Any]:
    """One endpoint per variant: each on the cheapest type its model fits, with enough
    instances (min 1) to serve its peak rate at 70% utilisation."""
    by_price = sorted(types, key=lambda r: r.hourly(region) or math.inf)
    rates = traffic.peak_rates
    hourly, used = 0.0, dict[str, int]()
    fits = [(row, slot_sizes(fleet, instance_config(row, 1, "enabled", options))) for row in by_price]
    for v in range(len(rates)):
        row = next((r for r, size in fits if size[v] <= 1.0), None)
        if row is None:
            raise PlanResultError(f"variant {traffic.variants[v]!r} fits on no candidate instance type")
        count = max(1, math.ceil(rates[v] * fleet.service_s[v] / (workers_of(row, options) * 0.7)))
        hourly += (row.hourly(region) or 0.0) * count
        used[row.name] = used.get(row.name, 0) + count
    return {"endpoints": len(rates), "instances": used, "hourly_usd": hourly,
            "monthly_usd": hourly * HOURS_PER_MONTH}


class PlanResultError(UserError, ValueError):
    """The fleet cannot be placed at all (a model larger than every candidate type)."""


def one_instance(types: list[InstanceType], fleet: FleetArrays, traffic: Traffic, region: str,
                 options: SearchOptions) -> dict[str, Any] | None:
    """Everything on one instance of the cheapest type every model fits: the figures it gives."""
    for row in sorted(types, key=lambda r: r.hourly(region) or math.inf):
        if float(slot_sizes(fleet, instance_config(row, 1, "enabled", options)).max()) <= 1.0:
            cand = Candidate(row.name, 1, 1, "enabled", row.hourly(region) or 0.0)
            seq = request_sequence(traffic.peak_rates, options)
            return {"candidate": cand, "figures": simulate_candidate(cand, row, fleet, seq, options)}
    return None


def autoscaling(chosen: Evaluated, workers: int, goal: Goal, peak_factor: float) -> dict[str, Any]:
    """The autoscaling recommendation for each endpoint of the chosen plan.

    target (SageMakerVariantInvocationsPerInstance, per minute) = 60 x lambda_max, where
    lambda_max is the rate one instance can take while its p99 stays within the goal: with
    s = the simulated busy seconds per request (service + the share of load time) and
    mu = workers / s its service rate, an M/M/1-like queue has P(T > t) = exp(-(mu - lambda) t),
    so p99 <= goal  <=>  lambda <= mu - ln(100) / goal; clamped to [10%, 80%] of mu so a
    near-zero service time never asks for 100% utilisation.
    min = the peak count scaled to the mean rate (count / peak factor, at least 1);
    max = 1.5 x the peak count (headroom above the forecast peak)."""
    fig = chosen.figures or {}
    s = max(fig.get("busy_s_per_request", 0.0), 1e-6)
    mu = workers / s
    lam = min(0.8 * mu, max(0.1 * mu, mu - math.log(100) / (goal.p99_ms / 1000.0)))
    count = chosen.candidate.count
    return {"min": max(1, math.ceil(count / peak_factor)), "max": max(count, math.ceil(count * 1.5)),
            "target": round(60.0 * lam, 1), "busy_s_per_request": s, "workers": workers,
            "formula": "target/min = 60 x min(0.8 mu, max(0.1 mu, mu - ln(100)/goal_s)), mu = workers / s"}


def make_plan(types: list[InstanceType], footprints: list[Footprint], traffic: Traffic, goal: Goal,
              region: str, options: SearchOptions | None = None) -> PlanResult:
    """The cheapest plan meeting ``goal`` at the peak rate, with its comparisons; refused
    (:class:`PlanRefused`, saying what came closest) when no candidate meets it."""
    options = options or SearchOptions()
    if not types:
        raise PlanRefused(f"no instance type with a {region} price can host this fleet "
                          f"(see infra/instances.yaml)")
    fleet = fleet_arrays(footprints)
    done, evaluated, screened_out = run_search(types, fleet, traffic, goal, region, options)
    ok = [e for e in done if e.meets]
    if not ok:
        best = min(done, key=lambda e: (e.figures or {}).get("p99_ms", math.inf), default=None)
        closest = (f"; closest simulated: {best.candidate.label()} p99 {(best.figures or {})['p99_ms']:.0f} ms, "
                   f"cold share {(best.figures or {})['cold_share']:.3f}" if best else
                   "; none passed the analytic screen")
        raise PlanRefused(f"no plan meets p99 <= {goal.p99_ms:g} ms"
                          f"{'' if goal.max_cold_share is None else f' and cold share <= {goal.max_cold_share:g}'}"
                          f" at the peak rate {float(traffic.peak_rates.sum()):.3g} req/s among {evaluated} "
                          f"candidates{closest}: relax the goal, allow more instances, or check the footprints")
    chosen = min(ok, key=lambda e: (e.candidate.hourly_usd, e.candidate.shards))
    row = next(r for r in types if r.name == chosen.candidate.instance_type)
    return PlanResult(chosen=chosen, simulated=done, candidates_evaluated=evaluated, screened_out=screened_out,
                      baseline=per_variant_baseline(types, fleet, traffic, region, options),
                      one_instance=one_instance(types, fleet, traffic, region, options),
                      autoscaling=autoscaling(chosen, workers_of(row, options), goal, traffic.peak_factor),
                      region=region)


def plan_file(result: PlanResult, prices_checked: str) -> PlanFile:
    """The chosen plan as the file ``mme deploy --plan`` reads."""
    c, fig = result.chosen.candidate, result.chosen.figures or {}
    a = result.autoscaling
    return PlanFile.model_validate({
        "instance_type": c.instance_type, "instance_count": c.count,
        "autoscaling": Autoscaling(min=a["min"], max=a["max"], target=a["target"]),
        "shards": c.shards, "model_cache": c.model_cache, "region": result.region,
        # for the reader (deploy ignores these): what the plan costs and predicts, and the price date
        "monthly_cost_usd": round(c.monthly_usd, 2),
        "baseline_monthly_cost_usd": round(result.baseline["monthly_usd"], 2),
        "predicted": {k: round(v, 4) for k, v in fig.items()}, "prices_checked": prices_checked})
