"""The local endpoint under fleet traffic (issue 11): budget, one unload per victim, warm
requests that never wait on other models, LRU-exact hits, per-model metrics, bounded logs.

The Triton tests use the tiny ``pipe -> add`` ensembles of tests/fixtures/tiny_models.py (Y = X + k,
so each answer says which model gave it). Loads and unloads are held open by Python models
whose ``initialize`` / ``finalize`` wait for a gate file the test creates: the tests assert
order and states, never durations. Triton's repository calls are counted by wrapping the
endpoint's own :class:`~infra.triton.server.TritonServer` methods (the real calls still run).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from fixtures.local_endpoint import X, call, metrics, models, post, start_endpoint
from fixtures.tiny_models import publish_pipe, write_pipe_repo
from fixtures.wait import wait_until, wait_until_async

from tasks.planning.cache_model import lru_hits, lru_warm, top_k_hit_ratio
from infra.endpoint.local_mme import configure_logging
from infra.endpoint.state import EndpointConfig, Reservoir, ThrashGuard
from infra.triton.model_repo import namespace_for
from infra.aws.runtime_client import decode_response, encode_request
from infra.store.tarball import pack_deterministic

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the pytriton tritonserver is Linux-only")

# ``add`` whose finalize waits for a gate file: an unload the test holds open
FINALIZE_GATE_MODEL = """\
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.k = np.float32({k})

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", (pb_utils.get_input_tensor_by_name(r, "X").as_numpy() + self.k).astype(np.float32))])
            for r in requests]

    def finalize(self):
        open({gate!r} + ".entered", "w").close()
        deadline = time.monotonic() + 300  # a gate never opened fails this step, not the whole suite
        while not os.path.exists({gate!r}):
            if time.monotonic() > deadline:
                raise RuntimeError('gate never opened')
            time.sleep(0.01)
