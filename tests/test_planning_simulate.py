"""The simulator checked against things known exactly: an exact LRU cache on the same replayed
sequence, the utilisation law (rate x service), ModelCacheSetting=Disabled, a full disk, the
60 s ModelNotReady share, and Che's approximation (the planner's screening shortcut)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest

from tasks.planning.cache_model import che_hit_ratio, lru_hits
from tasks.planning.simulate import FleetArrays, InstanceConfig, SimulationError, simulate
from tasks.planning.traffic import poisson_sequence, zipf

INF = float("inf")


def _fleet(n: int, size: float = 1.0, load: float = 0.0, download: float = 0.0, service: float = 1e-9,
           disk: float = 1.0) -> FleetArrays:
    full = lambda x: np.full(n, float(x))  # noqa: E731
    return FleetArrays(gpu_bytes=full(size), host_bytes=full(size), disk_bytes=full(disk),
                       load_disk_s=full(load), download_s=full(download), unload_s=full(0.0),
                       service_s=full(service))


@pytest.mark.parametrize("capacity", [1, 5, 20, 60])
def test_hit_ratio_equals_an_exact_lru_on_a_replayed_sequence(capacity: int) -> None:
    """One instance, unit-size models, ~zero service and load time: the simulator's hits are
    exactly an LRU cache's on the same sequence (a skewed one, so evictions matter)."""
    traffic = zipf([f"v{i}" for i in range(100)], 0.9, 10.0, seed=3)
    times, ids = poisson_sequence(traffic.rates, 600.0, seed=4)
    cfg = InstanceConfig(count=1, gpu_bytes=capacity, host_bytes=capacity, disk_bytes=INF,
                         workers=1, usable_fraction=1.0)
    result = simulate(times, ids, _fleet(100), cfg)
    expected = lru_hits(ids.tolist(), capacity)
    assert 0 < expected < len(ids)
    assert result.hits == expected
    assert result.loads == len(ids) - expected


def test_utilisation_is_rate_times_service() -> None:
    """All models fit (no misses after the first loads): the busy share of a single worker is
    rate x service, as for any single-server queue (M/M/1's rho = lambda / mu)."""
    rate, service = 5.0, 0.05
    times, ids = poisson_sequence(np.array([rate / 2, rate / 2]), 4000.0, seed=1)
    cfg = InstanceConfig(count=1, gpu_bytes=10, host_bytes=10, disk_bytes=INF, workers=1, usable_fraction=1.0)
    fig = simulate(times, ids, _fleet(2, service=service), cfg, duration_s=4000.0).figures()
    assert fig["utilisation"] == pytest.approx(rate * service, rel=0.05)
    assert fig["warm_hit_ratio"] > 0.999
    # and the mean wait of M/M/1-like queueing makes p50 at least the service time
    assert fig["p50_ms"] >= service * 1000 - 1e-6


def test_disabled_cache_never_hits() -> None:
    times, ids = poisson_sequence(np.full(3, 2.0), 300.0, seed=2)
    cfg = InstanceConfig(count=2, gpu_bytes=10, host_bytes=10, disk_bytes=INF, workers=2, cache_enabled=False)
    result = simulate(times, ids, _fleet(3, load=0.1), cfg)
    assert result.hits == 0
    assert result.loads == len(ids)
    # files stay on disk: only the first request of each model per instance downloads
    assert result.downloads <= 3 * 2


def test_a_full_disk_makes_misses_download_again() -> None:
    """Memory for one model, disk for three or two files: with room for all three files on
    disk a model is downloaded once; with room for two, cycling over three downloads on every
    miss (the least recently used file not loaded is deleted)."""
    ids = np.array([0, 1, 2] * 20)
    times = np.arange(len(ids), dtype=float)
    f = _fleet(3, load=0.01, download=0.5)
    roomy = simulate(times, ids, f, InstanceConfig(1, 1, 1, disk_bytes=3, usable_fraction=1.0))
    full = simulate(times, ids, f, InstanceConfig(1, 1, 1, disk_bytes=2, usable_fraction=1.0))
    assert roomy.loads == full.loads == len(ids)
    assert roomy.downloads == 3
    assert full.downloads == len(ids)
    assert full.latencies_s.mean() > roomy.latencies_s.mean()


