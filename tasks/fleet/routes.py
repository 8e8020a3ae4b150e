"""The routing table of a fleet on endpoints, and the pure rules that change it.

``<store>/routes/<fleet>.json`` is the one truth clients use (:class:`tasks.fleet.router.Router`):
for each variant, the endpoint it is served on, its current TargetModel and sha256, since when,
the previous versions kept for rollback, and ``retiring_since`` once it left the fleet. It is
read with one GET and written whole with one PUT (an object PUT is atomic: a reader sees the old
or the new table, never a mix), always AFTER the versions it points to were validated.

Everything here but :func:`read_routes` / :func:`write_routes` is pure (no store, no clock:
``now`` is passed in), so the rules are tested on thousands of synthetic variants:

- **Shards**: rendezvous (highest-random-weight) hashing of the variant's name over the
  endpoints, sticky to the endpoint the table already names while that endpoint is still in the
  list. Adding a variant moves no other; removing an endpoint moves only its variants (each to
  the endpoint with its next-highest weight); adding one moves nothing already placed.
- **Versions**: a new version pushes the current one onto ``previous``; versions beyond
  ``keep_versions`` are dropped from the table (and their objects deleted by the caller).
- **Retirement**: a variant no longer in the fleet gets ``retiring_since``; it is removed once
  ``grace`` has passed; a variant that comes back is un-retired.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from infra.jsontypes import JsonObject
from infra.errors import InvalidInput, UserError
from infra.records.stored import read_stored
from infra.versioned import VersionedDocument
from infra.store.objects import ObjectNotFound, ObjectStore, open_store

ROUTES_PREFIX = "routes"
#: 2: a route may name a ``tenant`` (its index in a fused shard, :mod:`tasks.fleet.fused`).
SCHEMA_VERSION: Literal[2] = 2


class RouteVersion(BaseModel):
    """A version of a variant: which object (TargetModel) on which endpoint, since when."""

    model_config = ConfigDict(extra="allow")
    target_model: str
    sha256: str
    since: str
    endpoint: str | None = None  # the endpoint it was served on (None: the route's endpoint)
    tenant: int | None = None  # its TENANT value in a fused shard (None: a variant's own tarball)


class Route(BaseModel):
    """One variant's route: where it is served now, and its kept previous versions."""

    model_config = ConfigDict(extra="allow")
    endpoint: str
    target_model: str
    sha256: str
    since: str
    previous: list[RouteVersion] = Field(default_factory=list)
    retiring_since: str | None = None
    #: A fused fleet's tenant: its index in the shard ``target_model`` is (the request's
    #: ``TENANT`` input); None for a variant served by its own tarball.
    tenant: int | None = None

    def versions(self) -> list[RouteVersion]:
        """The current version first, then the kept previous ones (each with its endpoint)."""
        current = RouteVersion(target_model=self.target_model, sha256=self.sha256, since=self.since,
                               endpoint=self.endpoint, tenant=self.tenant)
        return [current, *[p if p.endpoint else p.model_copy(update={"endpoint": self.endpoint})
                           for p in self.previous]]


class EndpointRef(BaseModel):
    """How a client reaches an endpoint of the fleet (the Router reads it)."""

    model_config = ConfigDict(extra="allow")
    backend: str = "local"
    region: str | None = None
    models_url: str | None = None


class RoutingTable(VersionedDocument):
    """``routes/<fleet>.json``."""

    current_version: ClassVar[int] = SCHEMA_VERSION
    kind: ClassVar[str] = "routing table"
    remedy: ClassVar[str] = "use the tool that wrote it"
    fleet: str
    updated_at: str = ""
    endpoints: dict[str, EndpointRef] = Field(default_factory=dict)
    variants: dict[str, Route] = Field(default_factory=dict)

    @classmethod
    def migrate(cls, doc: JsonObject, version: int) -> JsonObject:
        """Version 1 had no fused tenants: every route is a variant's own tarball (``tenant``
        None), which is what a version-1 route reads as; nothing else changed."""
        return doc

    def referenced(self) -> set[tuple[str, str]]:
        """Every (endpoint, TargetModel) the table points to, current and kept versions: what
        nothing may delete."""
        return {(v.endpoint or r.endpoint, v.target_model)
                for r in self.variants.values() for v in r.versions()}


