"""The routing table's rules, on synthetic fleets (no endpoint, no Prefect): stable shards over
1,000 variants, versions kept and pruned, retirement after a grace period on an injected clock,
nothing routed ever offered for deletion, and the table's one-GET / one-PUT round trip."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from infra.versioned import RecordError
from infra.store.objects import FileStore
from tasks.fleet.deploy import Access, DeployPolicy, Job, commit
from tasks.fleet.routes import (
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
    write_routes,
)
from tasks.deploy.publish import versioned_target
from tasks.fleet.router import model_missing

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
                  ["good", "bad", "new"], access, DeployPolicy(grace_s=0, keep_versions=1), T0)
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


def test_commit_keeps_a_member_whose_build_failed_on_its_route() -> None:
    """A variant still in the fleet whose rebuild failed (in ``members``, without a job) is
    neither retired nor changed; one that left the fleet is marked retiring."""
    table = RoutingTable(fleet="f")
    for name in ("ok", "broken", "gone"):
        promote(table, name, _version(name, "0" * 64), T0)
    access = {"ep-a": Access("ep-a", "local", "file:///store/models/ep-a")}
    done = commit(table, [_job("ok", "1" * 64)], {"ok": None}, ["ok", "broken"], access,
                  DeployPolicy(grace_s=3600, keep_versions=1), T0)
    assert done.live == ["ok"] and done.retiring == ["gone"]
    assert table.variants["broken"].retiring_since is None
    assert table.variants["broken"].sha256 == "0" * 64


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
    from tasks.fleet.retire import pick_retirees

    table = RoutingTable(fleet="f")
    for name, endpoint in (("a", "ep-1"), ("b", "ep-2"), ("c", "ep-2")):
        promote(table, name, _version(name, "1" * 64, endpoint), T0)
    assert pick_retirees(table, ["a"], None) == ["a"]
    assert pick_retirees(table, [], "ep-2") == ["b", "c"]
    assert pick_retirees(table, [], None, True) == ["a", "b", "c"]
    with pytest.raises(UserError, match=r"variants, a shard, or --all \(the whole fleet: 3 routed"):
        pick_retirees(table, [], None)  # naming nothing is never "all of them"
    with pytest.raises(UserError, match="exactly one of them"):
        pick_retirees(table, ["a"], None, True)
    with pytest.raises(UserError, match="not routed: zz"):
        pick_retirees(table, ["a", "zz"], None)
    with pytest.raises(UserError, match="no variant is routed to endpoint 'ep-9'"):
        pick_retirees(table, [], "ep-9")


def test_gc_finds_local_outputs_of_variants_no_index_or_table_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.fleet.retire import Garbage, find_local_garbage

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


# ------------------------------------------------------------------ fleet safety
def _store_with_table(tmp_path: Path, fleet: str = "f", names: tuple[str, ...] = ("a", "b", "c"),
                      endpoint: str = "ep-1") -> str:
    uri = (tmp_path / "store").as_uri()
    table = RoutingTable(fleet=fleet)
    for name in names:
        promote(table, name, _version(name, "1" * 64, endpoint), T0)
    write_routes(uri, table, T0)
    return uri


def test_an_unknown_fleet_is_no_such_fleet_for_the_table_and_the_router(tmp_path: Path) -> None:
    from tasks.fleet.routes import NoSuchFleet, require_routes
    from tasks.fleet.router import Router, VariantNotRouted

    uri = _store_with_table(tmp_path, "f")
    _store_with_table(tmp_path, "g")
    assert sorted(require_routes(uri, "f").variants) == ["a", "b", "c"]
    with pytest.raises(NoSuchFleet, match=r"no such fleet 'nosuch'.*\(known: f, g\)"):
        require_routes(uri, "nosuch")
    with pytest.raises(NoSuchFleet, match=r"no such fleet 'nosuch'.*\(known: f, g\)"):
        Router(uri, "nosuch").resolve("a")
    with pytest.raises(VariantNotRouted, match="variant 'zz' is not routed"):
        Router(uri, "f").resolve("zz")  # a known fleet: the variant is what is missing
    empty = (tmp_path / "empty").as_uri()
    with pytest.raises(NoSuchFleet, match=r"\(known: none\)"):
        require_routes(empty, "f")


def test_cli_routes_and_invoke_refuse_an_unknown_fleet(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    uri = _store_with_table(tmp_path, "f")
    runner = CliRunner()
    got = runner.invoke(app, ["fleet", "routes", "nosuchfleet", "--store", uri])
    assert got.exit_code == 2 and got.stdout == ""
    assert "no such fleet 'nosuchfleet'" in got.output and "(known: f)" in got.output
    assert len([ln for ln in got.output.splitlines() if ln.strip()]) == 1
    ok = runner.invoke(app, ["fleet", "routes", "f", "--store", uri, "--json"])
    assert ok.exit_code == 0 and sorted(json.loads(ok.stdout)["variants"]) == ["a", "b", "c"]
    inv = runner.invoke(app, ["invoke", "hello", "--fleet", "nosuchfleet", "--variant", "x",
                              "--store", uri])
    assert inv.exit_code == 2 and "no such fleet 'nosuchfleet'" in inv.output
    assert "not routed" not in inv.output


def test_cli_retire_without_variant_shard_or_all_refuses_and_changes_nothing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    uri = _store_with_table(tmp_path, "f")
    runner = CliRunner()
    got = runner.invoke(app, ["fleet", "retire", "f", "--store", uri])
    assert got.exit_code == 2
    lines = [ln for ln in got.output.splitlines() if ln.strip()]
    assert len(lines) == 1, got.output
    assert "would mark retiring (removed after 3600 s) all 3 routed variants" in lines[0]
    assert "give --all to confirm" in lines[0] and "mme fleet retire f --all`" in lines[0]
    now = runner.invoke(app, ["fleet", "retire", "f", "--now", "--store", uri])
    assert now.exit_code == 2 and "would remove at once all 3" in now.output
    assert "--all --now" in now.output
    both = runner.invoke(app, ["fleet", "retire", "f", "--all", "--variant", "a", "--store", uri])
    assert both.exit_code == 2 and "one of --variant, --shard or --all" in both.output
    gone = runner.invoke(app, ["fleet", "retire", "nosuch", "--store", uri])
    assert gone.exit_code == 2 and "no such fleet 'nosuch'" in gone.output
    table = read_routes(uri, "f")  # nothing was marked
    assert all(r.retiring_since is None for r in table.variants.values())


def test_commit_reports_the_retiring_variants_it_brings_back() -> None:
    from tasks.fleet.routes import mark_retiring

    table = RoutingTable(fleet="f")
    for name in ("back", "still", "stay"):
        promote(table, name, _version(name, "0" * 64), T0)
    assert mark_retiring(table, ["back", "still"], T0) == ["back", "still"]
    access = {"ep-a": Access("ep-a", "local", "file:///store/models/ep-a")}
    done = commit(table, [], {}, ["back", "stay"], access,
                  DeployPolicy(grace_s=3600, keep_versions=1), T0 + timedelta(minutes=1))
    assert done.unretired == ["back"] and done.retiring == []
    assert table.variants["back"].retiring_since is None
    assert table.variants["still"].retiring_since == T0.isoformat(timespec="seconds")


def _inline_fleet(tmp_path: Path, names: list[str], sources: dict[str, Path]) -> Path:
    import yaml

    doc = {"name": "drift", "template": "image_classifier_tenant", "target": "local-cpu",
           "variants": [{"name": n, "params": {"classifier_onnx.source": str(sources[n])}}
                        for n in names]}
    path = tmp_path / "drift.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_fleet_file_vs_build_names_every_variant_that_differs(tmp_path: Path) -> None:
    import os

    from ensembles.fleet_spec import load_fleet, resolve_variants
    from tasks.fleet.build import FleetIndex, FleetIndexEntry
    from tasks.fleet.drift import FleetBuildStale, file_vs_build, refuse_stale_build
    from tasks.fleet.variant import input_key

    sources = {}
    for n in ("a", "b", "c", "d"):
        sources[n] = tmp_path / f"{n}.onnx"
        sources[n].write_bytes(n.encode() * 10)
    spec = load_fleet(_inline_fleet(tmp_path, ["a", "b", "c"], sources))
    index = FleetIndex(fleet="drift", target="local-cpu", template_key="T", variants={
        v.name: FleetIndexEntry(key=input_key("T", v), file=f"{v.name}.tar.gz",
                           target_model=f"{v.name}.tar.gz", sha256="1" * 64, bytes=1, status="ok")
        for v in resolve_variants(spec).variants})
    assert file_vs_build(spec, index) == {}
    refuse_stale_build(spec, index, "idx")  # agrees: nothing raised

    st = sources["b"].stat()
    os.utime(sources["b"], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # b's model changed
    spec = load_fleet(_inline_fleet(tmp_path, ["b", "c", "d"], sources))  # a out, d in
    assert file_vs_build(spec, index) == {"in the file but not built": ["d"],
                                          "built but not in the file": ["a"],
                                          "built from other sources": ["b"]}
    with pytest.raises(FleetBuildStale) as err:
        refuse_stale_build(spec, index, "build/fleet-index.json")
    line = str(err.value)
    assert "\n" not in line and "(build/fleet-index.json) disagree" in line
    assert ("in the file but not built: d; built but not in the file: a; built from other "
            "sources: b" in line)
    assert f"run `mme fleet build {spec.file}` first" in line


def _published(tmp_path: Path) -> tuple[RoutingTable, Path, dict[str, bytes]]:
    """Three variants, each with a current and a kept previous version, published to
    ``store/models/ep-a`` through the sync index as a deploy does; returns the table, the
    prefix folder and every version's bytes by TargetModel."""
    import hashlib

    from infra.store.sync import LocalObject, sync_files
    from tasks.fleet.deploy import Access

    src = tmp_path / "src"
    src.mkdir()
    files, payloads = {}, {}
    table = RoutingTable(fleet="f")
    for name in ("a", "b", "c"):
        for i, since in enumerate((T0, T0 + timedelta(hours=1))):
            data = f"{name} version {i} ".encode() * 50
            sha = hashlib.sha256(data).hexdigest()
            tm = versioned_target(f"{name}.tar.gz", sha)
            (src / tm).write_bytes(data)
            files[tm], payloads[tm] = LocalObject(src / tm, sha, len(data)), data
            promote(table, name, RouteVersion(target_model=tm, sha256=sha,
                                              since=since.isoformat(), endpoint="ep-a"), since)
    store = FileStore(tmp_path / "store")
    assert not sync_files(store, "models/ep-a", files).failed
    table.endpoints = {"ep-a": Access("ep-a", "local", (tmp_path / "store" / "models" / "ep-a")
                                      .as_uri()).ref()}
    return table, tmp_path / "store" / "models" / "ep-a", payloads