def test_requests_over_60s_are_counted() -> None:
    """A 70 s load makes the first request of each model exceed SageMaker's 60 s limit."""
    ids = np.array([0, 1, 0, 1])
    times = np.array([0.0, 1.0, 200.0, 201.0])
    cfg = InstanceConfig(1, 10, 10, INF, workers=2, usable_fraction=1.0)
    fig = simulate(times, ids, _fleet(2, load=70.0, service=0.01), cfg).figures()
    assert fig["over_60s_share"] == pytest.approx(0.5)
    assert fig["warm_hit_ratio"] == pytest.approx(0.5)


def test_a_model_larger_than_an_instance_is_refused() -> None:
    with pytest.raises(SimulationError, match="do not fit"):
        simulate(np.zeros(1), np.zeros(1, dtype=int), _fleet(1, size=5), InstanceConfig(1, 4, 4, INF))


@pytest.mark.parametrize("instances,capacity", [(1, 50), (4, 40), (8, 100)])
def test_che_approximation_agrees_with_the_simulation(instances: int, capacity: int) -> None:
    """The planner screens with Che's approximation: on Zipf(1.1) traffic over 2,000 variants
    it is within 2 percentage points of the simulated warm-hit ratio (after a warm-up)."""
    traffic = zipf([f"v{i}" for i in range(2000)], 1.1, 20.0, seed=0)
    times, ids = poisson_sequence(traffic.rates, 2 * 3600.0, seed=1)
    cfg = InstanceConfig(instances, capacity, capacity, INF, workers=4, usable_fraction=1.0)
    sim = simulate(times, ids, _fleet(2000, service=0.001), cfg, warmup_s=3600.0)
    che = che_hit_ratio(traffic.rates, np.ones(2000), instances * capacity)
    assert abs(sim.warm_hit_ratio - che) < 0.02, (sim.warm_hit_ratio, che)


def _unloading_fleet(n: int, load: float, unload: float) -> FleetArrays:
    f = _fleet(n, load=load)
    return FleetArrays(f.gpu_bytes, f.host_bytes, f.disk_bytes, f.load_disk_s, f.download_s,
                       np.full(n, unload), f.service_s)


@pytest.mark.parametrize("spare", [1, 2])
def test_spare_slots_make_the_warm_set_an_lru_of_capacity_minus_spare(spare: int) -> None:
    """The endpoint's spare room, simulated: after each load the least recently used idle
    models go (in the background) until ``spare`` places are free, so with instant loads and
    unloads the hits are exactly an LRU cache's of ``capacity - spare``; 0 is plain LRU."""
    traffic = zipf([f"v{i}" for i in range(100)], 0.9, 10.0, seed=3)
    times, ids = poisson_sequence(traffic.rates, 600.0, seed=4)
    capacity = 10
    cfg = InstanceConfig(count=1, gpu_bytes=capacity, host_bytes=capacity, disk_bytes=INF,
                         workers=1, usable_fraction=1.0, spare_slots=spare)
    assert simulate(times, ids, _fleet(100), cfg).hits == lru_hits(ids.tolist(), capacity - spare)


@pytest.mark.parametrize("spare", [0, 1])
def test_with_spare_room_a_miss_does_not_pay_an_unload(spare: int) -> None:
    """Budget 3, loads of 1 s, unloads of 2 s, requests 10 s apart: from the 4th model on,
    a miss pays its victim's unload (3 s) without spare room, only its load (1 s) with it."""
    ids = np.arange(6)
    times = np.arange(6) * 10.0
    cfg = InstanceConfig(1, 3, 3, INF, workers=1, usable_fraction=1.0, spare_slots=spare)
    lat = simulate(times, ids, _unloading_fleet(6, load=1.0, unload=2.0), cfg).latencies_s
    expected = [1.0] * 3 + [3.0 if spare == 0 else 1.0] * 3
    np.testing.assert_allclose(lat, expected, atol=1e-6)


