"""The ``fleet-build`` flow: one template, many variants, each a verified tarball.

Composes the tasks of :mod:`tasks.fleet.build`: resolve the fleet's variants (one listing of
its model prefix), make the template's shared work once, skip every variant whose inputs did
not change (the fleet index), verify a few canaries in one long-lived Triton, build the rest in
chunks side by side on the configured task runner (threads or Dask), record the index, report
every variant, and publish what changed when asked. One failing variant does not stop the
others; the run ends Failed naming it.
"""


from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from ensembles.fleet_spec import FleetSpec, Resolved, Variant, load_fleet, resolve_variants
from infra import paths
from infra.processes.ownership import owner
from tasks.fleet.build import (
    FleetIndex,
    TemplateFootprint,
    VariantOutcome,
    build_canaries_task,
    build_chunk_task,
    chunk_size,
    chunked,
    load_index,
    pick_canaries,
    plan_builds,
    prepare_template_task,
    select_variants,
    skipped,
    write_index,
)
from tasks.fleet.publish import publish_fleet_task
from tasks.fleet.report import (
    FleetPublishFailed,
    advance,
    counts,
    raise_failures,
    report_fleet,
    start_fleet_progress,
)
from tasks.runtime.run_context import run_logger
from tasks.runtime.runner import ConfiguredTaskRunner, max_workers_from_env

#: Rounds of canaries tried before the rest of the variants are given up (a broken template
#: fails every canary: trying all thousand variants in Triton would only say so slowly).
CANARY_ROUNDS = 3


@task(name="resolve-fleet", cache_policy=NO_CACHE)
def resolve_fleet_task(fleet: str) -> tuple[FleetSpec, Resolved]:
    """The fleet file and its variants (one listing of a prefix; problems per variant)."""
    spec = load_fleet(fleet)
    return spec, resolve_variants(spec)


def _problem_outcomes(problems: list[tuple[str, str]]) -> list[VariantOutcome]:
    return [VariantOutcome(name=name, status="failed", file="", target_model=f"{name}.tar.gz",
                           reason=reason) for name, reason in problems]


def _canaries(template: Any, shared: Any, todo: list[Variant], sample: int, all_in_triton: bool,
              work: Path, out: Path) -> tuple[list[VariantOutcome], Any, list[Variant], TemplateFootprint]:
    """Verify canaries in Triton until one passes; returns their outcomes, the structure
    the rest is checked against, the variants still to build, and the footprint measured on
    the canary that passed (every variant records it)."""
    outcomes: list[VariantOutcome] = []
    structure = None
    footprint = TemplateFootprint(reason="no variant to build in this run")
    remaining = list(todo)
    for _ in range(CANARY_ROUNDS):
        if not remaining or (structure is not None and not all_in_triton):
            break
        picked = remaining if all_in_triton else pick_canaries(remaining, sample, template.fleet)
        got, found, measured = build_canaries_task(template, shared, picked, work, out)
        outcomes += got
        footprint = measured if structure is None else footprint
        structure = structure or found
        names = {v.name for v in picked}
        remaining = [v for v in remaining if v.name not in names]
    return outcomes, structure, remaining, footprint


def _rest(template: Any, shared: Any, checked: tuple[Any, TemplateFootprint], remaining: list[Variant],
          dirs: tuple[Path, Path], progress: tuple[Any, int, int]) -> list[VariantOutcome]:
    """Build the variants that are not canaries, in chunks side by side. ``dirs``: (work,
    output); ``progress``: (bar, variants done before, variants to build in all); ``checked``:
    (the canary's structure, its footprint)."""
    structure, footprint = checked
    if structure is None:  # no canary passed Triton: nothing to check the rest against
        return [VariantOutcome(name=v.name, status="failed", file="", target_model=f"{v.name}.tar.gz",
                               reason="not built: no canary of this fleet passed Triton "
                                      "verification (see the failed canaries)")
                for v in remaining]
    bar, done, total = progress
    size = chunk_size(len(remaining), max_workers_from_env())
    futures = [build_chunk_task.submit(template, shared, structure, chunk, *dirs, footprint)
               for chunk in chunked(remaining, size)]
    outcomes: list[VariantOutcome] = []
    for fut in as_completed(futures):
        outcomes += fut.result()
        advance(bar, done + len(outcomes), total)
    return outcomes


@flow(name="fleet-build", log_prints=True, task_runner=ConfiguredTaskRunner())
def fleet_build(fleet: str, output_dir: str | None = None, triton_sample: int = 4,
                all_in_triton: bool = False, publish_to: str | None = None,
                only: list[str] | None = None, changed_uri: str | None = None) -> dict[str, Any]:
    """Build every variant of ``fleet`` (a name under ``ensembles/fleets`` or a file).

    ``triton_sample`` variants of those that changed are verified in a long-lived Triton
    (``all_in_triton`` loads every one); the others are checked against a verified one and
    with ONNX Runtime (see the README). ``publish_to`` (``file://`` or ``s3://`` prefix)
    uploads what changed. ``only`` (variant names) or ``changed_uri`` (a model file an event
    reported: the variants whose parameters name it) limit the run to those variants.
    Returns the counts and the output folder; raises naming the
    variants that failed, after building and publishing the others.
    """
    spec, resolved = resolve_fleet_task(fleet)
    out = (Path(output_dir).expanduser().resolve() if output_dir
           else paths.artifacts_dir(spec.target) / "fleets" / spec.name)
    work = owner().scratch_root()  # under $MME_HOME; swept if this run is killed
    template, shared = prepare_template_task(spec, resolved.variants)
    index: FleetIndex = load_index(out, spec.name, spec.target)
    todo, unchanged = plan_builds(template, resolved.variants, index, out)
    todo, later = select_variants(todo, only, changed_uri)
    log = run_logger()
    log.info("fleet %s: %d variants, %d unchanged, %d to build, %d refused", spec.name,
             len(resolved.variants), len(unchanged), len(todo), len(resolved.problems))
    progress = start_fleet_progress(spec.name, len(todo))
    canary, structure, remaining, footprint = _canaries(template, shared, todo, triton_sample,
                                             all_in_triton, work, out)
    advance(progress, len(canary), len(todo))
    built = _rest(template, shared, (structure, footprint), remaining, (work, out),
                  (progress, len(canary), len(todo)))
    outcomes = (unchanged + canary + built + skipped(later, index)
                + _problem_outcomes(resolved.problems))
    write_index(out, template, index, outcomes, resolved.variants)
    extra = [f"Output: `{out}`", f"Template key: `{template.key[:12]}`"]
    if todo:
        extra.append(footprint.note())
        log.info("fleet %s: %s", spec.name, extra[-1])
    if publish_to:
        extra.append(_publish(out, publish_to, outcomes))
    report_fleet(spec.name, spec.target, outcomes, extra)
    raise_failures(spec.name, outcomes)
    return {"fleet": spec.name, "output_dir": str(out), "variants": len(outcomes),
            **counts(outcomes)}


def _publish(out: Path, publish_to: str, outcomes: list[VariantOutcome]) -> str:
    """Upload the current tarball and manifest of every variant that did not fail, under its
    TargetModel name (only what changed moves: the store's index of sha256s says what)."""
    from infra.store.sync import LocalObject

    built: dict[str, LocalObject] = {}
    for o in outcomes:
        if o.status == "failed" or not o.sha256 or not o.bytes:
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
