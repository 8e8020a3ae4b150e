"""Tests for infra.store.objects: FileStore semantics/atomicity, S3Store against moto, open_store."""

from __future__ import annotations

import dataclasses

import hashlib
import os
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from moto import mock_aws

import infra.store.objects as store_mod
from infra.store.objects import (
    FileStore,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    StoreError,
    open_store,
    sha256_file,
)

MiB = 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _all_files(root: Path) -> list[str]:
    """Every file under root, hidden ones included (to spot leftovers)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- helpers


def test_sha256_file_streams_large_file(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 17)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert sha256_file(path) == _sha(data)


# --------------------------------------------------------------------------- FileStore


def test_filestore_round_trips(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    assert isinstance(store, ObjectStore)
    src = tmp_path / "model.tar.gz"
    src.write_bytes(b"tarball bytes")

    info = store.put_file("models/text_embedding.tar.gz", src)
    assert info.key == "models/text_embedding.tar.gz"
    assert info.size == len(b"tarball bytes")
    assert info.sha256 == _sha(b"tarball bytes")
    assert info.uri == (tmp_path / "root/models/text_embedding.tar.gz").as_uri()
    assert info.uri.startswith("file:///")
    assert store.uri_for("models/text_embedding.tar.gz") == info.uri

    assert store.head("models/text_embedding.tar.gz") == info
    assert store.exists("models/text_embedding.tar.gz")
    assert store.get_bytes("models/text_embedding.tar.gz") == b"tarball bytes"

    dest = tmp_path / "download" / "sub" / "copy.tar.gz"
    assert store.get_file("models/text_embedding.tar.gz", dest) == dest
    assert dest.read_bytes() == b"tarball bytes"
    assert _all_files(dest.parent) == ["copy.tar.gz"]  # no temp left next to dest

    info2 = store.put_bytes("manifest.json", b'{"a": 1}')
    assert info2.sha256 == _sha(b'{"a": 1}')
    assert store.get_bytes("manifest.json") == b'{"a": 1}'

    # overwrite replaces content and sha
    store.put_bytes("manifest.json", b"{}")
    assert store.head("manifest.json").sha256 == _sha(b"{}")
    assert store.get_bytes("manifest.json") == b"{}"


def test_filestore_put_file_verifies_given_sha(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    src = tmp_path / "a.bin"
    src.write_bytes(b"abc")
    assert store.put_file("a.bin", src, sha256=_sha(b"abc")).sha256 == _sha(b"abc")
    with pytest.raises(StoreError, match="sha256 mismatch"):
        store.put_file("b.bin", src, sha256="0" * 64)
    assert not store.exists("b.bin")
    assert _all_files(tmp_path / "root") == [".sha256-a.bin", "a.bin"]


def test_filestore_missing_objects(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    store.put_bytes("models/a", b"x")
    for key in ("nope", "models/nope", "models"):  # "models" is a directory, not an object
        uri = store.uri_for(key)
        with pytest.raises(ObjectNotFound, match=uri):
            store.head(key)
        with pytest.raises(ObjectNotFound, match=uri):
            store.get_bytes(key)
        with pytest.raises(ObjectNotFound, match=uri):
            store.get_file(key, tmp_path / "dl" / "x")
        assert not store.exists(key)
    assert not (tmp_path / "dl" / "x").exists()
    assert _all_files(tmp_path / "dl") == []


def test_filestore_list_sorted_recursive_prefix_and_hidden(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    assert store.list() == []  # root does not exist yet
    for key in ("b/2", "a", "b/1", "b/sub/3", "bb", "c/x"):
        store.put_bytes(key, key.encode())
    # debris that must never be listed: a crashed writer's temp file
    (tmp_path / "root" / "b" / ".tmp-2-abc").write_bytes(b"partial")

    assert [i.key for i in store.list()] == ["a", "b/1", "b/2", "b/sub/3", "bb", "c/x"]
    assert [i.key for i in store.list("b/")] == ["b/1", "b/2", "b/sub/3"]
    assert [i.key for i in store.list("b")] == ["b/1", "b/2", "b/sub/3", "bb"]
    assert [i.key for i in store.list("b/s")] == ["b/sub/3"]
    assert store.list("zzz/") == []
    info = store.list("c/")[0]
    assert info == ObjectInfo(store.uri_for("c/x"), "c/x", 3, None, info.last_modified)
    assert info.last_modified > 0


def test_filestore_delete_is_idempotent(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    store.put_bytes("m/a", b"1")
    store.delete("m/a")
    assert not store.exists("m/a")
    store.delete("m/a")
    store.delete("never/existed")
    assert store.list() == []
    assert [p for p in _all_files(tmp_path / "root")] == []  # sidecar removed too


@pytest.mark.parametrize(
    "key",
    ["", "/abs", "a/../b", "..", "a/./b", "a//b", "a/", "a\\b", "a/.hidden", ".sha256-x", ".tmp-x", "a\0b"],
)
def test_filestore_refuses_bad_keys(tmp_path: Path, key: str) -> None:
    store = FileStore(tmp_path / "root")
    for call in (
        lambda: store.put_bytes(key, b"x"),
        lambda: store.get_bytes(key),
        lambda: store.head(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.uri_for(key),
    ):
        with pytest.raises(StoreError) as excinfo:
            call()
        assert repr(key) in str(excinfo.value)
        assert not isinstance(excinfo.value, ObjectNotFound)
    assert not (tmp_path / "root").exists() or _all_files(tmp_path / "root") == []
    assert _all_files(tmp_path) == []


def test_filestore_failure_mid_copy_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path / "root")
    store.put_bytes("m/model.tar.gz", b"old version")
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * MiB))

    def copy_half_then_fail(src_f, dst_f):  # the source "dies" half way through
        dst_f.write(src_f.read(MiB))
        raise OSError("source read failed")

    monkeypatch.setattr(store_mod, "_copy_and_hash", copy_half_then_fail)
    with pytest.raises(OSError, match="source read failed"):
        store.put_file("m/model.tar.gz", src)
    with pytest.raises(OSError, match="source read failed"):
        store.put_file("m/new.tar.gz", src)
    monkeypatch.undo()

    assert store.get_bytes("m/model.tar.gz") == b"old version"
    assert store.head("m/model.tar.gz").sha256 == _sha(b"old version")
    assert not store.exists("m/new.tar.gz")
    assert [i.key for i in store.list()] == ["m/model.tar.gz"]
    assert _all_files(tmp_path / "root") == ["m/.sha256-model.tar.gz", "m/model.tar.gz"]


def test_filestore_failing_replace_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path / "root")
    store.put_bytes("m/a", b"old")

    def failing_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        store.put_bytes("m/a", b"new")
    with pytest.raises(OSError, match="disk on fire"):
        store.put_bytes("m/b", b"new")
    with pytest.raises(OSError, match="disk on fire"):
        store.get_file("m/a", tmp_path / "dl" / "a")
    monkeypatch.undo()

    assert store.get_bytes("m/a") == b"old"
    assert not store.exists("m/b")
    assert _all_files(tmp_path / "root") == ["m/.sha256-a", "m/a"]
    assert _all_files(tmp_path / "dl") == []


def test_filestore_sidecar_written_but_object_not_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between the sidecar rename and the object rename must not make head() lie."""
    store = FileStore(tmp_path / "root")
    store.put_bytes("a", b"old")
    real_replace = os.replace
    calls: list[str] = []

    def replace_sidecar_only(src, dst):
        calls.append(os.fspath(dst))
        if len(calls) == 2:  # 1st: sidecar, 2nd: the object itself
            raise OSError("crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_sidecar_only)
    with pytest.raises(OSError, match="crash"):
        store.put_bytes("a", b"new")
    monkeypatch.undo()
    assert calls[0].endswith(".sha256-a") and calls[1].endswith("/a")

    assert store.get_bytes("a") == b"old"
    assert store.head("a").sha256 == _sha(b"old")  # stale sidecar detected, recomputed


def test_filestore_head_recomputes_missing_or_stale_sidecar(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "manual").write_bytes(b"copied in by hand")
    assert store.head("manual").sha256 == _sha(b"copied in by hand")
    assert (tmp_path / "root" / ".sha256-manual").exists()  # repaired for next time
    assert store.head("manual").sha256 == _sha(b"copied in by hand")

    store.put_bytes("x", b"one")
    (tmp_path / "root" / "x").write_bytes(b"two, rewritten in place")
    assert store.head("x").sha256 == _sha(b"two, rewritten in place")


# --------------------------------------------------------------------------- open_store


def test_open_store_parsing(tmp_path: Path) -> None:
    store, prefix = open_store(tmp_path.as_uri() + "/repo")
    assert isinstance(store, FileStore) and store.root == tmp_path / "repo" and prefix == ""

    store, prefix = open_store(str(tmp_path / "plain"))
    assert isinstance(store, FileStore) and store.root == tmp_path / "plain" and prefix == ""

    store, prefix = open_store("file:///with%20space/x")
    assert isinstance(store, FileStore) and store.root == Path("/with space/x")

    client = object()
    store, prefix = open_store("s3://bucket/models/prod/", s3_client=client)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.client, prefix) == ("bucket", "", client, "models/prod")
    assert store.uri_for(f"{prefix}/a.tar.gz") == "s3://bucket/models/prod/a.tar.gz"

    store, prefix = open_store("s3://bucket", s3_client=client)
    assert isinstance(store, S3Store) and prefix == ""

    for bad in ("gs://bucket/x", "http://host/x", "s3:///nobucket", "file://otherhost/x", "s3://b/a/../c", ""):
        with pytest.raises(StoreError) as excinfo:
            open_store(bad, s3_client=client)
        if bad:
            assert repr(bad) in str(excinfo.value)


