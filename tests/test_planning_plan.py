"""The planner's decisions: the seed's arithmetic from the catalog, the cheaper of two types
when both meet the goal, a clear refusal when none can (naming the bound that stopped the
search), a 10,000-variant fleet, a fleet needing more instances than the old fixed grid had,
and the comparison with one endpoint per variant."""

from __future__ import annotations

import dataclasses

import pytest

from infra.aws.gpu_instances import MME_GPU_INSTANCES
from infra.aws.instance_catalog import CatalogError, load_catalog
from infra.aws.sagemaker import estimate_hourly_cost
from tasks.planning.catalog import candidate_types, price_age_line, select_types
from tasks.build.footprints import estimate_footprint
from tasks.planning.search import Goal, PlanRefused, SearchOptions, make_plan
from tasks.planning.traffic import zipf

CAT = load_catalog()
SMALL = SearchOptions(sim_hours=0.25, warmup_hours=0.05)


def _fleet(n: int, tarball_bytes: int = 90_000_000) -> list:
    fp = estimate_footprint("m", tarball_bytes, gpu=True)
    return [fp.model_copy(update={"target_model": f"v{i}"}) for i in range(n)]


def test_seed_arithmetic_two_ensembles_on_one_g4dn_4xlarge() -> None:
    """Two ensembles on one ml.g4dn.4xlarge instead of two endpoints: 50% saved, about
    $13,000 a year at the catalog's price (the AWS blog's figure)."""
    row = CAT.get("ml.g4dn.4xlarge")
    traffic = zipf(["a", "b"], 1.0, 1.0, seed=0)
    result = make_plan([row], _fleet(2), traffic, Goal(p99_ms=1000.0), "us-east-1", SMALL)
    chosen = result.chosen.candidate
    assert (chosen.instance_type, chosen.count, chosen.shards) == ("ml.g4dn.4xlarge", 1, 1)
    assert result.baseline.instances == {"ml.g4dn.4xlarge": 2}
    saved_per_year = (result.baseline.hourly_usd - chosen.hourly_usd) * 8760
    assert chosen.hourly_usd / result.baseline.hourly_usd == pytest.approx(0.5)
    assert saved_per_year == pytest.approx(row.hourly("us-east-1") * 8760)
    assert 12_500 < saved_per_year < 13_500  # 1.505 $/h x 8760 h = $13,184


