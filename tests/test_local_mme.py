"""The local multi-model endpoint (infra.endpoint.local_mme) against a real tritonserver.

Clients talk to it the way they talk to SageMaker (boto3 ``sagemaker-runtime`` with a
TargetModel, or raw HTTP), and it loads tarballs from a ``file://`` model prefix on demand.
Most tests use tiny hand-written Python-backend ensembles (they load in a fraction of a
second); one uses the real text-embedding ensemble built by the build flow.

One endpoint is shared by the module (``shared``); every test uploads its own TargetModels
under names of its own and asserts metric *deltas*, so the tests do not depend on their
order. Tests that need exact counters or a special configuration start their own endpoint.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from botocore.exceptions import ClientError

from infra.endpoint.local_mme import BINARY_CT
from infra.triton.model_repo import namespace_for
from infra.aws.runtime_client import decode_response, encode_request, invoke, runtime_client_for
from infra.store.tarball import pack_deterministic
from fixtures.local_endpoint import (
    ENDPOINT,
    X,
    post,
    call,
    assert_error,
    metrics,
    models,
    processes_mentioning,
    wait_gone,
    Endpoint,
    start_endpoint,
)
from fixtures.tiny_models import write_add_model, publish_pipe, tar_gz, repo_members, reg_member, link_member

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pytriton tritonserver is Linux-only"),
]

@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """One endpoint for the module; tests use TargetModel names of their own."""
    e = start_endpoint(tmp_path_factory.mktemp("shared-mme"))
    try:
        yield e
    finally:
        e.ep.stop()


@pytest.fixture(scope="module")
def client(shared: Endpoint) -> Any:
    return runtime_client_for(shared.url)


# ---------------------------------------------------------------------------------- 1. boto3
def test_boto3_target_models_with_shared_composing_names(tmp_path: Path) -> None:
    """Two tarballs both holding ``pipe`` and ``add`` each answer with their own model."""
    e = start_endpoint(tmp_path)  # own endpoint: the metrics below are exact counts
    try:
        publish_pipe(e.store_dir, "a.tar.gz", k=1)
        publish_pipe(e.store_dir, "b.tar.gz", k=100, mbs=8)  # batching model: [batch, n] inputs
        rt = runtime_client_for(e.url)
        x_a, x_b = X, X.reshape(1, -1)

        def boto_invoke(target: str, x: np.ndarray, binary: bool) -> tuple[np.ndarray, dict]:
            body, ct = encode_request({"X": x}, binary=binary)
            resp = rt.invoke_endpoint(EndpointName=ENDPOINT, TargetModel=target, ContentType=ct,
                                      Body=body)
            return decode_response(resp["Body"].read(), resp["ContentType"])["Y"], resp

        y, resp = boto_invoke("a.tar.gz", x_a, binary=True)
        np.testing.assert_array_equal(y, x_a + 1)
        assert resp["ContentType"].startswith(f"{BINARY_CT};json-header-size=")
        assert resp["InvokedProductionVariant"] == "AllTraffic"
        y, resp = boto_invoke("b.tar.gz", x_b, binary=True)
        np.testing.assert_array_equal(y, x_b + 100)
        assert y.shape == (1, 3)
        m = metrics(e.url)
        assert m["LoadedModelCount"] == 2
        assert m["ModelCacheHit"] == 0
        assert m["ModelDownloadingTime"]["count"] == 2 and m["ModelDownloadingTime"]["max"] > 0
        assert m["ModelLoadingWaitTime"]["count"] == 2 and m["ModelLoadingWaitTime"]["max"] > 0
        assert m["ModelLoadingTime"]["count"] == 2

        # plain JSON bodies, second call of each model: cache hits, no new download or load
        y, resp = boto_invoke("a.tar.gz", x_a, binary=False)
        np.testing.assert_array_equal(y, x_a + 1)
        assert resp["ContentType"] == "application/json"
        assert metrics(e.url)["ModelCacheHit"] == 1
        y, resp = boto_invoke("b.tar.gz", x_b, binary=False)
        np.testing.assert_array_equal(y, x_b + 100)
        assert resp["ContentType"] == "application/json"

        m = metrics(e.url)
        assert m["Invocations"] == 4
        assert m["ModelCacheHit"] == 2
        assert m["LoadedModelCount"] == 2
        assert m["ModelDownloadingTime"]["count"] == 2
        assert m["ModelLoadingWaitTime"]["count"] == 2
        assert m["MemoryEvictions"] == 0
        listed = models(e.url)
        assert {t: listed[t]["state"] for t in listed} == {"a.tar.gz": "loaded", "b.tar.gz": "loaded"}
        assert listed["a.tar.gz"]["internal_name"] != listed["b.tar.gz"]["internal_name"]
        # in Triton: both tarballs' ``pipe`` and ``add``, under names of their own
        index = httpx.post(f"{e.ep.triton.url}/v2/repository/index", json={"ready": True}).json()
        ready = sorted(x["name"] for x in index if x.get("state") == "READY")
        ns_a, ns_b = namespace_for("a.tar.gz"), namespace_for("b.tar.gz")
        assert ready == sorted([f"{ns_a}_add", f"{ns_a}_pipe", f"{ns_b}_add", f"{ns_b}_pipe"])
    finally:
        e.ep.stop()


# ---------------------------------------------------------------------------------- 2. real ensemble
def test_real_text_embedding_ensemble(shared: Endpoint, client: Any, built_text_embedding: dict) -> None:
    from tasks.build.package import read_manifest
    from tasks.build.verify import Sample, min_cosine

    shutil.copyfile(built_text_embedding["archive"], shared.store_dir / "text_embedding.tar.gz")
    manifest = built_text_embedding["manifest"]
    if manifest.sample is None:  # the build flow's return value leaves the sample out
        manifest = read_manifest(built_text_embedding["output_dir"], "text_embedding")
    sample = Sample.from_json(manifest.required_sample())
    for binary in (True, False):
        got = invoke(client, ENDPOINT, "text_embedding.tar.gz", sample.inputs, binary=binary)
        found = min_cosine(sample, got)
        assert found.value >= 0.999, (binary, found)
        (name, want), = sample.expected.items()
        assert got[name].shape == want.shape
    assert models(shared.url)["text_embedding.tar.gz"]["state"] == "loaded"

    # bytes that are not UTF-8 are the caller's error: a 4xx ModelError naming the cause
    bad = {"INPUT0": np.array([b"ok", b"\xff\xfe broken"], dtype=object).reshape(-1, 1)}
    with pytest.raises(ClientError) as info:
        invoke(client, ENDPOINT, "text_embedding.tar.gz", bad)
    err = info.value.response
    assert err["Error"]["Code"] == "ModelError" and err.get("OriginalStatusCode") == 400
    assert "UTF-8" in err["Error"]["Message"]
    got = invoke(client, ENDPOINT, "text_embedding.tar.gz", sample.inputs)  # still serving
    assert min_cosine(sample, got).value >= 0.999


# ---------------------------------------------------------------------------------- 3. unknown model
def test_unknown_target_model_is_a_validation_error(shared: Endpoint, client: Any) -> None:
    publish_pipe(shared.store_dir, "known.tar.gz", k=3)
    np.testing.assert_array_equal(call(shared.url, "known.tar.gz"), X + 3)

    body, ct = encode_request({"X": X})
    with pytest.raises(ClientError) as info:
        client.invoke_endpoint(EndpointName=ENDPOINT, TargetModel="no-such-model.tar.gz",
                               ContentType=ct, Body=body)
    err = info.value.response
    assert err["Error"]["Code"] == "ValidationError"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "no-such-model.tar.gz" in err["Error"]["Message"]

    # a TargetModel that tries to leave the model prefix is refused before any download
    r = post(shared.url, "../known.tar.gz", body, ct)
    assert_error(r, 400, "ValidationError", "../known.tar.gz")

    # the endpoint keeps serving, and asking again for the missing model is still an error
    np.testing.assert_array_equal(call(shared.url, "known.tar.gz", binary=False), X + 3)
    assert_error(post(shared.url, "no-such-model.tar.gz", body, ct), 400, "ValidationError",
                 "no-such-model.tar.gz")
    assert models(shared.url).get("no-such-model.tar.gz", {}).get("state") != "loaded"


# ---------------------------------------------------------------------------------- 4. bad requests
def test_malformed_requests_are_400_and_model_errors_424(shared: Endpoint, client: Any) -> None:
    publish_pipe(shared.store_dir, "bodies.tar.gz", k=4)
    url = shared.url
    np.testing.assert_array_equal(call(url, "bodies.tar.gz"), X + 4)
    good_json, json_ct = encode_request({"X": X}, binary=False)
    good_bin, bin_ct = encode_request({"X": X}, binary=True)
    header_size = int(bin_ct.split("json-header-size=")[1])

    cases = [
        ("not json", b"{this is not json", "application/json", "not valid JSON"),
        ("no inputs", b'{"outputs": [{"name": "Y"}]}', "application/json", "inputs"),
        ("empty inputs", b'{"inputs": []}', "application/json", "inputs"),
        ("input without datatype", b'{"inputs": [{"name": "X", "shape": [1]}]}', "application/json",
         "datatype"),
        ("header size past the end", good_bin, f"{BINARY_CT};json-header-size={len(good_bin) + 1}",
         "json-header-size larger than"),
        ("no header size", good_bin, BINARY_CT, "json-header-size"),
        ("header size cuts the JSON", good_bin, f"{BINARY_CT};json-header-size={header_size - 5}",
         "not valid JSON"),
        # as on SageMaker, any other content type means "the whole body is JSON"
        ("binary body under another content type", good_bin, "text/csv", "Content-Type"),
    ]
    invocations = metrics(url)["Invocations"]
    for what, body, ct, needle in cases:
        r = post(url, "bodies.tar.gz", body, ct)
        assert r.status_code == 400, (what, r.status_code, r.text)
        assert_error(r, 400, "ValidationError", needle)
        # checked before the model is even looked up: an unpublished model gives the same answer
        r = post(url, "bodies-never-published.tar.gz", body, ct)
        assert r.status_code == 400, (what, r.status_code, r.text)
        assert_error(r, 400, "ValidationError", needle)
    assert "bodies-never-published.tar.gz" not in models(url), "a bad body must not trigger a load"
    assert metrics(url)["Invocations"] == invocations, "refused requests are not invocations"

    # no TargetModel on a multi-model endpoint
    assert_error(post(url, None, good_json, json_ct), 400, "ValidationError", "TargetModel")
    # another endpoint's name
    r = post(url, "bodies.tar.gz", good_json, json_ct, endpoint="other-endpoint")
    assert_error(r, 400, "ValidationError", "other-endpoint")

    # well-formed, wrong for the model: refused by the front end with the entry model's config
    # (infra.endpoint.request_check) -> 400 naming the input, and the user's model name, not the
    # endpoint's internal (namespaced) one. Triton's own refusals stay 424 ModelError (see the
    # real ensemble's UTF-8 case and tests/test_endpoint_errors.py).
    wrong = json.dumps({"inputs": [{"name": "NOPE", "shape": [3], "datatype": "FP32",
                                    "data": [1, 2, 3]}]}).encode()
    doc = assert_error(post(url, "bodies.tar.gz", wrong, "application/json"), 400,
                       "ValidationError", "'NOPE'", "'pipe'")
    assert namespace_for("bodies.tar.gz") not in doc["message"]
    with pytest.raises(ClientError) as info:  # what a boto3 caller sees
        client.invoke_endpoint(EndpointName=ENDPOINT, TargetModel="bodies.tar.gz",
                               ContentType="application/json", Body=wrong)
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    wrong_shape, _ = encode_request({"X": X.reshape(1, 3)}, binary=False)  # rank 2 for a [-1] model
    assert_error(post(url, "bodies.tar.gz", wrong_shape, "application/json"), 400,
                 "ValidationError", "'X'", "rank")

    # still serving, both body kinds
    np.testing.assert_array_equal(call(url, "bodies.tar.gz", binary=False), X + 4)
    np.testing.assert_array_equal(call(url, "bodies.tar.gz", binary=True), X + 4)


# ---------------------------------------------------------------------------------- 5. bad tarballs
def test_bad_tarballs_are_refused_and_write_nothing_outside(shared: Endpoint, tmp_path: Path) -> None:
    token = f"evil-{uuid.uuid4().hex[:8]}"  # the name every escaping member would write
    abs_target = tmp_path / "abs" / token  # where the absolute member points
    bls_only = tmp_path / "bls"
    write_add_model(bls_only / "repo", k=1)  # a python model alone: no ensemble to load
    pack_deterministic(bls_only / "repo", bls_only / "bls.tar.gz")
    bad = {
        "bad-corrupt.tar.gz": np.random.default_rng(0).bytes(8192),
        "bad-truncated.tar.gz": tar_gz(repo_members())[:-40],
        "bad-dotdot.tar.gz": tar_gz(repo_members() + [reg_member(f"../{token}", b"pwned")]),
        "bad-deep-dotdot.tar.gz": tar_gz([reg_member(f"pipe/{'../' * 12}{token}", b"pwned")]
                                         + repo_members()),
        "bad-absolute.tar.gz": tar_gz(repo_members() + [reg_member(str(abs_target), b"pwned")]),
        "bad-symlink.tar.gz": tar_gz(repo_members() + [link_member(f"add/1/{token}", "/etc/passwd",
                                                             tarfile.SYMTYPE)]),
        "bad-hardlink.tar.gz": tar_gz(repo_members() + [link_member(f"add/1/{token}", "/etc/passwd",
                                                              tarfile.LNKTYPE)]),
        "bad-bls-only.tar.gz": (bls_only / "bls.tar.gz").read_bytes(),
    }
    for target, data in bad.items():
        (shared.store_dir / target).write_bytes(data)
    publish_pipe(shared.store_dir, "good-neighbour.tar.gz", k=5)
    np.testing.assert_array_equal(call(shared.url, "good-neighbour.tar.gz"), X + 5)

    body, ct = encode_request({"X": X})
    for target in bad:
        doc = assert_error(post(shared.url, target, body, ct), 400, "ValidationError", target)
        assert len(doc["message"]) < 2000
        assert models(shared.url)[target]["state"] == "failed"
    assert "no ensemble" in assert_error(post(shared.url, "bad-bls-only.tar.gz", body, ct),
                                         400, "ValidationError")["message"]

    # nothing escaped: no such file anywhere under the pytest base temp (which holds the
    # endpoint's cache, its store and this test's folder), nor beside any folder above the
    # extraction folder (where '..' members would land), nor at the absolute path
    escaped = list(tmp_path.parent.rglob(f"*{token}*"))
    escaped += [d / token for d in (shared.cache_dir / "work").parents if (d / token).exists()]
    assert escaped == [], escaped
    assert not abs_target.exists() and not abs_target.parent.exists()
    # nor did the refused models leave files in the cache (extraction dirs, repo folders)
    leftovers = [p for p in shared.cache_dir.rglob("*")
                 if any(p.name.startswith(namespace_for(t)) for t in bad) or ".tmp-" in p.name]
    assert leftovers == [], leftovers

    # the other models still answer, and a refused model can be fixed by uploading it again
    np.testing.assert_array_equal(call(shared.url, "good-neighbour.tar.gz", binary=False), X + 5)
    publish_pipe(shared.store_dir, "bad-dotdot.tar.gz", k=6)
    np.testing.assert_array_equal(call(shared.url, "bad-dotdot.tar.gz"), X + 6)


# ---------------------------------------------------------------------------------- 6. concurrency
def test_loaded_models_keep_serving_while_another_loads(shared: Endpoint, tmp_path: Path) -> None:
    """Order, not time: the slow model's load is held open (its initialize waits for a gate
    file) while the fast model answers concurrent and sequential requests; only then is the
    gate opened and the slow model's first request completes."""
    url = shared.url
    gate = tmp_path / "open-the-gate"
    publish_pipe(shared.store_dir, "conc-fast.tar.gz", k=1)
    publish_pipe(shared.store_dir, "conc-slow.tar.gz", k=7, gate=str(gate))
    np.testing.assert_array_equal(call(url, "conc-fast.tar.gz"), X + 1)

    slow: dict[str, Any] = {}

    def load_slow() -> None:
        try:
            slow["y"] = call(url, "conc-slow.tar.gz")
        except BaseException as e:  # reported by the main thread
            slow["error"] = e

    thread = threading.Thread(target=load_slow, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while models(url).get("conc-slow.tar.gz", {}).get("state") != "loading":
            assert time.monotonic() < deadline, "the slow model never started loading"
            assert thread.is_alive(), slow
            time.sleep(0.02)

        def fast(i: int) -> str:
            y = call(url, "conc-fast.tar.gz", X + i, binary=bool(i % 2))
            np.testing.assert_array_equal(y, X + i + 1)
            return models(url)["conc-slow.tar.gz"]["state"]  # seen right after the answer

        with ThreadPoolExecutor(4) as pool:  # concurrent requests ...
            seen = list(pool.map(fast, range(8)))
        seen += [fast(i) for i in range(4)]  # ... and sequential ones
        # every fast answer came while the slow model was still loading (the gate is shut)
        assert seen == ["loading"] * 12, seen
        assert thread.is_alive() and "y" not in slow
    finally:
        gate.touch()
        thread.join(120)
    assert "error" not in slow, slow.get("error")
    np.testing.assert_array_equal(slow["y"], X + 7)
    assert models(url)["conc-slow.tar.gz"]["state"] == "loaded"


def test_concurrent_first_requests_download_once(shared: Endpoint) -> None:
    publish_pipe(shared.store_dir, "stampede.tar.gz", k=8)
    before = metrics(shared.url)
    with ThreadPoolExecutor(6) as pool:
        ys = list(pool.map(lambda i: call(shared.url, "stampede.tar.gz", X + i), range(6)))
    for i, y in enumerate(ys):
        np.testing.assert_array_equal(y, X + i + 8)
    after = metrics(shared.url)
    assert after["ModelDownloadingTime"]["count"] == before["ModelDownloadingTime"]["count"] + 1
    assert after["ModelLoadingTime"]["count"] == before["ModelLoadingTime"]["count"] + 1


# ---------------------------------------------------------------------------------- 7. LRU eviction
def test_lru_eviction_and_reload_from_disk_cache(tmp_path: Path) -> None:
    e = start_endpoint(tmp_path, max_loaded_models=1)
    try:
        publish_pipe(e.store_dir, "lru-a.tar.gz", k=1)
        publish_pipe(e.store_dir, "lru-b.tar.gz", k=2)
        np.testing.assert_array_equal(call(e.url, "lru-a.tar.gz"), X + 1)
        np.testing.assert_array_equal(call(e.url, "lru-b.tar.gz"), X + 2)
        listed = models(e.url)
        assert listed["lru-a.tar.gz"]["state"] == "absent"
        assert listed["lru-b.tar.gz"]["state"] == "loaded"
        m = metrics(e.url)
        assert m["LoadedModelCount"] == 1
        assert m["MemoryEvictions"] == 1
        assert m["ModelUnloadingTime"]["count"] == 1
        assert m["ModelDownloadingTime"]["count"] == 2
        # the evicted model's files stay in the disk cache
        internal_a = listed["lru-a.tar.gz"]["internal_name"]
        assert (e.cache_dir / "repo" / internal_a / "config.pbtxt").exists()

        # A again: reloaded from the disk cache (no download), B evicted in turn
        np.testing.assert_array_equal(call(e.url, "lru-a.tar.gz", binary=False), X + 1)
        listed = models(e.url)
        assert listed["lru-a.tar.gz"]["state"] == "loaded"
        assert listed["lru-b.tar.gz"]["state"] == "absent"
        m = metrics(e.url)
        assert m["ModelDownloadingTime"]["count"] == 2
        assert m["ModelLoadingTime"]["count"] == 3
        assert m["MemoryEvictions"] == 2
        assert m["LoadedModelCount"] == 1
        # Triton agrees: only A's ensemble and its composing model are READY
        index = httpx.post(f"{e.ep.triton.url}/v2/repository/index", json={"ready": True}).json()
        ready = sorted(x["name"] for x in index if x.get("state") == "READY")
        ns_a = namespace_for("lru-a.tar.gz")
        assert ready == [f"{ns_a}_add", f"{ns_a}_pipe"], ready
    finally:
        e.ep.stop()


# ---------------------------------------------------------------------------------- 8. removal
def test_delete_model_then_remove_from_store(shared: Endpoint) -> None:
    url, target = shared.url, "removable.tar.gz"
    publish_pipe(shared.store_dir, target, k=9)
    np.testing.assert_array_equal(call(url, target), X + 9)
    internal = models(url)[target]["internal_name"]
    assert httpx.get(f"{shared.ep.triton.url}/v2/models/{internal}/ready").status_code == 200

    r = httpx.delete(f"{url}/models/{target}", timeout=60)
    assert r.status_code == 200 and r.json()["unloaded"] is True
    assert target not in models(url)
    assert httpx.get(f"{shared.ep.triton.url}/v2/models/{internal}/ready").status_code != 200
    ns = namespace_for(target)
    assert not [p for p in (shared.cache_dir / "repo").iterdir() if p.name.startswith(ns)]
    # deleting an unknown (or already deleted) model is harmless
    r = httpx.delete(f"{url}/models/{target}", timeout=60)
    assert r.status_code == 200 and r.json()["unloaded"] is False

    # still in the store: the next request downloads and loads it again
    downloads = metrics(url)["ModelDownloadingTime"]["count"]
    np.testing.assert_array_equal(call(url, target), X + 9)
    assert metrics(url)["ModelDownloadingTime"]["count"] == downloads + 1

    # retired for good: unload, delete the object, and it is a ValidationError
    assert httpx.delete(f"{url}/models/{target}", timeout=60).json()["unloaded"] is True
    (shared.store_dir / target).unlink()
    body, ct = encode_request({"X": X})
    assert_error(post(url, target, body, ct), 400, "ValidationError", target)


# ---------------------------------------------------------------------------------- 9. background process
def test_background_endpoint_process_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.endpoint import process as proc
    from infra import paths

    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    publish_pipe(store_dir, "bg.tar.gz", k=11)
    name = "bg-test"
    cache_dir = paths.endpoint_dir(name) / "cache"
    assert cache_dir.is_relative_to(tmp_path.resolve())
    assert proc.find_running(name) is None

    info = proc.start_background(name, store_dir.as_uri(), timeout=120)
    try:
        assert proc.state_file(name).exists()
        found = proc.find_running(name)
        assert found is not None and found.pid == info.pid and found.url == info.url
        assert proc.start_background(name, store_dir.as_uri()).pid == info.pid  # reused
        with pytest.raises(proc.EndpointStartError, match="already running"):
            proc.start_background(name, (tmp_path / "elsewhere").as_uri())
        y = invoke(runtime_client_for(info.url), name, "bg.tar.gz", {"X": X})["Y"]
        np.testing.assert_array_equal(y, X + 11)
        # the endpoint process names its settings file, Triton its cache: both in the folder
        running = processes_mentioning(str(paths.endpoint_dir(name)))
        assert info.pid in running
        assert any("tritonserver" in cmd for cmd in running.values()), running
    finally:
        stopped = proc.stop(name)
    assert stopped is proc.StopOutcome.STOPPED
    assert not proc.state_file(name).exists()
    assert proc.find_running(name) is None
    assert wait_gone(str(paths.endpoint_dir(name))) == {}
    assert proc.stop(name) is proc.StopOutcome.NOT_RUNNING  # nothing left to stop


# ---------------------------------------------------------------------------------- 10. stop
def test_local_endpoint_stop_leaves_no_tritonserver(tmp_path: Path) -> None:
    e = start_endpoint(tmp_path)
    try:
        publish_pipe(e.store_dir, "stop.tar.gz", k=12)
        np.testing.assert_array_equal(call(e.url, "stop.tar.gz"), X + 12)  # Python stubs running
        triton_pid = e.ep.triton.pid
        running = processes_mentioning(str(e.cache_dir))
        assert triton_pid in running and len(running) >= 2, running  # server + model stubs
    finally:
        e.ep.stop()
    assert wait_gone(str(e.cache_dir)) == {}
    assert triton_pid not in processes_mentioning("tritonserver")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{e.url}/ping", timeout=2)