# ------------------------------------------------------------------------------ store I/O
def routes_location(store_uri: str, fleet: str) -> tuple[ObjectStore, str]:
    """The store and key of the fleet's routing table."""
    if not fleet or "/" in fleet:
        raise InvalidInput(f"fleet name {fleet!r}: expected a non-empty name without '/'")
    store, prefix = open_store(store_uri)
    key = f"{ROUTES_PREFIX}/{fleet}.json"
    return store, f"{prefix}/{key}" if prefix else key


def read_routes(store_uri: str, fleet: str) -> RoutingTable:
    """The fleet's table (one GET), or an empty one when none was written. A table that does not
    parse, or one from a newer tool, is refused naming its URI."""
    store, key = routes_location(store_uri, fleet)
    return read_stored(store, key, RoutingTable(fleet=fleet))


class NoSuchFleet(UserError, LookupError):
    """No routing table for the fleet in the store: never deployed there, or every variant was
    removed. The message names the fleets that are known there."""


def require_routes(store_uri: str, fleet: str) -> RoutingTable:
    """The fleet's table (one GET); a missing one is :class:`NoSuchFleet` naming the fleets the
    store does have (one listing, on that error path only)."""
    store, key = routes_location(store_uri, fleet)
    try:
        raw = store.get_bytes(key)
    except ObjectNotFound:
        known = list_fleets(store_uri)
        raise NoSuchFleet(f"no such fleet {fleet!r}: no routing table {store.uri_for(key)} "
                          f"(known: {', '.join(known) or 'none'})") from None
    return parse_routes(raw, store.uri_for(key))


def parse_routes(raw: bytes, where: str) -> RoutingTable:
    """A table's bytes as a :class:`RoutingTable`; ``where`` names it in the error."""
    return RoutingTable.read(raw, where)


def write_routes(store_uri: str, table: RoutingTable, now: datetime) -> str:
    """Write the whole table with one PUT (atomic per object); returns its URI. A table with no
    variant left is deleted instead (the fleet is gone from its endpoints)."""
    store, key = routes_location(store_uri, table.fleet)
    if not table.variants:
        store.delete(key)
        return store.uri_for(key)
    table.updated_at = now.isoformat(timespec="seconds")
    doc = table.model_dump(mode="json", exclude_none=True)
    store.put_bytes(key, json.dumps(doc, indent=1, sort_keys=True).encode())
    return store.uri_for(key)


def list_fleets(store_uri: str) -> list[str]:
    """The fleets that have a routing table in the store (one listing of ``routes/``)."""
    store, prefix = open_store(store_uri)
    base = f"{prefix}/{ROUTES_PREFIX}/" if prefix else f"{ROUTES_PREFIX}/"
    return sorted(i.key[len(base):-len(".json")] for i in store.list(base)
                  if i.key.endswith(".json") and "/" not in i.key[len(base):])


def parse_time(text: str) -> datetime:
    """An ISO time; one without a zone is UTC (so a ``--clock`` given without one compares)."""
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# ------------------------------------------------------------------------------ naming
# ------------------------------------------------------------------------------ shards
def weight(variant: str, endpoint: str) -> int:
    """The rendezvous weight of ``variant`` on ``endpoint`` (stable across runs and hosts)."""
    digest = hashlib.blake2b(f"{endpoint}\x00{variant}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign_shards(variants: Iterable[str], endpoints: Sequence[str],
                  current: Mapping[str, str]) -> dict[str, str]:
    """``{variant: endpoint}``: the endpoint ``current`` names while it is in ``endpoints``,
    else the one with the highest rendezvous weight. O(variants x endpoints)."""
    if not endpoints:
        raise InvalidInput("a fleet deploy needs at least one endpoint (--endpoint or --endpoints)")
    if len(set(endpoints)) != len(endpoints):
        raise InvalidInput(f"endpoints listed twice: {', '.join(endpoints)}")
    live = set(endpoints)
    out: dict[str, str] = {}
    for v in variants:
        was = current.get(v)
        out[v] = was if was in live else max(endpoints, key=lambda e: weight(v, e))
    return out


# ------------------------------------------------------------------------------ versions
def promote(table: RoutingTable, variant: str, new: RouteVersion, now: datetime) -> None:
    """Route ``variant`` to ``new`` (validated): the current version becomes the first previous
    one; a version equal to the new one is not kept twice; ``retiring_since`` is cleared."""
    old = table.variants.get(variant)
    endpoint = new.endpoint or ""
    if old is None:
        table.variants[variant] = Route(endpoint=endpoint, target_model=new.target_model,
                                        sha256=new.sha256, since=now.isoformat(timespec="seconds"),
                                        tenant=new.tenant)
        return
    same = (old.endpoint, old.target_model, old.tenant) == (endpoint, new.target_model, new.tenant)
    kept = [v for v in old.versions()[0 if not same else 1:]
            if (v.endpoint, v.target_model) != (endpoint, new.target_model)]
    since = old.since if same else now.isoformat(timespec="seconds")
    table.variants[variant] = Route(endpoint=endpoint, target_model=new.target_model,
                                    sha256=new.sha256, since=since, previous=kept, tenant=new.tenant)


