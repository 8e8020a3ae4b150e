"""The ``build`` flow: ensemble specs -> verified, content-hashed Triton tarballs.

For each ensemble: load and validate the spec (a miswired spec stops here, before any work),
produce its artifacts (fetch the model, export ONNX, tokenizer files...), render the model
repository for the target, pack it deterministically, verify the packed tarball in a real
Triton against the framework reference, and only then publish it with its manifest. The steps
are tasks in ``tasks/`` (:mod:`tasks.build.ensemble` strings them together).

Unchanged inputs skip their step (:mod:`tasks.producers.cache`): a rebuild with nothing changed exports,
compiles and verifies nothing, and the UI shows those steps as *Cached*.

Ensembles build in parallel, one ``build-ensemble`` task each, on the task runner that
``MME_TASK_RUNNER`` names when the flow run starts (:mod:`tasks.runtime.runner`: ``threads`` by
default, or ``dask``). Each run leaves the ``build-summary`` table, the ``build-report``
markdown, a link per tarball and a ``build-progress`` bar (:mod:`tasks.build.report`), and an asset
per tarball with its source models upstream (:mod:`tasks.build.lineage`). The flow says
``ensembles built n/N, R/s, ~T left`` as each ensemble's task ends, from the futures it holds,
so a build on Dask workers (whose tasks log in other processes) says it too.
"""


from pathlib import Path
from typing import Literal

from prefect import flow
from prefect.futures import PrefectFuture, as_completed

from ensembles.catalog import ensemble_dir, load_ensemble
from ensembles.spec import SpecError, Target
from infra.records.manifest import Manifest
from infra.processes.ownership import owner
from tasks.build.ensemble import (
    build_ensemble_task,
    build_output_dir,
    check_overrides,
    outcomes_of,
    raise_first_failure,
)
from tasks.build.report import advance_progress, report_build, start_progress
from tasks.fleet.progress import Progress
from tasks.runtime.run_context import run_logger
from tasks.runtime.runner import ConfiguredTaskRunner


def _submit(name: str, target: Target, out: Path, work_root: Path,
            overrides: dict[str, str] | None, profile: bool) -> PrefectFuture[Manifest] | SpecError:
    """Start one ensemble's build; an unknown name fails that ensemble only."""
    try:
        folder = ensemble_dir(name)
    except SpecError as e:
        return e
    return build_ensemble_task.submit(folder, target, out, work_root, overrides, profile)


@flow(name="build", log_prints=True, task_runner=ConfiguredTaskRunner())
def build(ensembles: list[str] | None = None,
          target: Literal["local-cpu", "sagemaker-gpu"] = "local-cpu",
          output_dir: str | None = None,
          overrides: dict[str, str] | None = None, profile: bool = False) -> list[Manifest]:
    """Build, verify and package ensembles from the catalog (or folders) for one target.

    ``overrides`` replaces artifact parameters (``{"<artifact>.<param>": value}``), e.g. where
    a source model file comes from. Ensembles build in parallel on the configured task runner;
    when one fails the others still finish (and are published), then its error is raised.
    ``profile`` also measures each tarball's footprint in a real Triton (``manifest.footprint``:
    memory, load, unload and service times, for ``mme plan``). Returns the manifests without
    their validation sample (it is in the manifest files).
    """
    names = list(dict.fromkeys(ensembles or ["text_embedding"]))
    out = build_output_dir(target, output_dir)
    work_root = owner().scratch_root()  # under $MME_HOME; swept if this run is killed
    if overrides:
        check_overrides([load_ensemble(name)[0] for name in names], overrides)
    progress = start_progress(names, target)
    submitted = {name: _submit(name, target, out, work_root, overrides, profile) for name in names}
    running = {f.task_run_id: name for name, f in submitted.items() if isinstance(f, PrefectFuture)}
    said = Progress("ensembles built", len(running), emit=run_logger().info)
    for done, fut in enumerate(as_completed([f for f in submitted.values()
                                             if isinstance(f, PrefectFuture)]), start=1):
        fut.wait()  # its final state held (a Dask future's state read from the API may lag)
        # recorded here, whatever the runner, once each (its error is said by its task)
        said.record(running[fut.task_run_id], None if fut.state.is_completed() else "failed")
        advance_progress(progress, done, len(running))
    outcomes = outcomes_of(submitted)
    report_build(outcomes, names, target)
    raise_first_failure(outcomes)
    return [m.without_sample() for _, m, _ in outcomes if m is not None]
