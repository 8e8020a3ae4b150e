"""``mme fleet rollback`` (tasks/fleet/rollback.py, routes.route_back): variants go back to the
version each replaced, all of them or none, after checking each kept object's bytes.

A routing table and the objects it names, over a real file store: variant ``a`` on endpoint
``e1`` (kept version on ``e1``), ``b`` moved from ``e2`` to ``e1`` by its last deploy (kept
version on ``e2``), ``c`` and ``d`` tenants of a fused shard (both kept versions in one older
shard), ``n`` with no kept version. No Triton: the rollback invokes nothing (a kept version was
validated when it was routed, and its bytes are checked); the Router's resolution shows what
clients get.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import app
from infra.errors import InvalidInput
from infra.store.objects import FileStore, open_store
from tasks.fleet.rollback import rollback_fleet
from tasks.fleet.router import Router
from tasks.fleet.routes import (EndpointRef, Route, RouteVersion, RoutingTable, read_routes,
                                route_back, routes_location, write_routes)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)


@dataclass
class Fleet:
    store_uri: str
    prefixes: dict[str, FileStore]  # each endpoint's model prefix

    def table_bytes(self) -> bytes:
        store, key = routes_location(self.store_uri, "f")
        return store.get_bytes(key)


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fleet:
    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    store_uri = (tmp_path / "store").as_uri()
    prefixes = {e: open_store(f"{store_uri}/models/{e}")[0] for e in ("e1", "e2")}
    sha = {name: prefixes[e].put_bytes(name, name.encode()).sha256 for e, name in [
        ("e1", "a-new.tar.gz"), ("e1", "a-old.tar.gz"), ("e1", "b-new.tar.gz"), ("e2", "b-old.tar.gz"),
        ("e1", "shard-new.tar.gz"), ("e1", "shard-old.tar.gz"), ("e1", "n.tar.gz")]}
    assert all(isinstance(v, str) for v in sha.values())

    def version(name: str, endpoint: str | None = None, tenant: int | None = None) -> RouteVersion:
        return RouteVersion(target_model=name, sha256=sha[name], since=T0.isoformat(), endpoint=endpoint,
                            tenant=tenant)

    def route(name: str, previous: list[RouteVersion], tenant: int | None = None) -> Route:
        return Route(endpoint="e1", target_model=name, sha256=sha[name], since=T0.isoformat(),
                     previous=previous, tenant=tenant)

    table = RoutingTable(fleet="f", endpoints={e: EndpointRef(models_url=f"{store_uri}/models/{e}")
                                               for e in ("e1", "e2")}, variants={
        "a": route("a-new.tar.gz", [version("a-old.tar.gz")]),
        "b": route("b-new.tar.gz", [version("b-old.tar.gz", "e2")]),
        "c": route("shard-new.tar.gz", [version("shard-old.tar.gz", tenant=1)], tenant=0),
        "d": route("shard-new.tar.gz", [version("shard-old.tar.gz", tenant=0)], tenant=1),
        "n": route("n.tar.gz", [])})
    write_routes(store_uri, table, T0)
    return Fleet(store_uri=store_uri, prefixes=prefixes)


def test_route_back_swaps_current_and_kept_and_twice_is_where_it_started(fleet: Fleet) -> None:
    table = read_routes(fleet.store_uri, "f")
    table.variants["b"].retiring_since = T0.isoformat()
    start = table.variants["b"].model_copy(deep=True)
    back = route_back(table, "b", T1)
    b = table.variants["b"]
    assert (back.endpoint, back.target_model) == ("e2", "b-old.tar.gz")
    assert (b.endpoint, b.target_model) == ("e2", "b-old.tar.gz")
    assert (b.since, b.retiring_since) == (T1.isoformat(), T0.isoformat()), "retiring stays as it was"
    assert [(v.endpoint, v.target_model) for v in b.previous] == [("e1", "b-new.tar.gz")]
    route_back(table, "b", T1)
    again = table.variants["b"]
    assert (again.endpoint, again.target_model, again.sha256) == (start.endpoint, start.target_model, start.sha256)
    assert [(v.endpoint, v.target_model) for v in again.previous] == [("e2", "b-old.tar.gz")]
    route_back(table, "c", T1)
    assert (table.variants["c"].target_model, table.variants["c"].tenant) == ("shard-old.tar.gz", 1)
    with pytest.raises(InvalidInput, match="n of fleet f back: no previous version is kept"):
        route_back(table, "n", T1)


def test_one_variant_that_cannot_go_back_refuses_them_all(fleet: Fleet) -> None:
    before = fleet.table_bytes()
    with pytest.raises(InvalidInput) as refused:
        rollback_fleet(fleet.store_uri, "f", ["a", "n", "zz"], T1)
    assert "cannot route back 2 variant(s), nothing changed" in str(refused.value)
    assert "n: no previous version is kept" in str(refused.value) and "zz: not routed" in str(refused.value)
    fleet.prefixes["e2"].put_bytes("b-old.tar.gz", b"someone else's")
    fleet.prefixes["e1"].delete("shard-old.tar.gz")
    with pytest.raises(InvalidInput) as refused:
        rollback_fleet(fleet.store_uri, "f", ["a", "b", "c", "d"], T1)
    message = str(refused.value)
    assert "b: its kept object" in message and "was replaced" in message
    assert "c: its kept object" in message and "d: its kept object" in message and "is gone" in message
    assert "a:" not in message
    assert fleet.table_bytes() == before


def test_variants_go_back_and_the_router_follows(fleet: Fleet) -> None:
    router = Router(fleet.store_uri, "f", max_age_s=0)
    assert router.resolve("b") == ("e1", "b-new.tar.gz")
    dry = rollback_fleet(fleet.store_uri, "f", ["a", "b", "c"], T1, dry_run=True)
    assert [v.variant for v in dry.variants] == ["a", "b", "c"] and router.resolve("b") == ("e1", "b-new.tar.gz")
    done = rollback_fleet(fleet.store_uri, "f", ["a", "b", "c"], T1)
    assert done.table.endswith("routes/f.json")
    assert [router.resolve(v) for v in ("a", "b", "c", "d")] == [
        ("e1", "a-old.tar.gz"), ("e2", "b-old.tar.gz"), ("e1", "shard-old.tar.gz"), ("e1", "shard-new.tar.gz")]
    assert router._resolve("c")[2] == 1, "the tenant index it had in the older shard"
    assert read_routes(fleet.store_uri, "f").updated_at == T1.isoformat(timespec="seconds")


@pytest.mark.prefect  # the rollback runs as the fleet-rollback flow
def test_the_command_line(fleet: Fleet, prefect_harness: Any) -> None:
    runner = CliRunner()
    before = fleet.table_bytes()
    got = runner.invoke(app, ["fleet", "rollback", "f", "--variant", "a", "--store", fleet.store_uri,
                              "--dry-run"], terminal_width=200)
    assert got.exit_code == 0 and "a: would route back to a-old.tar.gz on e1, from a-new.tar.gz" in got.output
    assert "nothing changed (dry run)" in got.output and fleet.table_bytes() == before
    got = runner.invoke(app, ["fleet", "rollback", "f", "--variant", "n", "--store", fleet.store_uri])
    assert got.exit_code == 2 and "n: no previous version is kept" in got.output, got.output
    got = runner.invoke(app, ["fleet", "rollback", "f", "--variant", "a", "--variant", "b",
                              "--store", fleet.store_uri, "--json"])
    assert got.exit_code == 0, got.output
    doc = json.loads(got.output)
    assert doc["dry_run"] is False and [v["to"]["target_model"] for v in doc["variants"]] == [
        "a-old.tar.gz", "b-old.tar.gz"]
    assert doc["variants"][1]["from"]["endpoint"] == "e1" and doc["variants"][1]["to"]["endpoint"] == "e2"
