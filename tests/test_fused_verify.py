"""`mme fleet verify --repair` with a fused fleet's routes: every tenant's route names its
shard's object, so a missing (or corrupt) shard shows on the shard's route and on each of its
tenants'; the object is judged once per check, re-published once from the build's shard tarball
(found through the fleet index's ``shards``), and every route is then ``repaired``."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from tasks.fleet.build import INDEX_FILE, FleetIndex, FleetIndexEntry
from tasks.fleet.integrity import build_sources, check_table, repair
from tasks.fleet.routes import EndpointRef, RouteVersion, RoutingTable, promote

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SHARD = "f-shard-000"


def _setup(tmp_path: Path) -> tuple[RoutingTable, Path, str]:
    """A build folder with one shard (3 tenants) and a table routing the shard and its tenants
    to its versioned object on endpoint ``ep`` (whose prefix holds nothing yet)."""
    build = tmp_path / "build"
    build.mkdir()
    data = b"shard bytes " * 100
    sha = hashlib.sha256(data).hexdigest()
    (build / f"{SHARD}.tar.gz").write_bytes(data)
    entry = {"file": f"{SHARD}.tar.gz", "target_model": f"{SHARD}.tar.gz", "sha256": sha,
             "bytes": len(data), "status": "ok", "layout": "fused"}
    tenants = {f"t{i}": FleetIndexEntry.model_validate({**entry, "shard": SHARD, "tenant": i}) for i in range(3)}
    index = FleetIndex(fleet="f", target="local-cpu", variants=tenants,
                       shards={SHARD: FleetIndexEntry.model_validate(entry)})
    (build / INDEX_FILE).write_text(index.model_dump_json())
    table = RoutingTable(fleet="f", endpoints={"ep": EndpointRef(models_url=(tmp_path / "models").as_uri())})
    target = f"{SHARD}-{sha[:12]}.tar.gz"
    promote(table, SHARD, RouteVersion(target_model=target, sha256=sha, since="", endpoint="ep"), NOW)
    for i in range(3):
        promote(table, f"t{i}", RouteVersion(target_model=target, sha256=sha, since="", endpoint="ep",
                                             tenant=i), NOW)
    return table, build, target


def test_a_missing_shard_is_found_on_every_route_that_names_it_and_repaired_once(tmp_path: Path) -> None:
    table, build, target = _setup(tmp_path)
    (tmp_path / "models").mkdir()
    verified = check_table(table)
    assert sorted(f.variant for f in verified.findings if f.state == "missing") == [SHARD, "t0", "t1", "t2"]
    sources = build_sources("f", [build])
    assert sources == {table.variants[SHARD].sha256: build / f"{SHARD}.tar.gz"}
    repair(table, verified, sources)
    assert {f.state for f in verified.findings} == {"repaired"}
    assert (tmp_path / "models" / target).read_bytes() == (build / f"{SHARD}.tar.gz").read_bytes()
    again = check_table(table)
    assert {f.state for f in again.findings} == {"ok"} and len(again.findings) == 4
    assert all(table.variants[f"t{i}"].tenant == i for i in range(3))  # the routes are as they were


def test_a_corrupt_shard_is_judged_once_for_all_its_tenants(tmp_path: Path) -> None:
    table, build, target = _setup(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / target).write_bytes(b"overwritten")
    verified = check_table(table, deep=True)
    assert {f.state for f in verified.findings} == {"corrupt"} and len(verified.findings) == 4
    assert verified.requests == 2 + 1  # one listing, one index GET, one read of the object
    repair(table, verified, build_sources("f", [build]))
    assert {f.state for f in verified.findings} == {"repaired"}