def test_the_search_says_its_progress(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 21: the search says ``candidates simulated n (at most N)`` as it simulates, and
    a last line with how many it simulated, in how long; the count is the plan's own."""
    traffic = zipf([f"v{i}" for i in range(20)], 1.0, 1.0, seed=0)
    with caplog.at_level("INFO", logger="mme.plan"):
        result = make_plan([CAT.get("ml.g5.xlarge")], _fleet(20), traffic, Goal(1000.0),
                           "us-east-1", SMALL)
    lines = [r.getMessage() for r in caplog.records if r.name == "mme.plan"]
    assert lines and all(line.startswith("candidates simulated ") for line in lines)
    assert lines[-1].startswith(f"candidates simulated {len(result.simulated)} in "), lines
    assert all(f"(at most {SMALL.max_simulations})" in line for line in lines[:-1])


def test_picks_the_cheaper_of_two_types_that_both_meet_the_goal() -> None:
    g4, g5 = CAT.get("ml.g4dn.xlarge"), CAT.get("ml.g5.xlarge")
    traffic = zipf([f"v{i}" for i in range(20)], 1.1, 2.0, seed=0)
    for types in ([g4, g5], [g5, g4]):
        result = make_plan(types, _fleet(20), traffic, Goal(1000.0), "us-east-1", SMALL)
        assert result.chosen.candidate.instance_type == "ml.g4dn.xlarge"
    # the g5 meets the goal too (alone); with the g4dn it is left unsimulated once its cheapest plan costs more
    alone = make_plan([g5], _fleet(20), traffic, Goal(1000.0), "us-east-1", SMALL)
    assert alone.chosen.meets and alone.chosen.candidate.hourly_usd > result.chosen.candidate.hourly_usd
    # make the g5 the cheaper one: the choice follows the price, not the order or the name
    cheap_g5 = dataclasses.replace(g5, price={"us-east-1": 0.5})
    result = make_plan([g4, cheap_g5], _fleet(20), traffic, Goal(1000.0), "us-east-1", SMALL)
    assert result.chosen.candidate.instance_type == "ml.g5.xlarge"


def test_refuses_with_a_clear_message_when_no_plan_meets_the_goal() -> None:
    """A p99 goal of 1 ms cannot be met by a 10 ms service time on any instance."""
    traffic = zipf([f"v{i}" for i in range(10)], 1.1, 5.0, seed=0)
    with pytest.raises(PlanRefused, match=r"no plan meets p99 <= 1 ms .*stopped by: the service time alone "
                                          r"\(p99 10 ms"):
        make_plan([CAT.get("ml.g4dn.xlarge")], _fleet(10), traffic, Goal(1.0), "us-east-1", SMALL)


def test_ten_thousand_variants_are_planned() -> None:
    """The counts grow by doubling and bisection on the screen, a handful of plans is
    simulated, each on a span settled for its warm-hit ratio, and the plan found meets the goal
    at a small share of one endpoint per variant."""
    types, _ = candidate_types(CAT, "us-east-1", needs_gpu=True)
    fleet = _fleet(10_000)
    traffic = zipf([f"v{i}" for i in range(10_000)], 1.1, 200.0, seed=0)
    result = make_plan(types, fleet, traffic, Goal(1000.0), "us-east-1")
    opts = SearchOptions()
    assert result.candidates_evaluated >= result.screened_out
    assert 1 <= len(result.simulated) <= opts.max_simulations
    assert result.chosen.meets and (result.chosen.figures or {})["p99_ms"] <= 1000.0
    for e in result.simulated:  # at 200 req/s an hour is 720,000 requests: far fewer settle the hit ratio
        fig = e.figures or {}
        assert fig["simulated_hours"] < opts.sim_hours and fig["requests"] < 720_000
        assert fig["hit_ratio_ci"] <= opts.hit_tolerance
        assert abs(fig["warm_hit_ratio"] - e.screen["che_hit_ratio"]) <= 0.02
    c = result.chosen.candidate
    assert c.count * c.shards <= opts.max_instances
    assert result.baseline.endpoints == 10_000
    assert result.chosen.candidate.hourly_usd < 0.1 * result.baseline.hourly_usd


def _big_fleet(n: int = 900) -> tuple[list, object]:
    """Variants of ~2 GiB host memory each (3 fit an ml.m5.large), loads of ~9 s, traffic
    nearly uniform: a p99 of 1 s needs every variant loaded, 300 ml.m5.large instances."""
    fp = estimate_footprint("m", 1_500_000_000, gpu=False)
    return ([fp.model_copy(update={"target_model": f"v{i}"}) for i in range(n)],
            zipf([f"v{i}" for i in range(n)], 0.3, 2.0, seed=0))


def test_grows_past_the_old_grid_when_the_goal_needs_it() -> None:
    """The old grid stopped at 4 shards x 64 instances (256); this fleet needs 300."""
    fleet, traffic = _big_fleet()
    opts = dataclasses.replace(SMALL, max_instances=1024)
    result = make_plan([CAT.get("ml.m5.large")], fleet, traffic, Goal(1000.0), "us-east-1", opts)
    c = result.chosen.candidate
    assert result.chosen.meets and c.count * c.shards > 4 * 64
    assert c.count <= opts.max_per_endpoint and c.shards > 4
    assert 300 <= c.count * c.shards <= 320  # bisected, not a grid step: at most one instance per shard spare


def test_a_cap_too_small_is_refused_naming_max_instances() -> None:
    fleet, traffic = _big_fleet()
    opts = dataclasses.replace(SMALL, max_instances=256)
    with pytest.raises(PlanRefused, match=r"within --max-instances 256 .*stopped by: max instances reached"
                                          r".*raise --max-instances") as err:
        make_plan([CAT.get("ml.m5.large")], fleet, traffic, Goal(1000.0), "us-east-1", opts)
    assert "closest simulated: " in str(err.value)


def test_instance_types_without_one_that_fits_are_refused_naming_them() -> None:
    """A variant needing ~15 GiB of host memory fits neither type named (14.4 GiB usable at most); --instance-types with
    a name the catalog lacks, or a GPU type for a CPU fleet, is refused naming it."""
    fp = estimate_footprint("m", 12_000_000_000, gpu=False)
    fleet = [fp.model_copy(update={"target_model": f"v{i}"}) for i in range(3)]
    traffic = zipf(["v0", "v1", "v2"], 1.1, 1.0, seed=0)
    names = ("ml.m5.large", "ml.m5.xlarge")
    types, _ = select_types(CAT, "us-east-1", False, names)
    assert [t.name for t in types] == list(names)
    opts = dataclasses.replace(SMALL, instance_types=names)
    with pytest.raises(PlanRefused, match=r"no instance type has enough memory for one variant.*"
                                          r"--instance-types \(ml\.m5\.large, ml\.m5\.xlarge\)"):
        make_plan(types, fleet, traffic, Goal(1000.0), "us-east-1", opts)
    with pytest.raises(CatalogError, match=r"--instance-types: ml\.x9\.huge: not in the catalog"):
        select_types(CAT, "us-east-1", False, ("ml.m5.large", "ml.x9.huge"))
    with pytest.raises(CatalogError, match=r"ml\.g5\.xlarge: not a CPU type"):
        select_types(CAT, "us-east-1", False, ("ml.g5.xlarge",))


def test_thousand_variant_target_is_within_ten_percent_of_per_variant_endpoints() -> None:
    """Issue 12's target: 1,000 variants, Zipf(1.1), 20 req/s, p99 <= 1 s: at most 10%."""
    types, _ = candidate_types(CAT, "us-east-1", needs_gpu=True)
    traffic = zipf([f"v{i}" for i in range(1000)], 1.1, 20.0, seed=0)
    result = make_plan(types, _fleet(1000), traffic, Goal(1000.0), "us-east-1")
    assert result.chosen.candidate.hourly_usd <= 0.10 * result.baseline.hourly_usd
    assert result.one_instance is not None and not Goal(1000.0).met_by(result.one_instance.figures)


def test_catalog_is_the_one_source_of_truth() -> None:
    """The deploy path's GPU table and cost line read the same file as the planner."""
    assert set(MME_GPU_INSTANCES) == {n for n, r in CAT.instances.items() if r.mme_gpu}
    assert estimate_hourly_cost("ml.g4dn.4xlarge") == CAT.get("ml.g4dn.4xlarge").hourly("us-east-1") == 1.505
    assert MME_GPU_INSTANCES["ml.g5.xlarge"].compute_capability == "8.6"


def test_prices_say_how_old_they_are_and_unknown_regions_are_refused() -> None:
    import datetime as dt

    line = price_age_line(CAT, "us-east-1", today=CAT.prices_checked + dt.timedelta(days=40))
    assert "40 days old" in line and CAT.prices_checked.isoformat() in line
    with pytest.raises(CatalogError, match="no price there"):
        candidate_types(CAT, "ap-south-1", needs_gpu=True)
    _, skipped = candidate_types(CAT, "us-east-1", needs_gpu=False)
    assert any("ml.c5.large: no us-east-1 price" in s for s in skipped)


def test_a_simulation_runs_longer_only_while_its_hit_ratio_is_unsettled() -> None:
    """At 200 req/s the first span is ~100,000 counted requests; a tolerance nothing meets
    doubles it up to the full hour; a loose one stops at the first span."""
    from tasks.planning.search import Candidate, fleet_arrays, request_sequence, short_spans, simulate_settled

    row = CAT.get("ml.g4dn.xlarge")
    fleet = fleet_arrays(_fleet(500))
    traffic = zipf([f"v{i}" for i in range(500)], 1.1, 200.0, seed=0)
    opts = SearchOptions(sim_hours=0.5, warmup_hours=0.05)
    seq = request_sequence(traffic.peak_rates, opts)
    cand = Candidate(row.name, 8, 1, "enabled", 1.0)  # ~270 of the 500 held, utilisation well under 1
    first = short_spans(200.0, opts).sim_hours
    assert first < opts.sim_hours and 90_000 < first * 3600 * 200 < 110_000
    loose = simulate_settled(cand, row, fleet, seq, Goal(10_000.0), dataclasses.replace(opts, hit_tolerance=1.0))
    assert loose["simulated_hours"] == pytest.approx(first)
    strict = simulate_settled(cand, row, fleet, seq, Goal(10_000.0), dataclasses.replace(opts, hit_tolerance=0.0))
    assert strict["simulated_hours"] == opts.sim_hours and strict["requests"] > 3 * loose["requests"]
    assert abs(strict["warm_hit_ratio"] - loose["warm_hit_ratio"]) <= loose["hit_ratio_ci"] + strict["hit_ratio_ci"]
