"""The ``deploy`` flow: publish built ensembles to an endpoint and validate them there.

Local backend: the artifacts go to the embedded store under the endpoint's model prefix; the
local multi-model endpoint is started (or reused: it is never redeployed to add a model); each
ensemble is invoked by TargetModel and its answer scored against the manifest's reference. If
a validation fails, the objects this deploy replaced are put back (the endpoint keeps serving
what it served before) and the flow fails saying why.
"""


import datetime as dt
import re
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.common import endpoint_lock, human_bytes, retry_transient, short
from infra import endpoint_record as record
from infra import paths
from flows.sagemaker_backend import SageMakerOptions, deploy_sagemaker
from infra.endpoint_process import EndpointInfo, start_background
from tasks.package import read_manifest
from tasks.publish import (Published, model_data_url, publish_artifact, read_ledger,
                           restore_previous, write_ledger)
from tasks.validate import (DeployValidationFailed, check_validations, deploy_entries,  # noqa: F401 (re-exported)
                            direct_triton_latency, validate_deployed)


@task(name="publish", cache_policy=NO_CACHE, retries=3,
      retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=retry_transient)
def publish_task(manifest: dict[str, Any], models_url: str, backup_dir: Path) -> Published:
    pub = publish_artifact(manifest, models_url, backup_dir)
    get_run_logger().info("%s: %s %s (%s)", pub.ensemble,
                          "uploaded to" if pub.uploaded else "unchanged at", pub.uri,
                          human_bytes(pub.bytes))
    return pub


@task(name="ensure-endpoint", cache_policy=NO_CACHE, retries=1, retry_condition_fn=retry_transient,
      timeout_seconds=300)
def ensure_endpoint_task(endpoint: str, models_url: str) -> EndpointInfo:
    info = start_background(endpoint, models_url)
    get_run_logger().info("endpoint %s serving on %s", endpoint, info.url)
    return info


@task(name="refresh-model", cache_policy=NO_CACHE)
def refresh_task(info: EndpointInfo, target_model: str) -> None:
    """A replaced object must not keep serving from memory: unload it so it reloads."""
    httpx.delete(f"{info.url}/models/{target_model}", timeout=120).raise_for_status()


@task(name="validate", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=retry_transient,
      timeout_seconds=900)
def validate_task(info: EndpointInfo, endpoint: str, manifest: dict[str, Any],
                  warm_invocations: int) -> dict[str, Any]:
    result = validate_deployed(info.url, endpoint, manifest, warm_invocations=warm_invocations)
    try:
        models = httpx.get(f"{info.url}/models", timeout=10).json()["models"]
        internal = next(m["internal_name"] for m in models
                        if m["target_model"] == manifest["target_model"])
        result["direct_triton_latency_ms"] = direct_triton_latency(
            info.triton_url, internal, manifest, n=warm_invocations)
    except (httpx.HTTPError, StopIteration, KeyError) as e:  # informative only
        get_run_logger().warning("direct Triton latency not measured: %s", e)
    v = result["validation"]
    get_run_logger().info("%s: %s = %.6f (%s), cold %.0f ms, p50 %.1f ms", manifest["ensemble"],
                          v["metric"], v["value"], "passed" if v["passed"] else "FAILED",
                          result["latency_ms"]["cold"], result["latency_ms"]["p50"])
    return result


@task(name="deploy-sagemaker", cache_policy=NO_CACHE, retries=1,
      retry_condition_fn=retry_transient, timeout_seconds=3 * 3600)
def deploy_sagemaker_task(manifests: list[dict[str, Any]], endpoint: str, store_uri: str,
                          opts: SageMakerOptions, warm_invocations: int, dry_run: bool) -> dict[str, Any]:
    log = get_run_logger().info
    backup_dir = Path(tempfile.mkdtemp(prefix="mme-deploy-backup-"))
    try:
        return deploy_sagemaker(manifests, endpoint, store_uri, opts, backup_dir=backup_dir,
                                warm_invocations=warm_invocations, dry_run=dry_run, log=log)
    finally:
        shutil.rmtree(backup_dir, ignore_errors=True)


