"""Route fleet variants back to the version each replaced (``mme fleet rollback``).

Why no deploy: a fleet deploy keeps each variant's previous versions in the routing table
(``previous``, newest first, ``--keep-versions``) and their objects in the endpoints' model
prefixes, so going back uploads nothing: the table routes the kept version again
(:func:`tasks.fleet.routes.route_back`) and Routers follow within their ``max_age_s``.

What it checks first, for every variant asked for: that it is routed and keeps a version, and
that the kept version's object is in its endpoint's model prefix with the sha256 the table
names. Every kept version was validated by the fleet deploy that routed it, and identical bytes
answer identically, so no invoke is made (the samples a deploy validates with are the current
build's). All or nothing: one variant that cannot go back refuses the rollback, and the table is
not written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.errors import InvalidInput
from infra.jsontypes import JsonObject
from infra.store.objects import open_store, sha256_at
from tasks.fleet.routes import (RouteVersion, RoutingTable, back_problem, require_routes, route_back,
                               routes_location, write_routes)


@dataclass(frozen=True)
class VariantBack:
    """One variant going back: from its current version to its newest kept one."""

    variant: str
    current: RouteVersion
    back: RouteVersion

    def to_json(self) -> JsonObject:
        def side(v: RouteVersion) -> JsonObject:
            return {"endpoint": v.endpoint, "target_model": v.target_model, "sha256": v.sha256,
                    "tenant": v.tenant}
        return {"variant": self.variant, "from": side(self.current), "to": side(self.back)}


def plan_fleet_rollback(table: RoutingTable, variants: Sequence[str]) -> tuple[list[VariantBack], list[str]]:
    """Each variant's way back, and what stops one (a line each: not routed, nothing kept, no
    model prefix for the kept version's endpoint)."""
    plans, problems = [], []
    for variant in dict.fromkeys(variants):
        route = table.variants.get(variant)
        why = back_problem(route)
        if why or route is None:
            problems.append(f"{variant}: {why}")
            continue
        current, back = route.versions()[:2]
        ref = table.endpoints.get(back.endpoint or "")
        if ref is None or not ref.models_url:
            problems.append(f"{variant}: the table names no model prefix for endpoint {back.endpoint}")
            continue
        plans.append(VariantBack(variant=variant, current=current, back=back))
    return plans, problems


def kept_object_problems(table: RoutingTable, plans: Sequence[VariantBack]) -> list[str]:
    """A line per kept version whose object is gone from its endpoint's model prefix or holds
    other bytes than the table names (a fused shard is checked once for all its tenants)."""
    problems, seen = [], {}
    for p in plans:
        where = (p.back.endpoint or "", p.back.target_model)
        if where not in seen:
            seen[where] = _object_problem(table, p.back)
        if seen[where]:
            problems.append(f"{p.variant}: {seen[where]}")
    return problems


def _object_problem(table: RoutingTable, version: RouteVersion) -> str:
    models_url = table.endpoints[version.endpoint or ""].models_url
    assert models_url  # plan_fleet_rollback kept only versions with a model prefix
    store, prefix = open_store(models_url)
    key = f"{prefix}/{version.target_model}" if prefix else version.target_model
    sha256 = sha256_at(store, key)
    if sha256 is None:
        return f"its kept object {store.uri_for(key)} is gone"
    if sha256 != version.sha256:
        return f"its kept object {store.uri_for(key)} was replaced (sha256 {sha256}, the table names {version.sha256})"
    return ""


@dataclass(frozen=True)
class FleetRollback:
    """What ``mme fleet rollback`` did (or, with ``dry_run``, would do)."""

    fleet: str
    dry_run: bool
    variants: list[VariantBack]
    table: str  # the routing table's URI

    def to_json(self) -> JsonObject:
        return {"fleet": self.fleet, "dry_run": self.dry_run, "table": self.table,
                "variants": [v.to_json() for v in self.variants]}


def rollback_fleet(store_uri: str, fleet: str, variants: Sequence[str], now: datetime, *,
                   dry_run: bool = False) -> FleetRollback:
    """Check every variant's way back, then (unless ``dry_run``) route them all back with one
    write of the table. Refuses (:class:`InvalidInput`, every problem named) before writing
    anything when one variant cannot go back. Call it holding the fleet's endpoint locks."""
    if not variants:
        raise InvalidInput("name the variants to route back (--variant)")
    table = require_routes(store_uri, fleet)
    plans, problems = plan_fleet_rollback(table, variants)
    problems += kept_object_problems(table, plans)
    if problems:
        raise InvalidInput(f"fleet {fleet}: cannot route back {len(problems)} variant(s), nothing "
                           f"changed: " + "; ".join(problems))
    if dry_run:
        store, key = routes_location(store_uri, fleet)
        return FleetRollback(fleet=fleet, dry_run=True, variants=plans, table=store.uri_for(key))
    for p in plans:
        route_back(table, p.variant, now)
    return FleetRollback(fleet=fleet, dry_run=False, variants=plans, table=write_routes(store_uri, table, now))


@task(name="fleet-rollback", cache_policy=NO_CACHE)
def fleet_rollback_task(store_uri: str, fleet: str, variants: Sequence[str], now: datetime) -> FleetRollback:
    """:func:`rollback_fleet` as a task: one step in the flow run, its refusal the run's."""
    return rollback_fleet(store_uri, fleet, variants, now)
