"""The planner's view of the instance catalog (``infra/aws/instances.yaml``, shared with the deploy
path's GPU table so there is one source of truth): the candidate types of a region and a line
saying how old the prices are."""

from __future__ import annotations

import datetime as dt

from infra.aws.instance_catalog import GIB, Catalog, CatalogError, InstanceType, load_catalog

__all__ = ["GIB", "Catalog", "CatalogError", "InstanceType", "candidate_types", "load_catalog",
           "price_age_line", "select_types"]


def price_age_line(catalog: Catalog, region: str, today: dt.date | None = None) -> str:
    """Printed with every plan: a price table months old is a different answer."""
    age = catalog.price_age_days(today)
    return (f"prices: on-demand SageMaker real-time inference, {region}, checked "
            f"{catalog.prices_checked.isoformat()} ({age} days old); source: {catalog.price_source}")


def candidate_types(catalog: Catalog, region: str, needs_gpu: bool) -> tuple[list[InstanceType], list[str]]:
    """The types a plan may use in ``region``, and one line per type left out and why.

    A GPU fleet may use only the single-GPU types AWS lists for GPU multi-model endpoints
    (``mme_gpu``); a CPU fleet any CPU type. A type without a price there is left out (never
    guessed)."""
    catalog.check_region(region)
    keep, skipped = [], []
    for row in catalog.instances.values():
        if needs_gpu and not row.mme_gpu:
            continue
        if not needs_gpu and row.gpu is not None:
            continue
        if row.hourly(region) is None:
            skipped.append(f"{row.name}: no {region} price in the catalog")
            continue
        keep.append(row)
    return keep, skipped


def select_types(catalog: Catalog, region: str, needs_gpu: bool,
                 names: tuple[str, ...] | None) -> tuple[list[InstanceType], list[str]]:
    """The candidate types, narrowed to ``names`` (``mme plan --instance-types``) when given: a
    name the catalog does not hold, or one this fleet cannot use there (a GPU type for a CPU
    fleet, no price in the region), is refused naming it and why, rather than silently dropped."""
    keep, skipped = candidate_types(catalog, region, needs_gpu)
    if not names:
        return keep, skipped
    usable = {r.name: r for r in keep}
    bad = []
    for name in names:
        if name not in catalog.instances:
            bad.append(f"{name}: not in the catalog (infra/aws/instances.yaml)")
        elif name not in usable:
            why = next((s for s in skipped if s.startswith(f"{name}:")), None)
            bad.append(why or f"{name}: not a {'GPU multi-model' if needs_gpu else 'CPU'} type, as this fleet needs")
    if bad:
        raise CatalogError("--instance-types: " + "; ".join(bad))
    return [usable[n] for n in dict.fromkeys(names)], []
