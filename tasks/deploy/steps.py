"""The deploy and retire steps as Prefect tasks: thin wrappers over a backend's methods.

Each step is its own task, so a deploy shows publish, ensure-endpoint, activate, validate
(and rollback) in the Prefect UI with its own retries and timeout, whichever backend runs it.
Only failures a second try can fix are retried (:func:`tasks.runtime.retry.retry_transient`).
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from infra.jsontypes import JsonObject
from infra.records.endpoint import EnsembleLine
from infra.records.manifest import Manifest
from tasks.deploy.backends import DeployBackend, Step
from tasks.deploy.publish import Published
from tasks.deploy.records import DeployPlan, EndpointHandle, ValidationReport
from tasks.runtime.text import human_bytes
from tasks.runtime.retry import retry_transient

BACKOFF = exponential_backoff(backoff_factor=2)


def _logging(backend: DeployBackend) -> DeployBackend:
    """What the backend says step by step (each AWS call, a rollback) goes to this task's log."""
    backend.log = get_run_logger().info
    return backend


@task(name="plan", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=BACKOFF,
      retry_condition_fn=retry_transient, timeout_seconds=300)
def plan_task(backend: DeployBackend, manifests: list[Manifest]) -> DeployPlan:
    """The dry run: every call the deploy would make, none made."""
    return backend.plan(manifests)


@task(name="publish", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=BACKOFF,
      retry_condition_fn=retry_transient)
def publish_task(backend: DeployBackend, manifest: Manifest, backup_dir: Path) -> Published:
    pub = backend.publish(manifest, backup_dir)
    get_run_logger().info("%s: %s %s (%s)", pub.ensemble,
                          "uploaded to" if pub.uploaded else "unchanged at", pub.uri,
                          human_bytes(pub.bytes))
    return pub


@task(name="ensure-endpoint", cache_policy=NO_CACHE, retries=1, retry_condition_fn=retry_transient,
      timeout_seconds=2 * 3600)
def ensure_endpoint_task(backend: DeployBackend) -> EndpointHandle:
    """Start/reuse the local endpoint, or create/update the SageMaker one and wait InService."""
    handle = _logging(backend).ensure_endpoint()
    get_run_logger().info("endpoint %s serving on %s", backend.endpoint, handle.url)
    return handle


@task(name="activate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=BACKOFF,
      retry_condition_fn=retry_transient, timeout_seconds=300)
def activate_task(backend: DeployBackend, handle: EndpointHandle, published: list[Published]) -> None:
    """Replaced objects serve their new bytes (the local endpoint unloads them)."""
    _logging(backend).activate(handle, published)


@task(name="validate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=BACKOFF,
      retry_condition_fn=retry_transient, timeout_seconds=900)
def validate_task(backend: DeployBackend, handle: EndpointHandle, manifest: Manifest,
                  warm_invocations: int) -> ValidationReport:
    log = get_run_logger()
    result = backend.validate(handle, manifest, warm_invocations)
    if result.direct_triton_error is not None:  # informative only
        log.warning("direct Triton latency not measured: %s", result.direct_triton_error)
        result = result.model_copy(update={"direct_triton_error": None})
    v, lat = result.validation, result.latency_ms
    log.info("%s: %s = %.6f (%s), cold %.0f ms, p50 %.1f ms", manifest.ensemble, v.metric,
             v.value, "passed" if v.passed else "FAILED", lat.cold, lat.p50)
    return result


@task(name="rollback", cache_policy=NO_CACHE, timeout_seconds=2 * 3600)
def rollback_task(backend: DeployBackend, handle: EndpointHandle | None,
                  published: list[Published], error: BaseException) -> None:
    """Undo a failed deploy: the endpoint serves what it served before. Never raises."""
    for line in _logging(backend).rollback(handle, published, error):
        get_run_logger().error("%s", line)


@task(name="prune", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=BACKOFF,
      retry_condition_fn=retry_transient, timeout_seconds=900)
def prune_task(backend: DeployBackend, handle: EndpointHandle, manifests: list[Manifest],
               keep_versions: int) -> list[str]:
    """After a validated deploy: delete the versions past ``keep_versions`` (and unversioned
    objects of older deploys); the lines say what was deleted or left."""
    lines = [s.line for s in _logging(backend).prune(handle, manifests, keep_versions)]
    for line in lines:
        get_run_logger().info("%s", line)
    return lines


@task(name="retire-ensemble", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=BACKOFF,
      retry_condition_fn=retry_transient)
def retire_ensemble_task(backend: DeployBackend, ensemble: str, entry: EnsembleLine | None) -> Step:
    return backend.retire_ensemble(ensemble, entry)


@task(name="retire-endpoint", cache_policy=NO_CACHE, retries=1, retry_condition_fn=retry_transient,
      timeout_seconds=2 * 3600)
def retire_endpoint_task(backend: DeployBackend, plan_doc: JsonObject | None) -> list[Step]:
    return _logging(backend).retire_endpoint(plan_doc)
