"""A discrete-event simulation of a SageMaker multi-model endpoint (numpy + one Python loop).

Model (SageMaker's documented MME behaviour, simplified where said):
- requests arrive as given (a replayed sequence) or as Poisson streams at the variants' rates;
- each instance holds models up to its usable memory (the tightest of GPU memory and host
  memory, times ``usable_fraction``: SageMaker starts unloading when memory is *high*, not full);
  a new load unloads least-recently-used models until it fits (models in flight are not
  protected: a simplification); files stay on the instance's disk until the disk is full, then
  the least-recently-used file not loaded is deleted;
- routing: to an instance that has the model loaded when one exists (the least loaded of them),
  else to the least loaded instance (earliest free worker), which loads it;
- a miss costs the load time from disk, plus the download (cold load) when the file is not on
  that instance's disk, plus the unloads it forces; it occupies a worker for that long;
- each instance serves ``workers`` requests at once (FIFO per instance);
- ``cache_enabled=False`` (``ModelCacheSetting=Disabled``) unloads the model after each request.

Figures: warm-hit ratio, p50/p95/p99 latency, loads and downloads per hour, utilisation, and the
share of requests over 60 s (SageMaker's ``ModelNotReadyException``).

:func:`che_hit_ratio` is the analytic shortcut for screening (Che's approximation of an LRU
cache under independent requests); the planner simulates every plan it reports.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from infra.errors import UserError

MODEL_NOT_READY_S = 60.0


class SimulationError(UserError, ValueError):
    """A configuration the simulation cannot run (e.g. a model larger than an instance)."""


@dataclass(frozen=True)
class FleetArrays:
    """Per-variant footprints as arrays (index = variant id): bytes and seconds."""

    gpu_bytes: np.ndarray
    host_bytes: np.ndarray
    disk_bytes: np.ndarray
    load_disk_s: np.ndarray
    download_s: np.ndarray  # cold load - load from disk
    unload_s: np.ndarray
    service_s: np.ndarray

    def subset(self, idx: np.ndarray) -> FleetArrays:
        return FleetArrays(*(a[idx] for a in (self.gpu_bytes, self.host_bytes, self.disk_bytes,
                                             self.load_disk_s, self.download_s, self.unload_s,
                                             self.service_s)))


@dataclass(frozen=True)
class InstanceConfig:
    """One endpoint's instances: how many, their capacities (bytes; inf = not binding), workers."""

    count: int
    gpu_bytes: float
    host_bytes: float
    disk_bytes: float
    workers: int = 1
    cache_enabled: bool = True
    usable_fraction: float = 0.9


@dataclass
class SimResult:
    requests: int
    hits: int
    loads: int
    downloads: int
    busy_s: float
    duration_s: float
    instances: int
    workers: int
    latencies_s: np.ndarray

    @property
    def warm_hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 1.0

    def figures(self) -> dict[str, float]:
        lat = self.latencies_s
        q = np.percentile(lat, [50, 95, 99]) * 1000 if len(lat) else np.zeros(3)
        hours = self.duration_s / 3600.0
        return {"requests": float(self.requests), "warm_hit_ratio": self.warm_hit_ratio,
                "p50_ms": float(q[0]), "p95_ms": float(q[1]), "p99_ms": float(q[2]),
                "loads_per_hour": self.loads / hours, "downloads_per_hour": self.downloads / hours,
                "utilisation": self.busy_s / (self.duration_s * self.instances * self.workers),
                "over_60s_share": float((lat > MODEL_NOT_READY_S).mean()) if len(lat) else 0.0,
                "cold_share": 1.0 - self.warm_hit_ratio}


class _Instance:
    """One instance's state: loaded models (LRU order -> ready time), files on disk (LRU order),
    the bytes they use, and its workers' free times (a heap)."""

    __slots__ = ("loaded", "disk", "gpu", "host", "disk_used", "free")

    def __init__(self, workers: int) -> None:
        self.loaded: OrderedDict[int, float] = OrderedDict()
        self.disk: OrderedDict[int, None] = OrderedDict()
        self.gpu = self.host = self.disk_used = 0.0
        self.free = [0.0] * workers


def _check_fits(f: FleetArrays, cfg: InstanceConfig) -> None:
    cap_g, cap_h = cfg.gpu_bytes * cfg.usable_fraction, cfg.host_bytes * cfg.usable_fraction
    too_big = np.flatnonzero((f.gpu_bytes > cap_g) | (f.host_bytes > cap_h) | (f.disk_bytes > cfg.disk_bytes))
    if len(too_big):
        raise SimulationError(f"{len(too_big)} variant(s) (first: index {too_big[0]}) do not fit on one "
                              f"instance (GPU {cap_g / 2**30:.1f} GiB, host {cap_h / 2**30:.1f} GiB usable)")


