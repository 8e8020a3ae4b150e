"""One ensemble's build, step by step, each step a Prefect task from its own ``tasks/`` module.

Load and validate the spec (``load-spec``), produce its artifacts (``produce-artifact``, cached
on content keys), render the model repository (``render-repository``), pack it
deterministically (``package``), compute the framework's reference answers (``reference``),
verify the packed tarball in a real Triton (``verify``; deferred to the endpoint for targets
this host cannot load), and only then publish it with its :class:`~infra.records.manifest.Manifest`
(``publish-build``). :data:`build_ensemble_task` runs all of it as one task on the flow's task
runner (threads or Dask), so ensembles build side by side.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

from ensembles.spec import EnsembleSpec, SpecError, Target, validate
from infra.jsontypes import JsonObject
from infra.records.manifest import Manifest, StepRecord, Validation
from tasks.build.lineage import publish_with_lineage
from tasks.build.package import Packed, artifact_name, package_task
from tasks.producers.produce import (
    ProducedArtifact,
    artifacts_for,
    check_artifacts,
    produce_task,
    producer_params,
)
from tasks.build.render import load_spec_task, render_task
from tasks.build.report import Outcome, cached_text, link_tarball
from tasks.runtime.run_context import StepLimits, result_storage, run_logger, step_limits
from tasks.build.verify import (
    LOCALLY_VERIFIABLE,
    Sample,
    deferred_validation,
    reference_task,
    verify_task,
)

TOOL_VERSION = "0.1.0"


def apply_overrides(spec: EnsembleSpec, overrides: Mapping[str, str]) -> EnsembleSpec:
    """``{"artifact.param": value}`` -> a spec with those artifact parameters replaced, e.g.
    ``inception_archive.source=/models/inception_v3.tar.gz`` to use a local copy."""
    doc = spec.model_dump()
    for key, value in overrides.items():
        art, _, param = key.partition(".")
        if art in doc["artifacts"] and param:  # overrides for other ensembles' artifacts: skipped
            doc["artifacts"][art]["params"][param] = value
    new = EnsembleSpec.model_validate(doc)
    validate(new)
    return new


def for_target(spec: EnsembleSpec, target: Target, overrides: Mapping[str, str] | None) -> EnsembleSpec:
    """``spec`` as a build for ``target`` uses it: ``--set`` applied, and refused (naming the
    steps) when a step the target runs has no backend for it."""
    if overrides:
        spec = apply_overrides(spec, overrides)
    missing = [s.name for s in spec.steps_for(target) if target not in s.backends]
    if missing:
        raise SpecError(f"ensemble {spec.name!r} has no {target!r} backend for steps {missing}")
    return spec


def spec_digest(folder: Path) -> str:
    """The sha256 of the ensemble's spec file, as its manifest records it (``spec_sha256``)."""
    return hashlib.sha256((Path(folder) / "ensemble.yaml").read_bytes()).hexdigest()


def build_output_dir(target: Target, output_dir: str | Path | None = None) -> Path:
    """Where a build for ``target`` writes its tarballs: ``output_dir`` (resolved), else
    ``$MME_HOME/artifacts/<target>`` (the build, its dry run and the deploy's default)."""
    from infra import paths

    return Path(output_dir).expanduser().resolve() if output_dir else paths.artifacts_dir(target)


def check_overrides(specs: Sequence[EnsembleSpec], overrides: Mapping[str, str]) -> None:
    """Every override must name an artifact of some ensemble being built (a typo would
    otherwise be skipped silently)."""
    known = {f"{a}." for spec in specs for a in spec.artifacts}
    for key in overrides:
        if "." not in key or not any(key.startswith(a) for a in known):
            raise SpecError(f"override {key!r} must be <artifact>.<param>, with an artifact of "
                            f"{sorted(a.rstrip('.') for a in known)}")
        art, _, param = key.partition(".")
        for spec in specs:
            a = spec.artifacts.get(art)
            takes = producer_params(a.producer) if a is not None else None
            if a is not None and takes is not None and param not in takes and param not in a.params:
                raise SpecError(f"override {key!r}: {spec.name}'s artifact {art!r} (producer "
                                f"{a.producer}) has no parameter {param!r}; it takes {sorted(takes)}")


def _step(seconds: float, **flags: bool | str | None) -> StepRecord:
    """A step's record; flags that do not apply (None) are left out of the manifest."""
    given = {k: v for k, v in flags.items() if v is not None}
    return StepRecord.model_validate({"seconds": round(seconds, 3), **given})


@contextlib.contextmanager
def _timed(steps: dict[str, StepRecord], name: str) -> Iterator[None]:
    """Records the wall time of the ``with`` body as step ``name``."""
    t0 = time.perf_counter()
    yield
    steps[name] = _step(time.perf_counter() - t0)


def _produce_all(spec: EnsembleSpec, target: Target, steps: dict[str, StepRecord],
                 limits: StepLimits) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """Every artifact the target needs, in order: their paths and their producers' metadata."""
    produce = produce_task.with_options(result_storage=result_storage(), **limits)
    produced: dict[str, Path] = {}
    sources: dict[str, dict[str, Any]] = {}
    for name in artifacts_for(spec, target):
        t0 = time.perf_counter()
        state = produce(spec, name, dict(produced), target, return_state=True)
        got = ProducedArtifact.of(state.result())
        produced[name] = got.path
        sources[name] = got.meta
        steps[f"artifact:{name}"] = _step(time.perf_counter() - t0, key=got.key,
                                          cached=bool(got.hit or state.name == "Cached"))
    check_artifacts(spec, target, produced)
    return produced, sources


