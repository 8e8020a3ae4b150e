"""The spec and render steps of a build as Prefect tasks: ``load-spec`` reads and validates an
ensemble's ``ensemble.yaml`` (a miswired spec stops here, before any work), ``render-repository``
writes its Triton model repository (:func:`ensembles.render.render_repository`).

The catalog lookup (a name -> its folder) is the flow's: ``tasks/`` imports no catalog entry.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from ensembles.render import render_repository
from ensembles.spec import EnsembleSpec, Target, load_spec


@task(name="load-spec", cache_policy=NO_CACHE)
def load_spec_task(folder: Path) -> EnsembleSpec:
    """The validated spec in ``folder/ensemble.yaml``."""
    return load_spec(Path(folder) / "ensemble.yaml")


@task(name="render-repository", cache_policy=NO_CACHE)
def render_task(spec: EnsembleSpec, target: Target, out: Path, folder: Path,
                artifacts: dict[str, Path]) -> Path:
    return render_repository(spec, target, out, catalog_dir=folder, artifacts=artifacts)