def test_verify_finds_missing_and_corrupt_routed_objects_cheaply(tmp_path: Path) -> None:
    from tasks.fleet.integrity import check_table

    table, prefix, payloads = _published(tmp_path)
    clean = check_table(table)
    assert clean.summary().states == {"ok": 6} and clean.requests == 2  # 1 listing + 1 index GET
    a, b, c = (table.variants[n] for n in "abc")
    (prefix / a.target_model).unlink()                       # deleted behind the tool's back
    (prefix / b.target_model).write_bytes(b"truncated")      # another size
    same = bytearray(payloads[c.target_model])
    same[0] ^= 1
    (prefix / c.target_model).write_bytes(bytes(same))       # same size, other bytes
    found = {(f.variant, f.current): f for f in check_table(table).findings}
    assert found["a", True].state == "missing" and found["a", False].state == "ok"
    assert found["b", True].state == "corrupt" and "size 9, published" in found["b", True].detail
    assert found["c", True].state == "ok"  # the index vouches and the size agrees: --deep sees it
    deep = {(f.variant, f.current): f for f in check_table(table, deep=True).findings}
    assert deep["c", True].state == "corrupt" and "routed" in deep["c", True].detail
    assert [f.state for f in check_table(table, deep=True).findings].count("ok") == 3


