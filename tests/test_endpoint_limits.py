"""What the README promises when the local endpoint runs out of time, memory or disk.

Each test starts its own endpoint (a real tritonserver) with the limit under test set low, and
uses the tiny ``pipe -> add`` ensembles of tests/fixtures/tiny_models.py (Y = X + k, so every answer
says which model gave it). Only the endpoint's public behaviour is checked: HTTP answers,
``GET /models`` and ``GET /metrics``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fixtures.local_endpoint import X, assert_error, call, metrics, models, post, start_endpoint
from fixtures.tiny_models import publish_pipe, write_pipe_repo

from infra.triton.model_repo import namespace_for
from infra.aws.runtime_client import encode_request
from infra.store.tarball import pack_deterministic

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pytriton tritonserver is Linux-only"),
]

FAILING_ADD_MODEL = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError({message!r})

    def execute(self, requests):
        raise RuntimeError("never loaded")
"""


def publish_failing(store_dir: Path, target: str, message: str) -> None:
    """A ``pipe`` tarball whose ``add`` model fails to load with ``message``."""
    with tempfile.TemporaryDirectory(prefix="failing-src-") as tmp:
        repo = write_pipe_repo(Path(tmp) / "repo", k=0)
        (repo / "add" / "1" / "model.py").write_text(FAILING_ADD_MODEL.format(message=message))
        pack_deterministic(repo, store_dir / target)


def wait_state(url: str, target: str, want: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (state := models(url).get(target, {}).get("state")) != want:
        assert state != "failed", f"{target} failed to load"
        assert time.monotonic() < deadline, f"{target} never became {want!r} (last: {state!r})"
        time.sleep(0.05)  # polling interval


def cached_folders(cache_dir: Path, target: str) -> list[str]:
    """The target's namespaced model folders in the endpoint's disk cache."""
    repo = cache_dir / "repo"
    ns = namespace_for(target)
    return sorted(p.name for p in repo.iterdir() if p.name.startswith(ns)) if repo.exists() else []


# ---------------------------------------------------------------------------------- 429
def test_model_not_ready_after_the_wait_then_it_serves(tmp_path: Path) -> None:
    """A load longer than the ready wait: 429 ModelNotReadyException, the load goes on, and a
    later request is answered by the loaded model (one load, not one per request)."""
    e = start_endpoint(tmp_path, ready_wait_s=0.3)
    try:
        publish_pipe(e.store_dir, "slow.tar.gz", k=21, init_sleep_s=4)
        body, ct = encode_request({"X": X})
        doc = assert_error(post(e.url, "slow.tar.gz", body, ct), 429, "ModelNotReadyException",
                           "slow.tar.gz")
        assert "retry" in doc["message"].lower(), doc
        assert models(e.url)["slow.tar.gz"]["state"] == "loading"  # the load goes on
        # a second request while it loads gets the same answer, and starts no second load
        assert_error(post(e.url, "slow.tar.gz", body, ct), 429, "ModelNotReadyException")
        wait_state(e.url, "slow.tar.gz", "loaded")
        np.testing.assert_array_equal(call(e.url, "slow.tar.gz"), X + 21)
        m = metrics(e.url)
        assert m["ModelDownloadingTime"]["count"] == 1 and m["ModelLoadingTime"]["count"] == 1, m
        assert m["Invocations"] >= 1
    finally:
        e.ep.stop()


# ---------------------------------------------------------------------------------- 507
@pytest.mark.parametrize("oom_message", [
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 14.75 GiB total capacity)",
    "[Errno 28] No space left on device: '/tmp/weights.bin'",
])
def test_load_out_of_memory_is_507_after_unloading_idle_models(tmp_path: Path, oom_message: str) -> None:
    """A load that fails for lack of memory: the endpoint unloads an idle model, tries once
    more, then answers 507 naming the model; the other model still serves afterwards."""
    e = start_endpoint(tmp_path)
    try:
        publish_pipe(e.store_dir, "idle.tar.gz", k=5)
        publish_failing(e.store_dir, "hungry.tar.gz", oom_message)
        np.testing.assert_array_equal(call(e.url, "idle.tar.gz"), X + 5)
        body, ct = encode_request({"X": X})
        r = post(e.url, "hungry.tar.gz", body, ct)
        assert r.status_code == 507, (r.status_code, r.text)
        doc = r.json()
        assert "hungry.tar.gz" in doc["message"], doc
        assert oom_message.split(".")[0].split(":")[0] in doc["message"], doc
        assert str(e.cache_dir) not in doc["message"], "the host path leaked into the answer"
        listed = models(e.url)
        assert listed["hungry.tar.gz"]["state"] == "failed"
        assert listed["idle.tar.gz"]["state"] == "absent", "the idle model was not unloaded first"
        assert metrics(e.url)["MemoryEvictions"] == 1
        np.testing.assert_array_equal(call(e.url, "idle.tar.gz"), X + 5)  # reloads and serves
    finally:
        e.ep.stop()


