"""A discrete-event simulation of a SageMaker multi-model endpoint (numpy + one Python loop).

Model (SageMaker's documented MME behaviour, simplified where said):
- requests arrive as given (a replayed sequence) or as Poisson streams at the variants' rates;
- each instance holds models up to its usable memory (the tightest of GPU memory and host
  memory, times ``usable_fraction``: SageMaker starts unloading when memory is *high*, not full);
  a new load unloads least-recently-used *idle* models until it fits (idle: loaded and no
  request in service on it, as SageMaker and the local endpoint pick their victims; the least
  recently used of all when none is idle: a simplification); files stay on the instance's disk
  until the disk is full, then the least-recently-used file not loaded is deleted;
- routing: to an instance that has the model loaded when one exists (the least loaded of them),
  else to the least loaded instance (earliest free worker), which loads it;
- a miss costs the load time from disk, plus the download (cold load) when the file is not on
  that instance's disk, plus the unloads it forces; it occupies a worker for that long; a
  request for a model whose unload is still in progress waits for it to end, then loads it
  again (the local endpoint's rule: no request is handed a model Triton is dropping);
- each instance serves ``workers`` requests at once (FIFO per instance); with ``load_slots``
  set, loads run apart from the workers, at most ``load_slots`` at once per instance (the local
  endpoint's ``max_concurrent_loads``: a load waits for a slot, not for a worker), and the
  request that caused it is served when the load ends (booking no worker ahead: warm requests
  arriving meanwhile are served first, as in the endpoint); in its slot a miss downloads (if
  needed), unloads its victim, then loads, and while k loads overlap each progresses at
  1 / ``load_slowdown[k-1]`` of its alone speed (measured; a load placed later does not
  stretch back one placed before it: requests are handled in arrival order);
- requests either arrive at the given times (:func:`simulate`) or come from a closed loop of
  clients that each send the next request of the sequence when their last one is answered
  (:func:`simulate_closed_loop`: how a load generator with N threads replays a sequence);
- ``cache_enabled=False`` (``ModelCacheSetting=Disabled``) unloads the model after each request;
- ``spare_slots`` (the local endpoint's spare room; 0: none, SageMaker's behaviour): once a load
  has taken its place, the least recently used idle models are unloaded in the background (off
  that load's path, at no cost to it) until room for ``spare_slots`` more models of the fleet's
  median size is free. An unloading model holds its memory until its unload ends; a request
  for it waits for that end; a load that finds no room while such an unload runs waits for it
  (inherits its place) rather than evicting another model. Simplification: the room is restored
  when a load takes a place, not also when a model becomes idle later;
- recency and victims as the endpoint has them: a model is as recent as its last request
  (``recency="request"``, the endpoint's default) or its last service (``"served"``: a miss
  when its load ended), and a load that waits for a slot picks its victims when it starts,
  not when its request came (requests are handled in arrival order, so a victim picked ahead
  stays loaded for a request that arrives before that start, and the next least recently used
  idle model leaves in its place: :meth:`_Endpoint.rescue`). Checked against the endpoint
  where loads queue for seconds (docs/planner.md); where they queue for minutes (a plan far
  past its capacity, whose requests the endpoint would answer ModelNotReady after 60 s) the
  figures say "overloaded" and no more.

Figures: warm-hit ratio, p50/p95/p99 latency, loads and downloads per hour, utilisation, and the
share of requests over 60 s (SageMaker's ``ModelNotReadyException``).

:func:`tasks.planning.cache_model.che_hit_ratio` is the analytic shortcut for screening (Che's
approximation of an LRU cache under independent requests); the planner simulates every plan it
reports. The LRU order itself is the one cache model's (:class:`~tasks.planning.cache_model.Recency`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

import numpy as np

from infra.errors import UserError
from tasks.planning.cache_model import Recency

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
    load_slots: int | None = None  # loads at once per instance, apart from the workers (None: a load holds a worker)
    # with load_slots: how much longer a load (an unload) takes when k loads run at once on
    # the instance, entry k-1, relative to one alone (measured: footprints.measure_load_concurrency;
    # the last entry holds beyond the table; empty: no slowdown)
    load_slowdown: tuple[float, ...] = ()
    unload_slowdown: tuple[float, ...] = ()
    # spread of load (unload) times about their figure: each one is the figure x a lognormal
    # draw of mean 1 and this coefficient of variation (measured; 0: every one the same).
    # Latency tails come from this spread: with fixed times every miss costs the same.
    load_cv: float = 0.0
    unload_cv: float = 0.0
    seed: int = 0
    # places kept free by background unloads (the local endpoint's EndpointConfig.spare_slots,
    # resolved: infra.endpoint.state.spare_slots); 0: none (SageMaker's behaviour)
    spare_slots: int = 0
    # what least recently used ranks by (the local endpoint's EndpointConfig.recency): "request",
    # when a request for the model came; "served", when it was last served (a miss: its load's end)
    recency: Literal["request", "served"] = "request"


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
    warm: np.ndarray | None = None  # per counted request: found its model loaded (a hit)
    arrivals_s: np.ndarray | None = None  # per counted request: when it arrived (simulated)

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
    """One instance's state: loaded models (LRU order -> ready time), when each loaded model's
    last request finishes (``busy``: idle after that), files on disk (LRU order), the bytes they
    use, its workers' free times (a heap), its load slots' free times, the span of the load
    (after its download and unloads) each slot ran last, and when the unloads in progress end."""

    __slots__ = ("loaded", "busy", "disk", "gpu", "host", "disk_used", "free", "slots", "spans", "gone",
                 "draining", "touches")

    def __init__(self, workers: int, load_slots: int | None) -> None:
        self.loaded: Recency[int, float] = Recency()
        self.busy: dict[int, float] = {}
        self.disk: Recency[int, None] = Recency()
        self.gpu = self.host = self.disk_used = 0.0
        self.free = [0.0] * workers
        self.slots = [0.0] * load_slots if load_slots else []
        self.spans = [(0.0, 0.0)] * len(self.slots)
        self.gone: dict[int, float] = {}  # models being unloaded -> when their unload ends
        # background (spare-room) unloads: (end, start, gpu bytes, host bytes), a heap; their
        # bytes stay in gpu/host until they end
        self.draining: list[tuple[float, float, float, float]] = []
        # loads in progress, (when each ends, model): a model that a miss loaded was last used
        # when its load ended and its request was served, not when that request came
        self.touches: list[tuple[float, int]] = []

    def drain(self, t: float) -> None:
        """Free the bytes of the background unloads that have ended by ``t``."""
        while self.draining and self.draining[0][0] <= t:
            _, _, g, h = heapq.heappop(self.draining)
            self.gpu -= g
            self.host -= h

    def settle(self, t: float) -> None:
        """Make the models whose loads have ended by ``t`` the most recently used, in the order
        their loads ended (their requests were served then: the endpoint's recency)."""
        while self.touches and self.touches[0][0] <= t:
            ready, v = heapq.heappop(self.touches)
            if self.loaded.get(v) == ready:
                self.loaded.touch(v)

    def idle_victim(self, t: float) -> int | None:
        """The least recently used model idle at ``t``, or None (the spare room takes only
        idle models: it never delays a request)."""
        loaded, busy = self.loaded, self.busy
        return loaded.oldest(lambda u: loaded[u] <= t and busy.get(u, 0.0) <= t)

    def victim(self, t: float) -> int:
        """The least recently used model idle at ``t`` (loaded, none of its requests in
        service), else the least recently used one."""
        u = self.idle_victim(t)
        if u is None:
            u = self.loaded.oldest()
        assert u is not None, "a victim is only asked of an instance with a model loaded"
        return u


def _lognormal_params(cv: float) -> tuple[float, float] | None:
    """(mu, sigma) of a lognormal with mean 1 and coefficient of variation ``cv``."""
    if cv <= 0:
        return None
    sigma = float(np.sqrt(np.log1p(cv * cv)))
    return -sigma * sigma / 2, sigma


def _factor(table: tuple[float, ...], k: int) -> float:
    return table[min(k, len(table)) - 1] if table else 1.0


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
        self.inst = [_Instance(cfg.workers, cfg.load_slots) for _ in range(cfg.count)]
        self.holders: dict[int, list[int]] = {}
        self.gpu, self.host, self.disk = f.gpu_bytes.tolist(), f.host_bytes.tolist(), f.disk_bytes.tolist()
        self.service = f.service_s.tolist()
        self.loads = self.downloads = self.turn = 0
        self.rng = np.random.default_rng(cfg.seed)
        self.spread = (_lognormal_params(cfg.load_cv), _lognormal_params(cfg.unload_cv))
        # the room one spare place stands for: a model of the fleet's median size
        self.spare_g = float(np.median(f.gpu_bytes)) * cfg.spare_slots if len(f.gpu_bytes) else 0.0
        self.spare_h = float(np.median(f.host_bytes)) * cfg.spare_slots if len(f.host_bytes) else 0.0
        # models chosen as victims whose unload starts after the request that chose them came:
        # victim -> (its instance, when its unload starts, when it had become ready, a background
        # unload?). Until then it is still loaded there (see rescue).
        self.leaving: dict[int, tuple[int, float, float, bool]] = {}

    def draw(self, which: int) -> float:
        """A factor of mean 1 for one load (0) or unload (1) time (1.0 when no spread)."""
        params = self.spread[which]
        return float(self.rng.lognormal(*params)) if params else 1.0

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
                self.load(n % k, v, 0.0)
                self.inst[n % k].loaded[v] = 0.0

    def unload(self, i: int, v: int) -> None:
        st = self.inst[i]
        del st.loaded[v]
        st.busy.pop(v, None)
        st.gpu -= self.gpu[v]
        st.host -= self.host[v]
        hs = self.holders[v]
        hs.remove(i)
        if not hs:
            del self.holders[v]

    def load(self, i: int, v: int, t: float, slow_unload: float = 1.0) -> tuple[float, float]:
        """Make room for ``v`` on instance ``i`` at ``t``: (the seconds before the load proper --
        the download when its file is not on disk, the unloads it forces, ``slow_unload`` times
        slower --, the seconds of the load itself when it runs alone)."""
        st, f = self.inst[i], self.f
        alone, cost = float(f.load_disk_s[v]) * self.draw(0), 0.0
        if v in st.disk:
            st.disk.touch(v)
        else:
            self.downloads += 1
            cost += float(f.download_s[v])
            while st.disk_used + self.disk[v] > self.cfg.disk_bytes:
                old = st.disk.oldest(lambda x: x not in st.loaded)
                if old is None:
                    break
                del st.disk[old]
                st.disk_used -= self.disk[old]
            st.disk[v] = None
            st.disk_used += self.disk[v]
        cost = self._make_room(i, v, t, cost, slow_unload)
        st.gpu += self.gpu[v]
        st.host += self.host[v]
        self.loads += 1
        self.holders.setdefault(v, []).append(i)
        if self.cfg.spare_slots:
            self._keep_spare(i, t + cost)
        return cost, alone

    def _make_room(self, i: int, v: int, t: float, cost: float, slow_unload: float) -> float:
        """Free room for ``v`` on instance ``i`` (its load began at ``t``, ``cost`` seconds
        spent so far): wait for a background unload under way then if there is one (its place
        is inherited; one started later, by a load placed before this one but ending after
        ``t + cost``, does not exist yet), else unload LRU victims on the load's path. Returns
        the new cost."""
        st, f = self.inst[i], self.f
        st.drain(t + cost)
        while st.gpu + self.gpu[v] > self.cap_g or st.host + self.host[v] > self.cap_h:
            ends = [end for end, start, _, _ in st.draining if start <= t + cost]
            if ends:
                cost = max(cost, min(ends) - t)
                st.drain(t + cost)
                continue
            if not st.loaded:
                break
            st.settle(t + cost)
            u = st.victim(t)
            self.leaving[u] = (i, t + cost, st.loaded[u], False)
            self.unload(i, u)
            cost += float(f.unload_s[u]) * slow_unload * self.draw(1)
            st.gone[u] = t + cost  # a request for u before then waits for its unload
        return cost

    def _keep_spare(self, i: int, t: float) -> None:
        """Spare room, as the local endpoint keeps it: at ``t`` (a load has just taken its
        place) unload idle LRU models in the background until room for ``spare_slots`` more
        median-sized models is free, not counting the bytes already being unloaded."""
        st = self.inst[i]
        st.drain(t)
        drain_g = sum(g for _, _, g, _ in st.draining)
        drain_h = sum(h for _, _, _, h in st.draining)
        st.settle(t)
        while (st.gpu - drain_g + self.spare_g > self.cap_g
               or st.host - drain_h + self.spare_h > self.cap_h):
            u = st.idle_victim(t)
            if u is None:
                return
            g, h = self.gpu[u], self.host[u]
            self.leaving[u] = (i, t, st.loaded[u], True)
            self.unload(i, u)
            end = t + float(self.f.unload_s[u]) * self.draw(1)
            st.gpu += g  # held until the unload ends
            st.host += h
            heapq.heappush(st.draining, (end, t, g, h))
            st.gone[u] = end
            drain_g += g
            drain_h += h

    def serve(self, t: float, v: int) -> tuple[float, bool, float]:
        """One request for ``v`` arriving at ``t``: (when it is answered, whether its model was
        loaded when it came, the worker seconds it took). A request for a model still loading
        waits for that load and is not warm (SageMaker and the local endpoint count it a miss)."""
        if self.cfg.recency == "served":
            for st in self.inst:
                st.settle(t)
        hs = self.holders.get(v) or self.rescue(t, v)
        if hs:
            i = min(hs, key=lambda j: self.inst[j].free[0]) if len(hs) > 1 else hs[0]
            st = self.inst[i]
            ready = st.loaded[v]
            if ready <= t or self.cfg.recency == "request":  # "served": when the load ends (settle)
                st.loaded.touch(v)
            warm, cost = ready <= t, self.service[v]
            start = max(t, st.free[0], ready)
        else:
            i = self.pick(t)
            st, warm = self.inst[i], False
            self.leaving.pop(v, None)
            after = max(t, st.gone.pop(v, 0.0))  # a model being unloaded is loaded again after
            if st.slots:  # the load waits for a load slot, not for a worker
                ready = self._load_in_slot(i, v, after)
                start, cost = ready, self.service[v]
            else:  # the load holds a worker
                start = max(after, st.free[0])
                ready = start + sum(self.load(i, v, start))
                cost = ready - start + self.service[v]
            st.loaded[v] = ready
            if self.cfg.recency == "served":
                heapq.heappush(st.touches, (ready, v))
        finish = start + cost
        if warm or not st.slots:
            heapq.heapreplace(st.free, finish)
        # else: served when its load ends, booking no worker ahead: requests are handled in
        # arrival order, and a booking seconds ahead would hold up the warm requests that
        # arrive meanwhile (services are short beside loads)
        st.busy[v] = max(st.busy.get(v, 0.0), finish)
        if not self.cfg.cache_enabled:
            self.unload(i, v)
        return finish, warm, cost

    def rescue(self, t: float, v: int) -> list[int] | None:
        """``v``'s holders, when a victim's choice made ``v`` leave an instance at a moment
        after ``t``, else None. Requests are handled in arrival order, but a load that waits
        for a slot picks its victims when it is handled, for the moment its unloads start: a
        request that arrives in between still finds ``v`` loaded in the endpoint (which picks
        victims when the load starts), and the endpoint then unloads the least recently used
        other idle model. So ``v`` stays and that one takes its unload (same start and end;
        its own bytes). Without an idle model to take its place, ``v`` leaves as chosen."""
        i, start, ready, background = self.leaving.get(v, (0, 0.0, 0.0, False))
        if start <= t:
            return None
        st = self.inst[i]
        w = st.idle_victim(start)
        if w is None:
            return None
        del self.leaving[v]
        self.leaving[w] = (i, start, st.loaded[w], background)
        g, h = self.gpu[w], self.host[w]
        self.unload(i, w)
        st.gone[w] = st.gone.pop(v)
        st.loaded[v] = ready
        self.holders.setdefault(v, []).append(i)
        if background:  # the bytes stay held, now for w until its unload ends
            st.gpu += g
            st.host += h
            st.draining = [(e, b, g, h) if (e, b) == (st.gone[w], start) else (e, b, eg, eh)
                           for e, b, eg, eh in st.draining]
            heapq.heapify(st.draining)
        else:  # v holds its bytes again; w's are freed
            st.gpu += self.gpu[v]
            st.host += self.host[v]
        return self.holders[v]

    def _load_in_slot(self, i: int, v: int, t: float) -> float:
        """Load ``v`` on instance ``i`` in its first free load slot, as the endpoint does in one
        of its ``max_concurrent_loads``: download (if not on disk), unload the victim, load.
        Only loads slow each other (two unloads at once, or a load beside an unload, take about
        their alone time: measured); when the load ends."""
        st = self.inst[i]
        j = min(range(len(st.slots)), key=st.slots.__getitem__)
        begin = max(t, st.slots[j])
        busy = sum(x > begin for n, x in enumerate(st.slots) if n != j)
        before, alone = self.load(i, v, begin, _factor(self.cfg.unload_slowdown, 1 + busy))
        start = begin + before
        ready = self._stretched(start, alone, [span for n, span in enumerate(st.spans) if n != j])
        st.slots[j], st.spans[j] = ready, (start, ready)
        return ready

    def _stretched(self, start: float, work: float, others: list[tuple[float, float]]) -> float:
        """When a load of ``work`` alone-seconds that starts at ``start`` ends, progressing at
        1 / slowdown(k) while k - 1 of the ``others`` (spans of the other slots' loads) run
        beside it. The others were placed before it and are not stretched back (arrival order)."""
        t = start
        edges = sorted(x for span in others for x in span if x > start)
        for edge in [*edges, float("inf")]:
            k = 1 + sum(a <= t < b for a, b in others)
            rate = 1.0 / _factor(self.cfg.load_slowdown, k)
            if t + work / rate <= edge:
                return t + work / rate
            work -= (edge - t) * rate
            t = edge
        return t  # not reached: the last edge is infinite


class _Tally:
    """Per-request records of one replay, and the counters at the first counted request (the
    ones before it are the warm-up: they run but are not counted)."""

    def __init__(self, ep: _Endpoint, first: int) -> None:
        self.ep, self.first = ep, first
        self.lat: list[float] = []
        self.at: list[float] = []
        self.warm: list[bool] = []
        self.busy: list[float] = []
        self.loads0 = self.downloads0 = 0
        self.end = 0.0

    def serve(self, t: float, v: int) -> float:
        """Serve one request on the endpoint, record it, and return when it is answered."""
        if len(self.lat) == self.first:  # the counters before the first counted request
            self.loads0, self.downloads0 = self.ep.loads, self.ep.downloads
        finish, warm, cost = self.ep.serve(t, v)
        self.lat.append(finish - t)
        self.at.append(t)
        self.warm.append(warm)
        self.busy.append(cost)
        self.end = max(self.end, finish)
        return finish

    def result(self, span: float) -> SimResult:
        ep, f = self.ep, self.first
        if f >= len(self.lat):  # nothing after the warm-up
            self.loads0, self.downloads0 = ep.loads, ep.downloads
        warm = np.array(self.warm[f:], dtype=bool)
        return SimResult(len(warm), int(warm.sum()), ep.loads - self.loads0, ep.downloads - self.downloads0,
                         float(sum(self.busy[f:])), max(span, 1e-9), ep.cfg.count, ep.cfg.workers,
                         np.array(self.lat[f:]), warm, np.array(self.at[f:]))


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
    tally = _Tally(ep, int(np.searchsorted(times, warmup_s)) if warmup_s > 0 else 0)
    for t, v in zip(times.tolist(), ids.tolist(), strict=True):
        tally.serve(t, v)
    span = duration_s if duration_s is not None else (float(times[-1]) - warmup_s if len(times) else 1.0)
    return tally.result(span)


def simulate_closed_loop(ids: np.ndarray, fleet: FleetArrays, cfg: InstanceConfig, clients: int,
                         think_s: float = 0.0, warmup: int = 0) -> SimResult:
    """Replay the sequence ``ids`` as ``clients`` threads of a load generator send it: each
    takes the next request of the sequence when its previous one is answered (after
    ``think_s``). The arrival times are the simulation's own, not recorded ones: a measured
    closed-loop run's timestamps replayed open-loop would keep arriving at the measured pace
    even where the simulated endpoint answers more slowly (or faster), which no real client of
    that run did. The first ``warmup`` requests run but are not counted."""
    _check_fits(fleet, cfg)
    if clients < 1:
        raise SimulationError(f"clients = {clients}: a closed loop needs at least one client")
    ep = _Endpoint(fleet, cfg)
    free = [0.0] * clients
    tally = _Tally(ep, warmup)
    for v in ids.tolist():
        t = free[0] + think_s
        heapq.heapreplace(free, tally.serve(t, v))
    start = tally.at[warmup] if warmup < len(tally.at) else tally.end
    return tally.result(tally.end - start)
