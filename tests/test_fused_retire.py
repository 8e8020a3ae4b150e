"""A tenant removed from a fused fleet (gone from the prefix): its route stays, marked
retiring, still naming the shard version it was in (with its tenant index), and that shard
version is not deleted while the route names it; once the grace period has passed (the same
rule as a separate variant's, ``DeployPolicy.grace_s``) the route is dropped and the old shard
version, named by no route, is deleted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tasks.fleet.deploy import Access, DeployPolicy, Desired, Job, commit
from tasks.fleet.routes import RoutingTable, RouteVersion, promote

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
OLD, NEW = "f-shard-000-aaaaaaaaaaaa.tar.gz", "f-shard-000-bbbbbbbbbbbb.tar.gz"
ACCESS = {"ep": Access("ep", "local", "file:///store/models/ep")}


def _tenant(name: str, tenant: int) -> Desired:
    return Desired(name=name, target_model="f-shard-000.tar.gz", sha256="b" * 64, size=1,
                   tarball=Path("f-shard-000.tar.gz"), manifest=Path("m"), shard="f-shard-000", tenant=tenant)


def _table() -> RoutingTable:
    """Shard 000 at its old version serving t0, t1, t2 (t1 is about to leave the fleet)."""
    table = RoutingTable(fleet="f")
    promote(table, "f-shard-000", RouteVersion(target_model=OLD, sha256="a" * 64, since="", endpoint="ep"), T0)
    for i, name in enumerate(("t0", "t1", "t2")):
        promote(table, name, RouteVersion(target_model=OLD, sha256="a" * 64, since="", endpoint="ep",
                                          tenant=i), T0)
    return table


def _redeploy(table: RoutingTable, now: datetime, grace_s: float) -> tuple[list[str], set[str], list[str]]:
    """The rebuilt shard (without t1: t2 is now tenant 1) deployed: (retiring, deleted, removed)."""
    job = Job(variant="f-shard-000", endpoint="ep", target_model=NEW, sha256="b" * 64, size=1,
              tarball=Path("x"), manifest=Path("y"), kind="changed")
    tenants = {"t0": _tenant("t0", 0), "t2": _tenant("t2", 1)}
    done = commit(table, [job], {"f-shard-000": None}, ["f-shard-000", "t0", "t2"], ACCESS,
                  DeployPolicy(grace_s=grace_s, keep_versions=0), now, tenants)
    return done.retiring, {v.target_model for v in done.doomed}, done.removed


def test_a_removed_tenant_keeps_its_route_to_the_old_shard_version_until_the_grace_ends() -> None:
    table = _table()
    retiring, deleted, removed = _redeploy(table, T0 + timedelta(minutes=1), grace_s=3600)
    assert retiring == ["t1"] and removed == []
    gone = table.variants["t1"]
    assert gone.retiring_since and (gone.target_model, gone.tenant) == (OLD, 1)  # still answers as before
    assert (table.variants["t2"].target_model, table.variants["t2"].tenant) == (NEW, 1)
    assert OLD not in deleted  # keep_versions 0 drops it from the shard's route, but t1 still names it
    assert ("ep", OLD) in table.referenced()

    retiring, deleted, removed = _redeploy(table, T0 + timedelta(minutes=30), grace_s=3600)
    assert (retiring, removed) == ([], []) and "t1" in table.variants and OLD not in deleted

    retiring, deleted, removed = _redeploy(table, T0 + timedelta(hours=2), grace_s=3600)
    assert removed == ["t1"] and "t1" not in table.variants
    assert OLD in deleted and ("ep", OLD) not in table.referenced()  # named by no route: deleted
    assert NEW not in deleted


def test_a_tenant_that_comes_back_within_the_grace_is_routed_again() -> None:
    table = _table()
    _redeploy(table, T0 + timedelta(minutes=1), grace_s=3600)
    tenants = {n: _tenant(n, i) for i, n in enumerate(("t0", "t1", "t2"))}
    done = commit(table, [], {}, ["f-shard-000", "t0", "t1", "t2"], ACCESS,
                  DeployPolicy(grace_s=3600, keep_versions=0), T0 + timedelta(minutes=5), tenants)
    assert "t1" in done.live and table.variants["t1"].retiring_since is None  # routed again: not retiring
    assert (table.variants["t1"].target_model, table.variants["t1"].tenant) == (NEW, 1)


def test_a_tenant_left_out_of_its_rebuilt_shard_stays_on_the_previous_version() -> None:
    """Issue 20's bad input: one tenant fails its check, the shard is rebuilt without it. The
    tenant is still in the fleet (its index entry says failed), so the deploy routes the others
    to the new shard version and keeps that tenant, not retiring, on the version it had."""
    table = _table()
    job = Job(variant="f-shard-000", endpoint="ep", target_model=NEW, sha256="b" * 64, size=1,
              tarball=Path("x"), manifest=Path("y"), kind="changed")
    tenants = {"t0": _tenant("t0", 0), "t2": _tenant("t2", 1)}  # t1 failed: not desired
    done = commit(table, [job], {"f-shard-000": None}, ["f-shard-000", "t0", "t1", "t2"], ACCESS,
                  DeployPolicy(grace_s=0, keep_versions=0), T0 + timedelta(minutes=1), tenants)
    assert done.retiring == [] and done.removed == []
    held = table.variants["t1"]
    assert held.retiring_since is None and (held.target_model, held.tenant) == (OLD, 1)
    assert (table.variants["t2"].target_model, table.variants["t2"].tenant) == (NEW, 1)
    assert OLD not in {v.target_model for v in done.doomed}  # t1 still answers from it
