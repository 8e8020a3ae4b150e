"""Per-variant request rates: from a CSV, a Zipf(s) law over N variants, or the per-model counts
a local endpoint's ``/metrics`` reports; plus the diurnal peak-to-mean factor the planner sizes
for, and Poisson request sequences drawn from the rates (what the simulator replays)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infra.errors import UserError

SECONDS_PER_DAY = 86_400.0


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
    if s <= 0 or total_rate <= 0:
        raise TrafficError(f"zipf:{s}:{total_rate}: exponent and total rate must be > 0")
    weights = 1.0 / np.arange(1, len(variants) + 1, dtype=float) ** s
    ranks = np.random.default_rng(seed).permutation(len(variants))
    rates = total_rate * weights[ranks] / weights.sum()
    return Traffic(list(variants), rates, 1.0, f"zipf(s={s}) over {len(variants)} variants, "
                                               f"{total_rate} req/s in all, seed {seed}")


def from_csv(path: Path, variants: list[str] | None = None) -> Traffic:
    """A CSV with a ``variant`` column and ``requests_per_second`` or ``requests_per_day``.
    Variants of the fleet missing from the file get rate 0; a row naming a variant not in the
    fleet is refused (a typo would otherwise plan for traffic that never arrives)."""
    try:
        rows = list(csv.DictReader(Path(path).read_text().splitlines()))
    except OSError as e:
        raise TrafficError(f"traffic file {path}: {e.strerror or e}") from None
    if not rows:
        raise TrafficError(f"traffic file {path}: no rows (expected a header: variant,requests_per_second)")
    per = "requests_per_second" if "requests_per_second" in rows[0] else "requests_per_day"
    if "variant" not in rows[0] or per not in rows[0]:
        raise TrafficError(f"traffic file {path}: header {list(rows[0])}: expected columns variant and "
                           f"requests_per_second (or requests_per_day)")
    found: dict[str, float] = {}
    for line, row in enumerate(rows, start=2):
        try:
            rate = float(row[per])
        except (TypeError, ValueError):
            raise TrafficError(f"traffic file {path}, line {line}: {per}={row[per]!r} is not a number") from None
        if rate < 0:
            raise TrafficError(f"traffic file {path}, line {line}: {per}={rate} is negative")
        found[row["variant"]] = rate / (SECONDS_PER_DAY if per == "requests_per_day" else 1.0)
    return _align(found, variants, f"CSV {path} ({per})", str(path))


def from_metrics(doc: dict[str, Any], window_s: float, variants: list[str] | None = None) -> Traffic:
    """The local endpoint's ``/metrics`` JSON: ``{"models": {target_model: {"invocations": n,
    ...}}}``; the counts over ``window_s`` seconds are the rates."""
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict):
        raise TrafficError("metrics: no 'models' object ({target_model: {invocations: n}}) in the "
                           "/metrics answer: is the endpoint new enough to count per model?")
    if window_s <= 0:
        raise TrafficError(f"metrics window {window_s} s: must be > 0")
    found = {}
    for name, m in models.items():
        if not isinstance(m, dict) or not isinstance(m.get("invocations"), int | float):
            raise TrafficError(f"metrics: models.{name}.invocations is missing or not a number")
        found[name.removesuffix(".tar.gz")] = float(m["invocations"]) / window_s
    return _align(found, variants, f"/metrics counts over {window_s:.0f} s", "metrics")


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
