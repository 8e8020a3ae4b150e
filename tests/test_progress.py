"""The progress reporter every long step uses (tasks/fleet/progress.py): when it speaks, what a
line says (n/N, failures, rate, time left), and that it counts right from many threads. Time is
an injected clock: no sleeps, no wall-clock bounds."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tasks.fleet.progress import (
    FAILURES_NAMED,
    Progress,
    duration_text,
    rate_text,
    record_shared,
    share,
    shared,
)


def clock(*reads: float) -> Callable[[], float]:
    """A clock that returns ``reads`` in turn (once at construction, once per record)."""
    it = iter(reads)
    return lambda: next(it)


def test_a_line_every_five_percent_with_rate_and_time_left() -> None:
    """100 items, one a second: a line every 5 (5%), each with the rate and what is left at
    it; the last says the whole step's time and rate."""
    lines: list[str] = []
    p = Progress("tenants written", 100, emit=lines.append, clock=clock(*range(101)))
    for i in range(100):
        p.record(f"t{i}")
    assert len(lines) == 20
    assert lines[0] == "tenants written 5/100, 1.0/s, ~95 s left"
    assert lines[9] == "tenants written 50/100, 1.0/s, ~50 s left"
    assert lines[18] == "tenants written 95/100, 1.0/s, ~5 s left"
    assert lines[-1] == "tenants written 100/100 in 100 s, 1.0/s"
    assert p.updates == 20


def test_time_alone_says_a_line_and_minutes_read_as_minutes() -> None:
    """Below 5% per 5 s (a slow step), every record past the interval says a line."""
    lines: list[str] = []
    p = Progress("variants built", 1000, emit=lines.append, clock=clock(0, 2, 6, 7, 14))
    for i in range(4):
        p.record(f"v{i}")
    assert lines == ["variants built 2/1000, 0.33/s, ~50 min left",
                     "variants built 4/1000, 0.29/s, ~58 min left"]


def test_failures_are_said_as_they_happen_then_only_counted() -> None:
    lines: list[str] = []
    errors: list[str] = []
    p = Progress("objects published", 40, emit=lines.append, error=errors.append,
                 clock=lambda: 0.0)
    for i in range(40):
        p.record(f"k{i}", "refused" if i >= 20 else None)
    assert len(errors) == FAILURES_NAMED
    assert errors[0] == "k20 failed (21/40): refused"
    assert lines[-1] == "objects published 40/40, 20 failed (latest: k39)"
    assert p.summary() == {"done": 40, "total": 40, "failed": 20, "updates": len(lines)}


def test_items_done_before_the_start_are_not_in_the_rate() -> None:
    """A sync that skips 90 unchanged objects and uploads 10 at 2/s: the rate is 2/s, not
    the 90 skipped in no time."""
    lines: list[str] = []
    states: list[float] = []
    p = Progress("objects published", 100, emit=lines.append, artifact=states.append,
                 done=90, every=5, clock=clock(0.0, 2.5, 5.0))
    p.advance(95)
    p.advance(100)
    assert lines == ["objects published 95/100, 2.0/s, ~2 s left",
                     "objects published 100/100 in 5.0 s, 2.0/s"]
    assert states == [95.0, 100.0]


def test_a_bound_for_a_total_says_so_and_finish_ends_early() -> None:
    """A search of at most 40 simulations that stops after 3: the time left is a bound, and
    ``finish`` says the last line once (a second call says nothing)."""
    lines: list[str] = []
    states: list[float] = []
    p = Progress("candidates simulated", 40, emit=lines.append, artifact=states.append,
                 every=2, at_most=True, clock=clock(0, 1, 2, 3, 4))
    for i in range(3):
        p.record(f"c{i}")
    p.finish()
    p.finish()
    assert lines == ["candidates simulated 2 (at most 40), 1.0/s, at most ~38 s left",
                     "candidates simulated 3 in 4.0 s, 0.75/s"]
    assert states == [5.0, 100.0]


def test_records_from_many_threads_all_count_and_the_end_is_said_once() -> None:
    lines: list[str] = []
    p = Progress("variants built", 800, emit=lines.append, clock=lambda: 0.0)

    def work(k: int) -> None:
        for i in range(100):
            p.record(f"v{k}-{i}", "bad" if i == 0 else None)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert p.done == 800 and len(p.failed) == 8
    assert lines[-1].startswith("variants built 800/800, 8 failed")
    assert sum(line.startswith("variants built 800/800") for line in lines) == 1
    counts = [int(line.split()[2].split("/")[0].rstrip(",")) for line in lines]
    assert counts == sorted(counts) and len(lines) == 20


def test_a_shared_reporter_is_found_by_its_key_and_dropped_at_its_end() -> None:
    """Tasks running side by side record on their run's reporter by key; a key with no
    reporter here (a task on another process) records nothing, and raises nothing."""
    lines: list[str] = []
    key = share(Progress("variants built", 2, emit=lines.append, clock=lambda: 0.0))
    record_shared(key, "a")
    assert shared(key) is not None
    record_shared(key, "b", "broken")
    assert shared(key) is None
    record_shared(key, "c")
    record_shared(None, "d")
    assert lines == ["variants built 1/2", "variants built 2/2, 1 failed (latest: b)"]


def test_rates_and_durations_read_at_a_glance() -> None:
    assert [rate_text(r) for r in (250.0, 12.4, 2.46, 0.25, 0.05)] == \
        ["250/s", "12/s", "2.5/s", "0.25/s", "3.0/min"]
    assert [duration_text(s) for s in (7.6, 119.0, 150.0, 600.0, 9000.0)] == \
        ["8 s", "119 s", "2.5 min", "10 min", "2.5 h"]


def test_under_a_second_left_reads_as_such() -> None:
    lines: list[str] = []
    p = Progress("tenants written", 20, emit=lines.append, every=19,
                 clock=clock(0.0, *[1.0] * 18, 2.0))
    for i in range(19):
        p.record(f"t{i}")
    assert lines == ["tenants written 19/20, 9.5/s, <1 s left"]
