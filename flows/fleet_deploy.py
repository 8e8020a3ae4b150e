"""The ``fleet-deploy`` flow: a built fleet onto its endpoints, validated, routed, pruned.

Composes the tasks of :mod:`tasks.fleet.deploy`: read the fleet's latest build (the desired
state) and its routing table (one GET); give each variant its shard (rendezvous hashing, sticky);
publish the new, changed or moved versions under versioned TargetModels (one incremental sync per
endpoint prefix); invoke each by TargetModel with its manifest's sample (bounded concurrency),
plus ``canary`` unchanged ones; route the ones that passed and write the table (one PUT); retire
variants that left the fleet after the grace period and delete versions beyond ``keep_versions``.
A variant that fails keeps its previous version routed; the run ends Failed naming it (a
returned state with a one-line message, not a traceback), and the ``fleet-deploy-variants-<fleet>``
table lists every variant, failed ones first (:mod:`tasks.fleet.deploy_report`).
No SageMaker control-plane change: the endpoints are existing MMEs, whose model prefix, region
and Triton release are read (describe only) and checked first (:mod:`tasks.fleet.endpoints`).
"""

# (no ``from __future__ import annotations``: Prefect builds the flow's parameter model from
# these annotations and must find ``Literal`` as an object)
import contextlib
from typing import Any, Literal, cast

from prefect import flow

from flows.common import endpoint_lock, fleet_run_name, fleet_tags, tagged_run
from infra import paths
from tasks.fleet.deploy import (
    DeployPolicy,
    canary_jobs,
    commit_task,
    open_endpoints_task,
    plan_jobs,
    publish_jobs,
    read_state_task,
    validate_jobs_task,
)
from tasks.fleet.deploy_report import deploy_failure, report_deploy
from tasks.fleet.endpoints import ServedEndpoint, sagemaker_endpoints_task
from tasks.fleet.integrity import repaired_jobs, still_broken, verify_task
from tasks.fleet.routes import assign_shards


@flow(name="fleet-deploy", log_prints=True, flow_run_name=fleet_run_name)
def fleet_deploy(fleet: str, endpoints: list[str], backend: Literal["local", "sagemaker"] = "local",
                 store_uri: str | None = None, build_dir: str | None = None,
                 policy: DeployPolicy | None = None) -> dict[str, Any]:
    """Deploy a built fleet across endpoints: publish, validate, route, prune.

    Returns what was published, validated, routed, retired, deleted. When variants did not go
    live, the others still do and the run ends Failed naming them (calling the flow raises
    ``FleetDeployFailed``).

    Args:
        fleet (str): A fleet name under ensembles/fleets (e.g. tenants-example) or a fleet file; its
            latest build is deployed.
        endpoints (list[str]): The endpoints to spread the variants over (local endpoint names, or
            SageMaker multi-model endpoint names with backend sagemaker).
        backend (str): local (the embedded endpoint, no AWS) or sagemaker (needs AWS credentials
            and existing multi-model endpoints; no control-plane change is made).
        store_uri (str | None): Where the models and routing table go (default: the embedded store; with
            sagemaker, read from the endpoints).
        build_dir (str | None): The fleet build folder to deploy (default: the fleet's folder under the
            artifacts dir, where fleet-build writes).
        policy (DeployPolicy | None): Validation, canaries, grace period, versions kept,
            region.
    """
    with tagged_run(fleet_tags(fleet)):
        return _locked_deploy(fleet, endpoints, backend, store_uri, build_dir, policy or DeployPolicy())


def _locked_deploy(fleet: str, endpoints: list[str], backend: str, store_uri: str | None,
                   build_dir: str | None, policy: DeployPolicy) -> dict[str, Any]:
    served = None
    if backend == "sagemaker":  # where the endpoints really load from, before anything is written
        store_uri, region, served = sagemaker_endpoints_task(endpoints, store_uri, policy.region)
        policy = policy.model_copy(update={"region": region})
    store_uri = store_uri or paths.store_uri()
    with contextlib.ExitStack() as locks:
        for endpoint in sorted(endpoints):  # one deploy or retire per endpoint at a time
            locks.enter_context(endpoint_lock(endpoint))
        return _deploy(fleet, endpoints, backend, store_uri, build_dir, policy, served)


def _deploy(fleet: str, endpoints: list[str], backend: str, store_uri: str,
            build_dir: str | None, policy: DeployPolicy,
            served: dict[str, ServedEndpoint] | None = None) -> dict[str, Any]:
    name, desired, table, build = read_state_task(fleet, build_dir, store_uri)
    verified = None
    if policy.verify:  # the store as the table says, first: re-publish what is gone or damaged
        sources = {d.sha256: d.tarball for d in desired.values()}
        verified, table = verify_task(store_uri, table, sources, True, endpoints=endpoints)
    shards = assign_shards(desired, endpoints,
                           {v: r.endpoint for v, r in table.variants.items()})
    jobs, unchanged = plan_jobs(desired, table, shards)
    canaries = canary_jobs(desired, table, unchanged, policy.canary, policy.seed)
    repaired = repaired_jobs(verified, desired) if verified is not None else []
    access = open_endpoints_task(backend, endpoints, store_uri, policy.region, served)
    results: dict[str, str | None] = dict(publish_jobs(access, jobs))
    to_check = [j for j in jobs if j.variant not in results] + canaries + repaired
    checked, progress = validate_jobs_task(access, to_check, policy)
    results.update(checked)
    summary = commit_task(store_uri, table, jobs, results, desired, access, policy, build)
    failed = {v: r for v, r in sorted(results.items()) if r}
    if verified is not None:
        failed = dict(sorted({**still_broken(verified, summary.live), **failed}.items()))
    doc = {"fleet": name, "endpoints": endpoints, "variants": len(desired),
           "published": [j.variant for j in jobs
                         if not (failed.get(j.variant) or "").startswith("publish")],
           "unchanged": len(unchanged), "validated": sorted(j.variant for j in to_check),
           "canaries": [j.variant for j in canaries],
           "moved": sorted(j.variant for j in jobs if j.kind == "moved"),
           "failed": failed, "validation": progress, **summary.model_dump(mode="json"),
           "verify": verified.summary().model_dump(mode="json") if verified is not None else None}
    report_deploy(doc, desired, shards)
    ended = deploy_failure(doc)
    # a returned state becomes the run's (no traceback); calling the flow raises its data
    return doc if ended is None else cast(dict[str, Any], ended)

