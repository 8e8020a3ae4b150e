"""The ``fleet-build`` flow: one template, many variants, each a verified tarball.

Runs the stages of :mod:`tasks.fleet.stages` in order (the tasks are in
:mod:`tasks.fleet.build`): resolve the fleet's variants (one listing of its model prefix), make
the template's shared work once, skip every variant whose inputs did not change (the fleet
index), verify a few canaries in one long-lived Triton, build the rest in chunks side by side on
the configured task runner (threads or Dask), record the index, report every variant, and
publish what changed when asked. One failing variant does not stop the others; the run ends
Failed naming it.
"""

from prefect import flow

from tasks.fleet.report import advance, counts, raise_failures, report_fleet, start_fleet_progress
from tasks.fleet.stages import all_outcomes, build_rest, fuse_shards, plan_run, record_run, verify_canaries
from tasks.runtime.runner import ConfiguredTaskRunner


@flow(name="fleet-build", log_prints=True, task_runner=ConfiguredTaskRunner())
def fleet_build(fleet: str, output_dir: str | None = None, triton_sample: int = 4,
                all_in_triton: bool = False, publish_to: str | None = None,
                only: list[str] | None = None, changed_uri: str | None = None) -> dict[str, str | int]:
    """Build every variant of ``fleet`` (a name under ``ensembles/fleets`` or a file).

    ``triton_sample`` variants of those that changed are verified in a long-lived Triton
    (``all_in_triton`` loads every one); the others are checked against a verified one and
    with ONNX Runtime (see the README). ``publish_to`` (``file://`` or ``s3://`` prefix)
    uploads what changed. ``only`` (variant names) or ``changed_uri`` (a model file an event
    reported: the variants whose parameters name it) limit the run to those variants.
    Returns the counts and the output folder; raises naming the
    variants that failed, after building and publishing the others.
    """
    run = fuse_shards(plan_run(fleet, output_dir, only, changed_uri))
    progress = start_fleet_progress(run.spec.name, len(run.todo))
    canaries = verify_canaries(run, triton_sample, all_in_triton)
    advance(progress, len(canaries.outcomes), len(run.todo))
    built = build_rest(run, canaries, progress)
    outcomes = all_outcomes(run, canaries, built)
    extra = record_run(run, outcomes, canaries.footprint, publish_to)
    report_fleet(run.spec.name, run.spec.target, outcomes, extra)
    raise_failures(run.spec.name, outcomes)
    return {"fleet": run.spec.name, "output_dir": str(run.out), "variants": len(outcomes),
            **counts(outcomes)}
