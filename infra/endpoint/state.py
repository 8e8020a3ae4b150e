"""The local endpoint's settings and its bookkeeping records (one per TargetModel, metrics).

Every counter here is O(1) per request: running sums instead of lists of samples, a bounded
reservoir for the admission-time percentiles, a fixed window for the rolling miss rate. An
endpoint serving for weeks must not grow its memory or its per-request cost with its history.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from infra.triton.model_repo import NamespacedModel
from infra.endpoint.reports import (
    CountersReport,
    ModelReport,
    ModelState,
    PercentileReport,
    StatReport,
    ThrashReport,
)
from infra.endpoint.request_check import ModelContract


@dataclass
class EndpointConfig:
    name: str
    model_data_url: str  # the MME's model prefix: file:///... or s3://bucket/prefix
    cache_dir: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port
    # tritonserver's own ports on 127.0.0.1 (0 = a free one, picked at each start): HTTP for
    # inference, gRPC for repository calls, metrics (Prometheus text, also served by the
    # endpoint at GET /triton/metrics; None = Triton's metrics off). Set them to reach Triton
    # directly (a dashboard, perf_analyzer) at a known address.
    triton_http_port: int = 0
    triton_grpc_port: int = 0
    triton_metrics_port: int | None = 0
    max_loaded_models: int | None = None
    memory_limit_bytes: int | None = None  # on Triton's PSS (server + stubs); None: 70% of physical memory
    disk_cache_bytes: int = 20 * 2**30
    ready_wait_s: float = 60.0  # SageMaker answers ModelNotReadyException after 60 s
    load_timeout_s: float = 360.0  # ... and keeps loading up to 360 s
    model_cache_enabled: bool = True  # MultiModelConfig.ModelCacheSetting
    triton_log: Path | None = None
    # Triton supervision: more than max_triton_restarts deaths within triton_restart_window_s
    # and the endpoint gives up (500 InternalFailure, /ping 500) instead of looping forever;
    # the 2nd, 3rd ... rapid death waits backoff, 2x backoff ... (capped) before the restart.
    max_triton_restarts: int = 5
    triton_restart_window_s: float = 300.0
    triton_restart_backoff_s: float = 1.0
    liveness_timeout_s: float = 5.0  # GET /v2/health/live slower than this counts as dead
    # Loads (download + Triton load) running at once. A Python-backend load is CPU-bound (a
    # stub process starts and imports numpy); on a 2-core machine more than 2 at a time only
    # makes each one slower and starves the warm requests of CPU. Raise it with the cores.
    max_concurrent_loads: int = 2
    # Spare room: places of max_loaded_models kept free by unloading the least recently used
    # idle model in the background, so a miss finds room instead of waiting for an eviction
    # (a Python model's unload takes >= 1.2 s). None: derived (see spare_slots); 0: none.
    spare_slots: int | None = None
    # What "least recently used" ranks by: "request", when a request for the model came (an
    # exact LRU over the request stream; a miss too), or "served", when it was last served (a
    # miss: when its load ended -- the behaviour before; kept for side-by-side benchmarks).
    recency: Literal["request", "served"] = "request"
    # CPU niceness of a spare-room (background) unload's stubs: they tear down at a lower
    # priority than the loads a request waits for (0: the same priority, the behaviour before;
    # kept for side-by-side benchmarks). An unload on a request's path keeps its priority.
    background_unload_nice: int = 19
    # Thrash guard: over the last thrash_window requests, a miss rate above thrash_miss_rate
    # logs a WARNING (at most once per thrash_warn_interval_s) and shows in /metrics. Before the
    # window has filled (a cold start), the rate over the requests so far counts once there are
    # thrash_min_requests of them (or the whole window, when that is smaller).
    thrash_window: int = 200
    thrash_miss_rate: float = 0.5
    thrash_warn_interval_s: float = 60.0
    thrash_min_requests: int = 20
    # The endpoint's own log (None: stderr). It rotates: at most (1 + backups) x max bytes.
    log_file: Path | None = None
    log_max_bytes: int = 10 * 2**20
    log_backup_count: int = 3


#: Loads and unloads the endpoint must have timed before it trusts their ratio (until then the
#: derived spare room assumes :data:`SPARE_PRIOR_RATIO`).
SPARE_MIN_SAMPLES = 4


#: The most of the budget the derived spare room takes beyond the load concurrency: each spare
#: place is a warm model fewer. Measured (1,000 example variants, Zipf(1.1), a budget of 50, one
#: sitting, `bench/results/fleet_traffic_1000_spare_*.json`): spare 0 / 3 / 4 / 6 places gave
#: 2.57 / 4.67 / 5.50 / 5.61 requests/s and a warm-hit ratio 0.8 / 1.5 / 2.0 / 3.0 points below
#: exact LRU: past 8 % of the budget (4 here) a place bought 2 % more throughput for a point of hits.
SPARE_SHARE_CAP = 0.08

#: The unload/load time ratio the derived spare room assumes before the endpoint has timed
#: :data:`SPARE_MIN_SAMPLES` of each: a Python-backend model's (its unload >= 1.2 s, the stub's
#: health check sleeps 1 s; the example variants load in ~0.45 s). A fleet whose unloads are
#: faster gives back the extra places once measured: at most a few loads, once.
SPARE_PRIOR_RATIO = 3.0


def derived_spare(budget: int, max_concurrent_loads: int, load_s: float | None = None,
                  unload_s: float | None = None) -> int:
    """The spare places a budget of ``budget`` models keeps when none is set.

    Why this number (Little's law): a background unload holds its place until Triton has
    unloaded it (``unload_s``: >= 1.2 s for a Python model, its stub's health check sleeps 1 s),
    while misses take places as fast as ``max_concurrent_loads`` loads of ``load_s`` each finish.
    For a miss never to wait on an unload, the places being freed must keep up:
    ``max_concurrent_loads * unload_s / load_s`` of them (at least the load concurrency). Until
    both are known the ratio is :data:`SPARE_PRIOR_RATIO`, a Python-backend model's: the first
    unloads come the moment the budget fills, exactly when every miss would otherwise wait on
    one (with the ratio taken as 1 there, the first misses after a fill waited ~2 s more,
    `bench/planner_check.py` at a 20 % budget). Each spare place costs one warm model, so beyond
    the load concurrency the room takes at most :data:`SPARE_SHARE_CAP` of the budget (where
    the measured throughput gain flattens and the hit ratio keeps falling), and a budget too
    small to spare even the load concurrency (under 4x it) keeps none (fewer spare places than
    load slots barely help when misses come back to back: the second concurrent miss evicts as
    before).
    """
    loads = max(0, max_concurrent_loads)
    if not loads or 4 * loads > budget:
        return 0
    ratio = unload_s / load_s if load_s and unload_s else SPARE_PRIOR_RATIO
    cap = max(loads, int(budget * SPARE_SHARE_CAP))
    return min(cap, math.ceil(loads * max(1.0, ratio) - 1e-9))


def spare_slots(cfg: EndpointConfig, load_s: float | None = None,
                unload_s: float | None = None) -> int:
    """The places of the model budget the endpoint keeps free (its *spare room*): set
    (``cfg.spare_slots``, at most ``budget - 1``: one place stays for a loaded model; 0: none) or
    derived (:func:`derived_spare`, from the mean ``load_s`` and ``unload_s`` the endpoint has
    measured so far). Without a count budget there is no spare room."""
    budget = cfg.max_loaded_models
    if not budget:
        return 0
    if cfg.spare_slots is None:
        return derived_spare(budget, cfg.max_concurrent_loads, load_s, unload_s)
    return max(0, min(cfg.spare_slots, budget - 1))


def settings_json(cfg: EndpointConfig) -> str:
    """``cfg`` as the one JSON document the launcher hands the endpoint process (no argv
    round trip: every field travels, typed, and a new field needs no new flag)."""
    from pydantic import TypeAdapter

    return TypeAdapter(EndpointConfig).dump_json(cfg, indent=2).decode()


def read_settings(path: Path) -> EndpointConfig:
    """The :class:`EndpointConfig` in ``path``; a bad document fails naming the file and field."""
    from pydantic import TypeAdapter, ValidationError

    from infra.errors import validation_problems
    from infra.versioned import RecordError

    try:
        return TypeAdapter(EndpointConfig).validate_json(path.read_text())
    except ValidationError as e:
        raise RecordError(f"{path}: not valid endpoint settings: {validation_problems(e)}") from None


@dataclass
class ModelEntry:
    target: str
    state: ModelState = ModelState.ABSENT  # changed only by ModelManager (its state machine)
    ns: NamespacedModel | None = None
    disk_bytes: int = 0
    last_used: float = 0.0
    in_flight: int = 0
    loads: int = 0  # successful loads so far: tells a stale failure report from a fresh one
    contract: ModelContract | None = None  # what the entry model accepts; read once per load
    load_task: asyncio.Task | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    unloaded: asyncio.Event | None = None  # set when an unload in progress has finished
    # the load waiting for this model's place in Triton: it takes the place over in the same
    # step as this model's unload ends, so no other load can slip in and the budget holds
    heir: ModelEntry | None = None
    # per-TargetModel metrics (SageMaker has none; GET /metrics and `mme endpoint status`)
    invocations: int = 0
    hits: int = 0  # requests that found it loaded (warm)
    errors: int = 0  # requests answered with an error
    evictions: int = 0
    last_load_s: float = 0.0
    total_load_s: float = 0.0

    def report(self, now_mono: float, now_wall: float) -> ModelReport:
        """Its counters, ``last_used`` as wall-clock time (it is kept monotonic, so a clock
        change cannot make a model look recently used)."""
        last_used = now_wall - (now_mono - self.last_used) if self.last_used else None
        return ModelReport(state=self.state, invocations=self.invocations, hits=self.hits,
                           loads=self.loads, last_load_s=round(self.last_load_s, 4),
                           total_load_s=round(self.total_load_s, 4), evictions=self.evictions,
                           errors=self.errors, last_used=last_used)

    @property
    def repo(self) -> NamespacedModel:
        """Its models in the Triton repository (there once downloaded, until discarded)."""
        if self.ns is None:
            raise RuntimeError(f"model {self.target} has no files in the repository")
        return self.ns


class RunningStat:
    """Count, sum and max of a series: what SageMaker's CloudWatch statistics report, O(1)."""

    __slots__ = ("count", "total", "max")

    def __init__(self) -> None:
        self.count, self.total, self.max = 0, 0.0, 0.0

    def append(self, x: float) -> None:
        self.count += 1
        self.total += x
        self.max = max(self.max, x)

    def report(self) -> StatReport:
        return StatReport(count=self.count, avg=self.total / self.count if self.count else 0.0,
                          max=self.max)


class Reservoir:
    """The last ``size`` samples (a ring buffer: O(1) per sample); percentiles are computed
    when asked (GET /metrics), never per request."""

    def __init__(self, size: int = 4096) -> None:
        self.samples: collections.deque[float] = collections.deque(maxlen=size)
        self.count = 0

    def append(self, x: float) -> None:
        self.samples.append(x)
        self.count += 1

    def percentile(self, q: float) -> float:
        xs = sorted(self.samples)
        if not xs:
            return 0.0
        return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]

    def report(self) -> PercentileReport:
        return PercentileReport(count=self.count, window=len(self.samples),
                                p50=self.percentile(50), p99=self.percentile(99),
                                max=max(self.samples, default=0.0))


class ThrashGuard:
    """Rolling miss rate over the last ``window`` requests, and a WARNING when it stays high.

    Why: an endpoint whose working set does not fit its budget spends its time loading and
    unloading (on SageMaker it shows as a high ModelUnloadingTime sample count) and every
    request pays a load. Said once per ``interval_s`` so the log stays bounded. The window
    need not be full: from ``min_requests`` requests on (or a full window, if smaller) the
    rate over those seen counts, so a cold start that misses 100 of its first 100 is said.
    """

    def __init__(self, window: int = 200, threshold: float = 0.5, interval_s: float = 60.0,
                 min_requests: int = 20) -> None:
        self.window, self.threshold, self.interval_s = max(1, window), threshold, interval_s
        self.min_requests = max(1, min(min_requests, self.window))
        self._last: collections.deque[bool] = collections.deque(maxlen=self.window)
        self.misses = 0  # among the last `window` requests
        self.warnings = 0
        self._warned_at: float | None = None

    def record(self, hit: bool) -> None:
        if len(self._last) == self.window and not self._last[0]:
            self.misses -= 1
        self._last.append(hit)
        if not hit:
            self.misses += 1
            if self.thrashing:
                self._maybe_warn()

    @property
    def miss_rate(self) -> float:
        return self.misses / len(self._last) if self._last else 0.0

    @property
    def thrashing(self) -> bool:
        return len(self._last) >= self.min_requests and self.miss_rate > self.threshold

    def _maybe_warn(self) -> None:
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < self.interval_s:
            return
        self._warned_at = now
        self.warnings += 1
        logging.getLogger("mme.local").warning(
            "thrashing: %.0f%% of the last %d requests missed the loaded models (threshold "
            "%.0f%%); the working set does not fit: raise max_loaded_models or the memory, or "
            "spread the models over more endpoints", 100 * self.miss_rate, len(self._last),
            100 * self.threshold)

    def report(self) -> ThrashReport:
        return ThrashReport(miss_rate=round(self.miss_rate, 4), window=self.window,
                            requests=len(self._last), threshold=self.threshold,
                            thrashing=self.thrashing, warnings=self.warnings)


@dataclass
class Metrics:
    """SageMaker's MME CloudWatch metrics, kept as running counts and sums (milliseconds),
    plus what SageMaker does not report: admission time, peaks, thrash, Triton calls."""

    invocations: int = 0
    model_cache_hit: int = 0
    loading_wait_ms: RunningStat = field(default_factory=RunningStat)
    downloading_ms: RunningStat = field(default_factory=RunningStat)
    loading_ms: RunningStat = field(default_factory=RunningStat)
    unloading_ms: RunningStat = field(default_factory=RunningStat)
    evictions: int = 0
    disk_evictions: int = 0
    triton_deaths: int = 0
    triton_restarts: int = 0
    triton_failed_starts: int = 0
    stub_failures: int = 0
    # time from a warm request's arrival to its forward to Triton (checks, admission)
    admission_ms: Reservoir = field(default_factory=Reservoir)
    peak_loaded: int = 0  # high-water mark of models loading, loaded or unloading in Triton
    load_calls: int = 0  # Triton repository calls
    unload_calls: int = 0
    thrash: ThrashGuard = field(default_factory=ThrashGuard)
    # why requests missed: the model was not in Triton, its load was already under way
    # (another request started it), or it was being unloaded (evicted a moment before)
    misses: dict[str, int] = field(default_factory=lambda: {"Absent": 0, "JoinedLoad": 0,
                                                            "Unloading": 0})
    # spare room: models unloaded in the background to keep places free (also MemoryEvictions)
    background_evictions: int = 0
    # how each load got its place: free at once, after its own victim's unload (the wait the
    # spare room avoids), after a background unload already under way, after waiting for a
    # model to become idle
    load_admission: dict[str, int] = field(default_factory=lambda: {
        "Free": 0, "WaitedForEviction": 0, "WaitedForBackgroundUnload": 0, "WaitedForIdle": 0})

    def load_unload_s(self) -> tuple[float | None, float | None]:
        """(mean seconds a load holds its slot: download + Triton load, mean seconds an unload
        holds its place), each None until :data:`SPARE_MIN_SAMPLES` were timed: what the
        derived spare room is sized by (:func:`derived_spare`)."""
        def mean_s(*stats: RunningStat) -> float | None:
            if stats[0].count < SPARE_MIN_SAMPLES:
                return None
            return sum(x.total / x.count for x in stats if x.count) / 1000.0
        return mean_s(self.loading_ms, self.downloading_ms), mean_s(self.unloading_ms)

    def report(self, loaded: int, spare: int) -> CountersReport:
        """The counters as ``GET /metrics`` shows them (``loaded`` and ``spare`` slots are the
        manager's to tell: these records do not know the models)."""
        return CountersReport(
            loaded_model_count=loaded,
            invocations=self.invocations,
            model_cache_hit=self.model_cache_hit,
            model_loading_wait_time=self.loading_wait_ms.report(),
            model_downloading_time=self.downloading_ms.report(),
            model_loading_time=self.loading_ms.report(),
            model_unloading_time=self.unloading_ms.report(),
            memory_evictions=self.evictions,
            disk_evictions=self.disk_evictions,
            triton_deaths=self.triton_deaths,
            triton_restarts=self.triton_restarts,
            triton_failed_starts=self.triton_failed_starts,
            stub_failures=self.stub_failures,
            admission_time=self.admission_ms.report(),
            peak_loaded_model_count=self.peak_loaded,
            triton_load_calls=self.load_calls,
            triton_unload_calls=self.unload_calls,
            thrash=self.thrash.report(),
            misses=dict(self.misses),
            background_evictions=self.background_evictions,
            load_admission=dict(self.load_admission),
            spare_slots=spare,
        )
