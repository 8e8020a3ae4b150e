"""Publishing artifacts and the deploy ledger, on the embedded file store and on S3 (moto)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from infra.records.manifest import Manifest
from infra.store.objects import open_store, sha256_file
from tasks.deploy.publish import (
    model_data_url,
    publish_artifact,
    read_ledger,
    rollback_object,
    write_ledger,
)


def _manifest(tmp_path: Path, name: str, content: bytes) -> Manifest:
    archive = tmp_path / "artifacts" / f"{name}-{len(content)}.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(content)
    return Manifest(ensemble=name, target_model=f"{name}.tar.gz", artifact=archive.as_uri(),
                    sha256=sha256_file(archive), bytes=len(content))


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="models-bucket")
        yield client


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_publish_is_idempotent_and_restorable(tmp_path: Path, request: pytest.FixtureRequest, backend: str):
    if backend == "s3":
        request.getfixturevalue("s3")
        store_uri = "s3://models-bucket/mme"
    else:
        store_uri = (tmp_path / "store").as_uri()
    url = model_data_url(store_uri, "ep1")
    v1 = _manifest(tmp_path, "text", b"version one" * 1000)

    first = publish_artifact(v1, url, tmp_path / "backup")
    assert first.uploaded and first.previous_backup is None
    assert first.uri.endswith("models/ep1/text.tar.gz")
    again = publish_artifact(v1, url, tmp_path / "backup")
    assert not again.uploaded, "same sha256 must not be uploaded again"

    v2 = _manifest(tmp_path, "text", b"version two" * 1000)
    second = publish_artifact(v2, url, tmp_path / "backup")
    assert second.uploaded and second.previous_backup
    store, prefix = open_store(url)
    assert store.head(f"{prefix}/text.tar.gz" if prefix else "text.tar.gz").sha256 == v2.sha256

    assert rollback_object(second, url) == "restored previous"
    key = f"{prefix}/text.tar.gz" if prefix else "text.tar.gz"
    assert store.get_bytes(key) == b"version one" * 1000
    assert rollback_object(first, url) == "deleted"
    assert not store.exists(key)


def test_ledger_round_trip_and_removal(tmp_path: Path, s3):
    store_uri = "s3://models-bucket/mme"
    assert read_ledger(store_uri, "ep").ensembles == {}
    entry = {"target_model": "a.tar.gz", "key": "mme/models/ep/a.tar.gz",
             "uri": "s3://models-bucket/mme/models/ep/a.tar.gz", "sha256": "x"}
    write_ledger(store_uri, "ep", {"endpoint": "ep", "ensembles": {"a": entry}})
    assert read_ledger(store_uri, "ep").ensembles["a"].sha256 == "x"
    body = s3.get_object(Bucket="models-bucket", Key="mme/deployments/ep.json")["Body"].read()
    assert json.loads(body)["endpoint"] == "ep" and json.loads(body)["schema_version"] == 1
    write_ledger(store_uri, "ep", {"endpoint": "ep", "ensembles": {}})
    assert "Contents" not in s3.list_objects_v2(Bucket="models-bucket", Prefix="mme/deployments/")
