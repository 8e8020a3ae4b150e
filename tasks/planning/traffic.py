"""Per-variant request rates: from a CSV, a Zipf(s) law over N variants, or the per-model counts
a local endpoint's ``/metrics`` reports; plus the diurnal peak-to-mean factor the planner sizes
for, and Poisson request sequences drawn from the rates (what the simulator replays)."""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infra.errors import UserError

SECONDS_PER_DAY = 86_400.0
#: The highest mean rate one variant may be given (req/s): far above any one TargetModel of a
#: multi-model endpoint (SageMaker's own limits are thousands per instance), low enough that a
#: unit mistake (a count where a rate belongs) is refused, not planned for.
MAX_RATE_PER_VARIANT = 1e6


class TrafficError(UserError, ValueError):
    """A traffic description that cannot be read: the message names the file, line or field."""


@dataclass(frozen=True)
class Traffic:
    """Mean request rate (req/s) per variant, in ``variants`` order; ``peak_factor`` x the mean
    is the rate a plan must meet its goal at; ``source`` says where the numbers came from."""

    variants: list[str]
    rates: np.ndarray
    peak_factor: float = 1.0
    source: str = ""

    @property
    def total_rate(self) -> float:
        return float(self.rates.sum())

    @property
    def peak_rates(self) -> np.ndarray:
        return self.rates * self.peak_factor

    def with_peak(self, factor: float) -> Traffic:
        if factor < 1.0:
            raise TrafficError(f"peak-to-mean factor {factor}: must be >= 1 (the peak is at least the mean)")
        return Traffic(self.variants, self.rates, factor, self.source)


def zipf(variants: list[str], s: float, total_rate: float, seed: int = 0) -> Traffic:
    """Zipf(s): the k-th most popular variant gets a rate proportional to 1/k^s; which variant
    has which rank is a seeded shuffle (so variant names carry no popularity)."""
    if not variants:
        raise TrafficError("zipf traffic: no variants")
    if not (math.isfinite(s) and math.isfinite(total_rate)) or s <= 0 or total_rate <= 0:
        raise TrafficError(f"zipf:{s}:{total_rate}: exponent and total rate must be finite numbers > 0")
    weights = 1.0 / np.arange(1, len(variants) + 1, dtype=float) ** s
    ranks = np.random.default_rng(seed).permutation(len(variants))
    rates = total_rate * weights[ranks] / weights.sum()
    return Traffic(list(variants), rates, 1.0, f"zipf(s={s}) over {len(variants)} variants, "
                                               f"{total_rate} req/s in all, seed {seed}")


def from_csv(path: Path, variants: list[str] | None = None) -> Traffic:
    """A CSV with a ``variant`` column and ``requests_per_second`` or ``requests_per_day``.
    Variants of the fleet missing from the file get rate 0; a row naming a variant not in the
    fleet is refused (a typo would otherwise plan for traffic that never arrives), and so are a
    rate that is not a finite number in ``0..MAX_RATE_PER_VARIANT`` req/s, a variant given twice,
    a row with more fields than the header and a file whose rates are all zero. UTF-8, with or
    without the BOM Excel writes. Errors name the file, the row (as a spreadsheet numbers it:
    the header is row 1) and the column."""
    header, rows = _csv_rows(path)
    per = "requests_per_second" if "requests_per_second" in header else "requests_per_day"
    if "variant" not in header or per not in header:
        raise TrafficError(f"traffic file {path}: header {header}: expected columns variant and "
                           f"requests_per_second (or requests_per_day)")
    col, name_col = header.index(per), header.index("variant")
    found: dict[str, float] = {}
    first_row: dict[str, int] = {}
    for row, fields in rows:
        where = f"traffic file {path}, row {row}"
        if len(fields) > len(header):
            raise TrafficError(f"{where}: {len(fields)} fields, the header has {len(header)} "
                               f"(extra: {fields[len(header):]!r})")
        name = fields[name_col].strip() if name_col < len(fields) else ""
        if not name:
            raise TrafficError(f"{where}, column variant: no variant name")
        if name in first_row:
            raise TrafficError(f"traffic file {path}, rows {first_row[name]} and {row}, column variant: "
                               f"{name!r} is on both: give each variant one row")
        first_row[name] = row
        value = fields[col] if col < len(fields) else ""
        found[name] = _rate(value, f"{where}, column {per}",
                            SECONDS_PER_DAY if per == "requests_per_day" else 1.0)
    if not any(found.values()):
        raise TrafficError(f"traffic file {path}: every {per} is 0: no traffic, nothing to plan")
    return _align(found, variants, f"CSV {path} ({per})", str(path))


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header's column names and the data rows with their row numbers (header = row 1;
    blank rows count, as a spreadsheet shows them, and are skipped)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TrafficError(f"traffic file {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")  # the BOM Excel puts before "variant" is not a column name
    except UnicodeDecodeError as e:
        row = data[:e.start].count(b"\n") + 1
        raise TrafficError(f"traffic file {path}, row {row}: not UTF-8 text (byte {data[e.start]:#04x} "
                           f"at offset {e.start}): save it as CSV UTF-8") from None
    try:
        records = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise TrafficError(f"traffic file {path}: not a CSV file ({e})") from None
    if not records or not records[0]:
        raise TrafficError(f"traffic file {path}: no rows (expected a header: variant,requests_per_second)")
    header = [c.strip() for c in records[0]]
    return header, [(i, r) for i, r in enumerate(records[1:], start=2) if any(f.strip() for f in r)]


