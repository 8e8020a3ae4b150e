"""The ``fleet-build`` flow: one template, many variants, each a verified tarball.

Runs the stages of :mod:`tasks.fleet.stages` in order (the tasks are in
:mod:`tasks.fleet.build`): resolve the fleet's variants (one listing of its model prefix), make
the template's shared work once, skip every variant whose inputs did not change (the fleet
index), verify a few canaries in one long-lived Triton, build the rest in chunks side by side on
the configured task runner (threads or Dask), record the index, report every variant, and
publish what changed when asked. One failing variant does not stop the others: the task run
that held it ends Failed, and the flow run ends Failed with a one-line message naming it (a
returned state, not a raised exception: no traceback for an expected outcome).
"""

from typing import cast

from prefect import flow

from flows.common import fleet_run_name, fleet_tags, tagged_run
from tasks.fleet.report import advance, counts, failure_state, report_fleet, start_fleet_progress
from tasks.fleet.stages import (all_outcomes, build_rest, example_fleet_task, fuse_shards, plan_run,
                                record_run, verify_canaries)
from tasks.runtime.runner import ConfiguredTaskRunner


@flow(name="fleet-build", log_prints=True, task_runner=ConfiguredTaskRunner(),
      flow_run_name=fleet_run_name)
def fleet_build(fleet: str, output_dir: str | None = None, triton_sample: int = 4,
                all_in_triton: bool = False, publish_to: str | None = None,
                only: list[str] | None = None, changed_uri: str | None = None,
                example_tenants: int = 0) -> dict[str, str | int]:
    """Build every changed variant of a fleet, verify them, and publish what changed when asked.

    Returns the counts and the output folder. When variants failed, the others are still built
    (and published), and the run ends Failed naming them (calling the flow raises
    ``FleetBuildFailed``).

    Args:
        fleet (str): A fleet name under ensembles/fleets (e.g. tenants-example) or a fleet file.
        output_dir (str | None): Where the tarballs, manifests and fleet index go (default: the fleet's
            folder under the artifacts dir, where fleet-deploy looks).
        triton_sample (int): How many of the changed variants are verified in a long-lived Triton
            (canaries); the others are checked against a verified one with ONNX Runtime.
        all_in_triton (bool): Verify every changed variant in Triton (slower; no sampling).
        publish_to (str | None): A file:// or s3:// prefix to upload what changed to (empty: do not
            publish; fleet-deploy publishes to the endpoint's store by itself).
        only (list[str] | None): Build these variants only (names); the others keep their last build.
        changed_uri (str | None): A model file an event reported: build only the variants whose
            parameters name it.
        example_tenants (int): When the fleet uses the example template and its model prefix holds
            no model yet, write this many example tenants there first (0: never).
    """
    labels = fleet_tags(fleet)
    with tagged_run(labels):
        if example_tenants:
            example_fleet_task(fleet, example_tenants)
        run = fuse_shards(plan_run(fleet, output_dir, only, changed_uri))
        progress = start_fleet_progress(run.spec.name, run.spec.target, len(run.todo))
        canaries = verify_canaries(run, triton_sample, all_in_triton)
        advance(progress, len(canaries.outcomes), len(run.todo))
        built = build_rest(run, canaries, progress)
        outcomes = all_outcomes(run, canaries, built)
        extra = record_run(run, outcomes, canaries.footprint, publish_to)
        report_fleet(run.spec.name, run.spec.target, outcomes, extra)
    failed = failure_state(run.spec.name, outcomes)
    if failed is not None:
        # the engine makes a returned state the run's; calling the flow raises its data
        return cast(dict[str, str | int], failed)
    return {"fleet": run.spec.name, "output_dir": str(run.out), "variants": len(outcomes),
            **counts(outcomes)}