"""


def publish_sticky(store_dir: Path, target: str, k: float, gate: Path) -> None:
    """A ``pipe`` tarball whose unload does not end until ``gate`` exists."""
    with tempfile.TemporaryDirectory(prefix="sticky-src-") as tmp:
        repo = write_pipe_repo(Path(tmp) / "repo", k)
        (repo / "add" / "1" / "model.py").write_text(FINALIZE_GATE_MODEL.format(k=k, gate=str(gate)))
        pack_deterministic(repo, store_dir / target)


class TritonCalls:
    """Wraps a TritonServer's load/unload/repository_index: every real call, in order, and
    how many models were in Triton at most (a load counts from its start, an unload until it
    has returned, i.e. until its stubs have exited)."""

    def __init__(self, triton: Any) -> None:
        self.calls: list[tuple[str, str]] = []
        self.inside: set[str] = set()
        self.peak = 0
        self.index_calls = 0
        self.unload_nice: list[int] = []  # the CPU niceness each unload asked for its stubs
        self._lock = threading.Lock()
        load, unload, index = triton.load, triton.unload, triton.repository_index

        def counted_load(name: str, *a: Any, **kw: Any) -> None:
            with self._lock:
                self.calls.append(("load", name))
                self.inside.add(name)
                self.peak = max(self.peak, len(self.inside))
            load(name, *a, **kw)

        def counted_unload(name: str, *a: Any, **kw: Any) -> None:
            with self._lock:
                self.calls.append(("unload", name))
                self.unload_nice.append(kw.get("nice", 0))
            unload(name, *a, **kw)
            with self._lock:
                self.inside.discard(name)

        def counted_index(*a: Any, **kw: Any) -> Any:
            self.index_calls += 1
            return index(*a, **kw)

        triton.load, triton.unload, triton.repository_index = counted_load, counted_unload, counted_index

    def per_model(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for kind, name in self.calls:
            out.setdefault(name, []).append(kind)
        return out


def zipf_sequence(targets: list[str], n: int, seed: int, s: float = 1.1) -> list[str]:
    weights = 1.0 / np.arange(1, len(targets) + 1) ** s
    rng = np.random.default_rng(seed)
    return [targets[i] for i in rng.choice(len(targets), size=n, p=weights / weights.sum())]


def k_of(target: str) -> float:
    return float(target.split("-")[1].split(".")[0])


def ask(url: str, target: str) -> httpx.Response:
    body, ct = encode_request({"X": X})
    return post(url, target, body, ct)


def answer(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, (r.status_code, r.text)
    return decode_response(r.content, r.headers["content-type"])["Y"]


# ---------------------------------------------------------------------------------- pure parts
def naive_lru_hits(sequence: list[int], capacity: int) -> int:
    cache: list[int] = []  # most recent last
    hits = 0
    for key in sequence:
        if key in cache:
            hits += 1
            cache.remove(key)
        elif capacity and len(cache) >= capacity:
            cache.pop(0)
        if capacity:
            cache.append(key)
    return hits


@given(st.lists(st.integers(0, 9), max_size=200), st.integers(0, 6))
def test_lru_hits_is_the_textbook_lru(sequence: list[int], capacity: int) -> None:
    """The planner's and the benchmark's model of the endpoint agrees with a plain list LRU."""
    assert lru_hits(sequence, capacity) == naive_lru_hits(sequence, capacity)


def test_lru_hits_small_cases_and_top_k() -> None:
    assert lru_hits("abab", 1) == 0 and lru_hits("abab", 2) == 2
    assert lru_hits("abcab", 2) == 0  # c evicts a, then a evicts b
    assert top_k_hit_ratio([0.5, 0.1, 0.3, 0.1], 2) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        lru_hits("a", -1)


def test_thrash_guard_rolling_miss_rate_and_one_warning_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    guard = ThrashGuard(window=4, threshold=0.5, interval_s=3600)
    caplog.set_level(logging.WARNING, logger="mme.local")
    for hit in (True, True, False, False):
        guard.record(hit)
    assert guard.miss_rate == 0.5 and not guard.thrashing  # not above the threshold
    guard.record(False)  # window: T F F F
    assert guard.miss_rate == 0.75 and guard.thrashing
    for _ in range(10):
        guard.record(False)
    assert guard.warnings == 1, "one warning per interval, not one per miss"
    assert len([r for r in caplog.records if "thrashing" in r.message]) == 1
    for _ in range(4):
        guard.record(True)
    assert guard.miss_rate == 0.0 and not guard.thrashing
    assert guard.report().warnings == 1


def test_thrash_guard_warns_on_a_cold_start_before_the_window_is_full(
        caplog: pytest.LogCaptureFixture) -> None:
    """A cold start that misses 100 of its first 100 requests is thrash, though the 200-request
    window is not full; fewer than min_requests requests say nothing either way."""
    caplog.set_level(logging.WARNING, logger="mme.local")
    guard = ThrashGuard(window=200, threshold=0.5, interval_s=3600, min_requests=20)
    for _ in range(19):
        guard.record(False)
    assert guard.miss_rate == 1.0 and not guard.thrashing and guard.warnings == 0  # 19 < 20
    guard.record(False)
    assert guard.thrashing and guard.warnings == 1
    for _ in range(80):
        guard.record(False)
    assert guard.report().requests == 100 and guard.warnings == 1
    (line,) = [r.getMessage() for r in caplog.records if "thrashing" in r.getMessage()]
    assert "100% of the last 20 requests" in line  # the requests it saw, not the window's 200
    quiet = ThrashGuard(window=200, threshold=0.5, interval_s=3600, min_requests=20)
    for i in range(100):
        quiet.record(i % 4 != 0)  # 25% misses: below the threshold
    assert not quiet.thrashing and quiet.warnings == 0
    small = ThrashGuard(window=4, threshold=0.5, interval_s=3600, min_requests=20)
    for _ in range(4):
        small.record(False)
    assert small.thrashing and small.warnings == 1  # a window smaller than the minimum: when full


def test_reservoir_is_bounded_and_reports_percentiles() -> None:
    r = Reservoir(size=100)
    for i in range(1, 1001):
        r.append(float(i))
    rep = r.report()
    assert rep.count == 1000 and rep.window == 100  # only the last 100 are kept
    assert (rep.p50, rep.p99, rep.max) == (950.0, 999.0, 1000.0)


def test_endpoint_log_rotates_and_request_lines_are_debug(tmp_path: Path) -> None:
    """The endpoint's log file rolls over at its size limit and keeps only N old files; a
    DEBUG line (per request, per Triton call) is not written at the default level."""
    cfg = EndpointConfig(name="e", model_data_url=tmp_path.as_uri(), cache_dir=tmp_path / "c",
                         log_file=tmp_path / "endpoint.log", log_max_bytes=2000, log_backup_count=2)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        handler = configure_logging(cfg)
        log = logging.getLogger("mme.local")
        for i in range(200):
            log.info("lifecycle line %04d %s", i, "x" * 40)
            log.debug("request line %04d", i)
        handler.flush()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        handler.close()
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("endpoint.log"))
    assert files == ["endpoint.log", "endpoint.log.1", "endpoint.log.2"], files
    assert all((tmp_path / f).stat().st_size <= 2000 for f in files)
    text = "".join((tmp_path / f).read_text() for f in files)
    assert "lifecycle line 0199" in text and "request line" not in text
    assert logging.getLogger("httpx").level == logging.WARNING  # one INFO line per HTTP call


def test_status_table_lists_each_target_model() -> None:
    from rich.console import Console

    from flows.cli.endpoint import status_table

    row = {"state": "loaded", "invocations": 7, "hits": 5, "loads": 2, "last_load_s": 0.25,
           "total_load_s": 0.5, "evictions": 1, "errors": 0, "last_used": time.time()}
    doc = {"endpoint": "e", "url": "http://x", "models": [],
           "metrics": {"LoadedModelCount": 1, "models": {"m-1.tar.gz": row},
                       "AdmissionTime": {"p50": 0.1, "p99": 0.4},
                       "Thrash": {"MissRate": 0.9, "Thrashing": True}}}
    console = Console(width=200, record=True)
    console.print(status_table(doc))
    text = console.export_text()
    assert "m-1.tar.gz" in text and "THRASHING" in text and "0.400" in text
    assert " 7 " in text and " 5 " in text
    assert "Triton memory" not in text  # an endpoint that does not report it: nothing invented


def test_status_names_the_memory_basis() -> None:
    """`mme endpoint status` shows Triton's memory on the limit's basis, summed RSS beside it."""
    from infra.endpoint.client import memory_note

    m = {"TritonMemoryPss": 300 * 2**20, "TritonMemoryRss": 650 * 2**20, "MemoryLimitBytes": 1000 * 2**20,
         "MemoryLimitBasis": "pss"}
    assert memory_note(m) == ", Triton memory 300 MiB pss of 1,000 MiB limit (summed rss 650 MiB)"


# ---------------------------------------------------------------------------------- real Triton
@pytest.mark.triton
@linux_only
def test_concurrent_cold_requests_keep_the_budget_and_unload_each_victim_once(tmp_path: Path) -> None:
    """More distinct cold models than the budget, requested at once from 8 threads: never more
    than ``budget`` models in Triton (counted at Triton's door and by the endpoint's peak),
    exactly one unload per eviction and none of a model not loaded (load/unload alternate per
    model), every answer from the model asked, no repository-index call."""
    budget = 3
    e = start_endpoint(tmp_path, max_loaded_models=budget)
    try:
        calls = TritonCalls(e.ep.triton)
        targets = [f"cold-{i + 1}.tar.gz" for i in range(8)]
        for t in targets:
            publish_pipe(e.store_dir, t, k=k_of(t))
        order = targets * 2
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda t: answer(ask(e.url, t)), order))
        for t, y in zip(order, answers, strict=True):
            np.testing.assert_array_equal(y, X + k_of(t))
        m = metrics(e.url)
        assert calls.peak <= budget and m["PeakLoadedModelCount"] <= budget, (calls.peak, m)
        unloads = [n for kind, n in calls.calls if kind == "unload"]
        assert len(unloads) == m["MemoryEvictions"] == m["TritonUnloadCalls"], (calls.calls, m)
        for name, kinds in calls.per_model().items():
            assert kinds == ["load", "unload"] * (len(kinds) // 2) + ["load"] * (len(kinds) % 2), \
                (name, kinds)  # an unload only of a loaded model, at most once per load
        assert calls.index_calls == 0
        assert sum(r["errors"] for r in m["models"].values()) == 0
    finally:
        e.ep.stop()


@pytest.mark.triton
@linux_only
def test_warm_requests_are_admitted_while_another_model_loads_or_unloads(tmp_path: Path) -> None:
    """A load held open (initialize waits for a gate) and then an unload held open (finalize
    waits for a gate): requests for a loaded model are answered meanwhile, and the held model
    is still loading / unloading when they are done. Their admission time is recorded. A
    request for the model being unloaded waits for the unload and is answered by its reload."""
    e = start_endpoint(tmp_path, max_loaded_models=4)
    load_gate, unload_gate = tmp_path / "load-gate", tmp_path / "unload-gate"
    try:
        publish_pipe(e.store_dir, "warm-1.tar.gz", k=1)
        publish_pipe(e.store_dir, "slow-2.tar.gz", k=2, gate=str(load_gate))
        publish_sticky(e.store_dir, "sticky-3.tar.gz", 3, unload_gate)
        np.testing.assert_array_equal(call(e.url, "warm-1.tar.gz"), X + 1)
        np.testing.assert_array_equal(call(e.url, "sticky-3.tar.gz"), X + 3)
        with ThreadPoolExecutor(3) as pool:
            slow = pool.submit(ask, e.url, "slow-2.tar.gz")
            wait_until("slow-2 loading",
                     lambda: models(e.url).get("slow-2.tar.gz", {}).get("state") == "loading")
            before = metrics(e.url)["AdmissionTime"]["count"]
            for _ in range(10):
                np.testing.assert_array_equal(call(e.url, "warm-1.tar.gz"), X + 1)
            assert models(e.url)["slow-2.tar.gz"]["state"] == "loading" and not slow.done()
            assert metrics(e.url)["AdmissionTime"]["count"] == before + 10

            dropping = pool.submit(httpx.delete, f"{e.url}/models/sticky-3.tar.gz", timeout=300)
            wait_until("sticky-3's finalize", Path(f"{unload_gate}.entered").exists)
            assert models(e.url)["sticky-3.tar.gz"]["state"] == "unloading"
            for _ in range(10):
                np.testing.assert_array_equal(call(e.url, "warm-1.tar.gz"), X + 1)
            assert models(e.url)["sticky-3.tar.gz"]["state"] == "unloading" and not dropping.done()
            again = pool.submit(ask, e.url, "sticky-3.tar.gz")  # waits for the unload, reloads
            wait_until("a request for sticky-3 waiting",
                     lambda: metrics(e.url)["Misses"]["Unloading"] == 1)
            assert not again.done() and models(e.url)["sticky-3.tar.gz"]["state"] == "unloading"
            load_gate.touch()
            unload_gate.touch()
            np.testing.assert_array_equal(answer(slow.result()), X + 2)
            assert dropping.result().status_code == 200
            np.testing.assert_array_equal(answer(again.result()), X + 3)
            assert models(e.url)["sticky-3.tar.gz"]["loads"] == 2
        adm = metrics(e.url)["AdmissionTime"]  # the 20 warm requests (the first ones were cold)
        assert adm["count"] == 20 and 0 < adm["p50"] <= adm["p99"] <= adm["max"], adm
    finally:
        load_gate.touch()
        unload_gate.touch()
        e.ep.stop()


@pytest.mark.triton
@linux_only
def test_a_cold_request_waits_for_its_victim_not_for_every_unload(tmp_path: Path) -> None:
    """Budget 2: sticky (its unload held open) is unloading, b is loaded and idle. A request
    for c evicts b and is answered while sticky is still unloading: it waited for its own
    victim only. (The old unload waited until nothing in the whole repository was UNLOADING,
    so c got 429 after the ready wait.)"""
    gate = tmp_path / "unload-gate"
    e = start_endpoint(tmp_path, max_loaded_models=2, ready_wait_s=60)
    try:
        publish_sticky(e.store_dir, "sticky-1.tar.gz", 1, gate)
        publish_pipe(e.store_dir, "b-2.tar.gz", k=2)
        publish_pipe(e.store_dir, "c-3.tar.gz", k=3)
        np.testing.assert_array_equal(call(e.url, "sticky-1.tar.gz"), X + 1)
        np.testing.assert_array_equal(call(e.url, "b-2.tar.gz"), X + 2)
        with ThreadPoolExecutor(1) as pool:
            dropping = pool.submit(httpx.delete, f"{e.url}/models/sticky-1.tar.gz", timeout=300)
            wait_until("sticky-1's finalize", Path(f"{gate}.entered").exists)
            np.testing.assert_array_equal(call(e.url, "c-3.tar.gz"), X + 3)
            listed = models(e.url)
            assert listed["sticky-1.tar.gz"]["state"] == "unloading" and not dropping.done()
            assert (listed["b-2.tar.gz"]["state"], listed["c-3.tar.gz"]["state"]) == ("absent", "loaded")
            assert metrics(e.url)["PeakLoadedModelCount"] <= 2
            gate.touch()
            assert dropping.result().status_code == 200
    finally:
        gate.touch()
        e.ep.stop()


@pytest.mark.triton
@linux_only
def test_skewed_sequence_hits_exactly_as_lru_with_per_model_metrics(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A seeded Zipf(1.1) sequence over 6 models, budget 2, sent one request at a time: no
    error, every answer right, warm hits exactly those of an LRU cache of 2, per-model
    counters that add up, one thrash warning (and its metric), and no INFO line per request
    or per load."""
    budget = 2
    e = start_endpoint(tmp_path, max_loaded_models=budget, thrash_window=4,
                       thrash_miss_rate=0.5, thrash_warn_interval_s=3600)
    try:
        calls = TritonCalls(e.ep.triton)
        targets = [f"zipf-{i + 1}.tar.gz" for i in range(6)]
        for t in targets:
            publish_pipe(e.store_dir, t, k=k_of(t))
        sequence = zipf_sequence(targets, 30, seed=11)
        caplog.set_level(logging.INFO)
        for t in sequence:
            np.testing.assert_array_equal(call(e.url, t), X + k_of(t))
        m = metrics(e.url)
        hits = lru_hits(sequence, budget)
        assert m["ModelCacheHit"] == hits, (m["ModelCacheHit"], hits, sequence)
        per = m["models"]
        assert sum(r["invocations"] for r in per.values()) == len(sequence)
        assert sum(r["hits"] for r in per.values()) == hits
        assert sum(r["loads"] for r in per.values()) == len(sequence) - hits
        assert sum(r["evictions"] for r in per.values()) == m["MemoryEvictions"]
        assert all(r["errors"] == 0 for r in per.values())
        for t in set(sequence):
            assert per[t]["invocations"] == sequence.count(t)
            assert per[t]["total_load_s"] >= per[t]["last_load_s"] > 0
        assert m["PeakLoadedModelCount"] <= budget and calls.peak <= budget
        assert m["TritonLoadCalls"] == len(sequence) - hits and calls.index_calls == 0

        misses = _lru_misses(sequence, budget)
        expect_warning = any(sum(misses[i - 3:i + 1]) > 2 for i in range(3, len(misses)))
        assert m["Thrash"]["Warnings"] == int(expect_warning)
        thrash_lines = [r for r in caplog.records if "thrashing" in r.getMessage()]
        assert len(thrash_lines) == int(expect_warning)
        noisy = [r.getMessage() for r in caplog.records
                 if r.levelno == logging.INFO and any(t in r.getMessage() for t in targets)]
        assert not noisy, noisy[:5]
    finally:
        e.ep.stop()


