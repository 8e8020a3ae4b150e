"""The ``fleet-retire``, ``fleet-rollback`` and ``fleet-gc`` flows (tasks in
:mod:`tasks.fleet.retire` and :mod:`tasks.fleet.rollback`).

``fleet-rollback`` routes variants back to the version each replaced (all or none).

``fleet-retire`` marks a fleet, some variants or a shard retiring in the routing table (or, with
``now``, removes them and deletes their objects after writing the table); retirees past the grace
period are removed on every run. ``fleet-gc`` lists (dry run) or deletes the model objects and
local build artifacts that no routing table, kept version or deploy ledger references. Both hold
the endpoints' deploy locks, so a deploy's freshly uploaded, not yet routed version is not
collected under it.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow

from flows.common import endpoint_locks, fleet_run_name, fleet_tags, tagged_run
from infra import paths
from tasks.fleet.retire import Retirement, fleet_endpoints_task, gc_task, retire_task
from tasks.fleet.rollback import fleet_rollback_task
from tasks.fleet.routes import parse_time


@flow(name="fleet-retire", log_prints=True, flow_run_name=fleet_run_name)
def fleet_retire(fleet: str, variants: list[str] | None = None, shard: str | None = None,
                 now: bool = False, grace_s: float = 3600.0, store_uri: str | None = None,
                 clock: str | None = None, all_variants: bool = False) -> dict[str, Any]:
    """Retire variants of a fleet: mark them retiring in its routing table (removed once the
    grace period is over), or remove them now. Naming nothing is refused.

    Args:
        fleet (str): The fleet's name (as its routing table names it), e.g. tenants-example.
        variants (list[str] | None): The variants to retire (names).
        shard (str | None): Retire every variant routed to this endpoint instead.
        now (bool): Remove them at once (their objects are deleted after the table is written).
        grace_s (float): Seconds a retiring variant stays routed before it is removed.
        store_uri (str | None): The store holding the routing table (default: the embedded store; an
            s3:// store needs AWS credentials).
        clock (str | None): The current time as ISO text (tests, replays); default now (UTC).
        all_variants (bool): Retire the whole fleet (must be said: it is never a default).
    """
    store_uri = store_uri or paths.store_uri()
    when = parse_time(clock) if clock else datetime.now(UTC)
    with tagged_run(fleet_tags(fleet)), endpoint_locks(fleet_endpoints_task(store_uri, [fleet])):
        asked = Retirement(variants=tuple(variants or ()), shard=shard, everything=all_variants,
                           immediately=now, now=when, grace=timedelta(seconds=grace_s))
        return retire_task(store_uri, fleet, asked).model_dump()


@flow(name="fleet-rollback", log_prints=True, flow_run_name=fleet_run_name)
def fleet_rollback(fleet: str, variants: list[str], store_uri: str | None = None,
                   clock: str | None = None) -> dict[str, Any]:
    """Route variants of a fleet back to the version each replaced (kept in the routing table
    and the store), after checking every kept object's sha256; one that cannot go back refuses
    them all, and the table is not written.

    Args:
        fleet (str): The fleet's name (as its routing table names it), e.g. tenants-example.
        variants (list[str]): The variants to route back (names).
        store_uri (str | None): The store holding the routing table (default: the embedded store; an
            s3:// store needs AWS credentials).
        clock (str | None): The current time as ISO text (tests, replays); default now (UTC).
    """
    store_uri = store_uri or paths.store_uri()
    when = parse_time(clock) if clock else datetime.now(UTC)
    with tagged_run(fleet_tags(fleet)), endpoint_locks(fleet_endpoints_task(store_uri, [fleet])):
        done = fleet_rollback_task(store_uri, fleet, variants, when)
    for v in done.variants:
        print(f"{v.variant}: back to {v.back.target_model} on {v.back.endpoint}, from {v.current.target_model}")
    return done.to_json()


@flow(name="fleet-gc", log_prints=True)
def fleet_gc(store_uri: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Delete (or with ``dry_run`` list) what no routing table, kept version or ledger uses.

    Args:
        store_uri (str | None): The store to collect (default: the embedded store; an s3:// store needs
            AWS credentials).
        dry_run (bool): List what would be deleted, delete nothing.
    """
    store_uri = store_uri or paths.store_uri()
    with endpoint_locks([] if dry_run else fleet_endpoints_task(store_uri, None)):
        return gc_task(store_uri, dry_run).model_dump()
