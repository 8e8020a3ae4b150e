"""The planner's view of the instance catalog (``infra/instances.yaml``, shared with the deploy
path's GPU table so there is one source of truth): the candidate types of a region and a line
saying how old the prices are."""

from __future__ import annotations

import datetime as dt

from infra.instance_catalog import GIB, Catalog, CatalogError, InstanceType, load_catalog

__all__ = ["GIB", "Catalog", "CatalogError", "InstanceType", "candidate_types", "load_catalog",
           "price_age_line"]


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
