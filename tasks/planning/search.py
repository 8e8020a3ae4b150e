"""Search instance type x count x shards x cache setting for the cheapest plan that meets a
p99 latency goal (and a cold-start share) at the peak rate; compare with one endpoint per
variant and with everything on one instance; recommend autoscaling; write the plan file that
``mme deploy --plan`` reads.

How the search reaches the fleet's scale within a minute: for each instance type that can hold
one variant (the others are pruned before anything is simulated), cache setting and shard count
(1, 2, 4 ... while the per-endpoint count is capped), the instance count per endpoint grows by
doubling, then is bisected -- first on the analytic *screen* (Che's approximation for the
warm-hit ratio, the offered load, a rough p99; microseconds), then on the *simulation* (Poisson
traffic at the peak rate, :mod:`tasks.planning.simulate`), up to ``max_instances`` in all.
A combination is left as soon as its cheapest screened plan costs more than the best plan found.
A simulation counts about ``sim_requests`` requests and runs longer (up to ``sim_hours``) only
while its warm-hit ratio has not converged (95% interval of ten batch means wider than
``hit_tolerance``) or its p99 is within 5% of the goal. Every figure in the report comes from the
simulation; the screen's hit ratio is printed beside it so the shortcut can be checked. When no
plan meets the goal the refusal says which bound stopped the search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from infra.errors import UserError
from tasks.planning.catalog import InstanceType
from tasks.build.footprints import Footprint
from tasks.fleet.progress import Progress
from tasks.planning.planfile import Autoscaling, PlanFile
from tasks.planning.cache_model import che_hit_ratio
from tasks.planning.simulate import FleetArrays, InstanceConfig, simulate
from tasks.planning.traffic import Traffic, poisson_sequence
from tasks.runtime.run_context import run_logger

LayoutRequest = Literal["auto", "separate", "fused"]
HOURS_PER_MONTH = 730.0
NO_DISK = float("inf")
# The screen treats p99 as a miss's cost once more than this share of requests miss (a p99 is
# the 99th percentile: with over 1% misses it is a miss); a little above 1% to allow for the
# approximation's error (the simulation decides).
SCREEN_MISS_SHARE = 0.0125
P99_SHARE_UP = 0.99  # the p99's quantile
P99_SHARE = 0.01  # requests above the p99: a cold share this close to it leaves the p99 undecided
SCREEN_P99_SLACK = 1.25  # the screen passes plans up to 25% over the goal to the simulation
COUNTS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64)  # the report's Che curve points
DEFAULT_MAX_INSTANCES = 256  # `mme plan --max-instances`: instances in all, across shards
MAX_PER_ENDPOINT = 64  # instances per endpoint before the search adds shards (the old grid's largest)


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
    caches: tuple[str, ...] = ("enabled", "disabled")
    counts: tuple[int, ...] = COUNTS  # memory points of the report's Che curve
    sim_hours: float = 1.0  # the longest counted span a simulation runs
    warmup_hours: float = 0.25  # simulated first, not counted (the endpoint is warm in service)
    seed: int = 0
    max_simulations: int = 40
    usable_fraction: float = 0.9
    max_instances: int = DEFAULT_MAX_INSTANCES  # instances in all (every shard's)
    max_per_endpoint: int = MAX_PER_ENDPOINT
    instance_types: tuple[str, ...] | None = None  # the types to consider; None: the catalog's
    sim_requests: int = 100_000  # counted requests of a first simulation (fewer at low rates)
    warmup_requests: int = 50_000  # warm-up requests at most (the variants are preloaded)
    hit_tolerance: float = 0.005  # 95% half-width of the warm-hit ratio that ends a simulation
    settle_requests: int = 800_000  # the most counted requests one simulation extends to
    max_simulated_requests: int = 3_000_000  # all simulations of one search together (its time bound)
    #: the fleet layouts to plan (``mme plan --layout``; :mod:`tasks.planning.layouts`): auto =
    #: every layout the fleet can be planned as, the cheaper that meets the goal chosen
    layout: LayoutRequest = "auto"


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


@dataclass(frozen=True)
class Baseline:
    """One endpoint per variant (what the plan is compared with): how many endpoints, the
    instances by type, and what they cost."""

    endpoints: int
    instances: dict[str, int]
    hourly_usd: float
    monthly_usd: float


@dataclass(frozen=True)
class OneInstance:
    """Everything on one instance of the cheapest type every model fits, and its figures."""

    candidate: Candidate
    figures: dict[str, float]


@dataclass(frozen=True)
class ScalingAdvice:
    """The autoscaling recommendation per endpoint (see :func:`autoscaling`): min, max and
    target invocations per instance per minute, with the inputs and the formula it came from."""

    min: int
    max: int
    target: float
    busy_s_per_request: float
    workers: int
    formula: str


@dataclass
class PlanResult:
    chosen: Evaluated
    simulated: list[Evaluated]
    candidates_evaluated: int
    screened_out: int
    baseline: Baseline
    one_instance: OneInstance | None
    autoscaling: ScalingAdvice
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
    ``seq`` is (times, variant ids, rates). ``hit_ratio_ci`` is the 95% half-width of the
    warm-hit ratio from ten batch means over the counted span (how settled the figure is)."""
    times, ids, rates = seq
    cfg = instance_config(row, cand.count, cand.model_cache, options)
    duration, warmup = options.sim_hours * 3600.0, options.warmup_hours * 3600.0
    keep = times < warmup + duration  # a prefix of a Poisson sequence is a shorter one
    times, ids = times[keep], ids[keep]
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
            "busy_s_per_request": sum(p.busy_s for p in parts) / n if n else 0.0,
            "hit_ratio_ci": _hit_ci(parts, warmup, duration), "simulated_hours": options.sim_hours}


