"""infra.store.sync: a fleet published to moto S3 and to the FileStore, request by request.

S3 requests are counted at the botocore level (a ``before-parameter-build`` event hook on the
client sees every API operation the store makes, with its parameters, so "0 PUT/HEAD" is what
went to S3, not what our code believes it did); failures are injected the same way (a hook that
raises for one key). The FileStore is counted through a thin wrapper over the real store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from fixtures.log_lines import LogLines
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws

from infra.store.objects import (
    MULTIPART_THRESHOLD,
    S3_MAX_POOL_CONNECTIONS,
    FileStore,
    ObjectStore,
    S3Store,
    StoreRefused,
    StoreUnavailable,
)
from infra.store.sync import INDEX_NAME, LocalObject, sync_files

MiB = 1024 * 1024
PREFIX = "fleets/tenants"


class S3Calls:
    """Every S3 API operation a client makes (name and key), from botocore's event hooks; an
    operation on a key in ``fail`` raises the way S3 answering 500 would."""

    def __init__(self, client: Any) -> None:
        self.ops: list[tuple[str, str]] = []
        self.fail: set[str] = set()
        self._lock = threading.Lock()
        client.meta.events.register("before-parameter-build.s3", self._seen)

    def _seen(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        key = str(params.get("Key", ""))
        with self._lock:
            self.ops.append((model.name, key))
        if model.name in ("PutObject", "CreateMultipartUpload") and key.rsplit("/", 1)[-1] in self.fail:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected failure"}},
                              model.name)

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(name for name, _ in self.ops)

    def reset(self) -> None:
        with self._lock:
            self.ops.clear()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, S3Calls]]:
    for var, value in {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1",
                              config=Config(max_pool_connections=S3_MAX_POOL_CONNECTIONS))
        client.create_bucket(Bucket="models")
        yield client, S3Calls(client)


class CountingStore:
    """A real store whose calls are counted (for the FileStore, which has no HTTP to hook)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


def _make_files(folder: Path, count: int, size: int = 2048) -> dict[str, LocalObject]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(count):
        path = folder / f"tenant-{i:04d}.tar.gz"
        path.write_bytes(os.urandom(size))
        files[path.name] = LocalObject.from_path(path)
    return files


def _rewrite(files: dict[str, LocalObject], key: str, data: bytes) -> None:
    files[key].path.write_bytes(data)
    files[key] = LocalObject.from_path(files[key].path)


def _index(store: ObjectStore, prefix: str = PREFIX) -> dict[str, Any]:
    return json.loads(store.get_bytes(f"{prefix}/{INDEX_NAME}"))


@pytest.fixture(params=["s3", "file"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ObjectStore, Any]]:
    """(store, request counter): ``counter()`` returns the requests made since ``reset()``,
    by S3 operation name (S3) or store method (FileStore)."""
    if request.param == "s3":
        client, calls = request.getfixturevalue("s3")
        yield S3Store("models", client=client), calls
    else:
        counting = CountingStore(FileStore(tmp_path / "store"))

        class FileCalls:
            def counts(self) -> Counter[str]:
                return Counter(counting.calls)

            def reset(self) -> None:
                counting.calls.clear()

        yield counting, FileCalls()  # type: ignore[misc]


# ---------------------------------------------------------------------------------- the cycle


def test_first_sync_uploads_all_then_a_noop_is_one_get(backend, tmp_path: Path) -> None:
    store, calls = backend
    files = _make_files(tmp_path / "built", 12)

    first = sync_files(store, PREFIX, files, workers=4)
    assert sorted(first.uploaded) == sorted(files) and first.ok and first.index_rebuilt
    assert first.bytes_uploaded == sum(f.size for f in files.values())
    index = _index(store)
    assert index["schema_version"] == 1
    assert index["objects"] == {k: {"sha256": f.sha256, "size": f.size} for k, f in files.items()}
    for key, f in files.items():
        assert store.head(f"{PREFIX}/{key}").sha256 == f.sha256  # sha256 as object metadata

    calls.reset()
    again = sync_files(store, PREFIX, files, workers=4)
    assert sorted(again.skipped) == sorted(files) and again.uploaded == [] and not again.index_rebuilt
    assert again.calls == {"get_bytes": 1} and again.requests == 1
    seen = calls.counts()
    if isinstance(store, S3Store):
        assert seen == Counter({"GetObject": 1})  # no PutObject, no HeadObject, no listing
    else:
        assert seen == Counter({"get_bytes": 1})