def test_verify_asks_the_object_where_the_index_does_not_vouch(tmp_path: Path) -> None:
    from infra.store.sync import INDEX_NAME
    from tasks.fleet.integrity import check_table

    table, prefix, _ = _published(tmp_path)
    (prefix / INDEX_NAME).unlink()  # no index: each object's own sha256 (the file store's head)
    first = check_table(table)
    assert first.summary().states == {"ok": 6} and first.requests == 2 + 6
    (prefix / table.variants["b"].target_model).write_bytes(b"x" * 10)
    found = {(f.variant, f.current): f.state for f in check_table(table).findings}
    assert found["b", True] == "corrupt"


def test_repair_republishes_from_the_build_and_drops_only_unrestorable_kept_versions(
        tmp_path: Path) -> None:
    from tasks.fleet.integrity import check_table, repair

    table, prefix, payloads = _published(tmp_path)
    a, b, c = (table.variants[n] for n in "abc")
    build = tmp_path / "build"
    build.mkdir()
    sources = {}
    for r in (a, b):  # the build holds a's and b's current bytes only
        (build / f"{r.target_model}").write_bytes(payloads[r.target_model])
        sources[r.sha256] = build / r.target_model
    for tm in (a.target_model, b.target_model, c.target_model, c.previous[0].target_model):
        (prefix / tm).unlink()
    (prefix / b.previous[0].target_model).write_bytes(b"damaged")
    verified = check_table(table)
    assert sorted(f.state for f in verified.findings) == ["corrupt"] + ["missing"] * 4 + ["ok"]
    changed = repair(table, verified, sources)
    got = {(f.variant, f.current): f for f in verified.findings}
    assert got["a", True].state == got["b", True].state == "repaired"
    assert (prefix / a.target_model).read_bytes() == payloads[a.target_model]
    assert got["c", True].state == "unrepaired"  # routed, and no build has its bytes
    assert "`mme fleet deploy` routes the build's version" in got["c", True].detail
    assert got["b", False].state == got["c", False].state == "dropped" and changed
    assert table.variants["b"].previous == [] and table.variants["c"].previous == []
    assert [p.sha256 for p in table.variants["a"].previous] != []  # a's kept version was fine
    again = {(f.variant, f.current): f.state for f in check_table(table).findings}
    assert again == {("a", True): "ok", ("a", False): "ok", ("b", True): "ok",
                     ("c", True): "missing"}


