"""What ``fleet-build`` would do, decided read-only (``mme fleet build --dry-run``).

Why here and not in the flow: the flow's first stage (:func:`tasks.fleet.stages.plan_run`)
makes the template's shared artifacts before it can key a single variant; a dry run may not
make anything. So this plan takes the shared artifacts the step cache already holds
(:func:`tasks.producers.cache_plan.plan_artifacts`), keys the template by the build's own
function (:func:`tasks.fleet.build.template_from`) and splits the variants by the build's own
rules (:func:`~tasks.fleet.build.plan_builds`, :func:`~tasks.fleet.build.select_variants`).
When a shared artifact is not cached, the template key is unknown until it is produced: every
variant is then "would build", and the plan names the artifacts that decide it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ensembles.fleet_spec import FleetSpec, Variant, check_fleet_release, load_fleet, load_template, resolve_variants
from tasks.fleet.build import (FleetIndex, fleet_build_dir, load_index, plan_builds, select_variants,
                               template_from)
from tasks.fleet.variant import FleetTemplate, owned_artifacts
from tasks.producers.cache_plan import ArtifactPlan, plan_artifacts
from tasks.producers.produce import artifacts_for


class FleetBuildPlan(BaseModel):
    """A fleet build's plan: where it writes, the template's shared artifacts as the cache
    stands, and the variants it would build, leave unchanged, leave for a later run (not
    asked for), drop from the index (no longer declared: files stay until ``mme fleet gc``),
    or refuse (the fleet file cannot resolve them)."""

    model_config = ConfigDict(frozen=True)
    fleet: str
    target: str
    layout: str
    output_dir: str
    template_key: str | None  # None: a shared artifact must be produced first
    shared: dict[str, str]  # artifact -> cached | produce | after
    build: list[str]
    unchanged: list[str]
    later: list[str]
    dropped: list[str]
    refused: dict[str, str]
    #: a fused (or auto) layout: the shards kept as they are when nothing changed, else the
    #: note that the build fuses its tenants again by content (then they are all in ``build``)
    shards: list[str] = []
    note: str | None = None


def cached_template(fleet: FleetSpec, variants: Sequence[Variant]) -> tuple[FleetTemplate | None,
                                                                          list[ArtifactPlan]]:
    """The template as :func:`tasks.fleet.build.prepare_template` would make it, from the
    cache alone (None when a shared artifact is not there), and each shared artifact's plan."""
    spec, folder = load_template(fleet)
    check_fleet_release(fleet, spec, variants)
    owned = owned_artifacts(spec, {k for v in variants for k in v.params}, fleet.target)
    plans = plan_artifacts(spec, [n for n in artifacts_for(spec, fleet.target) if n not in owned],
                           fleet.target)
    if any(p.status != "cached" for p in plans):
        return None, plans
    shared = {p.name: p.path for p in plans if p.path is not None}
    template = template_from(fleet, spec, folder, owned, shared, {p.name: p.meta for p in plans},
                             {p.name: p.content or "" for p in plans})
    return template, plans


def plan_fleet_build(fleet: str, output_dir: str | None = None, only: Sequence[str] | None = None,
                     changed_uri: str | None = None) -> FleetBuildPlan:
    """The plan of ``fleet_build(fleet, output_dir, only=only, changed_uri=changed_uri)``:
    one listing of the fleet's prefix, the cache's and the fleet index's records read;
    nothing written, no Triton, no Prefect."""
    spec = load_fleet(fleet)
    resolved = resolve_variants(spec)
    out = fleet_build_dir(spec, output_dir)
    template, shared = cached_template(spec, resolved.variants)
    index = load_index(out, spec.name, spec.target)
    todo, kept, shards, note = _split(spec, template, resolved.variants, index, out)
    todo, later = select_variants(todo, only, changed_uri)
    declared = {v.name for v in resolved.variants}
    return FleetBuildPlan(
        fleet=spec.name, target=spec.target, layout=spec.layout, output_dir=str(out),
        template_key=template.key if template else None, shared={p.name: p.status for p in shared},
        build=[v.name for v in todo], unchanged=kept, later=[v.name for v in later],
        dropped=sorted(n for n in index.variants if n not in declared and n not in dict(resolved.problems)),
        refused=dict(resolved.problems), shards=shards, note=note)


def _split(spec: FleetSpec, template: FleetTemplate | None, variants: Sequence[Variant], index: FleetIndex,
           out: Path) -> tuple[list[Variant], list[str], list[str], str | None]:
    """(to build, unchanged, shards kept, note) as the build decides: a fused fleet whose index
    still fits every tenant is unchanged as a whole (:func:`tasks.fleet.fused.unchanged_build`,
    the build's own shortcut), its separately built variants then planned as a separate
    fleet's (:func:`~tasks.fleet.build.plan_builds`); otherwise a fused fleet's tenants are
    fused again by content, which only the build itself can tell apart."""
    if template is None:
        return list(variants), [], [], None
    shards: list[str] = []
    if spec.fused:
        from tasks.fleet.fused import unchanged_build

        quick = unchanged_build(template, variants, index, out)
        if quick is None:
            return list(variants), [], [], ("fused layout: the tenants' inputs or the template changed "
                                            "since the index; the build fuses them again by content "
                                            "(unchanged tenants keep their bytes)")
        shards = sorted(quick.shards)
        apart = set(quick.refused)
        fused_kept = [o.name for o in quick.outcomes]
        variants = [v for v in variants if v.name in apart]
    else:
        fused_kept = []
    todo, unchanged = plan_builds(template, variants, index, out)
    return todo, sorted(fused_kept + [o.name for o in unchanged]), shards, None