@pytest.mark.parametrize("reason", [
    "weights file has the wrong shape",
    "no room left in the tokenizer vocabulary",  # "room" is not "OOM" (507s it once did)
])
def test_other_load_failures_are_400_not_507(tmp_path: Path, reason: str) -> None:
    """Only an out-of-memory failure is a 507: a model that fails for another reason is the
    caller's 400, and no idle model is unloaded for it."""
    e = start_endpoint(tmp_path)
    try:
        publish_pipe(e.store_dir, "idle.tar.gz", k=5)
        publish_failing(e.store_dir, "broken.tar.gz", reason)
        np.testing.assert_array_equal(call(e.url, "idle.tar.gz"), X + 5)
        body, ct = encode_request({"X": X})
        assert_error(post(e.url, "broken.tar.gz", body, ct), 400, "ValidationError",
                     "broken.tar.gz", reason)
        assert models(e.url)["idle.tar.gz"]["state"] == "loaded"
        assert metrics(e.url)["MemoryEvictions"] == 0
    finally:
        e.ep.stop()


# ---------------------------------------------------------------------------------- memory
def test_memory_limit_evicts_the_least_recently_used_idle_model(tmp_path: Path) -> None:
    """Triton's memory (server + stubs) over the limit: each new load first unloads the least
    recently used idle model; its files stay cached, so it comes back without a download."""
    e = start_endpoint(tmp_path, memory_limit_bytes=2**20)  # 1 MiB: Triton alone is far above
    try:
        for i, target in enumerate(("mem-a.tar.gz", "mem-b.tar.gz", "mem-c.tar.gz")):
            publish_pipe(e.store_dir, target, k=i + 1)
        np.testing.assert_array_equal(call(e.url, "mem-a.tar.gz"), X + 1)
        np.testing.assert_array_equal(call(e.url, "mem-b.tar.gz"), X + 2)
        listed = models(e.url)
        assert (listed["mem-a.tar.gz"]["state"], listed["mem-b.tar.gz"]["state"]) == ("absent", "loaded")
        m = metrics(e.url)
        assert (m["MemoryEvictions"], m["LoadedModelCount"]) == (1, 1), m

        np.testing.assert_array_equal(call(e.url, "mem-b.tar.gz"), X + 2)  # b: most recent
        np.testing.assert_array_equal(call(e.url, "mem-a.tar.gz"), X + 1)  # from the disk cache
        np.testing.assert_array_equal(call(e.url, "mem-c.tar.gz"), X + 3)
        listed = models(e.url)
        assert {t: listed[t]["state"] for t in listed} == {
            "mem-a.tar.gz": "absent", "mem-b.tar.gz": "absent", "mem-c.tar.gz": "loaded"}
        m = metrics(e.url)
        assert m["MemoryEvictions"] == 3 and m["LoadedModelCount"] == 1, m
        assert m["ModelDownloadingTime"]["count"] == 3, "a reload must come from the disk cache"
    finally:
        e.ep.stop()


