"""Deploy to and retire from a SageMaker multi-model endpoint (the ``sagemaker`` backend).

The same steps as the local backend, against AWS: publish the tarballs to the endpoint's S3
model prefix (concurrently; multipart for big files; skipped when the sha256 in the object's
metadata already matches), create or update the model / endpoint config / endpoint and its
autoscaling (the calls come from one plan, so ``--dry-run`` prints exactly what would run and a
re-run with the same inputs makes no call), wait for ``InService``, then invoke every ensemble
by ``TargetModel`` and score it. A failed validation rolls the endpoint back to the config it
served before (blue/green: SageMaker kept the old fleet until the new one was InService), puts
the replaced S3 objects back, and fails the flow saying why.
"""


import concurrent.futures
import dataclasses
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, Field

from infra import sagemaker as sm
from infra.store import ObjectNotFound, open_store
from tasks.publish import Published, model_data_url, publish_artifact, restore_previous
from tasks.validate import check_validations, deploy_entries, validate_deployed

Log = Callable[[str], None]


class SageMakerOptions(BaseModel):
    """Where and how the MME runs. Validated by Prefect from the flow's parameters."""

    region: str = "us-east-1"
    role_arn: str = Field(..., description="the endpoint's execution role (see `mme iam-policy`)")
    instance_type: str = "ml.g4dn.xlarge"
    instance_count: int = Field(1, ge=1)
    triton_release: str = "24.09"
    autoscaling_min: int | None = None
    autoscaling_max: int | None = None
    target_invocations_per_instance: float = 200.0
    model_cache: str = "Enabled"
    runtime_url: str | None = Field(
        None, description="send validation invokes to this runtime URL instead of AWS's "
                          "(a VPC endpoint, or the local endpoint in tests)")
    wait_timeout_s: float = 3600.0
    poll_s: float = 30.0


def _default_clients(region: str, runtime_url: str | None) -> dict[str, Any]:
    import boto3

    from infra.runtime_client import runtime_client_for

    session = boto3.session.Session(region_name=region)
    return {sm.SAGEMAKER: session.client("sagemaker"),
            sm.AUTOSCALING: session.client("application-autoscaling"),
            "runtime": runtime_client_for(runtime_url, region=region) if runtime_url
            else session.client("sagemaker-runtime")}


# Tests swap this for clients bound to moto; everything else uses boto3's default chain.
CLIENT_FACTORY: Callable[[str, str | None], dict[str, Any]] = _default_clients


def make_plan(endpoint: str, store_uri: str, opts: SageMakerOptions) -> sm.EndpointPlan:
    if not store_uri.startswith("s3://"):
        raise ValueError(f"the sagemaker backend needs an s3:// store (got {store_uri!r}): "
                         f"pass --store s3://bucket/prefix")
    autoscaling = {}
    if opts.autoscaling_max is not None:
        autoscaling = {"autoscaling_min": opts.autoscaling_min, "autoscaling_max": opts.autoscaling_max,
                       "target_invocations_per_instance": opts.target_invocations_per_instance}
    return sm.plan_for(endpoint, model_data_url(store_uri, endpoint), opts.role_arn,
                       region=opts.region, release=opts.triton_release,
                       instance_type=opts.instance_type, initial_instance_count=opts.instance_count,
                       model_cache_setting=opts.model_cache, **autoscaling)


def plan_to_json(plan: sm.EndpointPlan) -> dict[str, Any]:
    return {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan) if f.init}


def publish_actions(manifests: list[dict[str, Any]], models_url: str) -> list[str]:
    """What publishing would do, object by object (for --dry-run)."""
    store, prefix = open_store(models_url)
    lines = []
    for m in manifests:
        key = f"{prefix}/{m['target_model']}" if prefix else m["target_model"]
        try:
            same = store.head(key).sha256 == m["sha256"]
        except ObjectNotFound:
            same = False
        except Exception as e:  # noqa: BLE001 - no credentials in a dry run: say so, go on
            if "Credentials" not in type(e).__name__ and "credentials" not in str(e):
                raise
            same = False
        lines.append(f"s3.{'(unchanged, skipped) ' if same else ''}PutObject "
                     f"{store.uri_for(key)} ({m['bytes']} bytes, sha256 {m['sha256'][:12]})")
    return lines