@pytest.mark.triton
@linux_only
@pytest.mark.parametrize("spare", [1, 0])
def test_spare_room_unloads_an_idle_model_before_the_next_miss(tmp_path: Path, spare: int) -> None:
    """Budget 3, ``spare_slots=1``: the third load's place passes the budget minus the spare
    place, so the least recently used idle model (a) is unloaded in the background; the next
    miss (d) then finds a free place (its admission waited for no eviction) and sets off the
    next background unload (b). Never more than 3 models in Triton, one unload per victim.
    ``spare_slots=0`` is the endpoint as before: nothing unloaded ahead, d waits for a's unload."""
    budget = 3
    e = start_endpoint(tmp_path, max_loaded_models=budget, spare_slots=spare)
    try:
        calls = TritonCalls(e.ep.triton)
        targets = [f"spare-{i + 1}.tar.gz" for i in range(4)]
        for t in targets:
            publish_pipe(e.store_dir, t, k=k_of(t))
        a, b, c, d = targets
        for t in (a, b, c):
            np.testing.assert_array_equal(call(e.url, t), X + k_of(t))
        if spare:
            wait_until("a unloaded in the background", lambda: metrics(e.url)["BackgroundEvictions"] == 1)
            assert models(e.url)[a]["state"] == "absent"
        m = metrics(e.url)
        assert m["SpareSlots"] == spare and m["LoadAdmission"]["Free"] == 3, m
        assert m["MemoryEvictions"] == spare and m["LoadedModelCount"] == budget - spare, m

        np.testing.assert_array_equal(call(e.url, d), X + k_of(d))  # the miss
        adm = metrics(e.url)["LoadAdmission"]
        assert (adm["Free"], adm["WaitedForEviction"], adm["WaitedForBackgroundUnload"]) == \
            ((4, 0, 0) if spare else (3, 1, 0)), adm
        if spare:
            wait_until("b unloaded in the background", lambda: metrics(e.url)["BackgroundEvictions"] == 2)
        m = metrics(e.url)
        states = {t: r["state"] for t, r in models(e.url).items()}
        expected = {a: "absent", b: "absent" if spare else "loaded", c: "loaded", d: "loaded"}
        assert states == expected, states
        order = [(kind, n.split("_")[0]) for kind, n in calls.calls]
        ns_a, ns_d = (namespace_for(t) for t in (a, d))
        assert order.index(("unload", ns_a)) < order.index(("load", ns_d)), calls.calls
        assert m["MemoryEvictions"] == m["TritonUnloadCalls"] == 1 + spare, m
        # background unloads leave at a low CPU priority; one on a request's path does not
        assert calls.unload_nice == ([19, 19] if spare else [0]), calls.unload_nice
        assert m["PeakLoadedModelCount"] <= budget and calls.peak <= budget, (m, calls.peak)
        for name, kinds in calls.per_model().items():
            assert kinds in (["load"], ["load", "unload"]), (name, kinds)  # one unload per victim
    finally:
        e.ep.stop()