def _rate(value: str, where: str, per_second: float) -> float:
    """One rate in req/s: a finite number, 0 or more, at most :data:`MAX_RATE_PER_VARIANT`."""
    if not value.strip():
        raise TrafficError(f"{where}: no value (a number of requests, 0 or more)")
    try:
        rate = float(value)
    except ValueError:
        raise TrafficError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(rate):
        raise TrafficError(f"{where}: {value!r} is not a finite number")
    if rate < 0:
        raise TrafficError(f"{where}: {value!r} is negative")
    if rate / per_second > MAX_RATE_PER_VARIANT:
        raise TrafficError(f"{where}: {value!r} is above the most one variant may get "
                           f"({MAX_RATE_PER_VARIANT:g} requests per second)")
    return rate / per_second


def from_metrics(doc: dict[str, Any], window_s: float, variants: list[str] | None = None) -> Traffic:
    """The local endpoint's ``/metrics`` JSON: ``{"models": {target_model: {"invocations": n,
    ...}}}``; the counts over ``window_s`` seconds are the rates."""
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict):
        raise TrafficError("metrics: no 'models' object ({target_model: {invocations: n}}) in the "
                           "/metrics answer: is the endpoint new enough to count per model?")
    if window_s <= 0:
        raise TrafficError(f"metrics window {window_s} s: must be > 0")
    found: dict[str, float] = {}
    for name, m in models.items():
        if not isinstance(m, dict) or not isinstance(m.get("invocations"), int | float):
            raise TrafficError(f"metrics: models.{name}.invocations is missing or not a number")
        variant = variant_of(name, variants)
        found[variant] = found.get(variant, 0.0) + float(m["invocations"]) / window_s
    return _align(found, variants, f"/metrics counts over {window_s:.0f} s", "metrics")


_VERSION_SUFFIX = re.compile(r"^(?P<variant>.+)-[0-9a-f]{12}$")


def variant_of(target_model: str, variants: list[str] | None) -> str:
    """The variant a TargetModel serves: its name without ``.tar.gz`` and, for a fleet deploy's
    versioned name (``<variant>-<sha256[:12]>.tar.gz``, :func:`tasks.deploy.publish.versioned_target`)
    without the version, so every version's counts add up to its variant's."""
    name = target_model.removesuffix(".tar.gz")
    if variants is not None and name not in variants:
        versioned = _VERSION_SUFFIX.match(name)
        if versioned and versioned["variant"] in variants:
            return versioned["variant"]
    return name


def _align(found: dict[str, float], variants: list[str] | None, source: str, where: str) -> Traffic:
    if variants is None:
        return Traffic(list(found), np.array(list(found.values()), dtype=float), 1.0, source)
    unknown = sorted(set(found) - set(variants))
    if unknown:
        raise TrafficError(f"traffic {where}: variants not in the fleet: {', '.join(unknown[:5])}"
                           f"{' ...' if len(unknown) > 5 else ''}")
    return Traffic(list(variants), np.array([found.get(v, 0.0) for v in variants], dtype=float), 1.0, source)


def parse_spec(spec: str, variants: list[str], seed: int = 0, metrics_window_s: float = 3600.0) -> Traffic:
    """``zipf:S:TOTAL_RPS`` | ``csv:PATH`` | ``metrics:URL`` (the CLI's ``--traffic``)."""
    kind, _, rest = spec.partition(":")
    if kind == "zipf":
        try:
            s, total = (float(x) for x in rest.split(":"))
        except ValueError:
            raise TrafficError(f"--traffic {spec!r}: expected zipf:S:TOTAL_RPS, e.g. zipf:1.1:20") from None
        return zipf(variants, s, total, seed)
    if kind == "csv":
        return from_csv(Path(rest), variants)
    if kind == "metrics":
        import httpx

        try:
            doc = httpx.get(rest, timeout=30).raise_for_status().json()
        except (httpx.HTTPError, ValueError) as e:
            raise TrafficError(f"--traffic {spec!r}: could not read the metrics: {e}") from None
        # the counts are since the endpoint started: its uptime when it reports one, else the window given
        window = doc.get("uptime_s") or doc.get("window_s") if isinstance(doc, dict) else None
        return from_metrics(doc, float(window or metrics_window_s), variants)
    raise TrafficError(f"--traffic {spec!r}: expected zipf:S:TOTAL_RPS, csv:PATH or metrics:URL")


def poisson_sequence(rates: np.ndarray, duration_s: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Arrival times (sorted) and variant indices of independent Poisson streams at ``rates``
    over ``duration_s``: the superposition is Poisson at the sum, each arrival's variant drawn in
    proportion to its rate (vectorised: one draw for the count, one for times, one for ids)."""
    rng = np.random.default_rng(seed)
    total = float(rates.sum())
    n = int(rng.poisson(total * duration_s)) if total > 0 else 0
    times = np.sort(rng.uniform(0.0, duration_s, n))
    ids = rng.choice(len(rates), size=n, p=rates / total) if n else np.zeros(0, dtype=int)
    return times, ids.astype(np.int64)
