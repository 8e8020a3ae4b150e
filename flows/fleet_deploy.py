"""The ``fleet-deploy`` flow: a built fleet onto its endpoints, validated, routed, pruned.

Composes the tasks of :mod:`tasks.fleet.deploy`: read the fleet's latest build (the desired
state) and its routing table (one GET); give each variant its shard (rendezvous hashing, sticky);
publish the new, changed or moved versions under versioned TargetModels (one incremental sync per
endpoint prefix); invoke each by TargetModel with its manifest's sample (bounded concurrency),
plus ``canary`` unchanged ones; route the ones that passed and write the table (one PUT); retire
variants that left the fleet after the grace period and delete versions beyond ``keep_versions``.
A variant that fails keeps its previous version routed; the run ends Failed naming it.
No SageMaker control-plane change: the endpoints are existing MMEs, whose model prefix, region
and Triton release are read (describe only) and checked first (:mod:`tasks.fleet.endpoints`).
"""

# (no ``from __future__ import annotations``: Prefect builds the flow's parameter model from
# these annotations and must find ``Literal`` as an object)
import contextlib
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.common import endpoint_lock
from infra import paths
from tasks.fleet.deploy import (
    DeployPolicy,
    FleetDeployFailed,
    canary_jobs,
    commit_task,
    open_endpoints_task,
    plan_jobs,
    publish_jobs,
    read_state_task,
    validate_jobs_task,
)
from tasks.fleet.endpoints import ServedEndpoint, sagemaker_endpoints_task
from tasks.fleet.integrity import repaired_jobs, still_broken, verify_task
from tasks.fleet.routes import assign_shards


@flow(name="fleet-deploy", log_prints=True)
def fleet_deploy(fleet: str, endpoints: list[str], backend: Literal["local", "sagemaker"] = "local",
                 store_uri: str | None = None, build_dir: str | None = None,
                 policy: DeployPolicy | None = None) -> dict[str, Any]:
    """Deploy ``fleet`` (a fleet name or file; ``build_dir`` overrides where its build is)
    across ``endpoints``. Returns what was published, validated, routed, retired, deleted;
    raises :class:`FleetDeployFailed` naming each variant that did not go live."""
    policy = policy or DeployPolicy()
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
    _report(doc)
    if failed:
        raise FleetDeployFailed(f"fleet {name}: {len(failed)} variant(s) did not go live (their "
                                f"previous version stays routed): " + "; ".join(
                                    f"{v}: {r}" for v, r in list(failed.items())[:10]))
    return doc


def _report(doc: dict[str, Any]) -> None:
    lines = [f"# Fleet deploy of `{doc['fleet']}` to {', '.join(doc['endpoints'])}", "",
             f"- variants in the build: {doc['variants']}; unchanged: {doc['unchanged']}",
             f"- published (new, changed or moved): {len(doc['published'])}; validated: "
             f"{len(doc['validated'])} (canaries: {len(doc['canaries'])}); validated variants "
             f"unloaded beyond keep_loaded={doc['validation']['keep_loaded']}: "
             f"{doc['validation']['unloaded']}",
             f"- live now: {len(doc['live'])}; routed: {doc['routed']}; table: `{doc['routes']}`",
             f"- marked retiring: {len(doc['retiring'])}; un-retired (in build "
             f"`{(doc['build'] or {}).get('id')}` again): {len(doc['unretired'])}; removed: "
             f"{len(doc['removed'])}; objects deleted: {len(doc['deleted'])}"]
    if doc["verify"]:
        states = doc["verify"]["states"]
        lines.append(f"- verified: {doc['verify']['checked']} routed objects ("
                     + ", ".join(f"{n} {k}" for k, n in sorted(states.items())) + ")")
    if doc["unretired"]:
        lines += ["", "| un-retired variant | sha256 | manifest |", "|---|---|---|"]
        lines += [f"| {v} | `{u['sha256'][:12]}` | `{u['manifest']}` |"
                  for v, u in doc["unretired"].items()]
    if doc["failed"]:
        lines += ["", "| failed variant | reason |", "|---|---|"]
        lines += [f"| {v} | {r.replace('|', '/')[:300]} |" for v, r in doc["failed"].items()]
    create_markdown_artifact(key="fleet-deploy", markdown="\n".join(lines) + "\n",
                             description=f"Fleet deploy of {doc['fleet']}")