def _hit_ci(parts: list[Any], warmup: float, duration: float, batches: int = 10) -> float:
    """95% half-width of the warm-hit ratio by batch means (ten equal spans of the counted time):
    consecutive requests share a cache state, so their hits are not independent draws."""
    warm = np.concatenate([p.warm for p in parts if p.warm is not None] or [np.zeros(0, bool)])
    at = np.concatenate([p.arrivals_s for p in parts if p.arrivals_s is not None] or [np.zeros(0)])
    if len(warm) < batches * 10:
        return 1.0
    b = np.minimum(((at - warmup) / max(duration, 1e-9) * batches).astype(int), batches - 1)
    count = np.bincount(b, minlength=batches)
    means = np.bincount(b, weights=warm, minlength=batches)[count > 0] / count[count > 0]
    return float(1.96 * means.std(ddof=1) / math.sqrt(len(means))) if len(means) > 1 else 1.0


def short_spans(total_rate: float, options: SearchOptions) -> SearchOptions:
    """The first simulation's spans: about ``sim_requests`` counted and ``warmup_requests``
    warm-up requests at the peak rate (the configured hours when they hold fewer)."""
    per_hour = max(total_rate, 1e-9) * 3600.0
    return replace(options, sim_hours=min(options.sim_hours, options.sim_requests / per_hour),
                   warmup_hours=min(options.warmup_hours, options.warmup_requests / per_hour))


def simulate_settled(cand: Candidate, row: InstanceType, fleet: FleetArrays,
                     seq: tuple[np.ndarray, np.ndarray, np.ndarray], goal: Goal,
                     options: SearchOptions) -> dict[str, float]:
    """Simulate on a short span first, doubling it (up to ``options.sim_hours``) while the
    warm-hit ratio has not settled within ``hit_tolerance``, or the p99 is within 5% of the goal,
    or the cold share is within its interval of 1% (whether the p99 is a miss is undecided):
    at 200 req/s a full hour is 720,000 requests, and most plans are decided by far fewer."""
    opts = short_spans(float(seq[2].sum()), options)
    while True:
        fig = simulate_candidate(cand, row, fleet, seq, opts)
        near = abs(fig["p99_ms"] - goal.p99_ms) <= 0.05 * goal.p99_ms \
            or abs(fig["cold_share"] - P99_SHARE) <= fig["hit_ratio_ci"]  # p99: a miss or not, undecided
        if opts.sim_hours >= options.sim_hours or (fig["hit_ratio_ci"] <= options.hit_tolerance and not near) \
                or fig["requests"] * 2 > options.settle_requests:
            return fig
        opts = replace(opts, sim_hours=min(options.sim_hours, opts.sim_hours * 2))


