"""What the ``build`` flow would do for one ensemble, decided read-only (``mme build --dry-run``).

Why: a build's expensive steps (export, compile, verify) are skipped on unchanged inputs by the
step cache; a dry run says which ones would run, and whether the tarball already written is
what the build would write again, without producing, packing or verifying anything. Its parts
are the build's own: the spec with ``--set`` applied (:func:`tasks.build.ensemble.for_target`),
the artifacts the target needs (:func:`tasks.producers.produce.artifacts_for`) as the cache holds
them (:func:`tasks.producers.cache_plan.plan_artifacts`), and the manifest beside the tarball.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ensembles.spec import Target, load_spec
from infra.errors import MMEError
from infra.records.manifest import Manifest, load_manifest
from tasks.build.ensemble import TOOL_VERSION, for_target, spec_digest
from tasks.build.package import artifact_name, manifest_path
from tasks.producers.cache_plan import plan_artifacts
from tasks.producers.produce import artifacts_for

#: up to date: every artifact cached and the manifest at the output names the same artifact keys,
#: spec and tool (the build would write the same tarball again); build: some step would run
BuildStatus = Literal["up to date", "build"]


class EnsembleBuildPlan(BaseModel):
    """One ensemble's build plan: where its tarball and manifest go, each artifact's status
    (``cached``, ``produce``, ``after``) and whether the whole build is up to date."""

    model_config = ConfigDict(frozen=True)
    ensemble: str
    target: str
    tarball: str
    manifest: str
    status: BuildStatus
    reason: str
    artifacts: dict[str, str]


def _existing(path: Path) -> Manifest | None:
    """The manifest at ``path``, or None (absent or unreadable: the build writes a new one)."""
    try:
        return load_manifest(path)
    except (OSError, ValueError, MMEError):
        return None


def plan_ensemble_build(folder: Path, target: Target, output_dir: Path,
                        overrides: Mapping[str, str] | None = None) -> EnsembleBuildPlan:
    """The plan of building the ensemble in ``folder`` for ``target`` into ``output_dir`` (as
    :func:`tasks.build.ensemble.build_ensemble` would): reads the spec, the step cache and the
    manifest there; writes nothing."""
    spec = for_target(load_spec(folder / "ensemble.yaml"), target, overrides)
    plans = plan_artifacts(spec, artifacts_for(spec, target), target)
    tarball, manifest_file = output_dir / artifact_name(spec.name), manifest_path(output_dir, spec.name)
    old = _existing(manifest_file) if tarball.exists() else None
    keys = {f"artifact:{p.name}": p.key for p in plans}
    spec_sha = spec_digest(folder)
    to_make = [p.name for p in plans if p.status == "produce"]
    after = [p.name for p in plans if p.status == "after"]
    if to_make:
        status: BuildStatus = "build"
        reason = f"would produce {', '.join(to_make)}" + (
            f"; then {', '.join(after)} (made from them: cached or not, known then)" if after else "")
    elif old is None:
        status, reason = "build", "every artifact cached; no tarball with a manifest at the output yet"
    elif ({k: s.key for k, s in old.steps.items() if k.startswith("artifact:")} != keys
          or old.spec_sha256 != spec_sha or old.tool_version != TOOL_VERSION or old.target != target):
        status, reason = "build", "every artifact cached; the tarball at the output was built from other inputs"
    else:
        status, reason = "up to date", "every artifact cached and the tarball at the output is built from them"
    return EnsembleBuildPlan(ensemble=spec.name, target=target, tarball=str(tarball),
                             manifest=str(manifest_file), status=status, reason=reason,
                             artifacts={p.name: p.status for p in plans})
