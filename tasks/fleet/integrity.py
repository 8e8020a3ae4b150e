"""Is every object a fleet's routing table points to in the store, with the bytes it records?

An object deleted or overwritten behind the tool's back stays routed: a redeploy compares the
build with the TABLE (not the store) and says "unchanged", and the local endpoint may go on
serving a copy it loaded earlier. :func:`check_table` looks, per endpoint model prefix, with
**one listing and one GET of the prefix's sync index** (``_index.json``, written by every
publish); an object several routes name (a fused shard: every tenant's route) is judged once. A
version is

- ``missing`` when the listing does not have its TargetModel;
- ``corrupt`` when its listed size is not the size published for its sha256, or when its own
  sha256 is not the one the table records;
- ``ok`` when it is listed, the index vouches for the table's sha256 and the sizes agree.

Where the index does not vouch for it (no entry, or an entry of other bytes), the object's own
sha256 is asked for: the store's record (``head``: S3 metadata; the file store's sidecar, which
is recomputed when the file changed), else the object is read and hashed. ``deep`` reads and
hashes every object (catches a same-size overwrite that left the index and the S3 metadata
behind; costs a full read).

:func:`repair` re-publishes missing and corrupt versions from a build's tarball with the
recorded sha256 (hashed again before upload), through the prefix's sync index (their stale
entries dropped first), then checks them again. A kept previous version whose bytes no build
has any more is dropped from the table (it can no longer be rolled back to); a current one is
left ``unrepaired``, naming what to do. Every version the table references is checked: the
current one of each variant and the ``previous`` ones kept for rollback.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from infra import paths
from infra.errors import MMEError
from infra.store.objects import ObjectNotFound, ObjectStore, open_store, sha256_file
from infra.store.sync import INDEX_NAME, LocalObject, SyncIndex, sync_files
from tasks.fleet.build import INDEX_FILE, FleetIndex
from tasks.fleet.deploy import Desired, Job, forget_index_entries
from tasks.fleet.routes import RouteVersion, RoutingTable, require_routes, write_routes
from tasks.runtime.run_context import run_logger

PROBLEMS = ("missing", "corrupt", "unrepaired")


class FleetInconsistent(MMEError):
    """Routed objects are missing or corrupt and were not (or could not be) repaired."""


@dataclass(frozen=True)
class Finding:
    """One version the routing table references, and what the store holds for it."""

    variant: str
    endpoint: str
    target_model: str
    sha256: str  # the table's
    current: bool  # the routed version (else one kept for rollback)
    state: str  # ok | missing | corrupt | repaired | dropped | unrepaired
    detail: str = ""

    @property
    def problem(self) -> bool:
        return self.state in PROBLEMS


@dataclass
class Verified:
    """What :func:`check_table` and :func:`repair` found and did."""

    fleet: str
    findings: list[Finding] = field(default_factory=list)
    requests: int = 0  # store requests of the check (listings, index GETs, HEADs, reads)

    def summary(self) -> IntegritySummary:
        """The counts by state, the endpoints, and the findings that are not ``ok``
        (``remaining``: the problems left after any repair)."""
        states: dict[str, int] = defaultdict(int)
        for f in self.findings:
            states[f.state] += 1
        return IntegritySummary(fleet=self.fleet, checked=len(self.findings), states=dict(states),
                                endpoints=sorted({f.endpoint for f in self.findings}),
                                requests=self.requests,
                                remaining=[f for f in self.findings if f.problem],
                                findings=[f for f in self.findings if f.state != "ok"])


class IntegritySummary(BaseModel):
    """A fleet check's summary, as ``mme fleet verify`` (and ``fleet deploy --verify``) print
    it: ``model_dump(mode="json")`` is the JSON document they always printed (same keys, same
    order; each finding a plain object)."""

    model_config = ConfigDict(frozen=True)

    fleet: str
    checked: int
    states: dict[str, int]
    endpoints: list[str]
    requests: int
    remaining: list[Finding]
    findings: list[Finding]


def table_versions(table: RoutingTable) -> list[tuple[str, RouteVersion, bool]]:
    """Every (variant, version, is current) the table references, each with its endpoint."""
    return [(name, v, i == 0) for name, route in sorted(table.variants.items())
            for i, v in enumerate(route.versions())]


def _index_entries(store: ObjectStore, prefix: str) -> dict[str, Any]:
    """The prefix's sync index entries (one GET); none when it is missing or unreadable."""
    try:
        raw = store.get_bytes(f"{prefix}/{INDEX_NAME}" if prefix else INDEX_NAME)
        return dict(SyncIndex.read(raw, INDEX_NAME).objects)
    except (ObjectNotFound, ValueError):
        return {}


