"""The simulator as the local endpoint works, and the replay harness of bench/planner_check.py.

Exact checks only (counts, orders, per-request decisions; no timing bounds):
- a closed loop of one client is an exact LRU whatever the load times (each request is sent
  after the previous one is answered, so no model is ever still loading when asked for);
- load slots (the endpoint's ``max_concurrent_loads``) make the third and fourth concurrent
  misses wait for a slot;
- the victim of an eviction is the least recently used *idle* model;
- the harness against a real endpoint (3 tiny ensembles, budget 1, 20 requests one at a time):
  the simulator's warm/cold decision equals the endpoint's for every request;
- ``measure_footprint`` of a fleet variant, whose tarball's entry model is not named after it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.planning.cache_model import lru_warm
from tasks.planning.simulate import FleetArrays, InstanceConfig, simulate, simulate_closed_loop

BENCH = Path(__file__).resolve().parents[1] / "bench"
INF = float("inf")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Triton runs on Linux")


def _fleet(n: int, load: float = 0.0, service: float | list[float] = 0.0, unload: float = 0.0) -> FleetArrays:
    full = lambda x: np.full(n, float(x))  # noqa: E731
    return FleetArrays(gpu_bytes=full(0), host_bytes=full(1), disk_bytes=full(1), load_disk_s=full(load),
                       download_s=full(0), unload_s=full(unload),
                       service_s=np.array(service, dtype=float) if isinstance(service, list) else full(service))


@pytest.mark.parametrize("load", [0.0, 0.5, 30.0])
def test_one_client_closed_loop_is_an_exact_lru_whatever_the_load_time(load: float) -> None:
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 8, size=300)
    cfg = InstanceConfig(count=1, gpu_bytes=INF, host_bytes=3, disk_bytes=INF, workers=2,
                         usable_fraction=1.0, load_slots=2)
    sim = simulate_closed_loop(ids, _fleet(8, load=load, service=0.01, unload=0.2), cfg, clients=1)
    expected = list(lru_warm(ids.tolist(), 3))
    assert sim.warm is not None and sim.warm.tolist() == expected
    assert 0 < sum(expected) < len(expected)
    assert sim.loads == len(ids) - sum(expected)


def test_load_slots_make_the_third_and_fourth_concurrent_miss_wait() -> None:
    """4 clients ask for 4 different models at once: with 2 load slots two loads run, two wait
    (latency 1 s, 1 s, 2 s, 2 s); when a load holds a worker instead (no slots, 4 workers) all
    four load at once."""
    ids = np.arange(4)
    slots = InstanceConfig(count=1, gpu_bytes=INF, host_bytes=10, disk_bytes=INF, workers=4,
                           usable_fraction=1.0, load_slots=2)
    sim = simulate_closed_loop(ids, _fleet(4, load=1.0), slots, clients=4)
    assert sorted(sim.latencies_s.tolist()) == [1.0, 1.0, 2.0, 2.0]
    assert sim.arrivals_s is not None and sim.arrivals_s.tolist() == [0.0] * 4
    no_slots = InstanceConfig(count=1, gpu_bytes=INF, host_bytes=10, disk_bytes=INF, workers=4,
                              usable_fraction=1.0)
    assert simulate_closed_loop(ids, _fleet(4, load=1.0), no_slots, clients=4).latencies_s.tolist() == [1.0] * 4


def test_overlapping_loads_take_the_measured_slowdown() -> None:
    """Two clients miss on two models at once: the first load is placed alone (1 s); the
    second runs at 1/2.5 speed while the first runs (0.4 s of its work by t = 1), then alone
    (the other 0.6 s): it ends at 1.6 s."""
    cfg = InstanceConfig(count=1, gpu_bytes=INF, host_bytes=10, disk_bytes=INF, workers=2,
                         usable_fraction=1.0, load_slots=2, load_slowdown=(1.0, 2.5))
    sim = simulate_closed_loop(np.arange(2), _fleet(2, load=1.0), cfg, clients=2)
    assert sim.latencies_s.tolist() == pytest.approx([1.0, 1.6])


def test_load_times_spread_with_the_measured_coefficient_of_variation() -> None:
    """Every request a miss on a new model, one client: each latency is one load time. With
    ``load_cv`` 0.5 they spread about the figure (mean 1 s, CV 0.5, seeded); with 0 they are
    all the figure."""
    ids = np.arange(4000)
    base = dict(count=1, gpu_bytes=INF, host_bytes=5000, disk_bytes=INF, workers=1, usable_fraction=1.0,
                load_slots=1)
    spread = simulate_closed_loop(ids, _fleet(4000, load=1.0), InstanceConfig(**base, load_cv=0.5, seed=1), 1)
    lat = spread.latencies_s
    assert abs(lat.mean() - 1.0) < 0.05 and abs(lat.std() / lat.mean() - 0.5) < 0.05
    fixed = simulate_closed_loop(ids, _fleet(4000, load=1.0), InstanceConfig(**base), 1)
    assert set(fixed.latencies_s.tolist()) == {1.0}


def test_a_warm_request_is_not_held_up_by_a_load_in_progress() -> None:
    """One worker, one load slot: a warm request that arrives while another model loads is
    served at once (the load's request books no worker ahead of its end)."""
    cfg = InstanceConfig(count=1, gpu_bytes=INF, host_bytes=3, disk_bytes=INF, workers=1,
                         usable_fraction=1.0, load_slots=1)
    sim = simulate(np.array([0.0, 6.0, 6.5, 7.0]), np.array([0, 0, 1, 0]), _fleet(2, load=5.0, service=0.25), cfg)
    assert sim.warm is not None and sim.warm.tolist() == [False, True, False, True]
    assert sim.latencies_s.tolist() == [5.25, 0.25, 5.25, 0.25]


def test_the_victim_is_the_least_recently_used_idle_model() -> None:
    """Capacity 2: model 0 is the least recently used but still serving (10 s), so loading
    model 2 evicts model 1; model 0's next request is warm."""
    times = np.array([0.0, 0.1, 0.2, 0.3])
    ids = np.array([0, 1, 2, 0])
    cfg = InstanceConfig(count=1, gpu_bytes=INF, host_bytes=2, disk_bytes=INF, workers=4, usable_fraction=1.0)
    sim = simulate(times, ids, _fleet(3, service=[10.0, 0.01, 0.01]), cfg)
    assert sim.warm is not None and sim.warm.tolist() == [False, False, False, True]
    assert (sim.hits, sim.loads) == (1, 3)


@pytest.fixture(scope="module")
def planner_check():  # noqa: ANN201 - the bench module
    sys.path.insert(0, str(BENCH))
    try:
        import planner_check

        yield planner_check
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.triton
@linux_only
def test_replay_matches_the_endpoint_request_by_request(planner_check, tmp_path: Path) -> None:  # noqa: ANN001
    """3 tiny ensembles, budget 1, a seeded Zipf sequence of 20 sent one at a time: the
    simulator, configured from the endpoint's settings and replaying the sequence in the order
    the endpoint saw it, decides warm/cold as the endpoint did for every request."""
    from fleet_traffic import make_tiny, zipf_sequence

    from tasks.build.footprints import estimate_footprint

    prefix = tmp_path / "models"
    prefix.mkdir()
    variants = make_tiny(prefix, 3)
    targets = [v.target for v in variants]
    sequence, _ = zipf_sequence(targets, 20, 1.1, seed=4)
    records, cfg, endpoint = planner_check.endpoint_run(variants, prefix, tmp_path / "cache", 1, sequence, 1)
    assert [r.target for r in records] == sequence and all(r.status == 200 for r in records)
    fp = estimate_footprint("tiny", (prefix / targets[0]).stat().st_size, gpu=False)
    figures = {k: getattr(fp, k).value for k in planner_check.FIGURES}
    sim = planner_check.replay(records, targets, figures, cfg, clients=1, workers=2)
    measured = [r.warm for r in records]
    assert sim.warm is not None and sim.warm.tolist() == measured
    assert 0 < sum(measured) < len(measured)  # both kinds happened
    assert endpoint["TritonLoadCalls"] == len(sequence) - sum(measured) == sim.loads
    summary = planner_check.compare(records, sim)
    assert summary["same_decision_share"] == 1.0
    assert summary["measured"]["warm_hit_ratio"] == summary["predicted"]["warm_hit_ratio"]


@pytest.mark.triton
@linux_only
def test_measure_footprint_of_a_variant_whose_entry_has_another_name(planner_check, tmp_path: Path) -> None:  # noqa: ANN001
    """A fleet variant's manifest names the variant (``tiny-00002``); its tarball holds the
    template's models (``pipe`` -> ``add``): the profile loads the entry model and keeps the
    variant's name."""
    from fleet_traffic import TINY_X, make_tiny

    from tasks.build.footprints import measure_footprint

    (v,) = make_tiny(tmp_path, 1)
    fp = measure_footprint(tmp_path / v.target, "tiny-00000", {"X": TINY_X}, max_batch=2, repeats=3)
    assert fp.target_model == "tiny-00000"
    assert fp.load_disk_s.status == "measured" and fp.load_disk_s.value > 0
    assert fp.service_batch1_s.value > 0 and fp.unload_s.value > 0


@pytest.mark.triton
@linux_only
def test_fleet_verify_records_load_unload_and_service_and_the_planner_reads_them(
        planner_check, tmp_path: Path) -> None:  # noqa: ANN001
    """The fleet build's Triton check of a canary records its load, unload and service
    seconds and where they were measured; a manifest with that validation (and no
    ``footprint``) gives the planner measured figures for them, estimated ones for the rest."""
    from types import SimpleNamespace

    from fleet_traffic import TINY_X, make_tiny

    from infra.records.manifest import parse_manifest
    from tasks.fleet.verify import verify_in_triton
    from tasks.build.footprints import from_manifest
    from tasks.build.verify import Sample, Verification

    (v,) = make_tiny(tmp_path, 1)  # tiny-00000: Y = X + 0
    staged = SimpleNamespace(variant=SimpleNamespace(name="tiny-00000"), tarball=tmp_path / v.target,
                             spec=SimpleNamespace(validation=SimpleNamespace(metric="matches_reference",
                                                                             threshold=1.0),
                                                  max_batch_size=0))
    sample = Sample({"X": TINY_X}, {"Y": TINY_X[None, :]}, {"labels": ["a", "b", "c"]})  # one row, 3 classes
    result = verify_in_triton([(staged, sample)], log=lambda _: None)["tiny-00000"]  # type: ignore[list-item]
    assert isinstance(result, Verification), result
    assert result.passed and (result.load_seconds or 0) > 0 and (result.unload_seconds or 0) > 0
    assert (result.service_seconds or 0) > 0 and isinstance(result.measured_on, str)
    times = result.footprint_times  # the first canary is measured too (its footprint)
    assert times is not None
    assert times.error is None and times.loaded is not None and times.loaded.host_pss > 0
    assert times.loaded.service_batch1_s > 0 and times.unpacked_bytes > 0
    manifest = parse_manifest({"ensemble": "tiny-00000", "target": "local-cpu", "target_model": v.target,
                               "artifact": v.target, "sha256": "0" * 64, "bytes": 1000,
                               "validation": result.to_validation(checked_by="triton").model_dump()},
                         "m.json")
    fp = from_manifest(manifest)
    for fig, key in ((fp.load_disk_s, "load_seconds"), (fp.unload_s, "unload_seconds"),
                     (fp.service_batch1_s, "service_seconds")):
        assert fig.status == "measured" and fig.value == getattr(result, key)
        assert fig.hardware == result.measured_on and "verify" in (fig.where or "")
    assert fp.host_memory_bytes.status == "estimated" and fp.load_cold_s.status == "estimated"