def _lru_misses(sequence: list[str], capacity: int) -> list[bool]:
    """Per request: did it miss an LRU cache of ``capacity`` (the cache model's lru_warm)."""
    return [not warm for warm in lru_warm(sequence, capacity)]


# ---------------------------------------------------------------------------------- manager alone
class HeldTriton:
    """A stand-in for TritonServer whose unloads end when the test says so (the manager calls
    it from worker threads, as it calls the real one); no process, so no memory is measured."""

    pid = None
    model_repository = Path("/nonexistent-repo")

    def __init__(self) -> None:
        self.release = threading.Event()
        self.unloads: list[str] = []

    def unload(self, name: str, *a: Any, **kw: Any) -> None:
        self.unloads.append(name)
        assert self.release.wait(60), "the test never released the unload"

    def load(self, name: str, *a: Any, **kw: Any) -> None:
        pass


def _manager(tmp_path: Path, triton: Any, **cfg: Any) -> Any:
    from infra.endpoint.models import ModelManager
    from infra.endpoint.reports import ModelState
    from infra.triton.model_repo import NamespacedModel

    mgr = ModelManager(EndpointConfig(name="e", model_data_url=tmp_path.as_uri(),
                                      cache_dir=tmp_path / "cache", **cfg), triton)
    mgr.sup.state = "live"

    def loaded(target: str) -> Any:
        m = mgr.entry(target)
        m.ns = NamespacedModel(entry=f"{target}_pipe", models=(f"{target}_pipe",), original_entry="pipe")
        mgr.residency.set_state(m, ModelState.LOADED)
        return m

    return mgr, loaded