def object_sha256(store: ObjectStore, key: str, deep: bool) -> str:
    """The stored object's sha256: the store's record (unless ``deep``), else read and hashed."""
    if not deep:
        recorded = store.head(key).sha256
        if recorded:
            return recorded
    with tempfile.TemporaryDirectory(prefix="fleet-verify-") as tmp:
        return sha256_file(store.get_file(key, Path(tmp) / "object"))


def _judge(store: ObjectStore, key: str, v: RouteVersion, listed: Any, entry: Any,
           deep: bool) -> tuple[str, str, int]:
    """(state, detail, store requests) of one listed version."""
    if entry is not None and entry.sha256 == v.sha256 and not deep:
        if listed.size != entry.size:
            return "corrupt", f"size {listed.size}, published {entry.size}", 0
        return "ok", "", 0
    got = object_sha256(store, key, deep)
    if got != v.sha256:
        return "corrupt", f"sha256 {got[:12]}, routed {v.sha256[:12]}", 1
    return "ok", "", 1


def check_prefix(models_url: str, versions: Sequence[tuple[str, RouteVersion, bool]],
                 deep: bool = False) -> tuple[list[Finding], int]:
    """Check ``versions`` (all on one endpoint) against its model prefix: one listing, one GET
    of the sync index, then a HEAD or read only where the index does not vouch."""
    store, prefix = open_store(models_url)
    base = f"{prefix}/" if prefix else ""
    listed = {i.key[len(base):]: i for i in store.list(base)}
    index = _index_entries(store, prefix)
    requests, out = 2, []
    judged: dict[tuple[str, str], tuple[str, str]] = {}  # a fused shard: one object, many tenants' routes
    for name, v, current in versions:
        endpoint = v.endpoint or ""
        info = listed.get(v.target_model)
        if info is None:
            out.append(Finding(name, endpoint, v.target_model, v.sha256, current, "missing",
                               f"not in {store.uri_for(prefix) if prefix else models_url}"))
            continue
        if (v.target_model, v.sha256) not in judged:
            state, detail, n = _judge(store, base + v.target_model, v, info,
                                      index.get(v.target_model), deep)
            judged[(v.target_model, v.sha256)] = (state, detail)
            requests += n
        state, detail = judged[(v.target_model, v.sha256)]
        out.append(Finding(name, endpoint, v.target_model, v.sha256, current, state, detail))
    return out, requests


def check_table(table: RoutingTable, deep: bool = False) -> Verified:
    """Check every version ``table`` references, one model prefix at a time."""
    by_endpoint: dict[str, list[tuple[str, RouteVersion, bool]]] = defaultdict(list)
    for name, v, current in table_versions(table):
        by_endpoint[v.endpoint or ""].append((name, v, current))
    done = Verified(fleet=table.fleet)
    for endpoint, versions in sorted(by_endpoint.items()):
        ref = table.endpoints.get(endpoint)
        if ref is None or not ref.models_url:
            done.findings += [Finding(n, endpoint, v.target_model, v.sha256, c, "missing",
                                      f"no model prefix recorded for endpoint {endpoint!r}")
                              for n, v, c in versions]
            continue
        found, requests = check_prefix(ref.models_url, versions, deep)
        done.findings += found
        done.requests += requests
    return done


