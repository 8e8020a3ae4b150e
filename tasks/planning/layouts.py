"""A fleet's layouts as the planner sees them, and the comparison between them (issue 20).

Why a module of its own: a fused fleet's endpoint loads *shards* (one model serving all its
tenants: a request for any tenant of a loaded shard is a hit), a separate fleet's loads one
model per variant, and the traffic is over variants either way. So a layout is a set of models
(:class:`ModelSet`: their footprints and which one serves each variant); the traffic of a model
is the sum of its variants' rates (independent Poisson streams add up exactly), and the search
(:mod:`tasks.planning.search`) runs on the models unchanged. When the fleet can be planned both
ways (its index says which variants fuse, and a separately built variant's footprint is known),
:func:`plan_layouts` plans each and keeps the cheaper that meets the goal (``--layout auto``),
saying which and why.

Where the footprints come from:

- a fleet build folder with fused shards (``fleet-index.json`` lists ``shards``): each shard's
  manifest (its footprint measured on the shard at build), each separately built variant's own;
  the separate alternative gives every fused tenant the footprint of ``--footprint-from
  MANIFEST`` (a variant built separately), else of a variant of this folder that was built
  separately (the same template); with neither, nothing is compared and the output says why;
- a synthetic fleet (``--variants N``): ``--footprint-from`` is each variant's footprint when
  built separately, ``--fused-footprint-from`` a shard's, with the shard's own tenant count as
  the shard size (N tenants in ceil(N / size) shards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from infra.errors import UserError
from infra.records.manifest import MANIFEST_SUFFIX, load_manifest
from tasks.build.footprints import Footprint, from_manifest
from tasks.fleet.build import INDEX_FILE, FleetIndex
from tasks.planning.catalog import InstanceType
from tasks.planning.inputs import FleetInputError, fleet_from_dir, synthetic_fleet
from tasks.planning.search import (Goal, LayoutRequest, PlanRefused, PlanResult, PlanResultError, SearchOptions,
                                   fleet_arrays, make_plan, per_variant_baseline)
from tasks.planning.traffic import Traffic

Layout = Literal["separate", "fused"]
LAYOUT_REQUESTS: tuple[LayoutRequest, ...] = ("auto", "separate", "fused")


class LayoutError(UserError, ValueError):
    """A layout asked for that the fleet cannot be planned as: the message says why."""


def as_layout(text: str) -> LayoutRequest:
    """``--layout``'s value, checked (one line naming the choices when it is none of them)."""
    for choice in LAYOUT_REQUESTS:
        if text == choice:
            return choice
    raise LayoutError(f"--layout {text!r}: expected one of {', '.join(LAYOUT_REQUESTS)}")


@dataclass(frozen=True)
class ModelSet:
    """One layout of the fleet: the models an endpoint loads (footprints), which one serves
    each variant (``model_of[i]``: an index into ``footprints``, in the fleet's variant order),
    and a line saying where the footprints came from."""

    layout: Layout
    footprints: list[Footprint]
    model_of: list[int]
    note: str

    @property
    def names(self) -> list[str]:
        return [fp.target_model.removesuffix(".tar.gz") for fp in self.footprints]


@dataclass(frozen=True)
class PlanFleet:
    """What a plan is made for: the variants (what the traffic is over), the layouts it can be
    planned as (the one built first), how many stale manifests were skipped, and why no other
    layout is compared (None when one is)."""

    variants: list[str]
    layouts: dict[Layout, ModelSet]
    stale: int
    no_comparison: str | None = None

    @property
    def built(self) -> ModelSet:
        return next(iter(self.layouts.values()))


@dataclass(frozen=True)
class LayoutPlan:
    """The plan of the layout chosen, its models and their traffic (what the report and the
    charts read), the monthly cost of every layout planned (None: refused, with why in
    ``lines``), and the lines that say which layout was chosen and why."""

    layout: Layout
    models: ModelSet
    traffic: Traffic
    result: PlanResult
    costs: dict[Layout, float | None]
    lines: list[str]


# ------------------------------------------------------------------------------ reading


def _separate(variants: list[str], fps: list[Footprint], note: str) -> ModelSet:
    return ModelSet("separate", fps, list(range(len(variants))), note)


def _renamed(fp: Footprint, name: str) -> Footprint:
    return fp.model_copy(update={"target_model": f"{name}.tar.gz"})


def _tagged(path: Path, gpu: bool | None) -> Footprint:
    manifest = load_manifest(path)
    template = (manifest.fleet or {}).get("template") or manifest.ensemble
    return from_manifest(manifest, gpu).model_copy(update={"template": str(template)})


