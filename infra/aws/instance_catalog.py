"""The SageMaker instance catalog (``infra/aws/instances.yaml``), read once, as typed rows.

Why in ``infra/``: the deploy path (GPU table, dry-run cost) and the capacity planner
(``tasks/planning``) need the same figures, and ``infra/`` may import nothing above it; one
data file loaded from both is the single source of truth. The file states its sources, the
date the prices were checked, and which prices could not be found (``null``, never guessed).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from infra.errors import UserError

GIB = 1024 ** 3


class CatalogError(UserError, ValueError):
    """An instance type or region the catalog does not hold, or a row it cannot read."""


@dataclass(frozen=True)
class Gpu:
    name: str  # what nvidia-smi reports
    architecture: str
    compute_capability: str
    memory_gib: int


@dataclass(frozen=True)
class InstanceType:
    """One catalog row. ``disk_gb`` is None where the hosting volume size is not known
    (EBS-only types); ``price`` maps region -> USD/h, None where no price was found."""

    name: str
    vcpus: int
    memory_gib: float
    disk_gb: float | None
    disk: str
    gpu: Gpu | None
    mme_gpu: bool
    price: dict[str, float | None] = field(default_factory=dict)
    note: str | None = None

    @property
    def gpu_memory_bytes(self) -> int:
        return 0 if self.gpu is None else self.gpu.memory_gib * GIB

    def hourly(self, region: str) -> float | None:
        """USD per hour in ``region``; None when the catalog has no price there."""
        return self.price.get(region)


@dataclass(frozen=True)
class Catalog:
    instances: dict[str, InstanceType]
    prices_checked: dt.date
    price_source: str
    regions: tuple[str, ...]

    def get(self, name: str) -> InstanceType:
        row = self.instances.get(name)
        if row is None:
            raise CatalogError(f"instance type {name!r} is not in the catalog (infra/aws/instances.yaml); "
                               f"known: {', '.join(sorted(self.instances))}")
        return row

    def price_age_days(self, today: dt.date | None = None) -> int:
        """How old the prices are: the planner prints it so a stale table is seen."""
        return ((today or dt.date.today()) - self.prices_checked).days

    def check_region(self, region: str) -> None:
        if not any(row.hourly(region) is not None for row in self.instances.values()):
            raise CatalogError(f"region {region!r}: the catalog (infra/aws/instances.yaml) has no price "
                               f"there (regions with prices: {', '.join(self.priced_regions())}); add "
                               f"them to the file, with the date checked")

    def priced_regions(self) -> list[str]:
        return [r for r in self.regions if any(row.hourly(r) is not None for row in self.instances.values())]


def _row(name: str, doc: dict[str, Any], gpus: dict[str, Gpu]) -> InstanceType:
    try:
        gpu = gpus[doc["gpu"]] if doc.get("gpu") else None
        return InstanceType(name=name, vcpus=int(doc["vcpus"]), memory_gib=float(doc["memory_gib"]),
                            disk_gb=None if doc.get("disk_gb") is None else float(doc["disk_gb"]),
                            disk=str(doc.get("disk", "ebs")), gpu=gpu, mme_gpu=bool(doc.get("mme_gpu", False)),
                            price={str(k): (None if v is None else float(v))
                                   for k, v in (doc.get("price") or {}).items()},
                            note=doc.get("note"))
    except (KeyError, TypeError, ValueError) as e:
        raise CatalogError(f"infra/aws/instances.yaml: instance {name!r}: unreadable row ({e!r})") from None


def parse_catalog(doc: dict[str, Any]) -> Catalog:
    """A parsed ``instances.yaml`` as a :class:`Catalog` (a bad row fails naming it)."""
    gpus = {k: Gpu(name=v["name"], architecture=v["architecture"],
                   compute_capability=str(v["compute_capability"]), memory_gib=int(v["memory_gib"]))
            for k, v in (doc.get("gpus") or {}).items()}
    checked = doc.get("prices_checked")
    if not checked:
        raise CatalogError("infra/aws/instances.yaml: prices_checked (the date prices were read) is missing")
    return Catalog(instances={n: _row(n, d, gpus) for n, d in (doc.get("instances") or {}).items()},
                   prices_checked=dt.date.fromisoformat(str(checked)),
                   price_source=str(doc.get("price_source", "")),
                   regions=tuple(doc.get("regions") or ()))


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    """The packaged catalog (read once per process)."""
    text = resources.files("infra.aws").joinpath("instances.yaml").read_text()
    return parse_catalog(yaml.safe_load(text))
