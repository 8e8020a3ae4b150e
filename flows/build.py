"""The ``build`` flow: ensemble spec -> verified, content-hashed Triton tarball.

For each ensemble: load and validate the spec (a miswired spec stops here, before any work),
produce its artifacts (fetch the model, export ONNX, tokenizer files...), render the model
repository for the target, pack it deterministically, verify the packed tarball in a real
Triton against the framework reference, and only then publish it with its manifest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_table_artifact
from prefect.tasks import exponential_backoff

from ensembles.catalog import load_ensemble
from ensembles.render import render_repository
from ensembles.spec import EnsembleSpec, SpecError, Target, validate
from flows.common import human_bytes, retry_transient, short
from infra import paths
from tasks.package import artifact_name, package_repository, publish_build
from tasks.produce import artifacts_for, check_artifacts, produce
from tasks.verify import Sample, reference_sample, verify_archive

TOOL_VERSION = "0.1.0"


def _logger():
    try:
        return get_run_logger()
    except Exception:  # called outside a run (task.fn in tests)
        import logging

        return logging.getLogger("mme.build")


@task(name="load-spec", cache_policy=NO_CACHE)
def load_spec_task(ensemble: str) -> tuple[EnsembleSpec, Path]:
    return load_ensemble(ensemble)


@task(name="produce-artifact", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=retry_transient, timeout_seconds=4 * 3600)
def produce_task(spec: EnsembleSpec, name: str, work: Path, produced: dict[str, Path]) -> tuple[Path, dict]:
    t0 = time.perf_counter()
    path, meta = produce(spec, name, work / name, produced)
    _logger().info("%s: artifact %s ready in %.1f s", spec.name, name, time.perf_counter() - t0)
    return path, meta


@task(name="render-repository", cache_policy=NO_CACHE)
def render_task(spec: EnsembleSpec, target: str, out: Path, folder: Path,
                artifacts: dict[str, Path]) -> Path:
    return render_repository(spec, target, out, catalog_dir=folder, artifacts=artifacts)


@task(name="package", cache_policy=NO_CACHE, timeout_seconds=900)
def package_task(repo: Path, staging: Path, ensemble: str) -> dict[str, Any]:
    info = package_repository(repo, staging, ensemble)
    _logger().info("%s: packed %s (%s) in %.1f s, sha256 %s", ensemble, Path(info["path"]).name,
                   human_bytes(info["bytes"]), info["seconds"], short(info["sha256"]))
    return info


@task(name="reference", cache_policy=NO_CACHE, timeout_seconds=900)
def reference_task(spec: EnsembleSpec, artifacts: dict[str, Path], target: str) -> Sample:
    return reference_sample(spec, artifacts, target)


# Targets whose tarballs this host's Triton can load: the local tritonserver is a CPU build
# with the Python backend only (no TensorRT, DALI, ONNX Runtime or TensorFlow backend).
LOCALLY_VERIFIABLE = ("local-cpu",)


def deferred_validation(spec: EnsembleSpec, target: str) -> dict[str, Any]:
    v = spec.validation
    return {"passed": None, "metric": v.metric if v else None, "value": None,
            "threshold": v.threshold if v else None,
            "deferred": (f"target {target!r} cannot be loaded by this host's CPU Triton (its "
                         f"backends need a GPU): the tarball is checked by the validation "
                         f"invoke on the endpoint at deploy time, against the sample and "
                         f"expected outputs recorded in this manifest")}


@task(name="verify", cache_policy=NO_CACHE, retries=1, retry_condition_fn=retry_transient, timeout_seconds=900)
def verify_task(spec: EnsembleSpec, archive: Path, sample: Sample) -> dict[str, Any]:
    return verify_archive(spec, archive, sample, log=_logger().info)


@task(name="publish-build", cache_policy=NO_CACHE)
def publish_build_task(archive: Path, manifest: dict[str, Any], output_dir: Path) -> Path:
    return publish_build(archive, manifest, output_dir)


def apply_overrides(spec: EnsembleSpec, overrides: dict[str, str]) -> EnsembleSpec:
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


def build_ensemble(ensemble: str, target: str, output_dir: Path, work_root: Path,
                   overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """Build one ensemble (runs inside the flow; each step is a Prefect task)."""
    log = _logger()
    spec, folder = load_spec_task(ensemble)
    if overrides:
        spec = apply_overrides(spec, overrides)
    missing = [s.name for s in spec.steps if target not in s.backends]
    if missing:
        raise SpecError(f"ensemble {spec.name!r} has no {target!r} backend for steps {missing}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"{spec.name}-", dir=work_root) as tmp:
        work = Path(tmp)
        produced: dict[str, Path] = {}
        sources: dict[str, dict] = {}
        for name in artifacts_for(spec, target):
            path, meta = produce_task(spec, name, work / "artifacts", produced)
            produced[name] = Path(path)
            sources[name] = meta
        check_artifacts(spec, target, produced)
        repo = render_task(spec, target, work / "repo", folder, produced)
        packed = package_task(repo, work / "staging", spec.name)
        sample = reference_task(spec, produced, target)
        if target in LOCALLY_VERIFIABLE:
            validation = verify_task(spec, Path(packed["path"]), sample)
        else:
            validation = deferred_validation(spec, target)
            log.warning("%s: %s", spec.name, validation["deferred"])
        final_uri = (output_dir / artifact_name(spec.name)).resolve().as_uri()
        manifest = {
            "ensemble": spec.name,
            "target": target,
            "target_model": artifact_name(spec.name),
            "artifact": final_uri,
            "sha256": packed["sha256"],
            "bytes": packed["bytes"],
            "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - started, 1),
            "spec_sha256": hashlib.sha256((folder / "ensemble.yaml").read_bytes()).hexdigest(),
            "tool_version": TOOL_VERSION,
            "sources": sources,
            "validation": {k: v for k, v in validation.items() if k != "per_item"},
            "sample": sample.to_json(),
        }
        publish_build_task(Path(packed["path"]), manifest, output_dir)
    log.info("%s: built %s for %s in %.1f s", spec.name, final_uri, target, manifest["build_seconds"])
    return manifest


@flow(name="build", log_prints=True)
def build(ensembles: list[str] | None = None, target: Target = "local-cpu",
          output_dir: str | None = None,
          overrides: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Build, verify and package ensembles from the catalog for one target.

    ``overrides`` replaces artifact parameters (``{"<artifact>.<param>": value}``), e.g. where
    a source model file comes from.
    """
    ensembles = ensembles or ["text_embedding"]
    out = Path(output_dir).expanduser().resolve() if output_dir else paths.artifacts_dir(target)
    work_root = paths.work_dir()
    work_root.mkdir(parents=True, exist_ok=True)
    if overrides:  # every override must name an artifact of some ensemble being built
        known = {f"{a}.": name for name in ensembles for a in load_ensemble(name)[0].artifacts}
        for key in overrides:
            if "." not in key or not any(key.startswith(a) for a in known):
                raise SpecError(f"override {key!r} must be <artifact>.<param>, with an artifact of "
                                f"{sorted(a.rstrip('.') for a in known)}")
    manifests = [build_ensemble(name, target, out, work_root, overrides) for name in ensembles]
    create_table_artifact(
        key="build-summary",
        table=[{"ensemble": m["ensemble"], "target": m["target"], "sha256": short(m["sha256"]),
                "size": human_bytes(m["bytes"]), "uri": m["artifact"],
                "validation": _validation_text(m["validation"])}
               for m in manifests],
        description=f"Ensembles built for {target}",
    )
    return [{k: v for k, v in m.items() if k != "sample"} for m in manifests]


def _validation_text(v: dict[str, Any]) -> str:
    if v.get("passed") is None:
        return "deferred to the endpoint"
    return f"{v['metric']}={v['value']:.6f} ({'passed' if v['passed'] else 'FAILED'})"


def clean_work_dir() -> None:
    shutil.rmtree(paths.work_dir(), ignore_errors=True)