def test_an_evicting_load_inherits_its_victims_place(tmp_path: Path) -> None:
    """Budget 1, one idle model, two loads wanting room at once: the first evicts it and takes
    its place the moment the unload ends; the second cannot slip in (it keeps waiting) and
    the count never passes 1. One unload call in all."""
    import asyncio

    triton = HeldTriton()
    mgr, loaded = _manager(tmp_path, triton, max_loaded_models=1, memory_limit_bytes=0)

    async def scenario() -> None:
        victim = loaded("v")
        first, second = mgr.entry("a"), mgr.entry("b")
        t1 = asyncio.create_task(mgr.evictor.make_room(first))
        await asyncio.sleep(0)  # let the first choose its victim (a loop turn, not a time)
        t2 = asyncio.create_task(mgr.evictor.make_room(second))
        await wait_until_async('the unload call to reach "Triton"',
                               lambda: victim.state == "unloading" and len(triton.unloads) == 1)
        assert (first.state, second.state) == ("absent", "absent") and not t2.done()
        triton.release.set()
        await t1
        assert (victim.state, first.state) == ("absent", "loading")
        for _ in range(20):  # the second is woken by the change, and must go back to waiting
            await asyncio.sleep(0)
        assert not t2.done() and second.state == "absent"
        assert mgr.metrics.peak_loaded == 1 and len(mgr.resident) == 1
        t2.cancel()

    asyncio.run(scenario())
    assert triton.unloads == ["v_pipe"]