@dataclass
class _Search:
    """One search's inputs and what it has done (the simulated plans, the counts, the bounds
    that stopped each combination: the refusal names them)."""

    fleet: FleetArrays
    seq: tuple[np.ndarray, np.ndarray, np.ndarray]
    goal: Goal
    region: str
    options: SearchOptions
    done: list[Evaluated] = field(default_factory=list)
    screened: int = 0
    screened_out: int = 0
    bounds: set[str] = field(default_factory=set)
    best: Evaluated | None = None
    closest_screen: tuple[float, float, str] | None = None  # (rough p99 ms, -Che hit, plan) seen screening
    progress: Progress | None = None  # ``candidates simulated n (at most N)``, rate, time left

    def candidate(self, row: InstanceType, count: int, shards: int, cache: str) -> Candidate:
        return Candidate(row.name, count, shards, cache, (row.hourly(self.region) or 0.0) * count * shards)

    def passes_screen(self, cand: Candidate, row: InstanceType) -> bool:
        """The analytic screen with slack (the simulation decides)."""
        self.screened += 1
        sc = screen(cand, row, self.fleet, self.seq[2], self.options)
        cold = None if self.goal.max_cold_share is None else min(1.0, self.goal.max_cold_share * 1.5)
        ok = sc["utilisation"] < 0.95 and Goal(self.goal.p99_ms * SCREEN_P99_SLACK, cold).met_by(sc)
        seen = (sc["p99_ms"], -sc["che_hit_ratio"], cand.label())
        self.closest_screen = min(self.closest_screen or seen, seen)
        self.screened_out += not ok
        return ok

    def run(self, cand: Candidate, row: InstanceType) -> Evaluated | None:
        """Simulate one plan (None when the simulation budget is spent)."""
        spent = sum((e.figures or {}).get("requests", 0.0) for e in self.done)
        if len(self.done) >= self.options.max_simulations or spent >= self.options.max_simulated_requests:
            self.bounds.add(f"the simulation budget ({self.options.max_simulations} simulations, "
                            f"{self.options.max_simulated_requests:,} requests) was spent")
            return None
        sc = screen(cand, row, self.fleet, self.seq[2], self.options)
        ev = Evaluated(cand, sc, simulate_settled(cand, row, self.fleet, self.seq, self.goal, self.options))
        ev.meets = self.goal.met_by(ev.figures or {})
        self.done.append(ev)
        if self.progress is not None:
            self.progress.record(cand.label())
        if ev.meets and (self.best is None or cand.hourly_usd < self.best.candidate.hourly_usd):
            self.best = ev
        return ev

    def beaten(self, cand: Candidate) -> bool:
        return self.best is not None and cand.hourly_usd >= self.best.candidate.hourly_usd


def _smallest(ok: Any, lo: int, cap: int) -> int | None:
    """The smallest count in lo..cap for which ``ok(count)`` holds (monotone: more instances
    never hurt), by doubling from ``lo`` then bisecting; None when even ``cap`` fails."""
    fail, c = lo - 1, lo
    while not ok(c):
        if c >= cap:
            return None
        fail, c = c, min(cap, c * 2)
    while c - fail > 1:
        mid = (fail + c) // 2
        if ok(mid):
            c = mid
        else:
            fail = mid
    return c


def grow(s: _Search, row: InstanceType, cache: str, shards: int, cap: int) -> bool:
    """Grow one (type, cache, shards) combination's count: the smallest count passing the
    screen, then the smallest meeting the goal in simulation; left early when a count costs
    more than the best plan found or more instances stop lowering the p99. True when it
    reached ``cap`` without meeting the goal (more shards may help)."""
    lo = _smallest(lambda c: s.passes_screen(s.candidate(row, c, shards, cache), row), 1, cap)
    if lo is None:
        _cap_bound(s, shards, cap)
        return True
    last: dict[str, float] = {}

    def meets(c: int) -> bool:
        cand = s.candidate(row, c, shards, cache)
        if s.beaten(cand):
            return True  # stop growing: cheaper plans are already known
        ev = s.run(cand, row)
        if ev is None:
            return True
        fig = ev.figures or {}
        if not ev.meets and last and fig["p99_ms"] >= 0.98 * last["p99_ms"] and \
                fig["warm_hit_ratio"] <= last["warm_hit_ratio"] + 1e-3:
            s.bounds.add(f"more instances stopped lowering the p99 ({cache=}: {fig['p99_ms']:,.0f} ms "
                         f"at {shards}x{c} {row.name}; the misses' load time sets it)")
            return True
        last.update(fig)
        return bool(ev.meets)

    if _smallest(meets, lo, cap) is None:
        _cap_bound(s, shards, cap)
        return True
    return False


def _cap_bound(s: _Search, shards: int, cap: int) -> None:
    """Record that a combination reached its cap when the cap is ``max_instances`` (the
    per-endpoint cap is not a bound: the search goes on with more shards)."""
    if cap * shards >= s.options.max_instances or cap < s.options.max_per_endpoint:
        s.bounds.add(f"max instances reached (--max-instances {s.options.max_instances}: instances in all, "
                     f"every shard's)")