@pytest.mark.parametrize("recency,evicted,kept", [
    ("request", "rec-x.tar.gz", "rec-a.tar.gz"),
    ("served", "rec-a.tar.gz", "rec-x.tar.gz"),
])
def test_a_miss_ranks_by_when_it_was_asked_for(tmp_path: Path, recency: str, evicted: str, kept: str) -> None:
    """Budget 2: a is loaded; x is asked for (its load takes 3 s); a is used while x loads; then
    y needs a place. Ranked by request (the default, an exact LRU over the requests), x was
    asked for before a's last use, so x goes; ranked by service (the behaviour before), x
    counts from its load's end, after a's use, so a goes."""
    e = start_endpoint(tmp_path, max_loaded_models=2, spare_slots=0, recency=recency)
    try:
        publish_pipe(e.store_dir, "rec-a.tar.gz", k=1)
        publish_pipe(e.store_dir, "rec-x.tar.gz", k=2, init_sleep_s=3)
        publish_pipe(e.store_dir, "rec-y.tar.gz", k=3)
        np.testing.assert_array_equal(call(e.url, "rec-a.tar.gz"), X + 1)
        with ThreadPoolExecutor(1) as pool:
            x = pool.submit(call, e.url, "rec-x.tar.gz")
            wait_state(e.url, "rec-x.tar.gz", "loading")
            np.testing.assert_array_equal(call(e.url, "rec-a.tar.gz"), X + 1)
            assert models(e.url)["rec-x.tar.gz"]["state"] == "loading", "a's use must come during x's load"
            np.testing.assert_array_equal(x.result(), X + 2)
        np.testing.assert_array_equal(call(e.url, "rec-y.tar.gz"), X + 3)
        listed = models(e.url)
        assert (listed[evicted]["state"], listed[kept]["state"]) == ("absent", "loaded"), listed
    finally:
        e.ep.stop()


def test_memory_limit_counts_pss_so_models_that_fit_stay_loaded(tmp_path: Path) -> None:
    """The limit counts Triton's PSS (shared library pages split among the stubs that map them),
    not summed RSS (those pages once per stub): a limit with room for 2 more models by PSS
    loads them without an eviction, although summed RSS is then over it. /metrics names both."""
    e = start_endpoint(tmp_path, memory_limit_bytes=2**50)
    try:
        targets = [f"pss-{i}.tar.gz" for i in range(4)]
        for i, target in enumerate(targets):
            publish_pipe(e.store_dir, target, k=i + 1)
        m0 = metrics(e.url)
        assert m0["MemoryLimitBasis"] == "pss" and m0["TritonProcesses"] == 1, m0
        assert 0 < m0["TritonMemoryUss"] <= m0["TritonMemoryPss"] <= m0["TritonMemoryRss"], m0
        for i, target in enumerate(targets[:2]):
            np.testing.assert_array_equal(call(e.url, target), X + i + 1)
        m2 = metrics(e.url)
        per_pss = (m2["TritonMemoryPss"] - m0["TritonMemoryPss"]) / 2
        per_rss = (m2["TritonMemoryRss"] - m0["TritonMemoryRss"]) / 2
        limit = int(m2["TritonMemoryPss"] + 2.5 * per_pss)
        assert m2["TritonMemoryRss"] + 2 * per_rss > limit, (m2, per_pss, per_rss)  # RSS: no room
        e.ep.manager.cfg.memory_limit_bytes = limit
        for i, target in enumerate(targets[2:], start=2):
            np.testing.assert_array_equal(call(e.url, target), X + i + 1)
        m4 = metrics(e.url)
        assert (m4["MemoryEvictions"], m4["LoadedModelCount"], m4["TritonProcesses"]) == (0, 4, 5), m4
        assert m4["TritonMemoryPss"] <= limit < m4["TritonMemoryRss"], m4
    finally:
        e.ep.stop()


