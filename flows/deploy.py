"""The ``deploy`` flow: publish built ensembles to an endpoint and validate them there.

The story is the same on every backend (:mod:`tasks.deploy.backends`), each step its own task
(:mod:`tasks.deploy.steps`): read the manifests and check the builds fit the backend; for a dry
run, say every call and stop; otherwise note what is being published in the endpoint record,
publish the tarballs, each version as its own TargetModel ``<ensemble>-<sha256[:12]>.tar.gz``
(never over the object that serves), create/update or reuse the endpoint, invoke every
ensemble by its new TargetModel and score it. If anything fails, the deploy is rolled back (the
endpoint serves what it served before, which was never touched) and the flow fails saying why.
Once validated, the record names the new TargetModel as current, keeps the previous ones for
rollback, and the versions past the keep count are deleted.
"""

# (no ``from __future__ import annotations``: Prefect builds the parameter model of a flow
# started by a deployment from these annotations, and must find ``Literal`` as an object)
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_table_artifact

from flows.common import endpoint_lock
from tasks.runtime.text import human_bytes, short
from infra import paths
from infra.processes.ownership import owner
from infra.records.manifest import Manifest
from tasks.deploy.backends import DeployBackend, TargetMismatch, backend_for, check_targets  # noqa: F401
from tasks.deploy.backends.base import prune_actions, settle, versioned_manifest
from tasks.deploy.backends.sagemaker import SageMakerOptions
from tasks.deploy.steps import (
    activate_task,
    ensure_endpoint_task,
    plan_task,
    prune_task,
    publish_task,
    rollback_task,
    validate_task,
)
from tasks.build.package import read_manifest
from tasks.deploy.publish import Published
from tasks.deploy.records import BuildSource, DeployResult, EndpointHandle, Rollout
from tasks.deploy.validate import DeployValidationFailed, check_validations, deploy_entries  # noqa: F401


@flow(name="deploy", log_prints=True)
def deploy(ensembles: list[str] | None = None, endpoint: str = "local-mme",
           backend: Literal["local", "sagemaker"] = "local", store_uri: str | None = None,
           build: BuildSource | None = None, rollout: Rollout | None = None,
           sagemaker: SageMakerOptions | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Publish ``ensembles`` (already built: ``build`` says where) to ``endpoint`` and
    validate each by its new TargetModel.

    ``backend="local"``: the embedded store and the local multi-model endpoint.
    ``backend="sagemaker"``: ``store_uri`` is ``s3://bucket/prefix`` and ``sagemaker`` says
    where and how the endpoint runs. ``rollout``: warm invocations of the validation and the
    previous versions kept (default 20 and 1). ``dry_run`` lists every call without making one.

    Returns the result's JSON document (:meth:`DeployResult.to_json`, or the plan's for a dry
    run): what the CLI prints and reads. ``Any``, not :data:`~infra.jsontypes.JsonObject`, while
    its readers index it without narrowing.
    """
    rollout = rollout or Rollout()
    be = backend_for(backend, endpoint=endpoint, store_uri=store_uri, sagemaker=sagemaker,
                     aws=sagemaker.clients if sagemaker else None)
    manifests = _manifests(ensembles or ["text_embedding"], build or BuildSource(), be)
    for warning in be.check(manifests):  # refuse before anything is uploaded or created
        get_run_logger().warning(warning)
    if dry_run:
        plan = plan_task(be, manifests)
        plan.calls += prune_actions(endpoint, be.store_uri, manifests, rollout.keep_versions)
        return plan.to_json()
    with endpoint_lock(endpoint):  # a second deploy of this endpoint waits for this one
        result = _deploy(be, manifests, rollout)
    _summary(result)
    return result.to_json()


def _manifests(names: list[str], build: BuildSource, be: DeployBackend) -> list[Manifest]:
    """Every manifest, read before any upload (a missing build fails the deploy first), with
    the versioned TargetModel this deploy publishes, validates and records."""
    folder = (Path(build.dir).expanduser() if build.dir
              else paths.artifacts_dir(build.target or be.default_target))
    return [versioned_manifest(read_manifest(folder, name)) for name in names]


def _deploy(be: DeployBackend, manifests: list[Manifest], rollout: Rollout) -> DeployResult:
    """Publish, ensure the endpoint, activate, validate; roll everything back on failure.
    Then the record points to the new versions, and the ones past the keep count go."""
    be.begin(manifests)  # the endpoint record names what is about to be published
    backup_dir = Path(tempfile.mkdtemp(prefix="mme-deploy-backup-", dir=owner().scratch_root()))
    published: list[Published] = []
    handle: EndpointHandle | None = None
    try:
        _publish(be, manifests, backup_dir, published)
        handle = ensure_endpoint_task(be)
        activate_task(be, handle, published)
        results = [validate_task(be, handle, m, rollout.warm_invocations) for m in manifests]
        check_validations(manifests, results)
    except BaseException as e:
        rollback_task(be, handle, published, e, return_state=True)  # never masks ``e``
        settle(be.endpoint, manifests, deployed=False)
        raise
    finally:
        shutil.rmtree(backup_dir, ignore_errors=True)
    entries = [e.model_copy(update={"target_model": p.target_model})
               for e, p in zip(deploy_entries(manifests, published, results), published, strict=True)]
    result = be.finish(handle, manifests, published, entries)
    pruned = prune_task(be, handle, manifests, rollout.keep_versions, return_state=True)
    result.pruned = pruned.result() if pruned.is_completed() else [  # the deploy itself succeeded
        f"older versions not removed ({pruned.message}): the next deploy or `mme retire` removes them"]
    return result


def _publish(be: DeployBackend, manifests: list[Manifest], backup_dir: Path,
             published: list[Published]) -> None:
    """Upload the tarballs concurrently (one task each) into ``published``; when one fails,
    the first error is raised after every upload ended, and ``published`` holds the ones that
    succeeded, for the rollback to put back."""
    futures = [publish_task.submit(be, m, backup_dir) for m in manifests]
    first_error: BaseException | None = None
    for f in futures:
        try:
            published.append(f.result())
        except BaseException as e:  # noqa: BLE001 - re-raised below, after every upload ended
            first_error = first_error or e
    if first_error is not None:
        raise first_error


def _summary(result: DeployResult) -> None:
    """The deploy as a table, and ensemble -> artifact URI -> endpoint links, in the UI."""
    create_table_artifact(
        key="deploy-summary",
        table=[{"ensemble": e.name, "sha256": short(e.sha256), "size": human_bytes(e.bytes),
                "uri": e.artifact, "endpoint": result.url,
                "validation": f"{e.validation['metric']}={e.validation['value']:.6f}",
                "cold_ms": e.latency_ms.cold, "p50_ms": e.latency_ms.p50,
                "p99_ms": e.latency_ms.p99} for e in result.ensembles],
        description=f"Deployed to endpoint {result.endpoint} ({result.url})")
    for e in result.ensembles:
        create_link_artifact(key=_artifact_key(f"deployed-{e.name}-{result.endpoint}"),
                             link=e.artifact, link_text=f"{e.name} on {result.endpoint}",
                             description=f"TargetModel {e.artifact.rsplit('/', 1)[-1]} served by "
                                         f"{result.endpoint} ({result.url}), sha256 {e.sha256}")


def _artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