def build_sources(fleet: str, build_dirs: Sequence[Path] = ()) -> dict[str, Path]:
    """``{sha256: tarball}`` of the fleet's builds (``build_dirs``, default every
    ``$MME_HOME/artifacts/*/fleets/<fleet>/``): where a repair finds a version's bytes."""
    dirs = list(build_dirs) or [p.parent for p in sorted(
        paths.home().glob(f"artifacts/*/fleets/{fleet}/{INDEX_FILE}"))]
    out: dict[str, Path] = {}
    for d in dirs:
        try:
            index = FleetIndex.read((d / INDEX_FILE).read_text(), str(d / INDEX_FILE))
        except (OSError, ValueError):
            continue
        if index.fleet != fleet:
            continue
        for e in [*index.variants.values(), *index.shards.values()]:  # a fused shard's tarball too
            if e.status == "ok" and e.sha256 and (d / e.file).is_file():
                out.setdefault(e.sha256, d / e.file)
    return out


def _upload(models_url: str, bad: Sequence[Finding], sources: Mapping[str, Path]) -> set[str]:
    """Re-publish the ``bad`` versions (one endpoint) whose bytes a build holds, through the
    prefix's sync index (their stale entries dropped first); returns the TargetModels that
    uploaded. A build tarball that no longer hashes to its recorded sha256 is not used."""
    files: dict[str, LocalObject] = {}
    for f in bad:
        src = sources.get(f.sha256)
        if src is not None and src.is_file() and sha256_file(src) == f.sha256:
            files[f.target_model] = LocalObject(path=src, sha256=f.sha256, size=src.stat().st_size)
    if not files:
        return set()
    store, prefix = open_store(models_url)
    forget_index_entries(store, prefix, set(files))
    report = sync_files(store, prefix, files)
    return set(report.uploaded)


def _drop_previous(table: RoutingTable, f: Finding) -> None:
    """Forget a kept version whose object is gone for good (nothing can roll back to it)."""
    route = table.variants[f.variant]
    route.previous = [p for p in route.previous
                      if (p.endpoint or route.endpoint, p.target_model) != (f.endpoint, f.target_model)]


def repair(table: RoutingTable, verified: Verified, sources: Mapping[str, Path],
           endpoints: Sequence[str] | None = None) -> bool:
    """Re-publish every missing or corrupt version from ``sources`` (``{sha256: tarball}``) and
    check it again; drop kept previous versions nothing can restore; mark the rest
    ``unrepaired``. Only the model prefixes of ``endpoints`` (default: all) are written: the
    ones whose deploy lock the caller holds. Updates ``verified.findings``; True when ``table``
    changed (to be written)."""
    bad: dict[str, list[Finding]] = defaultdict(list)
    for f in verified.findings:
        if f.problem:
            bad[f.endpoint].append(f)
    uploaded: set[tuple[str, str]] = set()
    for endpoint, group in sorted(bad.items()):
        ref = table.endpoints.get(endpoint)
        if ref is not None and ref.models_url and (endpoints is None or endpoint in endpoints):
            uploaded |= {(endpoint, t) for t in _upload(ref.models_url, group, sources)}
    recheck = check_table(_only(table, uploaded)) if uploaded else Verified(table.fleet)
    again = {(f.endpoint, f.target_model): f for f in recheck.findings}
    changed, out = False, []
    for f in verified.findings:
        now = again.get((f.endpoint, f.target_model))
        if not f.problem:
            out.append(f)
        elif now is not None and now.state == "ok":
            out.append(replace(f, state="repaired", detail=f"{f.state}: re-published from a build"))
        elif not f.current and f.sha256 not in sources:
            _drop_previous(table, f)
            changed = True
            out.append(replace(f, state="dropped", detail=f"{f.state}: no build has its bytes; "
                                                          f"no longer kept for rollback"))
        else:
            hint = ("no build has its bytes: `mme fleet deploy` routes the build's version"
                    if f.sha256 not in sources else "re-publish failed"
                    if endpoints is None or f.endpoint in endpoints else
                    "not on an endpoint of this deploy: `mme fleet verify --repair`")
            out.append(replace(f, state="unrepaired", detail=f"{f.state} ({f.detail}); {hint}"))
    verified.findings = out
    return changed