def publish_all(manifests: list[dict[str, Any]], models_url: str, backup_dir: Path,
                max_workers: int = 4) -> list[Published]:
    """Upload the tarballs concurrently (each one itself multipart above 8 MB)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(lambda m: publish_artifact(m, models_url, backup_dir), manifests))


def current_state(clients: dict[str, Any], plan: sm.EndpointPlan, log: Log) -> sm.DeployState:
    try:
        return sm.describe_state(clients[sm.SAGEMAKER], clients[sm.AUTOSCALING], plan)
    except Exception as e:  # noqa: BLE001 - botocore.exceptions.NoCredentialsError and kin
        if type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            log(f"no AWS credentials: assuming nothing exists yet ({e})")
            return sm.DeployState()
        raise


def deploy_sagemaker(manifests: list[dict[str, Any]], endpoint: str, store_uri: str,
                     opts: SageMakerOptions, *, backup_dir: Path, warm_invocations: int,
                     dry_run: bool, log: Log) -> dict[str, Any]:
    plan = make_plan(endpoint, store_uri, opts)
    models_url = model_data_url(store_uri, endpoint)
    clients = CLIENT_FACTORY(opts.region, opts.runtime_url)
    state = current_state(clients, plan, log)
    calls = sm.plan_calls(plan, state)
    cost = plan.hourly_cost()
    if dry_run:
        lines = publish_actions(manifests, models_url) + sm.format_calls(calls).splitlines()
        lines += [f"sagemaker-runtime.InvokeEndpoint EndpointName={endpoint} "
                  f"TargetModel={m['target_model']} (validation)" for m in manifests]
        return {"endpoint": endpoint, "dry_run": True, "calls": lines, "model_data_url": plan.model_data_url,
                "image": plan.image_uri, "hourly_cost_usd": cost}

    published = publish_all(manifests, models_url, backup_dir)
    for pub in published:
        log(f"{pub.ensemble}: {'uploaded to' if pub.uploaded else 'unchanged at'} {pub.uri}")
        if pub.uploaded and pub.previous_backup and state.endpoint_status:
            log(f"{pub.ensemble}: WARNING {pub.target_model} replaced in place; instances that "
                f"already loaded it keep the old version until SageMaker unloads it (use a new "
                f"TargetModel name per version to switch at once)")
    sm_client, aas = clients[sm.SAGEMAKER], clients[sm.AUTOSCALING]
    applied: list[sm.Call] = []
    try:
        if calls:
            sm.apply(calls, clients, log=log, timeout_s=opts.wait_timeout_s, poll_s=opts.poll_s)
            applied = calls
        else:
            log(f"endpoint {endpoint} already matches the plan: no control-plane call needed")
        results = [validate_deployed(None, endpoint, m, warm_invocations=warm_invocations,
                                     runtime_client=clients["runtime"]) for m in manifests]
        check_validations(manifests, results)
    except BaseException as e:
        log(f"deploy of {endpoint} failed: {e}")
        updated = any(c.operation in ("update_endpoint", "create_endpoint") for c in applied)
        if updated and state.endpoint_config_name:
            log(f"rolling {endpoint} back to {state.endpoint_config_name}")
            sm.rollback_endpoint(sm_client, endpoint, state.endpoint_config_name, aas_client=aas,
                                 previous_state=state, log=log, timeout_s=opts.wait_timeout_s,
                                 poll_s=opts.poll_s)
        elif updated:  # a brand-new endpoint that does not work: stop paying for it
            log(f"deleting the new endpoint {endpoint}, which failed validation")
            sm.delete_endpoint_and_resources(sm_client, aas, plan, log=log)
        for pub in published:
            log(f"{pub.ensemble}: {restore_previous(pub, models_url)}")
        raise
    entries = deploy_entries(manifests, published, results)
    return {"endpoint": endpoint, "url": f"sagemaker://{opts.region}/{endpoint}",
            "model_data_url": plan.model_data_url, "image": plan.image_uri,
            "endpoint_config": plan.endpoint_config_name, "hourly_cost_usd": cost,
            "calls": [f"{c.service}.{c.operation}" for c in applied], "ensembles": entries,
            "published": published, "plan": plan_to_json(plan)}


def retire_sagemaker_endpoint(plan_doc: dict[str, Any], region: str, *, dry_run: bool = False,
                              log: Log) -> list[str]:
    """Delete the endpoint, then the configs and models we created for it (tagged as ours)."""
    plan = sm.EndpointPlan(**plan_doc)
    clients = CLIENT_FACTORY(region, None)
    calls = sm.delete_endpoint_and_resources(clients[sm.SAGEMAKER], clients[sm.AUTOSCALING], plan,
                                             dry_run=dry_run, log=log)
    return [f"{c.service}.{c.operation}" for c in calls]
