"""Retire a fleet, some of its variants or a shard; collect what nothing references (gc).

Retire marks variants ``retiring_since`` in the routing table (they keep being served until the
grace period passed; the next ``mme fleet deploy`` or ``mme fleet retire`` removes them), or
with ``now`` removes them at once: the table is written first, then their objects are deleted.
A shard (``--shard E``) is retired, not moved: its variants are marked or removed like any
other. To move a shard's variants instead, deploy the fleet without that endpoint
(``mme fleet deploy F --endpoints <the others>``): the deploy publishes and validates them on
their new endpoints before it routes them there (rendezvous hashing moves only those).

``gc`` deletes ``.tar.gz`` objects under the model prefix of every endpoint a routing table
names that no routing table (current or kept version) and no deploy ledger references, and the
local build artifacts of variants that neither their fleet index nor a routing table names.
The current version of a routed variant is never deleted: every candidate is checked against
every table read in the same run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from ensembles.fleet_spec import variant_ensemble_name
from infra import paths
from infra.errors import UserError
from infra.records.manifest import MANIFEST_SUFFIX
from infra.store.objects import open_store
from infra.store.sync import INDEX_NAME
from tasks.fleet.build import INDEX_FILE, FleetIndex
from tasks.fleet.deploy import delete_versions, forget_index_entries
from tasks.fleet.routes import (
    EndpointRef,
    RoutingTable,
    expired,
    list_fleets,
    mark_retiring,
    read_routes,
    remove,
    require_routes,
    unreferenced,
    write_routes,
)
from tasks.deploy.publish import read_ledger
from tasks.runtime.run_context import run_logger


def pick_retirees(table: RoutingTable, variants: Sequence[str], shard: str | None,
                  everything: bool = False) -> list[str]:
    """The variants to retire: those named, those on ``shard``, or the whole fleet, which must
    be asked for (``everything``: ``--all``): a retire that names nothing is refused, never
    read as "all of them". A name the table does not route is refused, naming it."""
    if sum((bool(variants), shard is not None, everything)) != 1:
        raise UserError(f"fleet {table.fleet}: retire names variants, a shard, or --all (the "
                        f"whole fleet: {len(table.variants)} routed variants), exactly one of them")
    if variants:
        unknown = sorted(set(variants) - set(table.variants))
        if unknown:
            raise UserError(f"fleet {table.fleet}: not routed: {', '.join(unknown)} (see `mme "
                            f"fleet routes {table.fleet}`)")
        return sorted(set(variants))
    if shard is not None:
        if shard not in {r.endpoint for r in table.variants.values()}:
            raise UserError(f"fleet {table.fleet}: no variant is routed to endpoint {shard!r}")
        return sorted(n for n, r in table.variants.items() if r.endpoint == shard)
    return sorted(table.variants)


@dataclass(frozen=True)
class Retirement:
    """What a retire run is asked: which variants (by name, by ``shard``, or ``everything``:
    exactly one of them), whether to remove them at once (``immediately``) rather than mark
    them retiring, the run's clock, and how long a retiree is kept before it is removed."""

    variants: tuple[str, ...]
    shard: str | None
    everything: bool
    immediately: bool
    now: datetime
    grace: timedelta


class RetireReport(BaseModel):
    """What a retire run did: the table written, the variants marked and removed, the objects
    deleted, and how many variants the table still routes."""

    fleet: str
    routes: str
    marked: list[str]
    removed: list[str]
    deleted: list[str]
    routed: int


@task(name="retire-fleet-variants", cache_policy=NO_CACHE)
def retire_task(store_uri: str, fleet: str, asked: Retirement) -> RetireReport:
    """Mark the variants ``asked`` names retiring, or remove them at once
    (``asked.immediately``); also remove every retiree past its grace."""
    now, grace, now_flag = asked.now, asked.grace, asked.immediately
    table = require_routes(store_uri, fleet)
    names = pick_retirees(table, asked.variants, asked.shard, asked.everything)
    refs: dict[str, EndpointRef] = dict(table.endpoints)
    marked = [] if now_flag else mark_retiring(table, names, now)
    gone = sorted(set(names if now_flag else []) | set(expired(table, grace, now)))
    versions = unreferenced(table, remove(table, gone))
    uri = write_routes(store_uri, table, now)
    deleted = delete_versions(table, versions, refs)
    run_logger().info("fleet %s: %d marked retiring, %d removed, %d objects deleted (%s)",
                      fleet, len(marked), len(gone), len(deleted), uri)
    return RetireReport(fleet=fleet, routes=uri, marked=marked, removed=gone, deleted=deleted,
                        routed=len(table.variants))