def test_memory_check_counts_the_models_still_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Measured memory cannot see a model that is still loading: each one is counted at the
    largest per-model memory seen, so concurrent loads cannot overshoot the limit together."""
    import asyncio

    import infra.endpoint.memory as mm

    from infra.endpoint.reports import ModelState

    from infra.processes.procfs import Memory

    rss = {"now": 100}  # PSS, the limit's basis
    monkeypatch.setattr(mm, "triton_memory", lambda pid: Memory(pss=rss["now"], rss=3 * rss["now"]))
    mgr, loaded = _manager(tmp_path, HeldTriton(), memory_limit_bytes=1000)

    async def scenario() -> list[bool]:
        out = [await mgr.memory.over_limit(mgr.entry("a"), mgr.resident)]  # nothing in Triton: base 100
        loaded("v")
        rss["now"] = 400  # one model: 300 each
        out.append(await mgr.memory.over_limit(mgr.entry("a"), mgr.resident))  # 400 + 300 <= 1000
        mgr.residency.set_state(mgr.entry("b"), ModelState.LOADING)
        out.append(await mgr.memory.over_limit(mgr.entry("a"), mgr.resident))  # 400 + 300 x 2 = 1000: fits
        mgr.residency.set_state(mgr.entry("c"), ModelState.LOADING)
        out.append(await mgr.memory.over_limit(mgr.entry("a"), mgr.resident))  # 400 + 300 x 3 > 1000
        return out

    assert asyncio.run(scenario()) == [False, False, False, True]


def test_memory_check_reads_again_unless_a_recent_reading_bounds_it_far_below_the_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An admission check far below the limit goes by the last reading (if under a second old)
    plus the largest per-model memory for every model that came in since; near the limit, or
    once the reading is old, it reads Triton again: a model that grew is seen."""
    import asyncio

    import infra.endpoint.memory as mm

    from infra.processes.procfs import Memory

    pss, reads, now = {"now": 100}, [], {"t": 0.0}

    def read(pid: object) -> Memory:
        reads.append(pss["now"])
        return Memory(pss=pss["now"])

    monkeypatch.setattr(mm, "triton_memory", read)
    mgr, loaded = _manager(tmp_path, HeldTriton(), memory_limit_bytes=10_000)
    probe = mgr.memory
    probe.clock = lambda: now["t"]

    async def check() -> bool:
        return await probe.over_limit(mgr.entry("new"), mgr.resident)

    async def scenario() -> list[bool]:
        out = [await check()]  # nothing in Triton: base 100, read
        loaded("v")
        pss["now"] = 400
        out.append(await check())  # no per-model figure yet: read (300 a model)
        out.append(await check())  # 400 + 300 <= 9,000: no read
        loaded("w")
        out.append(await check())  # bound 400 + 300 (w) + 300: no read
        pss["now"] = 9_900  # w grew
        now["t"] = 0.9
        out.append(await check())  # still recent, bound 1,000: no read (inside the second)
        now["t"] = 1.1
        out.append(await check())  # old: read, 9,900 + 300 > 10,000
        out.append(await check())  # near the limit: read again
        return out

    assert asyncio.run(scenario()) == [False, False, False, False, False, True, True]
    assert reads == [100, 400, 9_900, 9_900] and (probe.reads, probe.skipped) == (4, 3)
    wire = mgr.report().model_dump(by_alias=True)  # what GET /metrics answers
    assert (wire["MemoryChecksRead"], wire["MemoryChecksSkipped"]) == (4, 3)