class TargetMismatch(ValueError):
    """A build made for one target sent to a backend that cannot run it."""


# Which build targets each backend runs. A local-cpu build's Python models import packages
# from the build host's virtualenv, which SageMaker's Triton container does not have.
BACKEND_TARGETS: dict[str, tuple[str, ...]] = {"sagemaker": ("sagemaker-gpu",)}


def check_targets(manifests: list[dict[str, Any]], backend: str, *, allow_mismatch: bool) -> list[str]:
    """Refuse (TargetMismatch naming ensemble, target and backend) a build the backend cannot
    run, before anything is uploaded or created; with ``allow_mismatch`` return the warnings.

    A manifest without a ``target`` (written before manifests recorded it) counts as a
    mismatch: what it was built for is unknown, so it is refused with "rebuild it"."""
    wanted = BACKEND_TARGETS.get(backend)
    if wanted is None:
        return []
    problems = []
    for m in manifests:
        target = m.get("target")
        if target in wanted:
            continue
        if target is None:
            problems.append(f"{m['ensemble']}: its manifest records no build target (an old "
                            f"build): rebuild it with `mme build {m['ensemble']} --target {wanted[0]}`")
        else:
            problems.append(f"{m['ensemble']}: built for target {target!r}, which the {backend} "
                            f"backend cannot run (it runs {', '.join(wanted)}): its Python models "
                            f"need packages from the build host, not in the {backend} Triton "
                            f"container; build it with --target {wanted[0]}")
    if problems and not allow_mismatch:
        raise TargetMismatch("; ".join(problems) + " (or pass --allow-target-mismatch if you "
                             "know the container has what they need)")
    return [f"WARNING (--allow-target-mismatch): {p}" for p in problems]


def _record(store_uri: str, endpoint: str, models_url: str, manifests: list[dict[str, Any]],
            published: list[Published], extra: dict[str, Any] | None = None) -> None:
    ledger = read_ledger(store_uri, endpoint)
    ledger["endpoint"] = endpoint
    ledger["model_data_url"] = models_url
    ledger.update(extra or {})
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for m, pub in zip(manifests, published):
        ledger["ensembles"][m["ensemble"]] = {"target_model": pub.target_model, "key": pub.key,
                                              "uri": pub.uri, "sha256": pub.sha256,
                                              "model_data_url": models_url, "deployed_at": now}
    write_ledger(store_uri, endpoint, ledger)


@flow(name="deploy", log_prints=True)
def deploy(ensembles: list[str] | None = None, endpoint: str = "local-mme",
           backend: Literal["local", "sagemaker"] = "local", target: str | None = None,
           artifacts_dir: str | None = None, store_uri: str | None = None,
           warm_invocations: int = 20, sagemaker: SageMakerOptions | None = None,
           dry_run: bool = False) -> dict[str, Any]:
    """Publish ``ensembles`` (already built) to ``endpoint`` and validate each by TargetModel.

    ``backend="local"``: the embedded store and the local multi-model endpoint.
    ``backend="sagemaker"``: ``store_uri`` is ``s3://bucket/prefix`` and ``sagemaker`` says
    where and how the endpoint runs; ``dry_run`` lists every AWS call without making one.
    """
    ensembles = ensembles or ["text_embedding"]
    target = target or ("sagemaker-gpu" if backend == "sagemaker" else "local-cpu")
    art_dir = Path(artifacts_dir).expanduser() if artifacts_dir else paths.artifacts_dir(target)
    manifests = [read_manifest(art_dir, name) for name in ensembles]  # fail before any upload
    if backend == "sagemaker":
        if sagemaker is None or not store_uri:
            raise ValueError("backend 'sagemaker' needs store_uri (s3://bucket/prefix) and "
                             "sagemaker options (role_arn, region, instance type...)")
        for warning in check_targets(manifests, backend,
                                     allow_mismatch=sagemaker.allow_target_mismatch):
            get_run_logger().warning(warning)
        with endpoint_lock(endpoint):
            result = deploy_sagemaker_task(manifests, endpoint, store_uri, sagemaker,
                                           warm_invocations, dry_run)
        if not dry_run:
            _record(store_uri, endpoint, result["model_data_url"].rstrip("/"), manifests,
                    result.pop("published"),
                    {"backend": "sagemaker", "region": sagemaker.region, "plan": result["plan"]})
            _summary(result)
        return result
    store_uri = store_uri or paths.store_uri()
    models_url = model_data_url(store_uri, endpoint)
    if dry_run:
        from flows.sagemaker_backend import publish_actions

        return {"endpoint": endpoint, "dry_run": True,
                "calls": publish_actions(manifests, models_url)
                + [f"start or reuse the local endpoint {endpoint}"]
                + [f"invoke TargetModel={m['target_model']} (validation)" for m in manifests]}

    with endpoint_lock(endpoint):  # a second deploy of this endpoint waits for this one
        result = _deploy_local(manifests, endpoint, store_uri, models_url, warm_invocations)
    _summary(result)
    return result