def test_one_changed_file_is_one_upload_and_an_index_update(backend, tmp_path: Path) -> None:
    store, calls = backend
    files = _make_files(tmp_path / "built", 10)
    sync_files(store, PREFIX, files, workers=4)
    _rewrite(files, "tenant-0003.tar.gz", b"retrained model")

    calls.reset()
    report = sync_files(store, PREFIX, files, workers=4)
    assert report.uploaded == ["tenant-0003.tar.gz"] and len(report.skipped) == 9
    assert store.get_bytes(f"{PREFIX}/tenant-0003.tar.gz") == b"retrained model"
    assert _index(store)["objects"]["tenant-0003.tar.gz"]["sha256"] == files["tenant-0003.tar.gz"].sha256
    assert report.calls == {"get_bytes": 1, "put_file": 1, "put_bytes": 1}
    if isinstance(store, S3Store):
        puts = [key for name, key in calls.ops if name == "PutObject"]
        assert sorted(puts) == [f"{PREFIX}/{INDEX_NAME}", f"{PREFIX}/tenant-0003.tar.gz"]


def test_missing_or_corrupt_index_is_rebuilt_from_one_listing(backend, tmp_path: Path) -> None:
    store, calls = backend
    files = _make_files(tmp_path / "built", 8)
    sync_files(store, PREFIX, files, workers=4)
    store.delete(f"{PREFIX}/{INDEX_NAME}")
    _rewrite(files, "tenant-0001.tar.gz", b"a different size: no HEAD needed")
    _rewrite(files, "tenant-0002.tar.gz", os.urandom(files["tenant-0002.tar.gz"].size))  # same size

    calls.reset()
    report = sync_files(store, PREFIX, files, workers=4)
    assert report.index_rebuilt
    assert report.uploaded == ["tenant-0001.tar.gz", "tenant-0002.tar.gz"]
    assert report.calls["list"] == 1
    assert report.calls["head"] == 7  # every object whose listed size matches, not tenant-0001
    assert _index(store)["objects"] == {k: {"sha256": f.sha256, "size": f.size} for k, f in files.items()}

    store.put_bytes(f"{PREFIX}/{INDEX_NAME}", b"{not json")
    report = sync_files(store, PREFIX, files, workers=4)
    assert report.index_rebuilt and report.uploaded == [] and len(report.skipped) == 8
    assert _index(store)["schema_version"] == 1  # rewritten whole


def test_a_failed_upload_leaves_an_index_of_what_succeeded(s3, tmp_path: Path) -> None:
    client, calls = s3
    store = S3Store("models", client=client)
    files = _make_files(tmp_path / "built", 6)
    calls.fail = {"tenant-0004.tar.gz"}

    report = sync_files(store, PREFIX, files, workers=3)
    assert [key for key, _ in report.failed] == ["tenant-0004.tar.gz"]
    assert "injected failure" in report.failed[0][1]
    assert len(report.uploaded) == 5
    indexed = set(_index(store)["objects"])
    assert indexed == set(files) - {"tenant-0004.tar.gz"}
    assert not store.exists(f"{PREFIX}/tenant-0004.tar.gz")

    calls.fail = set()
    calls.reset()
    retry = sync_files(store, PREFIX, files, workers=3)
    assert retry.uploaded == ["tenant-0004.tar.gz"] and retry.ok and len(retry.skipped) == 5
    assert set(_index(store)["objects"]) == set(files)


def test_a_failed_replacement_keeps_the_old_object_and_its_entry(s3, tmp_path: Path) -> None:
    client, calls = s3
    store = S3Store("models", client=client)
    files = _make_files(tmp_path / "built", 3)
    sync_files(store, PREFIX, files, workers=2)
    old = dict(files)
    _rewrite(files, "tenant-0001.tar.gz", b"new bytes that will not arrive")
    calls.fail = {"tenant-0001.tar.gz"}

    report = sync_files(store, PREFIX, files, workers=2)
    assert [k for k, _ in report.failed] == ["tenant-0001.tar.gz"]
    entry = _index(store)["objects"]["tenant-0001.tar.gz"]
    assert entry["sha256"] == old["tenant-0001.tar.gz"].sha256  # what is really there
    assert store.head(f"{PREFIX}/tenant-0001.tar.gz").sha256 == old["tenant-0001.tar.gz"].sha256


def test_an_unavailable_store_is_not_retried_again_by_the_sync(tmp_path: Path) -> None:
    """StoreUnavailable is what is left after botocore's retries: the sync reports it for that
    object (one call, no loop of its own) and the next sync uploads only what failed."""
    inner = FileStore(tmp_path / "store")
    failures = {"tenant-0002.tar.gz": 1}

    class Flaky(CountingStore):
        def put_file(self, key: str, path: Any, *, sha256: str | None = None) -> Any:
            name = key.rsplit("/", 1)[-1]
            if failures.get(name, 0) > 0:
                failures[name] -= 1
                raise StoreUnavailable(f"connection reset putting {key}")
            return self.inner.put_file(key, path, sha256=sha256)

    files = _make_files(tmp_path / "built", 4)
    report = sync_files(Flaky(inner), PREFIX, files, workers=2)
    assert [k for k, _ in report.failed] == ["tenant-0002.tar.gz"]
    assert "StoreUnavailable" in report.failed[0][1]
    assert report.calls["put_file"] == 4  # one call per object: nothing retried here
    again = sync_files(Flaky(inner), PREFIX, files, workers=2)
    assert again.ok and again.uploaded == ["tenant-0002.tar.gz"]