def test_a_miss_with_no_free_place_joins_the_background_unload(tmp_path: Path) -> None:
    """Budget 2, one spare place: with a and b loaded, a (least recently used) is unloaded in
    the background. A load for c that arrives while that unload runs (the budget is full)
    inherits a's place instead of evicting b: no second unload, c "loading" the moment a's
    unload ends, and then b goes in the background. The count never passes 2."""
    import asyncio

    triton = HeldTriton()
    mgr, loaded = _manager(tmp_path, triton, max_loaded_models=2, memory_limit_bytes=0,
                           spare_slots=1)

    async def scenario() -> None:
        a, b = loaded("a"), loaded("b")
        a.last_used, b.last_used = 1.0, 2.0
        mgr.evictor.keep_spare()
        assert (a.state, b.state) == ("unloading", "loaded")  # in this very step
        await wait_until_async('the unload call to reach "Triton"', lambda: len(triton.unloads) == 1)
        c = mgr.entry("c")
        t = asyncio.create_task(mgr.evictor.make_room(c))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not t.done() and c.state == "absent" and a.heir is c and b.state == "loaded"
        triton.release.set()
        await t
        assert (a.state, c.state, b.state) == ("absent", "loading", "unloading")
        await asyncio.gather(*mgr.evictor.background)
        assert mgr.metrics.peak_loaded == 2 and len(mgr.resident) == 1  # c alone

    asyncio.run(scenario())
    assert triton.unloads == ["a_pipe", "b_pipe"]
    assert (mgr.metrics.background_evictions, mgr.metrics.evictions) == (2, 2)
    adm = mgr.metrics.load_admission
    assert (adm["WaitedForBackgroundUnload"], adm["WaitedForEviction"], adm["Free"]) == (1, 0, 0), adm


