"""Traffic inputs: Zipf (seeded, summing to the total), CSV (per second or per day, errors
naming the line), the local endpoint's per-model /metrics counts, the peak factor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.planning.traffic import TrafficError, from_csv, from_metrics, parse_spec, poisson_sequence, zipf

NAMES = [f"v{i}" for i in range(50)]


def test_zipf_sums_to_the_total_and_is_seeded() -> None:
    a, b, c = zipf(NAMES, 1.1, 20.0, seed=1), zipf(NAMES, 1.1, 20.0, seed=1), zipf(NAMES, 1.1, 20.0, seed=2)
    assert a.total_rate == pytest.approx(20.0)
    assert np.array_equal(a.rates, b.rates) and not np.array_equal(a.rates, c.rates)
    ranked = np.sort(a.rates)[::-1]
    assert ranked[0] / ranked[1] == pytest.approx(2 ** 1.1)  # rank 1 vs rank 2: 2^s


def test_csv_per_day_and_per_second(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text("variant,requests_per_day\nv1,86400\nv2,8640\n")
    t = from_csv(f, ["v1", "v2", "v3"])
    assert t.rates.tolist() == pytest.approx([1.0, 0.1, 0.0])
    f.write_text("variant,requests_per_second\nv1,2.5\n")
    assert from_csv(f).rates.tolist() == [2.5]


def test_csv_errors_name_the_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text("variant,requests_per_second\nv1,2\nv2,lots\n")
    with pytest.raises(TrafficError, match=r"t\.csv, line 3: requests_per_second='lots'"):
        from_csv(f)
    f.write_text("variant,requests_per_second\nnope,2\n")
    with pytest.raises(TrafficError, match="not in the fleet: nope"):
        from_csv(f, ["v1"])
    f.write_text("name,rps\nv1,2\n")
    with pytest.raises(TrafficError, match="expected columns variant"):
        from_csv(f)


def test_metrics_counts_become_rates() -> None:
    doc = {"models": {"v1.tar.gz": {"invocations": 3600, "errors": 0}, "v2": {"invocations": 360}}}
    t = from_metrics(doc, 3600.0, ["v1", "v2", "v3"])
    assert t.rates.tolist() == pytest.approx([1.0, 0.1, 0.0])
    with pytest.raises(TrafficError, match="no 'models' object"):
        from_metrics({"requests": 3}, 60.0)


def test_peak_factor_and_spec_parsing() -> None:
    t = parse_spec("zipf:1.1:20", NAMES).with_peak(3.0)
    assert float(t.peak_rates.sum()) == pytest.approx(60.0)
    with pytest.raises(TrafficError, match="must be >= 1"):
        t.with_peak(0.5)
    with pytest.raises(TrafficError, match="expected zipf:S:TOTAL_RPS"):
        parse_spec("poisson:3", NAMES)


def test_poisson_sequence_matches_the_rates() -> None:
    rates = np.array([8.0, 2.0])
    times, ids = poisson_sequence(rates, 1000.0, seed=0)
    assert np.all(np.diff(times) >= 0)
    assert len(ids) == pytest.approx(10_000, rel=0.05)
    assert (ids == 0).mean() == pytest.approx(0.8, abs=0.02)
