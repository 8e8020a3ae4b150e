"""The routing table's rules, on synthetic fleets (no endpoint, no Prefect): stable shards over
1,000 variants, versions kept and pruned, retirement after a grace period on an injected clock,
nothing routed ever offered for deletion, and the table's one-GET / one-PUT round trip."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from infra.schema import RecordError
from infra.store import FileStore
from tasks.fleet_deploy import Access, Job, commit
from tasks.fleet_routes import (
    RouteVersion,
    RoutingTable,
    assign_shards,
    expired,
    promote,
    prune_versions,
    read_routes,
    retire_missing,
    routes_location,
    unreferenced,
    versioned_target,
    write_routes,
)
from tasks.router import model_missing

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
VARIANTS = [f"tenant-{i:04d}" for i in range(1000)]


def _version(name: str, sha: str, endpoint: str = "ep-a") -> RouteVersion:
    return RouteVersion(target_model=versioned_target(f"{name}.tar.gz", sha), sha256=sha,
                        since=T0.isoformat(), endpoint=endpoint)


def test_versioned_target_names_the_variant_and_its_digest() -> None:
    assert versioned_target("tenant-0001.tar.gz", "ab" * 32) == "tenant-0001-abababababab.tar.gz"


def test_adding_a_variant_moves_no_existing_one() -> None:
    endpoints = ["ep-a", "ep-b", "ep-c"]
    first = assign_shards(VARIANTS, endpoints, {})
    counts = Counter(first.values())
    assert set(counts) == set(endpoints)
    assert all(250 <= n <= 420 for n in counts.values()), counts  # ~1/3 each
    again = assign_shards([*VARIANTS, "tenant-new"], endpoints, first)
    assert {v: again[v] for v in VARIANTS} == first
    # without the table's stickiness too: rendezvous hashing alone keeps every placement
    assert {v: e for v, e in assign_shards([*VARIANTS, "x"], endpoints, {}).items() if v != "x"} == first


def test_removing_an_endpoint_moves_only_its_variants() -> None:
    endpoints = ["ep-a", "ep-b", "ep-c"]
    first = assign_shards(VARIANTS, endpoints, {})
    after = assign_shards(VARIANTS, ["ep-a", "ep-c"], first)
    moved = {v for v in VARIANTS if after[v] != first[v]}
    assert moved == {v for v in VARIANTS if first[v] == "ep-b"}
    assert {after[v] for v in moved} == {"ep-a", "ep-c"}  # spread over the rest, not piled on one
    # adding an endpoint back moves nothing already placed (sticky to the table)
    assert assign_shards(VARIANTS, ["ep-a", "ep-c", "ep-d"], after) == after


def test_bad_endpoint_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one endpoint"):
        assign_shards(VARIANTS[:3], [], {})
    with pytest.raises(ValueError, match="listed twice"):
        assign_shards(VARIANTS[:3], ["a", "a"], {})


def test_new_versions_keep_k_previous_and_drop_the_rest() -> None:
    table = RoutingTable(fleet="f")
    for i, sha in enumerate(["1" * 64, "2" * 64, "3" * 64]):
        promote(table, "v", _version("v", sha), T0 + timedelta(minutes=i))
    route = table.variants["v"]
    assert route.sha256 == "3" * 64
    assert [p.sha256 for p in route.previous] == ["2" * 64, "1" * 64]
    dropped = prune_versions(table, keep_versions=1)
    assert [d.sha256 for d in dropped] == ["1" * 64]
    assert [p.sha256 for p in table.variants["v"].previous] == ["2" * 64]
    # rolling back to the kept version does not keep it twice
    promote(table, "v", _version("v", "2" * 64), T0 + timedelta(hours=1))
    assert [p.sha256 for p in table.variants["v"].previous] == ["3" * 64]
    assert prune_versions(table, keep_versions=0)[0].sha256 == "3" * 64


def test_retirement_waits_for_the_grace_period_on_the_injected_clock() -> None:
    table = RoutingTable(fleet="f")
    for name in ("stay", "leave"):
        promote(table, name, _version(name, "a" * 64), T0)
    assert retire_missing(table, ["stay"], T0) == ["leave"]
    grace = timedelta(hours=1)
    assert expired(table, grace, T0 + timedelta(minutes=59)) == []
    assert expired(table, grace, T0 + timedelta(hours=1)) == ["leave"]
    assert retire_missing(table, ["stay"], T0 + timedelta(minutes=5)) == []  # not re-marked later
    assert table.variants["leave"].retiring_since == T0.isoformat(timespec="seconds")
    retire_missing(table, ["stay", "leave"], T0 + timedelta(minutes=30))  # it came back
    assert table.variants["leave"].retiring_since is None
    assert expired(table, grace, T0 + timedelta(days=1)) == []


def test_the_current_version_is_never_offered_for_deletion() -> None:
    table = RoutingTable(fleet="f")
    promote(table, "v", _version("v", "1" * 64), T0)
    current = table.variants["v"].versions()[0]
    assert unreferenced(table, [current, _version("v", "9" * 64)]) == [_version("v", "9" * 64)]


def _job(name: str, sha: str, kind: str = "changed") -> Job:
    return Job(variant=name, endpoint="ep-a", target_model=versioned_target(f"{name}.tar.gz", sha),
               sha256=sha, size=1, tarball=Path("x"), manifest=Path("y"), kind=kind)


def test_commit_routes_what_passed_and_keeps_the_failed_ones_previous_version() -> None:
    table = RoutingTable(fleet="f")
    for name in ("good", "bad", "gone"):
        promote(table, name, _version(name, "0" * 64), T0)
    access = {"ep-a": Access("ep-a", "local", "file:///store/models/ep-a")}
    jobs = [_job("good", "1" * 64), _job("bad", "2" * 64), _job("new", "3" * 64, "new")]
    done = commit(table, jobs, {"good": None, "bad": "answered wrongly", "new": None},
                  ["good", "bad", "new"], access, (T0, timedelta(0), 1))
    assert sorted(done.live) == ["good", "new"]
    assert table.variants["good"].sha256 == "1" * 64
    assert [p.sha256 for p in table.variants["good"].previous] == ["0" * 64]
    assert table.variants["bad"].sha256 == "0" * 64  # still on its previous version
    assert done.removed == ["gone"] and "gone" not in table.variants  # grace 0: removed at once
    doomed = {(v.endpoint, v.target_model) for v in done.doomed}
    assert (("ep-a", versioned_target("bad.tar.gz", "2" * 64)) in doomed
            and ("ep-a", versioned_target("gone.tar.gz", "0" * 64)) in doomed)
    assert not doomed & table.referenced()
    assert table.endpoints["ep-a"].models_url == "file:///store/models/ep-a"


def test_table_round_trip_is_one_object(tmp_path: Path) -> None:
    uri = (tmp_path / "store").as_uri()
    assert read_routes(uri, "f").variants == {}  # none yet: an empty table, not an error
    table = RoutingTable(fleet="f")
    promote(table, "v", _version("v", "1" * 64), T0)
    written = write_routes(uri, table, T0)
    store, key = routes_location(uri, "f")
    assert written == store.uri_for(key) and key == "routes/f.json"
    assert [i.key for i in FileStore(tmp_path / "store").list("routes/")] == ["routes/f.json"]
    back = read_routes(uri, "f")
    assert back.variants["v"].target_model == table.variants["v"].target_model
    assert back.updated_at == T0.isoformat(timespec="seconds")
    (tmp_path / "store" / "routes" / "f.json").write_text('{"schema_version": 9, "fleet": "f"}')
    with pytest.raises(RecordError, match=r"routes/f\.json.*schema_version 9"):
        read_routes(uri, "f")


def _client_error(status: int, code: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "InvokeEndpoint")


def test_router_refreshes_only_on_model_not_found_answers() -> None:
    assert model_missing(_client_error(400, "ValidationError", "Failed to download model data "
                                       "(model: a.tar.gz, url: s3://b/a.tar.gz). Please ensure..."))
    assert model_missing(_client_error(404, "ModelError", "whatever"))
    assert not model_missing(_client_error(429, "ModelNotReadyException", "loading"))
    assert not model_missing(_client_error(424, "ModelError", "input shape mismatch"))
    assert not model_missing(ValueError("model not found"))


def test_retire_picks_named_variants_a_shard_or_the_whole_fleet() -> None:
    from infra.errors import UserError
    from tasks.fleet_retire import pick_retirees

    table = RoutingTable(fleet="f")
    for name, endpoint in (("a", "ep-1"), ("b", "ep-2"), ("c", "ep-2")):
        promote(table, name, _version(name, "1" * 64, endpoint), T0)
    assert pick_retirees(table, ["a"], None) == ["a"]
    assert pick_retirees(table, [], "ep-2") == ["b", "c"]
    assert pick_retirees(table, [], None) == ["a", "b", "c"]
    with pytest.raises(UserError, match="not routed: zz"):
        pick_retirees(table, ["a", "zz"], None)
    with pytest.raises(UserError, match="no variant is routed to endpoint 'ep-9'"):
        pick_retirees(table, [], "ep-9")


def test_gc_finds_local_outputs_of_variants_no_index_or_table_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.fleet_retire import Garbage, find_local_garbage

    monkeypatch.setenv("MME_HOME", str(tmp_path))
    out = tmp_path / "artifacts" / "local-cpu" / "fleets" / "f"
    out.mkdir(parents=True)
    (out / "fleet-index.json").write_text(
        '{"fleet": "f", "target": "local-cpu", "variants": {"kept": {"file": "kept.tar.gz", '
        '"target_model": "kept.tar.gz", "status": "ok"}}}')
    for stem in ("kept", "routed", "gone"):
        (out / f"{stem}.tar.gz").write_bytes(b"x")
        (out / f"{stem}.manifest.json").write_text("{}")
    table = RoutingTable(fleet="f")
    promote(table, "routed", _version("routed", "1" * 64), T0)  # left the build, still retiring
    found = Garbage()
    find_local_garbage({"f": table}, found)
    assert sorted(Path(f).name for f in found.files) == ["gone.manifest.json", "gone.tar.gz"]