# --------------------------------------------------------------------------- S3Store (moto)


@pytest.fixture
def s3_client(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="models")
        yield client


def test_s3store_round_trip_and_metadata(s3_client, tmp_path: Path) -> None:
    store = S3Store("models", prefix="/team/", client=s3_client)
    assert isinstance(store, ObjectStore)
    src = tmp_path / "a.tar.gz"
    src.write_bytes(b"hello tarball")

    info = store.put_file("repo/a.tar.gz", src)
    assert info.uri == "s3://models/team/repo/a.tar.gz"
    assert info.key == "repo/a.tar.gz"
    assert info.size == 13
    assert info.sha256 == _sha(b"hello tarball")
    assert info.last_modified > 0
    raw = s3_client.head_object(Bucket="models", Key="team/repo/a.tar.gz")
    assert raw["Metadata"] == {"sha256": _sha(b"hello tarball")}

    # put_file does not read the object back: its last_modified is this client's clock
    head = store.head("repo/a.tar.gz")
    assert abs(head.last_modified - info.last_modified) < 5
    assert dataclasses.replace(head, last_modified=info.last_modified) == info
    assert store.exists("repo/a.tar.gz")
    assert store.get_bytes("repo/a.tar.gz") == b"hello tarball"
    dest = tmp_path / "dl" / "a.tar.gz"
    assert store.get_file("repo/a.tar.gz", dest) == dest
    assert dest.read_bytes() == b"hello tarball"
    assert _all_files(dest.parent) == ["a.tar.gz"]

    # a given sha256 is stored as is (the caller computed it)
    assert store.put_file("repo/b.tar.gz", src, sha256="AB" * 32).sha256 == "ab" * 32
    assert store.put_bytes("repo/manifest.json", b"{}").sha256 == _sha(b"{}")