def _deploy_local(manifests: list[dict[str, Any]], endpoint: str, store_uri: str,
                  models_url: str, warm_invocations: int) -> dict[str, Any]:
    log = get_run_logger()
    backup_dir = Path(tempfile.mkdtemp(prefix="mme-deploy-backup-"))
    published: list[Published] = []
    info: EndpointInfo | None = None
    names = [m["ensemble"] for m in manifests]
    record.note_ensembles_publishing(endpoint, manifests, models_url, backend="local",
                                     store_uri=store_uri, model_data_url=models_url)
    try:
        published = [publish_task(m, models_url, backup_dir) for m in manifests]
        info = ensure_endpoint_task(endpoint, models_url)
        for pub in published:
            if pub.uploaded:
                refresh_task(info, pub.target_model)
        results = [validate_task(info, endpoint, m, warm_invocations) for m in manifests]
        check_validations(manifests, results)
    except BaseException as e:
        for pub in published:
            what = restore_previous(pub, models_url)
            log.error("%s: deploy failed (%s); object %s", pub.ensemble, e, what)
            if info is not None:  # unload what failed; the next request loads the restored object
                try:
                    httpx.delete(f"{info.url}/models/{pub.target_model}", timeout=60)
                except httpx.HTTPError:
                    pass
        record.settle_ensembles(endpoint, names, deployed=False)
        raise
    finally:
        shutil.rmtree(backup_dir, ignore_errors=True)
    record.settle_ensembles(endpoint, names, deployed=True)

    _record(store_uri, endpoint, models_url, manifests, published)
    result = {"endpoint": endpoint, "url": info.url, "model_data_url": models_url,
              "ensembles": deploy_entries(manifests, published, results),
              "endpoint_info": asdict(info)}
    return result


def _summary(result: dict[str, Any]) -> None:
    create_table_artifact(
        key="deploy-summary",
        table=[{"ensemble": e["name"], "sha256": short(e["sha256"]), "size": human_bytes(e["bytes"]),
                "uri": e["artifact"], "endpoint": result["url"],
                "validation": f"{e['validation']['metric']}={e['validation']['value']:.6f}",
                "cold_ms": e["latency_ms"]["cold"], "p50_ms": e["latency_ms"]["p50"],
                "p99_ms": e["latency_ms"]["p99"]} for e in result["ensembles"]],
        description=f"Deployed to endpoint {result['endpoint']} ({result['url']})",
    )
    for e in result["ensembles"]:  # ensemble -> artifact URI -> endpoint, clickable in the UI
        create_link_artifact(key=_artifact_key(f"deployed-{e['name']}-{result['endpoint']}"),
                             link=e["artifact"], link_text=f"{e['name']} on {result['endpoint']}",
                             description=f"TargetModel {e['artifact'].rsplit('/', 1)[-1]} served by "
                                         f"{result['endpoint']} ({result['url']}), sha256 {e['sha256']}")


def _artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