# ---------------------------------------------------------------------------------- disk
def test_disk_cache_drops_least_recently_used_unloaded_models(tmp_path: Path) -> None:
    """A disk cache smaller than one model: after each download the least recently used models
    that are not loaded lose their files (DiskEvictions); such a model comes back by download."""
    e = start_endpoint(tmp_path, max_loaded_models=1, disk_cache_bytes=1)
    try:
        for i, target in enumerate(("disk-a.tar.gz", "disk-b.tar.gz", "disk-c.tar.gz")):
            publish_pipe(e.store_dir, target, k=i + 1)
        np.testing.assert_array_equal(call(e.url, "disk-a.tar.gz"), X + 1)
        np.testing.assert_array_equal(call(e.url, "disk-b.tar.gz"), X + 2)  # a unloaded, kept
        assert cached_folders(e.cache_dir, "disk-a.tar.gz"), "unloaded by count: files stay"
        assert metrics(e.url)["DiskEvictions"] == 0

        np.testing.assert_array_equal(call(e.url, "disk-c.tar.gz"), X + 3)
        assert metrics(e.url)["DiskEvictions"] == 1
        assert cached_folders(e.cache_dir, "disk-a.tar.gz") == [], "a (LRU, unloaded) kept its files"
        assert cached_folders(e.cache_dir, "disk-b.tar.gz"), "b was loaded when c arrived"
        assert cached_folders(e.cache_dir, "disk-c.tar.gz")

        downloads = metrics(e.url)["ModelDownloadingTime"]["count"]
        np.testing.assert_array_equal(call(e.url, "disk-a.tar.gz"), X + 1)  # downloaded again
        m = metrics(e.url)
        assert m["ModelDownloadingTime"]["count"] == downloads + 1, m
        assert m["DiskEvictions"] == 2 and cached_folders(e.cache_dir, "disk-b.tar.gz") == []
    finally:
        e.ep.stop()


# ---------------------------------------------------------------------------------- concurrency
def _concurrent_calls(url: str, targets: list[str], n: int, workers: int = 8) -> None:
    """``n`` requests spread over ``targets`` from ``workers`` threads, both body kinds; every
    answer must come from the model asked (Y = X + j + k)."""
    from infra.aws.runtime_client import decode_response

    def one(j: int) -> tuple[int, np.ndarray]:
        target = targets[j % len(targets)]
        body, ct = encode_request({"X": X + j}, binary=bool(j % 2))
        r = post(url, target, body, ct)
        assert r.status_code == 200, (target, r.status_code, r.text)
        return j, decode_response(r.content, r.headers["content-type"])["Y"]

    with ThreadPoolExecutor(workers) as pool:
        answers = list(pool.map(one, range(n)))
    for j, y in answers:
        k = float(targets[j % len(targets)].split("-")[1].split(".")[0])
        np.testing.assert_array_equal(y, X + j + k)


def test_eviction_under_concurrent_requests(tmp_path: Path) -> None:
    """Five models, room for two, the endpoint full before the burst: models are evicted and
    loaded while others are in flight, and every request gets its own model's answer."""
    e = start_endpoint(tmp_path, max_loaded_models=2)
    targets = [f"busy-{10 * (i + 1)}.tar.gz" for i in range(5)]  # k = 10, 20, ... 50
    try:
        for target in targets:
            publish_pipe(e.store_dir, target, k=float(target.split("-")[1].split(".")[0]))
        _concurrent_calls(e.url, targets[:2], 2, workers=1)  # full: two loaded
        assert metrics(e.url)["LoadedModelCount"] == 2
        for _ in range(3):  # bursts that keep switching models
            _concurrent_calls(e.url, targets, 30)
        m = metrics(e.url)
        assert m["Invocations"] == 92, m
        assert m["MemoryEvictions"] >= 3, m  # three new models had to make room at least once
        states = [models(e.url)[t]["state"] for t in targets]
        assert "failed" not in states, states
        # still healthy: a sequential pass answers every model
        _concurrent_calls(e.url, targets, len(targets), workers=1)
        assert httpx.get(f"{e.url}/ping", timeout=10).status_code == 200
    finally:
        e.ep.stop()


def test_max_loaded_models_holds_under_concurrent_first_requests(tmp_path: Path) -> None:
    e = start_endpoint(tmp_path, max_loaded_models=2)
    targets = [f"first-{i + 1}.tar.gz" for i in range(5)]
    try:
        for i, target in enumerate(targets):
            publish_pipe(e.store_dir, target, k=i + 1)
        _concurrent_calls(e.url, targets, 10)
        m = metrics(e.url)
        assert m["LoadedModelCount"] <= 2, m
    finally:
        e.ep.stop()
