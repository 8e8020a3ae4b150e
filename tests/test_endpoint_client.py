"""LocalEndpointClient against a mock transport: the paths it asks and the typed documents it
parses back (no endpoint, no Triton: the wire shapes are those infra.endpoint.reports writes)."""

from __future__ import annotations

import httpx
import pytest

from infra.endpoint.client import LocalEndpointClient
from infra.endpoint.reports import EndpointMetrics, ModelRow, ModelState, TritonState

MODELS = {"endpoint": "e", "triton": {"state": "live", "pid": 42, "generation": 1, "reason": None},
          "models": [{"target_model": "a.tar.gz", "state": "loaded", "internal_name": "m1_pipe",
                      "disk_bytes": 10, "in_flight": 0, "loads": 1}]}
STAT = {"count": 1, "avg": 2.0, "max": 2.0}
METRICS = {
    "LoadedModelCount": 1, "Invocations": 3, "ModelCacheHit": 2, "ModelLoadingWaitTime": STAT,
    "ModelDownloadingTime": STAT, "ModelLoadingTime": STAT, "ModelUnloadingTime": STAT,
    "MemoryEvictions": 0, "DiskEvictions": 0, "TritonDeaths": 0, "TritonRestarts": 0,
    "TritonFailedStarts": 0, "StubFailures": 0,
    "AdmissionTime": {"count": 2, "window": 2, "p50": 0.1, "p99": 0.2, "max": 0.2},
    "PeakLoadedModelCount": 1, "TritonLoadCalls": 1, "TritonUnloadCalls": 0,
    "Thrash": {"MissRate": 0.3333, "Window": 200, "Requests": 3, "Threshold": 0.5,
               "Thrashing": False, "Warnings": 0},
    "Misses": {"Absent": 1, "JoinedLoad": 0, "Unloading": 0}, "BackgroundEvictions": 0,
    "LoadAdmission": {"Free": 1, "WaitedForEviction": 0, "WaitedForBackgroundUnload": 0,
                      "WaitedForIdle": 0},
    "SpareSlots": 0, "TritonMemoryPss": 300, "TritonMemoryUss": 200, "TritonMemoryRss": 650,
    "TritonPageTables": 1, "TritonProcesses": 2, "MemoryLimitBytes": 1000,
    "MemoryLimitBasis": "pss", "ModelMemoryPss": 100, "MemoryChecksRead": 4,
    "MemoryChecksSkipped": 3,
    "models": {"a.tar.gz": {"state": "loaded", "invocations": 3, "hits": 2, "loads": 1,
                            "last_load_s": 0.5, "total_load_s": 0.5, "evictions": 0,
                            "errors": 0, "last_used": 1700000000.0}},
}


def _client(seen: list[tuple[str, str]]) -> LocalEndpointClient:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.url.path == "/ping":
            return httpx.Response(200)
        if request.url.path == "/models":
            return httpx.Response(200, json=MODELS)
        if request.url.path == "/metrics":
            return httpx.Response(200, json=METRICS)
        if request.method == "DELETE":
            return httpx.Response(200, json={"target_model": "a.tar.gz", "unloaded": True})
        return httpx.Response(404, json={"message": "no route"})

    return LocalEndpointClient("http://endpoint.test:8080/", transport=httpx.MockTransport(answer))


def test_client_asks_the_admin_paths_and_parses_typed_documents() -> None:
    seen: list[tuple[str, str]] = []
    with _client(seen) as client:
        assert client.ping().status_code == 200
        rows = client.models()
        assert rows == [ModelRow(target_model="a.tar.gz", state=ModelState.LOADED,
                                 internal_name="m1_pipe", disk_bytes=10, in_flight=0, loads=1)]
        assert client.internal_name("a.tar.gz") == "m1_pipe" and client.internal_name("b") is None
        m = client.metrics()
        client.unload("a.tar.gz")
    assert isinstance(m, EndpointMetrics)
    assert (m.invocations, m.model_cache_hit, m.triton_memory_pss, m.thrash.miss_rate) == (3, 2, 300, 0.3333)
    assert m.models["a.tar.gz"].state == ModelState.LOADED and m.admission_time.p99 == 0.2
    # the wire document round-trips unchanged: same keys, same order, same values
    assert m.model_dump(mode="json") == METRICS and list(m.model_dump()) == list(METRICS)
    assert seen == [("GET", "/ping"), ("GET", "/models"), ("GET", "/models"), ("GET", "/models"),
                    ("GET", "/metrics"), ("DELETE", "/models/a.tar.gz")]


def test_client_raises_on_an_error_answer_and_tolerates_an_older_endpoint() -> None:
    memory = {"TritonMemoryPss", "TritonMemoryUss", "TritonMemoryRss", "TritonPageTables",
              "TritonProcesses", "MemoryLimitBytes", "MemoryLimitBasis", "ModelMemoryPss",
              "MemoryChecksRead", "MemoryChecksSkipped"}
    old = {k: v for k, v in METRICS.items() if k not in memory}  # before memory was reported

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(200, json=old)
        return httpx.Response(500, json={"message": "down"})

    with LocalEndpointClient("http://e.test", transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(httpx.HTTPStatusError):
            client.models()
        client.unload("x", check=False)  # no raise: the caller asked not to check
        m = client.metrics()
    assert m.triton_memory_pss is None and m.model_dump(mode="json", exclude_unset=True) == old
    assert TritonState("live") is TritonState.LIVE