class _Endpoint:
    """The simulation state and its two operations (route, load); split from the loop so each
    piece stays small."""

    def __init__(self, f: FleetArrays, cfg: InstanceConfig) -> None:
        self.f, self.cfg = f, cfg
        self.cap_g, self.cap_h = cfg.gpu_bytes * cfg.usable_fraction, cfg.host_bytes * cfg.usable_fraction
        self.inst = [_Instance(cfg.workers) for _ in range(cfg.count)]
        self.holders: dict[int, list[int]] = {}
        self.gpu, self.host, self.disk = f.gpu_bytes.tolist(), f.host_bytes.tolist(), f.disk_bytes.tolist()
        self.loads = self.downloads = self.turn = 0

    def pick(self, t: float) -> int:
        """The least loaded instance for a model loaded nowhere: one with a free worker at ``t``
        before one without, then the least memory in use (to a tenth: new models spread over the
        instances' memory); ties (all full, all idle) go round the instances."""
        k = len(self.inst)
        if k == 1:
            return 0
        self.turn = (self.turn + 1) % k
        inst, cap_g, cap_h = self.inst, self.cap_g, self.cap_h
        return min(((self.turn + j) % k for j in range(k)), key=lambda j: (
            inst[j].free[0] > t, round(max(inst[j].gpu / cap_g, inst[j].host / cap_h), 1)))

    def prewarm(self, order: np.ndarray) -> None:
        """Load ``order`` (least popular first) before the first request, as LRU's steady state
        would hold them (recency ~ popularity): the most popular end up loaded."""
        k = len(self.inst)
        for n, v in enumerate(order.tolist()):  # round-robin: no request is in flight yet
            if v not in self.holders:
                self.load(n % k, v)
                self.inst[n % k].loaded[v] = 0.0

    def unload(self, i: int, v: int) -> None:
        st = self.inst[i]
        del st.loaded[v]
        st.gpu -= self.gpu[v]
        st.host -= self.host[v]
        hs = self.holders[v]
        hs.remove(i)
        if not hs:
            del self.holders[v]

    def load(self, i: int, v: int) -> float:
        """Make room for ``v`` on instance ``i`` and return the seconds the load takes there."""
        st, f = self.inst[i], self.f
        cost = float(f.load_disk_s[v])
        while st.loaded and (st.gpu + self.gpu[v] > self.cap_g or st.host + self.host[v] > self.cap_h):
            u = next(iter(st.loaded))
            self.unload(i, u)
            cost += float(f.unload_s[u])
        if v in st.disk:
            st.disk.move_to_end(v)
        else:
            self.downloads += 1
            cost += float(f.download_s[v])
            while st.disk_used + self.disk[v] > self.cfg.disk_bytes:
                old = next((x for x in st.disk if x not in st.loaded), None)
                if old is None:
                    break
                del st.disk[old]
                st.disk_used -= self.disk[old]
            st.disk[v] = None
            st.disk_used += self.disk[v]
        st.gpu += self.gpu[v]
        st.host += self.host[v]
        self.loads += 1
        self.holders.setdefault(v, []).append(i)
        return cost


def simulate(times: np.ndarray, ids: np.ndarray, fleet: FleetArrays, cfg: InstanceConfig,
             duration_s: float | None = None, warmup_s: float = 0.0,
             prewarm: np.ndarray | None = None) -> SimResult:
    """Replay the requests (``times`` sorted, ``ids`` variant indices) on one endpoint.

    Requests before ``warmup_s`` run but are not counted: an endpoint in service has been warm
    for days, and an empty start would charge every variant a first-touch miss that the steady
    state does not have. ``prewarm`` (variant ids, least popular first) is loaded before the
    first request when the cache is enabled. ``duration_s`` is the counted span (after the
    warm-up)."""
    _check_fits(fleet, cfg)
    ep = _Endpoint(fleet, cfg)
    if prewarm is not None and cfg.cache_enabled:
        ep.prewarm(prewarm)
    service = fleet.service_s.tolist()
    lat = np.empty(len(times))
    hits, busy = 0, 0.0
    first = int(np.searchsorted(times, warmup_s)) if warmup_s > 0 else 0
    loads0 = downloads0 = 0
    for n, (t, v) in enumerate(zip(times.tolist(), ids.tolist(), strict=True)):
        if n == first:
            hits, busy, loads0, downloads0 = 0, 0.0, ep.loads, ep.downloads
        hs = ep.holders.get(v)
        if hs:
            i = min(hs, key=lambda j: ep.inst[j].free[0]) if len(hs) > 1 else hs[0]
            st = ep.inst[i]
            ready = st.loaded[v]
            st.loaded.move_to_end(v)
            hits += ready <= t
            cost = service[v]
            start = max(t, st.free[0], ready)
        else:
            i = ep.pick(t)
            st = ep.inst[i]
            start = max(t, st.free[0])
            cost = ep.load(i, v) + service[v]
            st.loaded[v] = start + cost - service[v]
        finish = start + cost
        heapq.heapreplace(st.free, finish)
        lat[n] = finish - t
        busy += cost
        if not cfg.cache_enabled:
            ep.unload(i, v)
    if first >= len(times):  # nothing after the warm-up
        hits, busy, loads0, downloads0 = 0, 0.0, ep.loads, ep.downloads
    span = duration_s if duration_s is not None else (float(times[-1]) - warmup_s if len(times) else 1.0)
    return SimResult(len(times) - first, hits, ep.loads - loads0, ep.downloads - downloads0, busy,
                     max(span, 1e-9), cfg.count, cfg.workers, lat[first:])


def che_hit_ratio(rates: np.ndarray, sizes: np.ndarray, capacity: float) -> float:
    """Che's approximation of the hit ratio of an LRU cache of ``capacity`` (same unit as
    ``sizes``) under independent Poisson requests at ``rates``: the characteristic time T solves
    sum_i size_i (1 - exp(-rate_i T)) = capacity; hit ratio = sum_i rate_i (1 - exp(-rate_i T)) /
    sum_i rate_i. Used to screen plans before simulating them."""
    total = float(rates.sum())
    if total <= 0:
        return 1.0
    if float(sizes[rates > 0].sum()) <= capacity:
        return 1.0
    lo, hi = 0.0, 1.0
    while float((sizes * -np.expm1(-rates * hi)).sum()) < capacity:
        hi *= 2.0
        if hi > 1e12:
            return 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float((sizes * -np.expm1(-rates * mid)).sum()) < capacity:
            lo = mid
        else:
            hi = mid
    return float((rates * -np.expm1(-rates * lo)).sum() / total)