def test_verify_on_s3_is_one_listing_and_one_index_get_per_prefix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws

    from infra.store.objects import open_store
    from infra.store.sync import INDEX_NAME, LocalObject, sync_files
    from tasks.fleet.integrity import check_table, repair

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="verify-bucket")
        local, _, payloads = _published(tmp_path)  # the same versions, now published to S3
        models = "s3://verify-bucket/mme/models/ep-a"
        store, prefix = open_store(models)
        files = {tm: LocalObject.from_path(tmp_path / "src" / tm) for tm in payloads}
        assert not sync_files(store, prefix, files).failed
        table = local.model_copy(deep=True)
        table.endpoints["ep-a"].models_url = models
        assert check_table(table).summary().states == {"ok": 6}
        gone = table.variants["a"].target_model
        store.delete(f"{prefix}/{gone}")
        verified = check_table(table)
        assert verified.requests == 2  # ListObjectsV2 + the index GET: nothing per object
        assert [(f.target_model, f.state) for f in verified.findings if f.problem] == [
            (gone, "missing")]
        assert repair(table, verified, {table.variants["a"].sha256: tmp_path / "src" / gone}) is False
        assert store.head(f"{prefix}/{gone}").sha256 == table.variants["a"].sha256
        store.delete(f"{prefix}/{INDEX_NAME}")  # no index: each object's sha256 metadata (HEAD)
        again = check_table(table)
        assert again.summary().states == {"ok": 6} and again.requests == 2 + 6
