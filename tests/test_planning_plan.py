"""The planner's decisions: the seed's arithmetic from the catalog, the cheaper of two types
when both meet the goal, a clear refusal when none can, a 10,000-variant fleet, and the
comparison with one endpoint per variant."""

from __future__ import annotations

import dataclasses

import pytest

from infra.gpu_instances import MME_GPU_INSTANCES
from infra.instance_catalog import CatalogError, load_catalog
from infra.sagemaker import estimate_hourly_cost
from tasks.planning.catalog import candidate_types, price_age_line
from tasks.planning.footprints import estimate_footprint
from tasks.planning.plan import Goal, PlanRefused, SearchOptions, candidates, fleet_arrays, make_plan
from tasks.planning.traffic import zipf

CAT = load_catalog()
SMALL = SearchOptions(sim_hours=0.25, warmup_hours=0.05, extra_simulated=2)


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
    assert result.baseline["instances"] == {"ml.g4dn.4xlarge": 2}
    saved_per_year = (result.baseline["hourly_usd"] - chosen.hourly_usd) * 8760
    assert chosen.hourly_usd / result.baseline["hourly_usd"] == pytest.approx(0.5)
    assert saved_per_year == pytest.approx(row.hourly("us-east-1") * 8760)
    assert 12_500 < saved_per_year < 13_500  # 1.505 $/h x 8760 h = $13,184


def test_picks_the_cheaper_of_two_types_that_both_meet_the_goal() -> None:
    g4, g5 = CAT.get("ml.g4dn.xlarge"), CAT.get("ml.g5.xlarge")
    traffic = zipf([f"v{i}" for i in range(20)], 1.1, 2.0, seed=0)
    for types in ([g4, g5], [g5, g4]):
        result = make_plan(types, _fleet(20), traffic, Goal(1000.0), "us-east-1", SMALL)
        assert result.chosen.candidate.instance_type == "ml.g4dn.xlarge"
        assert any(e.candidate.instance_type == "ml.g5.xlarge" and e.meets for e in result.simulated)
    # make the g5 the cheaper one: the choice follows the price, not the order or the name
    cheap_g5 = dataclasses.replace(g5, price={"us-east-1": 0.5})
    result = make_plan([g4, cheap_g5], _fleet(20), traffic, Goal(1000.0), "us-east-1", SMALL)
    assert result.chosen.candidate.instance_type == "ml.g5.xlarge"


def test_refuses_with_a_clear_message_when_no_plan_meets_the_goal() -> None:
    """A p99 goal of 1 ms cannot be met by a 10 ms service time on any instance."""
    traffic = zipf([f"v{i}" for i in range(10)], 1.1, 5.0, seed=0)
    with pytest.raises(PlanRefused, match=r"no plan meets p99 <= 1 ms .* among \d+ candidates"):
        make_plan([CAT.get("ml.g4dn.xlarge")], _fleet(10), traffic, Goal(1.0), "us-east-1", SMALL)


def test_ten_thousand_variants_are_planned() -> None:
    """Every candidate of the grid is evaluated (screened), a handful simulated, and the plan
    found meets the goal at a small share of one endpoint per variant."""
    types, _ = candidate_types(CAT, "us-east-1", needs_gpu=True)
    fleet = _fleet(10_000)
    traffic = zipf([f"v{i}" for i in range(10_000)], 1.1, 20.0, seed=0)
    result = make_plan(types, fleet, traffic, Goal(1000.0), "us-east-1")
    grid = candidates(types, fleet_arrays(fleet), "us-east-1", SearchOptions())
    assert len(grid) > 500
    assert result.candidates_evaluated <= len(grid)
    assert result.candidates_evaluated == result.screened_out + len(result.simulated)
    assert 1 <= len(result.simulated) <= SearchOptions().max_simulations
    assert result.chosen.meets and (result.chosen.figures or {})["p99_ms"] <= 1000.0
    assert result.baseline["endpoints"] == 10_000
    assert result.chosen.candidate.hourly_usd < 0.1 * result.baseline["hourly_usd"]


def test_thousand_variant_target_is_within_ten_percent_of_per_variant_endpoints() -> None:
    """Issue 12's target: 1,000 variants, Zipf(1.1), 20 req/s, p99 <= 1 s: at most 10%."""
    types, _ = candidate_types(CAT, "us-east-1", needs_gpu=True)
    traffic = zipf([f"v{i}" for i in range(1000)], 1.1, 20.0, seed=0)
    result = make_plan(types, _fleet(1000), traffic, Goal(1000.0), "us-east-1")
    assert result.chosen.candidate.hourly_usd <= 0.10 * result.baseline["hourly_usd"]
    assert result.one_instance is not None and not Goal(1000.0).met_by(result.one_instance["figures"])


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