class _Raw:
    """A response body botocore can read (what ``before-send`` answers with)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def test_a_transient_s3_failure_is_tried_at_most_aws_attempts_in_total(tmp_path: Path) -> None:
    """One retry layer per kind of failure (docs/retries.md): S3 answering 503 to every PUT
    is attempted AWS_ATTEMPTS times by botocore's standard mode, and that is all: the sync does
    not loop again, and the task retry policy does not retry the StoreUnavailable left (3
    attempts, not 3 x 3 x 4)."""
    from botocore.awsrequest import AWSResponse

    from infra.aws import clients
    from tasks.runtime.retry import is_transient

    sent: list[str] = []
    body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")

    def answer_503(request: Any, **_: Any) -> AWSResponse | None:
        if request.method == "PUT":
            sent.append(request.url)
            return AWSResponse(request.url, 503, {}, _Raw(body))
        return None

    with mock_aws():
        client = clients.client("s3", region="us-east-1")
        client.create_bucket(Bucket="models")
        client.meta.events.register("before-send.s3.PutObject", answer_503)
        store = S3Store("models", client=client)
        files = _make_files(tmp_path / "built", 1)
        report = sync_files(store, PREFIX, files, workers=1)
    assert [k for k, _ in report.failed] == ["tenant-0000.tar.gz", INDEX_NAME]
    assert "StoreUnavailable" in report.failed[0][1]
    assert len(sent) == 2 * clients.AWS_ATTEMPTS  # the tarball's PUT and the index's, 3 each
    assert not is_transient(StoreUnavailable(report.failed[0][1]))


# ---------------------------------------------------------------------------------- transfers


def test_large_files_go_multipart_small_ones_as_one_put(s3, tmp_path: Path) -> None:
    client, calls = s3
    small_threshold = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    store = S3Store("models", client=client, transfer_config=small_threshold)
    big = tmp_path / "big.tar.gz"
    big.write_bytes(os.urandom(6 * MiB))
    small = tmp_path / "small.tar.gz"
    small.write_bytes(b"tiny")
    files = {"big.tar.gz": LocalObject.from_path(big), "small.tar.gz": LocalObject.from_path(small)}

    report = sync_files(store, PREFIX, files, workers=2)
    assert report.ok
    by_key = {(name, key) for name, key in calls.ops}
    assert ("CreateMultipartUpload", f"{PREFIX}/big.tar.gz") in by_key
    assert ("CompleteMultipartUpload", f"{PREFIX}/big.tar.gz") in by_key
    assert ("PutObject", f"{PREFIX}/small.tar.gz") in by_key
    assert ("CreateMultipartUpload", f"{PREFIX}/small.tar.gz") not in by_key
    head = store.head(f"{PREFIX}/big.tar.gz")
    assert head.sha256 == hashlib.sha256(big.read_bytes()).hexdigest() and head.size == 6 * MiB


def test_the_store_default_transfer_and_pool_settings(s3) -> None:
    store = S3Store("models")  # makes its own client
    assert store.transfer_config.multipart_threshold == MULTIPART_THRESHOLD == 8 * MiB
    assert store.client.meta.config.max_pool_connections >= 16


def test_workers_are_capped_at_the_client_pool(s3, tmp_path: Path) -> None:
    narrow = boto3.client("s3", region_name="us-east-1", config=Config(max_pool_connections=3))
    report = sync_files(S3Store("models", client=narrow), PREFIX, _make_files(tmp_path, 4), workers=16)
    assert report.workers == 3 and report.ok


def test_uploads_run_concurrently(tmp_path: Path) -> None:
    """Four uploads with four workers all wait at one barrier: sequential uploads would never
    get there together (the barrier breaks on its timeout instead)."""
    barrier = threading.Barrier(4, timeout=60)

    class Meeting(CountingStore):
        def put_file(self, key: str, path: Any, *, sha256: str | None = None) -> Any:
            barrier.wait()
            return self.inner.put_file(key, path, sha256=sha256)

    report = sync_files(Meeting(FileStore(tmp_path / "store")), PREFIX, _make_files(tmp_path / "b", 4),
                        workers=4)
    assert report.ok and len(report.uploaded) == 4 and not barrier.broken


# ---------------------------------------------------------------------------------- options


def test_delete_missing_deletes_only_indexed_objects(backend, tmp_path: Path) -> None:
    store, _ = backend
    files = _make_files(tmp_path / "built", 5)
    sync_files(store, PREFIX, files, workers=2)
    store.put_bytes(f"{PREFIX}/someone-elses.txt", b"not ours")
    gone = {k: files.pop(k) for k in ("tenant-0000.tar.gz", "tenant-0004.tar.gz")}

    kept = sync_files(store, PREFIX, files, workers=2)  # without delete_missing: nothing deleted
    assert kept.deleted == [] and all(store.exists(f"{PREFIX}/{k}") for k in gone)

    report = sync_files(store, PREFIX, files, workers=2, delete_missing=True)
    assert report.deleted == sorted(gone)
    assert not any(store.exists(f"{PREFIX}/{k}") for k in gone)
    assert store.exists(f"{PREFIX}/someone-elses.txt")  # never indexed, never ours to delete
    assert set(_index(store)["objects"]) == set(files)


def test_verify_index_reuploads_objects_deleted_behind_our_back(backend, tmp_path: Path) -> None:
    store, _ = backend
    files = _make_files(tmp_path / "built", 4)
    sync_files(store, PREFIX, files, workers=2)
    store.delete(f"{PREFIX}/tenant-0002.tar.gz")

    trusting = sync_files(store, PREFIX, files, workers=2)
    assert trusting.uploaded == []  # the index is trusted: one GET, no listing
    checked = sync_files(store, PREFIX, files, workers=2, verify_index=True)
    assert checked.uploaded == ["tenant-0002.tar.gz"] and checked.calls["list"] == 1
    assert store.exists(f"{PREFIX}/tenant-0002.tar.gz")


def test_progress_reports_every_object(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    files = _make_files(tmp_path / "built", 6)
    sync_files(store, PREFIX, dict(list(files.items())[:2]), workers=2)
    seen: list[tuple[int, int]] = []
    sync_files(store, PREFIX, files, workers=3, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (2, 6)  # the two unchanged ones at once
    assert [d for d, _ in seen] == list(range(2, 7)) and {t for _, t in seen} == {6}


@pytest.mark.parametrize("key", [INDEX_NAME, "../escape.tar.gz", ".hidden", ""])
def test_bad_keys_are_refused_naming_them(tmp_path: Path, key: str) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    store = FileStore(tmp_path / "store")
    with pytest.raises(StoreRefused) as excinfo:
        sync_files(store, PREFIX, {key: LocalObject.from_path(path)})
    assert repr(key) in str(excinfo.value)
    assert store.list() == []  # refused before anything was written


def test_an_empty_prefix_keeps_the_index_at_the_root(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    files = _make_files(tmp_path / "built", 2)
    assert len(sync_files(store, "", files).uploaded) == 2
    assert set(json.loads(store.get_bytes(INDEX_NAME))["objects"]) == set(files)
    assert sync_files(store, "", files).requests == 1


# ---------------------------------------------------------------------------------- the task


@pytest.mark.prefect
def test_publish_fleet_task_reports_progress_and_failures(prefect_harness, tmp_path: Path) -> None:
    """The Prefect task in a real flow run: the objects land under the URI's prefix, a
    missing tarball is a failed key (not a crashed task), the task says its progress
    (``objects published n/31``), and the run carries a progress bar at 100 % and a report
    naming the failure."""
    from prefect import flow, get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tasks.fleet.publish import publish_fleet_task

    files = _make_files(tmp_path / "built", 30)
    files["tenant-0099.tar.gz"] = LocalObject(path=tmp_path / "never-built.tar.gz",
                                              sha256="0" * 64, size=10)
    store_root = tmp_path / "store"

    @flow(name="fleet-publish-probe")
    def probe() -> Any:
        return publish_fleet_task(f"{store_root.as_uri()}/fleets", "demo", files, workers=4)

    said = LogLines()
    task_runs = logging.getLogger("prefect.task_runs")
    task_runs.addHandler(said)
    try:
        state = probe(return_state=True)
    finally:
        task_runs.removeHandler(said)
    report = state.result()
    assert len(report.uploaded) == 30 and [k for k, _ in report.failed] == ["tenant-0099.tar.gz"]
    progress = [line for line in said.lines if line.startswith("objects published ")]
    assert progress and progress[-1].startswith("objects published 31/31 in "), said.lines
    store = FileStore(store_root)
    assert set(_index(store, "fleets/demo")["objects"]) == set(files) - {"tenant-0099.tar.gz"}
    assert store.get_bytes("fleets/demo/tenant-0007.tar.gz") == files["tenant-0007.tar.gz"].path.read_bytes()

    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))}
    assert arts["fleet-publish-progress"].data == 100.0
    assert "tenant-0099.tar.gz" in arts["fleet-publish"].data
    assert "never-built.tar.gz" in arts["fleet-publish"].data  # the reason names the file