def _read_index(folder: Path) -> FleetIndex | None:
    path = folder / INDEX_FILE
    try:
        return FleetIndex.read(path.read_text(), str(path))
    except (OSError, ValueError):
        return None  # no index (or an unreadable one: fleet_from_dir refused it already)


def fused_folder(path: Path, separate_from: Path | None, gpu: bool | None) -> PlanFleet | None:
    """A fleet build folder with fused shards as both layouts (or only the fused one, saying
    why); None when ``path`` is not such a folder."""
    index = _read_index(path) if path.is_dir() else None
    if index is None or not index.shards:
        return None
    stem = {n: e.file.removesuffix(".tar.gz") for n, e in index.variants.items()}
    on_disk = {s for s in set(stem.values()) if (path / f"{s}{MANIFEST_SUFFIX}").exists()}
    variants = sorted(n for n in index.variants if stem[n] in on_disk)
    if not variants:
        raise FleetInputError(f"{path}: its fleet index lists no variant whose manifest is there: "
                              f"build the fleet again (`mme fleet build`)")
    models = sorted({stem[n] for n in variants})
    fps = {s: _tagged(path / f"{s}{MANIFEST_SUFFIX}", gpu) for s in models}
    shards = sum(1 for s in models if s in index.shards)
    fused = ModelSet("fused", [fps[s] for s in models], [models.index(stem[n]) for n in variants],
                     f"{len(variants)} variants: {len(variants) - len(models) + shards} tenants in "
                     f"{shards} fused shards (footprints from the shards' manifests), "
                     f"{len(models) - shards} built separately")
    apart = [n for n in variants if index.variants[n].layout == "separate"]
    sep_fp = (_tagged(separate_from, gpu) if separate_from is not None else
              fps[stem[apart[0]]] if apart else None)
    stale = len(list(path.rglob(f"*{MANIFEST_SUFFIX}"))) - len(models)
    if sep_fp is None:
        return PlanFleet(variants, {"fused": fused}, stale,
                         "no footprint of a variant built separately to compare with: give "
                         "--footprint-from MANIFEST (a variant of this template built separately)")
    where = str(separate_from) if separate_from is not None else f"{apart[0]}'s manifest"
    separate = _separate(variants, [fps[stem[n]] if n in apart else _renamed(sep_fp, n) for n in variants],
                         f"{len(variants)} variants, one model each (a fused tenant's footprint: {where})")
    return PlanFleet(variants, {"fused": fused, "separate": separate}, stale)


def synthetic_layouts(n: int, separate_from: Path | None, fused_from: Path | None,
                      gpu: bool | None) -> PlanFleet:
    """``n`` synthetic variants: separately (each with ``separate_from``'s footprint) and/or
    fused (shards of the ``fused_from`` shard's tenant count, each with its footprint)."""
    if separate_from is None and fused_from is None:
        raise FleetInputError("--variants N needs --footprint-from MANIFEST (whose footprint each copy has) "
                              "or --fused-footprint-from SHARD_MANIFEST")
    layouts: dict[Layout, ModelSet] = {}
    if separate_from is not None:
        names, fps, _ = synthetic_fleet(n, separate_from, gpu)
        layouts["separate"] = _separate(names, fps, f"{n} variants, one model each ({separate_from})")
    else:
        if n < 1:
            raise FleetInputError(f"--variants {n}: must be >= 1")
        names = [f"tenant-v{i:05d}" for i in range(1, n + 1)]
    if fused_from is not None:
        layouts["fused"] = synthetic_shards(names, fused_from, gpu)
    return PlanFleet(names, layouts, 0, None if len(layouts) == 2 else
                     "one layout's footprint given (--footprint-from: separate, "
                     "--fused-footprint-from: fused); give both to compare")