@pytest.mark.parametrize("spare,latency", [(0, 2.1), (1, 1.6)])
def test_a_miss_with_no_room_waits_for_the_background_unload(spare: int, latency: float) -> None:
    """Budget 3, one spare place: the 3rd load (t=20) sends model 0 away in the background
    (its 2 s unload ends at 22). A miss at 20.5 finds no room and waits for that unload (1.5 s)
    instead of evicting model 1 (2 s); without spare room it evicts model 0 itself."""
    ids = np.array([0, 1, 2, 3, 2])
    times = np.array([0.0, 10.0, 20.0, 20.5, 21.0])
    cfg = InstanceConfig(1, 3, 3, INF, workers=1, usable_fraction=1.0, spare_slots=spare)
    result = simulate(times, ids, _unloading_fleet(4, load=0.1, unload=2.0), cfg)
    assert result.latencies_s[3] == pytest.approx(latency, abs=1e-6)
    assert bool(result.warm[4]) and result.loads == 4  # model 2 stayed loaded either way


def test_a_load_does_not_wait_for_a_background_unload_that_has_not_started() -> None:
    """Requests are placed in arrival order, but a load placed earlier may take its place
    later (after a wait) and start a background unload then. Capacity 2, one spare place, 2
    load slots: v2 (t=1.5) joins v0's background unload and takes its place at t=3, which sends
    v1 away from t=3. v3 (t=2) finds no room; at t=2 no background unload is under way, so it
    evicts (2 s) and loads (0.1 s), as the endpoint does, instead of waiting until v1's ends."""
    ids = np.array([0, 1, 2, 3])
    times = np.array([0.0, 1.0, 1.5, 2.0])
    cfg = InstanceConfig(1, 2, 2, INF, workers=2, usable_fraction=1.0, load_slots=2, spare_slots=1)
    result = simulate(times, ids, _unloading_fleet(4, load=0.1, unload=2.0), cfg)
    np.testing.assert_allclose(result.latencies_s, [0.1, 0.1, 1.6, 2.1], atol=1e-6)


def test_a_model_chosen_to_leave_is_still_loaded_until_its_unload_starts() -> None:
    """One load slot, capacity 3, loads of 1 s. D (t=4) loads at once, sending A away; E
    (t=4.1) waits for the slot until 5, and its room will come from B (the least recently used
    idle model then). B is asked for at 4.5: in the endpoint B is still loaded then (victims
    are picked when a load starts), so it is a hit, and C, the next least recently used idle
    model, leaves at 5 in its place: C misses at 6.5, B hits again at 6.6."""
    a, b, c, d, e = range(5)
    ids = np.array([a, b, c, d, e, b, c, b])
    times = np.array([0.0, 1.1, 2.2, 4.0, 4.1, 4.5, 6.5, 6.6])
    cfg = InstanceConfig(1, 3, 3, INF, workers=1, usable_fraction=1.0, load_slots=1)
    result = simulate(times, ids, _unloading_fleet(5, load=1.0, unload=0.0), cfg)
    assert result.warm is not None
    assert result.warm.tolist() == [False, False, False, False, False, True, False, True]


@pytest.mark.parametrize("recency,warm", [
    ("served", [False, False, True, False, True, False]),
    ("request", [False, False, True, False, False, False]),
])
def test_a_loaded_miss_is_ranked_as_the_endpoint_ranks_it(recency: Literal["request", "served"],
                                                          warm: list[bool]) -> None:
    """Capacity 2, loads of 2 s, one slot. X is requested at 2.5 and served when its load ends
    (4.5); A is used at 3. Ranked by service ("served"), X is the more recent, so Y (t=5)
    evicts A: X hits at 7.5 (and A misses at 8). Ranked by request (the endpoint's default), A
    is: Y evicts X, which misses at 7.5 (its load then evicts A, the least recent again)."""
    a, x, y = range(3)
    ids = np.array([a, x, a, y, x, a])
    times = np.array([0.0, 2.5, 3.0, 5.0, 7.5, 8.0])
    cfg = InstanceConfig(1, 2, 2, INF, workers=1, usable_fraction=1.0, load_slots=1,
                         recency=recency)
    result = simulate(times, ids, _unloading_fleet(3, load=2.0, unload=0.0), cfg)
    assert result.warm is not None
    assert result.warm.tolist() == warm