def _reference_and_verify(spec: EnsembleSpec, target: Target, packed: Packed,
                          produced: dict[str, Path], steps: dict[str, StepRecord],
                          limits: StepLimits) -> tuple[Sample, Validation]:
    """The reference sample, and the tarball verified against it (or deferred)."""
    storage = result_storage()
    t0 = time.perf_counter()
    ref_state = reference_task.with_options(result_storage=storage, **limits)(
        spec, produced, target, return_state=True)
    sample, hit = ref_state.result()
    steps["reference"] = _step(time.perf_counter() - t0,
                               cached=bool(hit or ref_state.name == "Cached"))
    if target not in LOCALLY_VERIFIABLE:
        steps["verify"] = _step(0.0, cached=False, deferred=True)
        validation = deferred_validation(spec, target)
        run_logger().warning("%s: %s", spec.name, validation.deferred)
        return sample, validation
    t0 = time.perf_counter()
    ver_state = verify_task.with_options(result_storage=storage, **limits)(
        spec, packed.path, packed.sha256, sample, target, return_state=True)
    result, hit = ver_state.result()
    steps["verify"] = _step(time.perf_counter() - t0, cached=bool(hit or ver_state.name == "Cached"))
    return sample, result.to_validation()


def _footprint(spec: EnsembleSpec, target: Target, tarball: Path, sample: Sample) -> JsonObject | None:
    """The tarball's footprint measured in a real Triton (host memory added, load, unload,
    service at batch 1 and the max batch; GPU memory by NVML where there is one), for the
    capacity planner: only for targets this host can load."""
    if target not in LOCALLY_VERIFIABLE:
        return None
    from tasks.build.footprints import measure_footprint, nvml_used_bytes

    t0 = time.perf_counter()
    fp = measure_footprint(tarball, spec.name, sample.inputs, max(1, spec.max_batch_size),
                           nvml_used_bytes())
    run_logger().info("%s: footprint measured in %.1f s", spec.name, time.perf_counter() - t0)
    return fp.model_dump(mode="json")


def build_ensemble(folder: Path, target: Target, output_dir: Path, work_root: Path,
                   overrides: Mapping[str, str] | None = None, profile: bool = False) -> Manifest:
    """Build the ensemble in ``folder`` (inside a flow or task run; each step is a task).
    ``profile`` also measures its footprint (``manifest.footprint``) for the capacity planner."""
    started = time.perf_counter()
    spec = for_target(load_spec_task(folder), target, overrides)
    limits = step_limits()
    steps: dict[str, StepRecord] = {}
    with tempfile.TemporaryDirectory(prefix=f"{spec.name}-", dir=work_root) as tmp:
        work = Path(tmp)
        produced, sources = _produce_all(spec, target, steps, limits)
        with _timed(steps, "render"):
            repo = render_task(spec, target, work / "repo", folder, produced)
        with _timed(steps, "package"):
            packed = package_task.with_options(**limits)(repo, work / "staging", spec.name)
        sample, validation = _reference_and_verify(spec, target, packed, produced, steps, limits)
        manifest = Manifest(
            ensemble=spec.name, target=target, target_model=artifact_name(spec.name),
            artifact=(output_dir / artifact_name(spec.name)).resolve().as_uri(),
            sha256=packed.sha256, bytes=packed.bytes,
            built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            build_seconds=round(time.perf_counter() - started, 1),
            spec_sha256=spec_digest(folder),
            tool_version=TOOL_VERSION, sources=sources, validation=validation, steps=steps,
            sample=sample.to_record())
        if profile:
            with _timed(manifest.steps, "profile"):
                manifest.footprint = _footprint(spec, target, packed.path, sample)
        with _timed(manifest.steps, "publish"):  # after the write: the file has no publish time
            publish_with_lineage(packed.path, manifest, output_dir, spec)
    link_tarball(manifest)
    manifest.build_seconds = round(time.perf_counter() - started, 1)
    run_logger().info("%s: built %s for %s in %.1f s (%s)", spec.name, manifest.artifact, target,
                      manifest.build_seconds, cached_text(manifest.steps))
    return manifest


@task(name="build-ensemble", cache_policy=NO_CACHE)
def build_ensemble_task(folder: Path, target: Target, output_dir: Path, work_root: Path,
                        overrides: dict[str, str] | None = None, profile: bool = False) -> Manifest:
    """One ensemble's whole build, submitted to the flow's task runner; its steps run as
    nested tasks. Returns the manifest (a pydantic record: picklable for Dask)."""
    return build_ensemble(folder, target, output_dir, work_root, overrides, profile)


def outcomes_of(submitted: Mapping[str, PrefectFuture[Manifest] | BaseException]) -> list[Outcome]:
    """Each ensemble's manifest, or the error it failed with (waiting for all of them)."""
    outcomes: list[Outcome] = []
    for name, fut in submitted.items():
        if isinstance(fut, BaseException):  # failed before it could be submitted
            outcomes.append((name, None, fut))
            continue
        try:
            outcomes.append((name, fut.result(), None))
        except Exception as e:  # noqa: BLE001 - reported by the caller, then raised
            outcomes.append((name, None, e))
    return outcomes


def raise_first_failure(outcomes: Sequence[Outcome]) -> None:
    """Raise the first ensemble's error, after logging the others' (all were reported)."""
    failures = [(name, e) for name, _, e in outcomes if e is not None]
    if failures:
        for name, e in failures[1:]:
            run_logger().error("%s: build failed too: %s: %s", name, type(e).__name__, e)
        raise failures[0][1]