@task(name="fleet-endpoints", cache_policy=NO_CACHE)
def fleet_endpoints_task(store_uri: str, fleets: Sequence[str] | None) -> list[str]:
    """The endpoints the routing tables of ``fleets`` (None: every fleet) name."""
    names = list(fleets) if fleets is not None else list_fleets(store_uri)
    return sorted({e for f in names for e in read_routes(store_uri, f).endpoints})


@dataclass
class Garbage:
    """What gc found: store objects (URIs) and local files nothing references."""

    objects: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    _keys: list[tuple[str, str]] = field(default_factory=list)  # (models_url, key) to delete


def _referenced(store_uri: str) -> tuple[dict[str, set[str]], dict[str, str], dict[str, RoutingTable]]:
    """(TargetModels kept per endpoint, each endpoint's model prefix, the tables by fleet)."""
    keep: dict[str, set[str]] = defaultdict(set)
    prefixes: dict[str, str] = {}
    tables = {f: read_routes(store_uri, f) for f in list_fleets(store_uri)}
    for table in tables.values():
        for endpoint, target_model in table.referenced():
            keep[endpoint].add(target_model)
        prefixes.update({e: r.models_url for e, r in table.endpoints.items() if r.models_url})
    for endpoint in prefixes:
        ledger = read_ledger(store_uri, endpoint)
        keep[endpoint] |= {t for e in ledger.ensembles.values() for t in e.target_models()}  # + kept versions
    return keep, prefixes, tables


def find_store_garbage(store_uri: str, found: Garbage) -> dict[str, RoutingTable]:
    """Fill ``found`` with unreferenced model objects (one listing per endpoint prefix)."""
    keep, prefixes, tables = _referenced(store_uri)
    for endpoint, models_url in sorted(prefixes.items()):
        store, prefix = open_store(models_url)
        base = f"{prefix}/" if prefix else ""
        for info in store.list(base):
            name = info.key[len(base):]
            if name.endswith(".tar.gz") and "/" not in name and name not in keep[endpoint]:
                found.objects.append(store.uri_for(info.key))
                found._keys.append((models_url, info.key))
    return tables


def find_local_garbage(tables: dict[str, RoutingTable], found: Garbage) -> None:
    """Fill ``found`` with build outputs of variants no fleet index or routing table names."""
    for index_path in sorted(paths.home().glob(f"artifacts/*/fleets/*/{INDEX_FILE}")):
        try:
            index = FleetIndex.read(index_path.read_text(), str(index_path))
        except (OSError, ValueError):
            continue  # an unreadable index: leave its folder alone
        routed = tables.get(index.fleet, RoutingTable(fleet=index.fleet)).variants
        stems = {e.file.removesuffix(".tar.gz") for e in index.variants.values()}
        stems |= {variant_ensemble_name(v) for v in routed}
        for path in sorted(index_path.parent.iterdir()):
            stem = path.name.removesuffix(".tar.gz").removesuffix(MANIFEST_SUFFIX)
            if path.is_file() and path.name != INDEX_FILE and stem not in stems and (
                    path.name.endswith((".tar.gz", MANIFEST_SUFFIX))):
                found.files.append(str(path))


def _delete_objects(store_uri: str, keys: Sequence[tuple[str, str]]) -> None:
    """Delete ``keys`` (models_url, key), sparing any name a table or ledger references now (a
    deploy may have routed it since the listing); their sync-index entries go too."""
    keep, _, _ = _referenced(store_uri)
    spared = set().union(*keep.values()) if keep else set()
    by_url: dict[str, set[str]] = defaultdict(set)
    for models_url, key in keys:
        name = key.rsplit("/", 1)[-1]
        if name != INDEX_NAME and name not in spared:
            by_url[models_url].add(key)
    for models_url, full in by_url.items():
        store, prefix = open_store(models_url)
        for key in sorted(full):
            store.delete(key)
        forget_index_entries(store, prefix, {k.rsplit("/", 1)[-1] for k in full})


class GcReport(BaseModel):
    """What gc found (and, unless ``dry_run``, deleted): store object URIs and local files."""

    dry_run: bool
    objects: list[str]
    files: list[str]


@task(name="fleet-gc", cache_policy=NO_CACHE)
def gc_task(store_uri: str, dry_run: bool) -> GcReport:
    """List (``dry_run``) or delete what nothing references; the tables are re-read right
    before deleting and any object they name now is spared."""
    found = Garbage()
    tables = find_store_garbage(store_uri, found)
    find_local_garbage(tables, found)
    if not dry_run:
        _delete_objects(store_uri, found._keys)
        for f in found.files:
            Path(f).unlink(missing_ok=True)
    run_logger().info("gc%s: %d store objects, %d local files", " (dry run)" if dry_run else "",
                      len(found.objects), len(found.files))
    return GcReport(dry_run=dry_run, objects=found.objects, files=found.files)