def test_s3store_multipart_upload_keeps_sha256(s3_client, tmp_path: Path) -> None:
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    store = S3Store("models", client=s3_client, transfer_config=config)
    data = os.urandom(12 * MiB)
    src = tmp_path / "big.tar.gz"
    src.write_bytes(data)

    info = store.put_file("big.tar.gz", src)
    raw = s3_client.head_object(Bucket="models", Key="big.tar.gz")
    assert raw["ETag"].strip('"').endswith("-3")  # 3 parts: it really went multipart
    assert info.sha256 == _sha(data) and info.size == len(data)

    dest = tmp_path / "dl" / "big.tar.gz"
    store.get_file("big.tar.gz", dest)
    assert sha256_file(dest) == _sha(data)
    assert store.head("big.tar.gz").sha256 == _sha(data)


def test_s3store_missing_object(s3_client, tmp_path: Path) -> None:
    store = S3Store("models", prefix="p", client=s3_client)
    for call in (
        lambda: store.head("nope"),
        lambda: store.get_bytes("nope"),
        lambda: store.get_file("nope", tmp_path / "dl" / "nope"),
    ):
        with pytest.raises(ObjectNotFound, match="s3://models/p/nope"):
            call()
    assert not store.exists("nope")
    assert not (tmp_path / "dl" / "nope").exists()
    assert _all_files(tmp_path / "dl") == []
    store.delete("nope")  # missing is fine

    with pytest.raises(StoreError, match="s3://no-such-bucket/x"):
        S3Store("no-such-bucket", client=s3_client).put_bytes("x", b"1")


def test_s3store_list_paginates_sorted_and_delete(s3_client) -> None:
    store = S3Store("models", prefix="pfx", client=s3_client)
    keys = [f"m/{i:04d}" for i in range(1005)] + ["a", "mm"]  # > 1000: more than one page
    for key in ("mm", "a"):
        store.put_bytes(key, b"x")
    for key in keys[:1005]:
        s3_client.put_object(Bucket="models", Key=f"pfx/{key}", Body=b"")
    s3_client.put_object(Bucket="models", Key="pfxother/x", Body=b"")  # not under "pfx/"
    s3_client.put_object(Bucket="models", Key="outside", Body=b"")

    listed = store.list()
    assert [i.key for i in listed] == sorted(keys)
    assert all(i.sha256 is None for i in listed)
    assert listed[0] == ObjectInfo("s3://models/pfx/a", "a", 1, None, listed[0].last_modified)
    assert len(store.list("m/")) == 1005
    assert [i.key for i in store.list("m")][-1] == "mm"

    store.delete("mm")
    store.delete("mm")
    assert not store.exists("mm")
    assert [i.key for i in S3Store("models", client=s3_client).list("pfxo")] == ["pfxother/x"]


def test_s3store_refuses_bad_keys(s3_client) -> None:
    store = S3Store("models", client=s3_client)
    for key in ("", "/abs", "a/../b", "a//b", "a\\b"):
        with pytest.raises(StoreError, match="invalid object key"):
            store.put_bytes(key, b"x")
    assert store.list() == []