def _only(table: RoutingTable, wanted: set[tuple[str, str]]) -> RoutingTable:
    """A copy of ``table`` whose variants reference only the ``wanted`` (endpoint, TargetModel)
    versions, each as a current version (to check them again)."""
    sub = RoutingTable(fleet=table.fleet, endpoints=table.endpoints)
    for name, v, _ in table_versions(table):
        if (v.endpoint or "", v.target_model) in wanted:
            key = f"{name}\x00{v.endpoint}\x00{v.target_model}"
            sub.variants[key] = table.variants[name].model_copy(update={
                "endpoint": v.endpoint or "", "target_model": v.target_model,
                "sha256": v.sha256, "previous": []})
    return sub


@task(name="fleet-routing-table", cache_policy=NO_CACHE)
def fleet_table_task(store_uri: str, fleet: str) -> RoutingTable:
    """The fleet's routing table (one GET); a fleet with none is ``NoSuchFleet``."""
    return require_routes(store_uri, fleet)


@task(name="fleet-build-sources", cache_policy=NO_CACHE)
def build_sources_task(fleet: str, build_dir: str | None) -> dict[str, Path]:
    """Where a repair finds each version's bytes (:func:`build_sources`)."""
    dirs = [Path(build_dir).expanduser().resolve()] if build_dir else []
    return build_sources(fleet, dirs)


@task(name="verify-fleet-objects", cache_policy=NO_CACHE)
def verify_task(store_uri: str, table: RoutingTable, sources: Mapping[str, Path],
                repair_them: bool, deep: bool = False,
                endpoints: Sequence[str] | None = None) -> tuple[Verified, RoutingTable]:
    """Check every version ``table`` references (:func:`check_table`); with ``repair_them``,
    re-publish what is missing or corrupt into the prefixes of ``endpoints`` (default: all;
    :func:`repair`) and write the table when a kept version was dropped. Returns the findings
    and the table as it is now."""
    verified = check_table(table, deep)
    if repair_them and any(f.problem for f in verified.findings) and repair(
            table, verified, sources, endpoints):
        write_routes(store_uri, table, datetime.now(UTC))
    s = verified.summary()
    log = run_logger()
    log.info("fleet %s: %d routed objects checked (%s), %d store requests", table.fleet,
             s.checked, ", ".join(f"{n} {k}" for k, n in sorted(s.states.items())), s.requests)
    for f in verified.findings:
        if f.state != "ok":
            (log.error if f.problem else log.warning)(
                "%s %s on %s (%s): %s %s", "current" if f.current else "previous", f.target_model,
                f.endpoint, f.variant, f.state, f.detail)
    return verified, table


# ------------------------------------------------------------------------------ deploy --verify
def repaired_jobs(verified: Verified, desired: Mapping[str, Desired]) -> list[Job]:
    """Invoke-only jobs (kind ``repaired``) for the current versions a repair re-published: a
    deploy validates them like the new versions it publishes."""
    out = []
    for f in verified.findings:
        d = desired.get(f.variant)
        if f.state == "repaired" and f.current and d is not None and d.sha256 == f.sha256:
            out.append(Job(f.variant, f.endpoint, f.target_model, f.sha256, d.size, d.tarball,
                           d.manifest, "repaired"))
    return out


def still_broken(verified: Verified, live: Sequence[str]) -> dict[str, str]:
    """``{variant: reason}`` for routed (current) versions still missing or corrupt after a
    deploy, unless the deploy routed a new version of that variant."""
    went_live = set(live)
    return {f.variant: f"its routed {f.target_model} on {f.endpoint}: {f.detail}"
            for f in verified.findings
            if f.problem and f.current and f.variant not in went_live}