def synthetic_shards(names: list[str], shard_manifest: Path, gpu: bool | None) -> ModelSet:
    """``names`` in shards of the measured shard's tenant count (its manifest's
    ``fleet.tenants``), in order, each shard with that shard's footprint."""
    manifest = load_manifest(shard_manifest)
    fleet = manifest.fleet or {}
    if fleet.get("layout") != "fused":
        raise FleetInputError(f"--fused-footprint-from {shard_manifest}: not a fused shard's manifest "
                              f"(its fleet.layout is {fleet.get('layout')!r}): give a shard's, "
                              f"<fleet>-shard-000.manifest.json")
    size = max(1, int(fleet.get("tenants") or len(names)))
    fp = _tagged(shard_manifest, gpu)
    stem = fp.target_model.removesuffix(".tar.gz").rsplit("-", 1)[0]
    count = math.ceil(len(names) / size)
    return ModelSet("fused", [_renamed(fp, f"{stem}-{k:03d}") for k in range(count)],
                    [i // size for i in range(len(names))],
                    f"{len(names)} tenants in {count} shards of {size} ({shard_manifest})")


def read_fleet(path: Path | None, variants: int | None, separate_from: Path | None,
               fused_from: Path | None, gpu: bool | None) -> PlanFleet:
    """The fleet to plan, with every layout it can be planned as (see the module's doc)."""
    if variants is not None:
        return synthetic_layouts(variants, separate_from, fused_from, gpu)
    assert path is not None
    fused = fused_folder(Path(path), separate_from, gpu)
    if fused is not None:
        return fused
    names, fps, stale = fleet_from_dir(Path(path), gpu)
    return PlanFleet(names, {"separate": _separate(names, fps, f"{len(names)} variants, one model each")},
                     stale, "the fleet index records no fused tenants (build with `layout: fused` to "
                            "compare)")


# ------------------------------------------------------------------------------ comparing


def model_traffic(traffic: Traffic, models: ModelSet) -> Traffic:
    """The traffic per model: a model's rate is the sum of the rates of the variants it serves."""
    rates = np.bincount(np.asarray(models.model_of, dtype=np.int64), weights=traffic.rates,
                        minlength=len(models.footprints))
    return Traffic(models.names, rates, traffic.peak_factor,
                   traffic.source if models.layout == "separate" else f"{traffic.source}, summed per shard")


def _chosen(request: LayoutRequest, fleet: PlanFleet) -> list[Layout]:
    if request == "auto":
        return list(fleet.layouts)
    if request not in fleet.layouts:
        raise LayoutError(f"--layout {request}: this fleet cannot be planned {request}: "
                          f"{fleet.no_comparison or 'no footprint for it'}")
    return [request]


def plan_layouts(types: list[InstanceType], fleet: PlanFleet, traffic: Traffic, goal: Goal, region: str,
                 options: SearchOptions) -> LayoutPlan:
    """Plan every layout ``options.layout`` asks for (``auto``: each the fleet can be planned as) and keep the
    cheapest that meets the goal; a layout's refusal is kept as its reason. Every layout refused:
    the built layout's refusal is raised. The plan's baseline is one endpoint per *variant*
    (the separate layout's) whenever that layout is known."""
    plans: dict[Layout, tuple[PlanResult, Traffic]] = {}
    refused: dict[Layout, PlanRefused] = {}
    request = options.layout
    for layout in _chosen(request, fleet):
        models = fleet.layouts[layout]
        per_model = model_traffic(traffic, models)
        try:
            plans[layout] = (make_plan(types, models.footprints, per_model, goal, region, options), per_model)
        except PlanRefused as e:
            refused[layout] = e
    if not plans:
        raise next(iter(refused.values()))
    layout = min(plans, key=lambda k: plans[k][0].chosen.candidate.hourly_usd)
    result, per_model = plans[layout]
    if "separate" in fleet.layouts and layout != "separate":
        sep = fleet.layouts["separate"]
        try:
            result.baseline = per_variant_baseline(types, fleet_arrays(sep.footprints),
                                                   model_traffic(traffic, sep), region, options)
        except PlanResultError:
            pass  # a separate variant fits no type: the baseline stays per shard
    costs: dict[Layout, float | None] = {k: plans[k][0].chosen.candidate.monthly_usd if k in plans else None
                                         for k in (*plans, *refused)}
    return LayoutPlan(layout, fleet.layouts[layout], per_model, result, costs,
                      layout_lines(request, fleet, layout, plans, refused))


def layout_lines(request: LayoutRequest, fleet: PlanFleet, layout: Layout,
                 plans: dict[Layout, tuple[PlanResult, Traffic]], refused: dict[Layout, PlanRefused]) -> list[str]:
    """Which layout the plan is for and why, each layout's plan and cost (or refusal), and
    where each layout's footprints came from."""
    how = ("--layout auto: the cheaper layout that meets the goal" if request == "auto" and len(fleet.layouts) > 1
           else f"--layout {request}" if request != "auto" else f"the only layout known ({fleet.no_comparison})")
    lines = [f"layout: {layout} ({how})"]
    for k in fleet.layouts:
        if k in plans:
            c = plans[k][0].chosen.candidate
            lines.append(f"  {k}: {c.label()}, USD {c.monthly_usd:,.0f}/month; {fleet.layouts[k].note}")
        elif k in refused:
            lines.append(f"  {k}: refused: {str(refused[k]).splitlines()[0]}; {fleet.layouts[k].note}")
    if len(plans) == 2:
        cost = {k: plans[k][0].chosen.candidate.monthly_usd for k in plans}
        other: Layout = "separate" if layout == "fused" else "fused"
        ratio = cost[other] / cost[layout] if cost[layout] else math.inf
        lines.append(f"  {layout} is {ratio:,.1f}x cheaper than {other} at the same goal")
    return lines
