"""Fused tenants in the routing table (schema 2): a version-1 table still reads, a tenant is
routed with its shard once the shard serves the build's version, and the Router adds the
tenant's TENANT input (the caller's inputs unchanged)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tasks.fleet.deploy import Desired, route_tenants
from tasks.fleet.routes import SCHEMA_VERSION, Route, RoutingTable, parse_routes, promote, RouteVersion

NOW = datetime(2025, 1, 2, tzinfo=UTC)


def test_a_version_1_table_reads_as_the_current_version_with_no_tenants() -> None:
    doc = {"schema_version": 1, "fleet": "f", "variants": {
        "a": {"endpoint": "e", "target_model": "a-1.tar.gz", "sha256": "1", "since": "2025"}}}
    table = parse_routes(json.dumps(doc).encode(), "routes/f.json")
    assert SCHEMA_VERSION == 2 and table.schema_version == 2
    assert table.variants["a"].tenant is None


def _desired(name: str, shard: str, sha: str, tenant: int) -> Desired:
    return Desired(name=name, target_model=f"{shard}.tar.gz", sha256=sha, size=1,
                   tarball=Path(f"{shard}.tar.gz"), manifest=Path("m"), shard=shard, tenant=tenant)


def test_tenants_follow_their_shard_once_it_serves_the_builds_version() -> None:
    table = RoutingTable(fleet="f")
    promote(table, "f-shard-000", RouteVersion(target_model="f-shard-000-aa.tar.gz", sha256="aa",
                                               since="", endpoint="e"), NOW)
    tenants = {"t1": _desired("t1", "f-shard-000", "aa", 0), "t2": _desired("t2", "f-shard-000", "aa", 1),
               "t3": _desired("t3", "f-shard-001", "bb", 0)}  # its shard failed: not routed
    assert route_tenants(table, tenants, NOW) == ["t1", "t2"]
    assert (table.variants["t2"].target_model, table.variants["t2"].tenant) == ("f-shard-000-aa.tar.gz", 1)
    assert "t3" not in table.variants
    assert route_tenants(table, tenants, NOW) == []  # nothing moved: nothing said
    dumped = RoutingTable.read(table.model_dump_json(), "t")
    assert dumped.variants["t1"] == Route.model_validate(table.variants["t1"].model_dump())


class _Runtime:
    def __init__(self) -> None:
        self.bodies: list[Any] = []

    def invoke_endpoint(self, **kw: Any) -> dict[str, Any]:
        from infra.aws.runtime_client import encode_request

        self.bodies.append(kw)
        body, ct = encode_request({"OUTPUT": np.ones((1, 3), np.float32)}, binary=False)
        return {"Body": _Body(body), "ContentType": ct}


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data


def test_the_router_adds_the_tenant_of_a_fused_route(tmp_path: Path, monkeypatch: Any) -> None:
    from tasks.fleet import router as router_mod
    from tasks.fleet.router import Router
    from tasks.fleet.routes import write_routes

    table = RoutingTable(fleet="f", variants={
        "t1": Route(endpoint="e", target_model="f-shard-000-aa.tar.gz", sha256="aa", since="", tenant=7),
        "solo": Route(endpoint="e", target_model="solo-bb.tar.gz", sha256="bb", since="")})
    write_routes(tmp_path.as_uri(), table, NOW)
    sent: list[dict[str, np.ndarray]] = []

    def fake_invoke(client: Any, endpoint: str, target: str, inputs: dict[str, np.ndarray],
                    binary: bool = True, classify: Any = None) -> dict[str, np.ndarray]:
        sent.append(inputs)
        return {"OUTPUT": np.ones((1, 3), np.float32)}

    monkeypatch.setattr(router_mod, "invoke", fake_invoke)
    router = Router(tmp_path.as_uri(), "f", runtime=_Runtime())
    image = np.zeros((1, 10), np.uint8)
    router.invoke("t1", {"INPUT": image})
    router.invoke("solo", {"INPUT": image})
    assert sent[0]["TENANT"].tolist() == [[7]] and sent[0]["TENANT"].dtype == np.int32
    assert "TENANT" not in sent[1]
