"""The Router follows redeploys (issue "The first real AWS deploy works", item 6).

With ``--keep-versions 1`` the previous version's object stays, so a Router that cached its
table forever went on invoking the previous version (which still answers) and never
refreshed. It now checks the table when its copy is older than ``max_age_s``, with one HEAD,
and GETs it only when the store's ETag (S3) or mtime/sha256 (file store) changed; a "Failed to
download model data" answer checks it at once and retries that invoke once on the new route.

Invokes go through a real boto3 client to a stub on 127.0.0.1 (tests/runtime_stub.py); the
S3 case is moto. The clock is injected: tests age the table, they never wait.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from runtime_stub import X, FakeTime, RuntimeStub

from infra.aws.runtime_client import runtime_client_for
from tasks.fleet.routes import EndpointRef, RoutingTable, RouteVersion, promote, write_routes
from tasks.fleet.router import Router

ENDPOINT = "stub-mme"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _deploy(uri: str, table: RoutingTable, version: int) -> None:
    """What ``mme fleet deploy --keep-versions 1`` leaves: variant ``a`` routed to
    ``a-<version>``, the one before kept (its object stays and still answers)."""
    promote(table, "a", RouteVersion(target_model=f"a-{version}.tar.gz", sha256=str(version) * 64,
                                     since=T0.isoformat(), endpoint=ENDPOINT), T0)
    write_routes(uri, table, T0)


def _fleet(uri: str) -> RoutingTable:
    table = RoutingTable(fleet="f", endpoints={ENDPOINT: EndpointRef(backend="local")})
    _deploy(uri, table, 1)
    return table


def test_a_long_lived_router_moves_to_the_new_version_after_max_age(tmp_path: Path) -> None:
    uri, t = (tmp_path / "store").as_uri(), FakeTime()
    table = _fleet(uri)
    with RuntimeStub() as stub:
        router = Router(uri, "f", runtime=runtime_client_for(stub.url), max_age_s=30.0, clock=t.clock)
        router.invoke("a", {"X": X})
        _deploy(uri, table, 2)  # redeployed; a-1 kept (--keep-versions 1) and still answering
        t.now = 29.0
        router.invoke("a", {"X": X})  # the cached table is young: no store call at all
        assert (router.checks, router.reads) == (1, 1)
        t.now = 30.0
        router.invoke("a", {"X": X})  # older than max_age_s: HEAD, changed, GET
        assert stub.requests == ["a-1.tar.gz", "a-1.tar.gz", "a-2.tar.gz"]
        assert (router.checks, router.reads) == (2, 2)
        for t.now in (61.0, 95.0):  # unchanged: a HEAD per max_age_s, never a GET
            assert router.resolve("a") == (ENDPOINT, "a-2.tar.gz")
        assert (router.checks, router.reads) == (4, 2)


def test_a_retired_version_refreshes_at_once_and_retries_once(tmp_path: Path) -> None:
    uri, t = (tmp_path / "store").as_uri(), FakeTime()
    table = _fleet(uri)
    with RuntimeStub(missing={"a-1.tar.gz"}) as stub:
        router = Router(uri, "f", runtime=runtime_client_for(stub.url), clock=t.clock)
        assert router.resolve("a") == (ENDPOINT, "a-1.tar.gz")
        _deploy(uri, table, 2)  # a-1 is retired meanwhile: its object is gone
        out = router.invoke("a", {"X": X})  # young table, stale route: 400 "Failed to download"
    assert out["Y"].tolist() == [[2.0, 3.0, 4.0]]
    assert stub.requests == ["a-1.tar.gz", "a-2.tar.gz"]
    assert (router.checks, router.reads) == (2, 2)


def test_a_missing_model_with_an_unchanged_table_is_not_retried(tmp_path: Path) -> None:
    """The table still routes the missing version: one HEAD says so, no GET, no second invoke
    of a route that just failed; the answer is raised as it came."""
    uri, t = (tmp_path / "store").as_uri(), FakeTime()
    _fleet(uri)
    with RuntimeStub(missing={"a-1.tar.gz"}) as stub:
        router = Router(uri, "f", runtime=runtime_client_for(stub.url), clock=t.clock)
        with pytest.raises(ClientError, match="Failed to download model data"):
            router.invoke("a", {"X": X})
    assert stub.requests == ["a-1.tar.gz"]
    assert (router.checks, router.reads) == (2, 1)


def test_on_s3_the_etag_decides_and_a_failed_check_keeps_the_cached_table(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import boto3
    from botocore.exceptions import EndpointConnectionError
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    t, uri = FakeTime(), "s3://routes-bucket/mme"
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="routes-bucket")
        table = _fleet(uri)
        router = Router(uri, "f", runtime=object(), max_age_s=30.0, clock=t.clock)
        assert router.resolve("a")[1] == "a-1.tar.gz"
        store: Any = router._location[0] if router._location else None  # the Router's own S3 client
        calls: list[str] = []
        store.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
        for t.now in (30.0, 60.0):
            assert router.resolve("a")[1] == "a-1.tar.gz"
        assert calls == ["HeadObject", "HeadObject"]  # same ETag: no GetObject
        _deploy(uri, table, 2)
        t.now = 90.0
        assert router.resolve("a")[1] == "a-2.tar.gz"
        assert calls[2:] == ["HeadObject", "GetObject"]

        def unreachable(**_: Any) -> None:
            raise EndpointConnectionError(endpoint_url="https://s3.amazonaws.com")

        store.client.meta.events.register("before-call.s3.HeadObject", unreachable)
        t.now = 120.0
        assert router.resolve("a")[1] == "a-2.tar.gz"  # the store is down: keep serving the cache
        assert (router.checks, router.reads) == (5, 2)
        assert "routing table check failed, keeping the cached table" in caplog.text


def test_max_age_zero_checks_every_call_and_a_negative_one_is_refused(tmp_path: Path) -> None:
    from infra.errors import InvalidInput

    uri = (tmp_path / "store").as_uri()
    _fleet(uri)
    router = Router(uri, "f", max_age_s=0.0)
    for _ in range(3):
        router.resolve("a")
    assert (router.checks, router.reads) == (3, 1)
    with pytest.raises(InvalidInput, match="max_age_s -1"):
        Router(uri, "f", max_age_s=-1)