def back_problem(route: Route | None) -> str | None:
    """Why a variant's route cannot go back (not routed, nothing kept), or None when it can."""
    if route is None:
        return "not routed"
    return None if route.previous else "no previous version is kept"


def route_back(table: RoutingTable, variant: str, now: datetime) -> RouteVersion:
    """Route ``variant`` back to its newest kept version (on the endpoint it was served on, as
    the tenant it was); the current version becomes the first kept one, so routing back twice
    is where one started. ``retiring_since`` stays as it was. Returns the version now routed.
    A variant that is not routed, or keeps no version, is :class:`InvalidInput`."""
    route = table.variants.get(variant)
    why = back_problem(route)
    if why or route is None:
        raise InvalidInput(f"cannot route {variant} of fleet {table.fleet} back: {why}")
    current, back, *older = route.versions()
    table.variants[variant] = route.model_copy(update={
        "endpoint": back.endpoint, "target_model": back.target_model, "sha256": back.sha256,
        "since": now.isoformat(timespec="seconds"), "tenant": back.tenant,
        "previous": [current, *older]})
    return back


def prune_versions(table: RoutingTable, keep_versions: int) -> list[RouteVersion]:
    """Drop every variant's previous versions beyond ``keep_versions``; returns the dropped ones
    (each with its endpoint) for the caller to delete."""
    if keep_versions < 0:
        raise InvalidInput(f"--keep-versions must be 0 or more, got {keep_versions}")
    dropped: list[RouteVersion] = []
    for route in table.variants.values():
        extra = route.versions()[1 + keep_versions:]
        dropped += extra
        route.previous = route.previous[:keep_versions]
    return dropped


# ------------------------------------------------------------------------------ retirement
def mark_retiring(table: RoutingTable, names: Iterable[str], now: datetime) -> list[str]:
    """Set ``retiring_since`` (now) on ``names`` not already retiring; returns those marked."""
    marked = []
    for name in names:
        route = table.variants.get(name)
        if route is not None and route.retiring_since is None:
            route.retiring_since = now.isoformat(timespec="seconds")
            marked.append(name)
    return marked


def unretire(table: RoutingTable, desired: Iterable[str]) -> list[str]:
    """Clear the retiring mark of the ``desired`` variants (they are in the build again: it is
    the desired state); returns those that were retiring, sorted, for the caller to report."""
    back = sorted(n for n in set(desired) & set(table.variants)
                  if table.variants[n].retiring_since is not None)
    for name in back:
        table.variants[name].retiring_since = None
    return back


def retire_missing(table: RoutingTable, desired: Iterable[str], now: datetime) -> list[str]:
    """Mark the routed variants that are not ``desired`` (left the fleet) retiring, and clear the
    mark of desired ones (they came back: :func:`unretire` says which); returns the newly
    marked."""
    wanted = set(desired)
    unretire(table, wanted)
    return mark_retiring(table, sorted(set(table.variants) - wanted), now)


def expired(table: RoutingTable, grace: timedelta, now: datetime) -> list[str]:
    """The retiring variants whose grace period has passed (``now - retiring_since >= grace``)."""
    return sorted(name for name, r in table.variants.items()
                  if r.retiring_since is not None
                  and now - parse_time(r.retiring_since) >= grace)


def remove(table: RoutingTable, names: Iterable[str]) -> list[RouteVersion]:
    """Drop ``names`` from the table; returns every version of theirs (for deletion)."""
    gone: list[RouteVersion] = []
    for name in names:
        route = table.variants.pop(name, None)
        if route is not None:
            gone += route.versions()
    return gone


def unreferenced(table: RoutingTable, versions: Iterable[RouteVersion]) -> list[RouteVersion]:
    """``versions`` the table no longer points to (deduplicated): the only ones safe to delete."""
    keep = table.referenced()
    seen: set[tuple[str, str]] = set()
    out = []
    for v in versions:
        ref = (v.endpoint or "", v.target_model)
        if ref not in keep and ref not in seen:
            seen.add(ref)
            out.append(v)
    return out