def test_derived_spare_keeps_up_with_unloads_slower_than_loads() -> None:
    """Little's law: places freed at ``unload_s`` each must keep up with
    ``max_concurrent_loads`` loads of ``load_s``; beyond the load concurrency at most 8 % of the
    budget; a Python model's ratio (3) until both are measured; the load concurrency when unloads
    are the faster; none when the budget is under 4x the concurrency."""
    from infra.endpoint.state import derived_spare

    assert derived_spare(50, 2) == 4  # nothing measured yet: ceil(2 * 3), at most 8 % of 50
    assert derived_spare(200, 2) == 6 and derived_spare(10, 2) == 2
    assert derived_spare(200, 2, load_s=0.47, unload_s=1.31) == 6  # ceil(2 * 2.79)
    assert derived_spare(50, 2, load_s=0.47, unload_s=1.31) == 4  # 8 % of 50
    assert derived_spare(50, 2, load_s=0.5, unload_s=1.0) == 4  # exactly 2x: no extra place
    assert derived_spare(50, 2, load_s=1.0, unload_s=0.2) == 2  # unloads faster: the concurrency
    assert derived_spare(10, 2, load_s=0.47, unload_s=1.31) == 2  # the concurrency, not 8 % of 10
    assert derived_spare(1000, 2, load_s=0.1, unload_s=1.3) == 26
    assert derived_spare(7, 2, load_s=0.1, unload_s=1.3) == 0  # cannot even spare the concurrency


def test_the_endpoint_sizes_its_spare_room_from_the_loads_and_unloads_it_timed(tmp_path: Path) -> None:
    """Until SPARE_MIN_SAMPLES loads and unloads are timed the derived room assumes a Python
    model's unload/load ratio (3); then it follows their measured ratio (download + load vs
    unload): a fleet with fast unloads gives the extra places back."""
    from infra.endpoint.state import SPARE_MIN_SAMPLES, Metrics, spare_slots

    cfg = EndpointConfig(name="e", model_data_url=tmp_path.as_uri(), cache_dir=tmp_path,
                         max_loaded_models=100)
    m, fast = Metrics(), Metrics()
    for _ in range(SPARE_MIN_SAMPLES - 1):
        m.loading_ms.append(400.0)
        m.downloading_ms.append(100.0)
        m.unloading_ms.append(2000.0)
        fast.loading_ms.append(400.0)
        fast.unloading_ms.append(100.0)
    assert m.load_unload_s() == (None, None) and spare_slots(cfg, *m.load_unload_s()) == 6  # 2 x 3
    m.loading_ms.append(400.0)
    m.downloading_ms.append(100.0)
    m.unloading_ms.append(2000.0)
    assert m.load_unload_s() == (0.5, 2.0)
    assert spare_slots(cfg, *m.load_unload_s()) == 8  # ceil(2 * 4), at most 8 % of 100
    fast.loading_ms.append(400.0)
    fast.unloading_ms.append(100.0)
    assert spare_slots(cfg, *fast.load_unload_s()) == 2  # unloads faster: the concurrency
    cfg.max_loaded_models = 50
    assert spare_slots(cfg) == 4  # the prior's 6, at most 8 % of 50
    fixed = EndpointConfig(name="e", model_data_url=tmp_path.as_uri(), cache_dir=tmp_path,
                           max_loaded_models=50, spare_slots=3)
    assert spare_slots(fixed, *m.load_unload_s()) == 3  # set: measurements do not move it


def test_spare_slots_default_and_bounds(tmp_path: Path) -> None:
    """Derived with nothing measured yet: the prior ratio's room (2 loads x 3) within 8 % of
    the budget and at least the load concurrency, when that is at most a quarter of the budget,
    else none; set: at most budget - 1; no count budget, no spare room."""
    from infra.endpoint.state import spare_slots

    def cfg(**kw: Any) -> EndpointConfig:
        return EndpointConfig(name="e", model_data_url=tmp_path.as_uri(), cache_dir=tmp_path, **kw)

    assert [spare_slots(cfg(max_loaded_models=n)) for n in (1, 2, 3, 4, 7, 8, 10, 50, 60, 100, 1000)] == \
        [0, 0, 0, 0, 0, 2, 2, 4, 4, 6, 6]
    assert spare_slots(cfg(max_loaded_models=100, max_concurrent_loads=4)) == 8
    assert spare_slots(cfg(max_loaded_models=10, max_concurrent_loads=4)) == 0
    assert spare_slots(cfg(max_loaded_models=3, spare_slots=5)) == 2
    assert spare_slots(cfg(max_loaded_models=10, spare_slots=0)) == 0
    assert spare_slots(cfg(spare_slots=3)) == 0