def fitting_types(types: list[InstanceType], fleet: FleetArrays, options: SearchOptions) -> list[InstanceType]:
    """The types whose usable memory holds the largest variant (the others are pruned before
    anything is screened or simulated)."""
    return [row for row in types if float(slot_sizes(fleet, instance_config(row, 1, "enabled", options)).max()) <= 1.0]


def service_floor_ms(fleet: FleetArrays, rates: np.ndarray) -> float:
    """The p99 no plan goes below: every request warm and served at once (the rate-weighted
    99th percentile of the service times). A goal under it stops the search before it starts."""
    order = np.argsort(fleet.service_s)
    w = np.cumsum(rates[order])
    if not len(w) or w[-1] <= 0:
        return 0.0
    return float(fleet.service_s[order][min(len(w) - 1, int(np.searchsorted(w, P99_SHARE_UP * w[-1])))]) * 1000


def run_search(types: list[InstanceType], fleet: FleetArrays, traffic: Traffic, goal: Goal,
               region: str, options: SearchOptions) -> _Search:
    """Grow every (type, cache, shards) combination that can hold the fleet, cheapest type
    first; shards double (1, 2, 4 ...) while the per-endpoint cap binds and instances remain.
    Says ``candidates simulated n (at most N), R/s, at most ~T left`` as it goes (a search
    takes up to a minute; N is the simulation budget, ``max_simulations``)."""
    s = _Search(fleet, request_sequence(traffic.peak_rates, options), goal, region, options)
    floor = service_floor_ms(fleet, traffic.peak_rates)
    if floor > goal.p99_ms:
        s.bounds.add(f"the service time alone (p99 {floor:,.0f} ms of warm requests on idle instances) exceeds "
                     f"the goal: no count or type of instance lowers it")
        return s
    s.progress = Progress("candidates simulated", options.max_simulations, emit=run_logger("mme.plan").info,
                          at_most=True)
    for row in sorted(fitting_types(types, fleet, options), key=lambda r: r.hourly(region) or math.inf):
        for cache in options.caches:
            shards = 1
            while shards <= min(options.max_instances, len(traffic.peak_rates)):
                cap = min(options.max_per_endpoint, options.max_instances // shards)
                if s.beaten(s.candidate(row, 1, shards, cache)) or not grow(s, row, cache, shards, cap) \
                        or cap < options.max_per_endpoint:
                    break  # met, stalled, or the total cap binds: more endpoints split the same instances
                shards *= 2
    s.progress.finish()
    return s


def per_variant_baseline(types: list[InstanceType], fleet: FleetArrays, traffic: Traffic,
                         region: str, options: SearchOptions) -> Baseline:
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
    return Baseline(endpoints=len(rates), instances=used, hourly_usd=hourly,
                    monthly_usd=hourly * HOURS_PER_MONTH)


class PlanResultError(UserError, ValueError):
    """The fleet cannot be placed at all (a model larger than every candidate type)."""


def one_instance(types: list[InstanceType], fleet: FleetArrays, traffic: Traffic, region: str,
                 options: SearchOptions) -> OneInstance | None:
    """Everything on one instance of the cheapest type every model fits: the figures it gives."""
    for row in sorted(types, key=lambda r: r.hourly(region) or math.inf):
        if float(slot_sizes(fleet, instance_config(row, 1, "enabled", options)).max()) <= 1.0:
            cand = Candidate(row.name, 1, 1, "enabled", row.hourly(region) or 0.0)
            seq = request_sequence(traffic.peak_rates, options)
            short = short_spans(float(traffic.peak_rates.sum()), options)
            return OneInstance(candidate=cand, figures=simulate_candidate(cand, row, fleet, seq, short))
    return None


def autoscaling(chosen: Evaluated, workers: int, goal: Goal, peak_factor: float) -> ScalingAdvice:
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
    return ScalingAdvice(min=max(1, math.ceil(count / peak_factor)), max=max(count, math.ceil(count * 1.5)),
                         target=round(60.0 * lam, 1), busy_s_per_request=s, workers=workers,
                         formula="target/min = 60 x min(0.8 mu, max(0.1 mu, mu - ln(100)/goal_s)), "
                                 "mu = workers / s")


def _no_fit(types: list[InstanceType], fleet: FleetArrays, options: SearchOptions) -> PlanRefused:
    """The refusal when no type holds one variant: the types, what the largest variant needs
    and what the roomiest type offers (usable memory)."""
    names = ", ".join(r.name for r in types)
    given = "--instance-types" if options.instance_types else "the catalog's types for this target"
    need = (f"{float(fleet.host_bytes.max()) / 2 ** 20:,.0f} MiB host memory"
            + (f", {float(fleet.gpu_bytes.max()) / 2 ** 20:,.0f} MiB GPU memory" if fleet.gpu_bytes.max() > 0 else ""))
    return PlanRefused(f"no instance type has enough memory for one variant: the largest needs {need}, "
                       f"more than {options.usable_fraction:.0%} of what any of {given} ({names}) has; "
                       f"name larger types with --instance-types, or check the footprints")


def _refusal(s: _Search, traffic: Traffic) -> PlanRefused:
    """No plan met the goal: what stopped the search, and what came closest."""
    goal = s.goal
    best = min(s.done, key=lambda e: (e.figures or {}).get("p99_ms", math.inf), default=None)
    closest = (f"; closest simulated: {best.candidate.label()} p99 {(best.figures or {})['p99_ms']:,.0f} ms, "
               f"cold share {(best.figures or {})['cold_share']:.3f}" if best else
               f"; none passed the analytic screen (closest: {s.closest_screen[2]}, Che hit "
               f"{-s.closest_screen[1]:.3f}, rough p99 {s.closest_screen[0]:,.0f} ms)" if s.closest_screen else
               "; none was screened")
    bounds = "; ".join(sorted(s.bounds)) or "every combination was tried"
    cap = f"--max-instances {s.options.max_instances}"
    return PlanRefused(f"no plan meets p99 <= {goal.p99_ms:g} ms"
                       f"{'' if goal.max_cold_share is None else f' and cold share <= {goal.max_cold_share:g}'}"
                       f" at the peak rate {float(traffic.peak_rates.sum()):.3g} req/s within {cap} "
                       f"({s.screened} candidates screened, {len(s.done)} simulated); stopped by: {bounds}"
                       f"{closest}: raise --max-instances, relax the goal, or check the footprints")


def make_plan(types: list[InstanceType], footprints: list[Footprint], traffic: Traffic, goal: Goal,
              region: str, options: SearchOptions | None = None) -> PlanResult:
    """The cheapest plan meeting ``goal`` at the peak rate, with its comparisons; refused
    (:class:`PlanRefused`, naming the bound that stopped the search and what came closest)
    when no plan within the bounds meets it."""
    options = options or SearchOptions()
    if not types:
        raise PlanRefused(f"no instance type with a {region} price can host this fleet "
                          f"(see infra/aws/instances.yaml)")
    fleet = fleet_arrays(footprints)
    if not fitting_types(types, fleet, options):
        raise _no_fit(types, fleet, options)
    s = run_search(types, fleet, traffic, goal, region, options)
    ok = [e for e in s.done if e.meets]
    if not ok:
        raise _refusal(s, traffic)
    chosen = min(ok, key=lambda e: (e.candidate.hourly_usd, e.candidate.shards))
    row = next(r for r in types if r.name == chosen.candidate.instance_type)
    return PlanResult(chosen=chosen, simulated=s.done, candidates_evaluated=s.screened,
                      screened_out=s.screened_out,
                      baseline=per_variant_baseline(types, fleet, traffic, region, options),
                      one_instance=one_instance(types, fleet, traffic, region, options),
                      autoscaling=autoscaling(chosen, workers_of(row, options), goal, traffic.peak_factor),
                      region=region)


def plan_file(result: PlanResult, prices_checked: str, layout: str = "separate") -> PlanFile:
    """The chosen plan as the file ``mme deploy --plan`` reads (``layout``: the fleet layout it
    was planned for, for the reader)."""
    c, fig = result.chosen.candidate, result.chosen.figures or {}
    a = result.autoscaling
    return PlanFile.model_validate({
        "instance_type": c.instance_type, "instance_count": c.count,
        "autoscaling": Autoscaling(min=a.min, max=a.max, target=a.target),
        "shards": c.shards, "model_cache": c.model_cache, "region": result.region,
        # for the reader (deploy ignores these): what the plan costs and predicts, and the price date
        "monthly_cost_usd": round(c.monthly_usd, 2),
        "baseline_monthly_cost_usd": round(result.baseline.monthly_usd, 2),
        "predicted": {k: round(v, 4) for k, v in fig.items()}, "prices_checked": prices_checked,
        "layout": layout})
