"""The stages of a fleet build, in the order the ``fleet-build`` flow runs them.

Why a module of its own: the flow should read as one story (plan the run, verify canaries,
build the rest, record and publish, report), and the loops and decisions behind each step
belong with the fleet tasks they call, not in the flow. Each stage calls down only
(tasks.fleet -> tasks.build/producers -> ensembles -> infra); the Prefect tasks it runs keep
their names (``resolve-fleet``, ``prepare-template``, ``verify-canaries``, ``build-variants``,
``publish-fleet``). A task that held a failed variant ends Failed and still hands back every
outcome (:func:`tasks.fleet.build.ended`): its caller reads them with :func:`outcome_of`, so the
flow goes on with the other variants.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Failed, State
from prefect.utilities.annotations import quote

from ensembles.fleet_spec import FleetSpec, Resolved, Variant, check_fleet_layout, load_fleet, resolve_variants
from infra.processes.ownership import owner
from tasks.fleet.build import (
    FleetIndex,
    fleet_build_dir,
    Held,
    TemplateFootprint,
    VariantOutcome,
    build_canaries_task,
    build_chunk_task,
    chunk_size,
    chunked,
    ended,
    load_index,
    pick_canaries,
    plan_builds,
    prepare_template_task,
    select_variants,
    skipped,
    write_index,
)
from tasks.fleet.check import SharedReference, Structure
from tasks.fleet.fused import FusedBuild
from tasks.fleet.publish import publish_fleet_task
from tasks.fleet.report import FleetPublishFailed, advance
from tasks.fleet.variant import FleetTemplate
from tasks.runtime.run_context import run_logger
from tasks.runtime.runner import max_workers_from_env


#: Rounds of canaries tried before the rest of the variants are given up (a broken template
#: fails every canary: trying all thousand variants in Triton would only say so slowly).
CANARY_ROUNDS = 3


@task(name="resolve-fleet", cache_policy=NO_CACHE, task_run_name="resolve-fleet: {fleet}")
def resolve_fleet_task(fleet: str) -> tuple[FleetSpec, Resolved]:
    """The fleet file and its variants (one listing of a prefix; problems per variant, each a
    WARNING line here, and the task run ends Failed holding the result when there are any)."""
    spec = load_fleet(fleet)
    resolved = resolve_variants(spec)
    for name, reason in resolved.problems:
        run_logger().warning("variant %s FAILED (fleet file %s): %s", name, fleet, reason)
    if not resolved.problems:
        return spec, resolved
    total = len(resolved.problems) + len(resolved.variants)
    # cast: a returned state becomes the task run's; its caller reads the tuple (outcome_of)
    return cast(tuple[FleetSpec, Resolved], Failed(
        message=f"{len(resolved.problems)} of {total} variants could not be resolved",
        data=(spec, resolved)))


def outcome_of(got: State[Any] | PrefectFuture[Any]) -> Any:
    """A variant task's result whether it completed or ended Failed holding its outcomes
    (:func:`tasks.fleet.build.ended`, a :class:`~tasks.fleet.build.Held`); a task that failed
    otherwise (a bug, a crash) raises."""
    if isinstance(got, PrefectFuture):
        got.wait()
    state = got.state if isinstance(got, PrefectFuture) else got
    value = state.result(raise_on_failure=False)
    if isinstance(value, BaseException):
        raise value
    return value.value if isinstance(value, Held) else value


@task(name="make-example-fleet", cache_policy=NO_CACHE)
def example_fleet_task(fleet: str, count: int) -> int:
    """Write ``count`` example tenants under the fleet's model prefix when the fleet is built
    from the example's template and its prefix holds no variant yet (a fresh machine, a new
    ``MME_HOME``), so that the example deployment runs as registered; returns how many were
    written (0: the prefix already held variants, or the fleet is not an example one)."""
    from infra.errors import UserError
    from tasks.fleet.example import TEMPLATE, make_example_fleet

    spec = load_fleet(fleet)
    if count <= 0 or spec.template != TEMPLATE or spec.prefix is None:
        return 0
    try:
        if resolve_variants(spec).variants:
            return 0
    except UserError:  # the prefix does not exist yet
        pass
    made = make_example_fleet(count, spec.prefix.uri)
    run_logger().info("fleet %s: wrote %d example tenants under %s (its prefix was empty)",
                      spec.name, len(made.tenants), spec.prefix.uri)
    return len(made.tenants)


@dataclass(frozen=True)
class FleetRun:
    """What one run works on, decided before anything is built: the fleet and its variants,
    where tarballs go (``out``) and are staged (``work``), the template and its shared
    reference input, the index read, and the variants to build now, unchanged, or left for
    a later run."""

    spec: FleetSpec
    resolved: Resolved
    out: Path
    work: Path
    template: FleetTemplate
    shared: SharedReference | None
    index: FleetIndex
    todo: list[Variant]
    unchanged: list[VariantOutcome]
    later: list[Variant]
    fused: FusedBuild | None = None  # a fused fleet's shards and tenants (None: separate)


@dataclass(frozen=True)
class Canaries:
    """The canary rounds' result: their outcomes, the structure of the first that passed
    Triton (what the rest is checked against; None when none passed), the variants still to
    build, and the footprint measured on the canary that passed (every variant records it)."""

    outcomes: list[VariantOutcome]
    structure: Structure | None
    remaining: list[Variant]
    footprint: TemplateFootprint


def plan_run(fleet: str, output_dir: str | None, only: list[str] | None,
             changed_uri: str | None) -> FleetRun:
    """Resolve the fleet, make the template's shared work once, and split its variants by
    the fleet index (unchanged ones are not rebuilt) and by ``only`` / ``changed_uri``."""
    spec, resolved = outcome_of(resolve_fleet_task(fleet, return_state=True))
    out = fleet_build_dir(spec, output_dir)
    work = owner().scratch_root()  # under $MME_HOME; swept if this run is killed
    template, shared = prepare_template_task(spec, resolved.variants)
    index = load_index(out, spec.name, spec.target)
    todo, unchanged = plan_builds(template, resolved.variants, index, out)
    todo, later = select_variants(todo, only, changed_uri)
    run_logger().info("fleet %s: %d variants, %d unchanged, %d to build, %d refused", spec.name,
                      len(resolved.variants), len(unchanged), len(todo), len(resolved.problems))
    return FleetRun(spec=spec, resolved=resolved, out=out, work=work, template=template, shared=shared,
                    index=index, todo=todo, unchanged=unchanged, later=later)


@task(name="fuse-shards", cache_policy=NO_CACHE)
def fuse_shards_task(run: FleetRun) -> FusedBuild:
    """The fused part of a fused fleet's build (:func:`tasks.fleet.fused_build.build_fused`).
    A tenant that failed (left out of its shard, its shard failed, its model not fetched) is
    one WARNING line here, and the task run ends Failed holding the whole build
    (:func:`tasks.fleet.build.ended`): the flow goes on with the other tenants."""
    from tasks.fleet.fused_build import build_fused

    check_fleet_layout(run.spec, run.template.spec)
    done = build_fused(run.template, run.shared, run.resolved.variants, run.index, run.out, run.work,
                       run.spec.shard_size, log=run_logger().info)
    return ended(done, done.outcomes, "fused tenants")


def fuse_shards(run: FleetRun) -> FleetRun:
    """For a fused (or auto) layout, fuse what fuses into shards first; the run goes on with
    the variants that could not fuse only (built separately, as a separate fleet's are).
    A fused fleet's shards are rebuilt by content, so ``only`` and ``changed_uri`` narrow the
    separate builds only."""
    if not run.spec.fused:
        return run
    # quote: Prefect does not walk the run (a 1,000-tenant fleet's variants and index) looking
    # for task inputs -- about a second per rebuild; the task gets the run itself, unwrapped
    fused: FusedBuild = outcome_of(fuse_shards_task(cast(FleetRun, quote(run)), return_state=True))
    apart = set(fused.refused)
    run_logger().info("fleet %s: %d tenants fused in %d shards, %d built separately", run.spec.name,
                      sum(1 for o in fused.outcomes if o.status != "failed"), len(fused.shards),
                      len(apart))
    return replace(run, fused=fused, todo=[v for v in run.todo if v.name in apart],
                   unchanged=[o for o in run.unchanged if o.name in apart],
                   later=[v for v in run.later if v.name in apart])


def verify_canaries(run: FleetRun, sample: int, all_in_triton: bool) -> Canaries:
    """Verify canaries in Triton, a round at a time, until one passes (at most
    :data:`CANARY_ROUNDS` rounds; ``all_in_triton``: every variant is a canary)."""
    outcomes: list[VariantOutcome] = []
    structure: Structure | None = None
    footprint = TemplateFootprint(reason="no variant to build in this run")
    remaining = list(run.todo)
    for _ in range(CANARY_ROUNDS):
        if not remaining or (structure is not None and not all_in_triton):
            break
        picked = remaining if all_in_triton else pick_canaries(remaining, sample, run.template.fleet)
        got, found, measured = outcome_of(build_canaries_task(
            run.template, run.shared, picked, run.work, run.out, return_state=True))
        outcomes += got
        footprint = measured if structure is None else footprint
        structure = structure or found
        names = {v.name for v in picked}
        remaining = [v for v in remaining if v.name not in names]
    return Canaries(outcomes=outcomes, structure=structure, remaining=remaining, footprint=footprint)


def build_rest(run: FleetRun, canaries: Canaries, progress: UUID) -> list[VariantOutcome]:
    """Build the variants that are not canaries, in chunks side by side, checked against the
    canary's structure; the progress bar moves as chunks end. No canary passed: every one of
    them fails, saying why (there is nothing to check them against)."""
    if canaries.structure is None:
        return [VariantOutcome(name=v.name, status="failed", file="", target_model=f"{v.name}.tar.gz",
                               reason="not built: no canary of this fleet passed Triton "
                                      "verification (see the failed canaries)")
                for v in canaries.remaining]
    from tasks.fleet.build import variants_progress

    done, total = len(canaries.outcomes), len(run.todo)
    size = chunk_size(len(canaries.remaining), max_workers_from_env())
    said = variants_progress(total, done)  # "variants built n/N, R/s, ~T left" as variants end
    futures = [build_chunk_task.submit(run.template, run.shared, canaries.structure, chunk, run.work,
                                       run.out, canaries.footprint, progress=said.key)
               for chunk in chunked(canaries.remaining, size)]
    outcomes: list[VariantOutcome] = []
    for fut in as_completed(futures):
        chunk = outcome_of(fut)
        said.chunk_ended(chunk)  # a Dask chunk's variants (a threads chunk counted its own)
        outcomes += chunk
        advance(progress, done + len(outcomes), total)
    return outcomes


def all_outcomes(run: FleetRun, canaries: Canaries, built: list[VariantOutcome]) -> list[VariantOutcome]:
    """Every variant's outcome in this run: unchanged, canaries, the rest, the ones left for
    later (skipped), and the ones the fleet file could not resolve (failed, with the reason)."""
    problems = [VariantOutcome(name=name, status="failed", file="", target_model=f"{name}.tar.gz",
                               reason=reason) for name, reason in run.resolved.problems]
    fused = run.fused.outcomes if run.fused else []
    return (run.unchanged + fused + canaries.outcomes + built + skipped(run.later, run.index)
            + problems)


def record_run(run: FleetRun, outcomes: list[VariantOutcome], footprint: TemplateFootprint,
               publish_to: str | None) -> list[str]:
    """Write the fleet index, then publish when asked; returns the report's extra lines
    (output folder, template key, the footprint's note when anything was built, the publish
    line)."""
    write_index(run.out, run.template, run.index, outcomes, run.resolved.variants,
                run.fused.shards if run.fused else {})
    extra = [f"Output: `{run.out}`", f"Template key: `{run.template.key[:12]}`",
             *(run.fused.lines if run.fused else [])]
    if run.todo:
        extra.append(footprint.note())
        run_logger().info("fleet %s: %s", run.spec.name, extra[-1])
    if publish_to:
        extra.append(publish_outcomes(run.out, publish_to, outcomes))
    return extra


def publish_outcomes(out: Path, publish_to: str, outcomes: list[VariantOutcome]) -> str:
    """Upload the current tarball and manifest of every variant that did not fail, under its
    TargetModel name (only what changed moves: the store's index of sha256s says what). A
    fused shard's tenants share one tarball and manifest: each is hashed once, not once per
    tenant (a 1,000-tenant fleet's manifests are MBs each)."""
    from infra.store.sync import LocalObject

    built: dict[str, LocalObject] = {}
    for o in outcomes:
        if o.status == "failed" or not o.sha256 or not o.bytes or o.target_model in built:
            continue
        stem = o.target_model.removesuffix(".tar.gz")
        built[o.target_model] = LocalObject(path=out / o.file, sha256=o.sha256, size=o.bytes)
        built[f"{stem}.manifest.json"] = LocalObject.from_path(
            out / o.file.replace(".tar.gz", ".manifest.json"))
    report = publish_fleet_task(publish_to, "", built)
    if report.failed:
        raise FleetPublishFailed(f"publish to {publish_to}: {len(report.failed)} objects failed: "
                                 + "; ".join(f"{k}: {r}" for k, r in report.failed[:5]))
    return (f"Published to `{publish_to}`: {len(report.uploaded)} uploaded, "
            f"{len(report.skipped)} unchanged, {report.requests} store requests")
