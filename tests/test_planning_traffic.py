"""Traffic inputs: Zipf (seeded, summing to the total), CSV (per second or per day, errors
naming the line), the local endpoint's per-model /metrics counts, the peak factor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.planning.traffic import (MAX_RATE_PER_VARIANT, TrafficError, from_csv, from_metrics, parse_spec,
                                    poisson_sequence, zipf)

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
    with pytest.raises(TrafficError, match=r"t\.csv, row 3, column requests_per_second: 'lots' is not a number"):
        from_csv(f)
    f.write_text("variant,requests_per_second\nnope,2\n")
    with pytest.raises(TrafficError, match="not in the fleet: nope"):
        from_csv(f, ["v1"])
    f.write_text("name,rps\nv1,2\n")
    with pytest.raises(TrafficError, match="expected columns variant"):
        from_csv(f)


@pytest.mark.parametrize(("body", "message"), [
    ("v1,2\nv2,inf\n", r"row 3, column requests_per_second: 'inf' is not a finite number"),
    ("v1,nan\n", r"row 2, column requests_per_second: 'nan' is not a finite number"),
    ("v1,1e12\n", r"row 2, column requests_per_second: '1e12' is above .* \(1e\+06 requests per second\)"),
    ("v1,1\nv2,-0.5\n", r"row 3, column requests_per_second: '-0.5' is negative"),
    ("v1,1\nv2,\n", r"row 3, column requests_per_second: no value"),
    ("v1,1\nv2,2\n\nv1,3\n", r"rows 2 and 5, column variant: 'v1' is on both"),
    ("v1,1\nv2,2,7\n", r"row 3: 3 fields, the header has 2 \(extra: \['7'\]\)"),
    (",4\n", r"row 2, column variant: no variant name"),
    ("v1,0\nv2,0.0\n", r"every requests_per_second is 0: no traffic, nothing to plan"),
])
def test_csv_refuses_bad_rates_naming_file_row_and_column(tmp_path: Path, body: str, message: str) -> None:
    """A rate that is not a finite number in 0..MAX_RATE_PER_VARIANT, a variant twice, a row
    longer than the header, all-zero traffic: refused, with the file and spreadsheet row."""
    f = tmp_path / "t.csv"
    f.write_text("variant,requests_per_second\n" + body)
    with pytest.raises(TrafficError, match=rf"^traffic file .*t\.csv, {message}" if message.startswith("row")
                       else rf"^traffic file .*t\.csv: {message}"):
        from_csv(f)


def test_csv_cap_holds_per_day_too_and_zipf_must_be_finite(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text(f"variant,requests_per_day\nv1,{MAX_RATE_PER_VARIANT * 86400:.0f}\n")
    assert from_csv(f).rates.tolist() == [MAX_RATE_PER_VARIANT]  # the cap itself is allowed
    f.write_text(f"variant,requests_per_day\nv1,{MAX_RATE_PER_VARIANT * 86400 * 2:.0f}\n")
    with pytest.raises(TrafficError, match="row 2, column requests_per_day: .* is above"):
        from_csv(f)
    for spec in ("zipf:1.1:inf", "zipf:nan:5"):
        with pytest.raises(TrafficError, match="finite numbers > 0"):
            parse_spec(spec, NAMES)


def test_csv_encoding_bom_accepted_and_non_utf8_refused(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_bytes(b"\xef\xbb\xbfvariant,requests_per_second\r\nv1,2\r\n")  # Excel's "CSV UTF-8"
    t = from_csv(f, ["v1", "v2"])
    assert t.variants == ["v1", "v2"] and t.rates.tolist() == [2.0, 0.0]
    f.write_bytes("variant,requests_per_second\nv1,2\nvé,3\n".encode("latin-1"))
    with pytest.raises(TrafficError, match=r"t\.csv, row 3: not UTF-8 text \(byte 0xe9"):
        from_csv(f)


def test_metrics_counts_become_rates() -> None:
    doc = {"models": {"v1.tar.gz": {"invocations": 3600, "errors": 0}, "v2": {"invocations": 360}}}
    t = from_metrics(doc, 3600.0, ["v1", "v2", "v3"])
    assert t.rates.tolist() == pytest.approx([1.0, 0.1, 0.0])
    with pytest.raises(TrafficError, match="no 'models' object"):
        from_metrics({"requests": 3}, 60.0)


def test_metrics_of_a_fleet_endpoint_map_versioned_names_back_to_variants() -> None:
    """A fleet deploy serves ``<variant>-<sha256[:12]>.tar.gz``: each version's counts go to its
    variant (two versions of one variant add up); a name of no variant is still refused."""
    doc = {"models": {"tenant-0001-0123456789ab.tar.gz": {"invocations": 1800},
                      "tenant-0001-ba9876543210.tar.gz": {"invocations": 1800},
                      "tenant-0002-aaaaaaaaaaaa.tar.gz": {"invocations": 360}}}
    t = from_metrics(doc, 3600.0, ["tenant-0001", "tenant-0002", "tenant-0003"])
    assert t.rates.tolist() == pytest.approx([1.0, 0.1, 0.0])
    with pytest.raises(TrafficError, match="not in the fleet: other-0123456789ab"):
        from_metrics({"models": {"other-0123456789ab.tar.gz": {"invocations": 1}}}, 60.0, ["tenant-0001"])


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
