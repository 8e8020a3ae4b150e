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

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field, field_validator

from infra import endpoint_record as record
from infra import sagemaker as sm
from infra import sagemaker_cleanup as cleanup
from infra.aws_errors import describe as aws_describe
from infra.aws_errors import one_line
from infra.store import ObjectNotFound, open_store
from infra.triton_release import DEFAULT_RELEASE
from tasks.publish import Published, model_data_url, publish_artifact, restore_previous
from tasks.validate import LoadWait, check_validations, deploy_entries, validate_deployed

Log = Callable[[str], None]


class SageMakerOptions(BaseModel):
    """Where and how the MME runs. Validated by Prefect from the flow's parameters."""

    region: str = "us-east-1"
    role_arn: str = Field(..., description="the endpoint's execution role (see `mme iam-policy`)")
    instance_type: str = "ml.g4dn.xlarge"
    instance_count: int = Field(1, ge=1)
    triton_release: str = str(DEFAULT_RELEASE)
    autoscaling_min: int | None = None
    autoscaling_max: int | None = None
    target_invocations_per_instance: float = 200.0
    model_cache: str = Field("Enabled", description="MultiModelConfig.ModelCacheSetting: "
                                                    "Enabled or Disabled (case-insensitive)")
    environment: dict[str, str] = Field(
        default_factory=dict, description="the Triton container's Environment, e.g. "
                                          "SAGEMAKER_TRITON_LOG_VERBOSE=false")
    inference_ami_version: str | None = Field(
        None, description="ProductionVariant.InferenceAmiVersion (the instances' AMI: NVIDIA "
                          "driver and CUDA version); None lets SageMaker choose")
    runtime_url: str | None = Field(
        None, description="send validation invokes to this runtime URL instead of AWS's "
                          "(a VPC endpoint, or the local endpoint in tests)")
    wait_timeout_s: float = 3600.0
    poll_s: float = 30.0
    allow_target_mismatch: bool = Field(
        False, description="deploy builds made for another target (e.g. local-cpu) anyway")
    load_wait_s: float = Field(
        360.0, gt=0, description="validation retries 429 ModelNotReadyException for this long "
                                 "per model (SageMaker's load limit)")

    @field_validator("model_cache")
    @classmethod
    def _cache_setting(cls, value: str) -> str:
        """``enabled``/``disabled`` (the CLI's spelling) -> AWS's ``Enabled``/``Disabled``."""
        normal = str(value).strip().capitalize()
        if normal not in ("Enabled", "Disabled"):
            raise ValueError(f"model_cache must be enabled or disabled, not {value!r}")
        return normal

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: dict[str, str]) -> dict[str, str]:
        return sm.check_environment(value)

    @field_validator("inference_ami_version")
    @classmethod
    def _ami(cls, value: str | None) -> str | None:
        return None if value is None else sm.check_inference_ami_version(value)


def check_builds(manifests: list[dict[str, Any]], opts: SageMakerOptions, log: Log) -> list[str]:
    """Before any AWS call: refuse TensorRT plans compiled for another Triton release than the
    one served; warn (and return the lines) when a plan was built on another GPU architecture
    than the instance type's (the instance type itself is checked by :func:`make_plan`)."""
    from infra.gpu_instances import plan_gpu_warnings, plan_release_problems

    problems = plan_release_problems(manifests, opts.triton_release)
    if problems:
        raise ValueError("TensorRT plans built for another Triton release (a plan only loads "
                         "in the TensorRT version that built it):\n  - " + "\n  - ".join(problems))
    warnings = plan_gpu_warnings(manifests, opts.instance_type)
    for line in warnings:
        log(f"WARNING {line}")
    return warnings


def _default_clients(region: str, runtime_url: str | None) -> dict[str, Any]:
    import boto3

    from infra.runtime_client import runtime_client_for, runtime_config

    session = boto3.session.Session(region_name=region)
    return {sm.SAGEMAKER: session.client("sagemaker"),
            sm.AUTOSCALING: session.client("application-autoscaling"),
            "runtime": runtime_client_for(runtime_url, region=region) if runtime_url
            else session.client("sagemaker-runtime", config=runtime_config())}


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
                       model_cache_setting=opts.model_cache, environment=opts.environment,
                       inference_ami_version=opts.inference_ami_version, **autoscaling)


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
        if isinstance(e, ClientError):
            raise aws_describe(e, service="sagemaker", resource=f"endpoint {plan.endpoint_name}") from e
        raise


def deploy_sagemaker(manifests: list[dict[str, Any]], endpoint: str, store_uri: str,
                     opts: SageMakerOptions, *, backup_dir: Path, warm_invocations: int,
                     dry_run: bool, log: Log) -> dict[str, Any]:
    plan = make_plan(endpoint, store_uri, opts)
    warnings = check_builds(manifests, opts, log)
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
                "image": plan.image_uri, "hourly_cost_usd": cost, "warnings": warnings}

    defaults = record_defaults(endpoint, store_uri, plan, opts.region)
    record.note_ensembles_publishing(endpoint, manifests, models_url, **defaults)
    published = publish_all(manifests, models_url, backup_dir)
    for pub in published:
        log(f"{pub.ensemble}: {'uploaded to' if pub.uploaded else 'unchanged at'} {pub.uri}")
        if pub.uploaded and pub.previous_backup and state.endpoint_status:
            log(f"{pub.ensemble}: WARNING {pub.target_model} replaced in place; instances that "
                f"already loaded it keep the old version until SageMaker unloads it (use a new "
                f"TargetModel name per version to switch at once)")
    attempted: list[sm.Call] = []
    try:
        if calls:
            apply_recorded(calls, clients, endpoint, opts, attempted, log)
        else:
            log(f"endpoint {endpoint} already matches the plan: no control-plane call needed")
        wait = LoadWait(limit_s=opts.load_wait_s)
        results = [validate_deployed(None, endpoint, m, warm_invocations=warm_invocations,
                                     runtime_client=clients["runtime"], load_wait=wait)
                   for m in manifests]
        check_validations(manifests, results)
    except BaseException as e:
        log(f"deploy of {endpoint} failed: {e}")
        roll_back(clients, plan, state, attempted, opts, log)
        for pub in published:
            log(f"{pub.ensemble}: {restore_previous(pub, models_url)}")
        record.settle_ensembles(endpoint, [m["ensemble"] for m in manifests], deployed=False)
        raise
    record.settle_ensembles(endpoint, [m["ensemble"] for m in manifests], deployed=True)
    entries = deploy_entries(manifests, published, results)
    return {"endpoint": endpoint, "url": f"sagemaker://{opts.region}/{endpoint}",
            "model_data_url": plan.model_data_url, "image": plan.image_uri,
            "endpoint_config": plan.endpoint_config_name, "hourly_cost_usd": cost,
            "calls": [f"{c.service}.{c.operation}" for c in attempted], "ensembles": entries,
            "published": published, "plan": plan_to_json(plan)}


def record_defaults(endpoint: str, store_uri: str, plan: sm.EndpointPlan, region: str) -> dict[str, Any]:
    """What the endpoint record says about a SageMaker endpoint besides its resources."""
    return {"backend": "sagemaker", "store_uri": store_uri, "region": region,
            "model_data_url": plan.model_data_url, "plan": plan_to_json(plan)}


def apply_recorded(calls: list[sm.Call], clients: dict[str, Any], endpoint: str,
                   opts: SageMakerOptions, attempted: list[sm.Call], log: Log) -> None:
    """:func:`sm.apply`, one call at a time, each resource in the endpoint record as it is made.

    A create is recorded (``creating``) *before* the call, so a crash or a timeout between
    AWS creating it and us hearing back still leaves it where retire looks; it becomes
    ``created`` when the call returned, and is dropped again when AWS refused it (nothing was
    made). ``attempted`` collects every call started, for the rollback."""
    for call in calls:
        attempted.append(call)
        if call.operation in record.CREATES:
            record.note_call(endpoint, call.operation, call.params, record.CREATING)
        try:
            sm.apply([call], clients, log=log, timeout_s=opts.wait_timeout_s, poll_s=opts.poll_s)
        except sm.AwsCallFailed:  # AWS refused it: nothing was made
            record.note_call(endpoint, call.operation, call.params, "refused")
            raise
        _note_done(endpoint, call)


def _note_done(endpoint: str, call: sm.Call) -> None:
    """Keep the record in step with a call that succeeded (a create, or a delete)."""
    if call.operation in record.CREATES:
        record.note_call(endpoint, call.operation, call.params, record.CREATED)
    elif call.operation in record.DELETES:
        record.note_call(endpoint, call.operation, call.params, "deleted")


def roll_back(clients: dict[str, Any], plan: sm.EndpointPlan, state: sm.DeployState,
              attempted: list[sm.Call], opts: SageMakerOptions, log: Log) -> None:
    """Undo a failed deploy's control-plane part; never raises (the deploy's error is what
    the user must see), but says what is left and that ``mme retire`` removes it.

    Update of a serving endpoint: back to the config it served (SageMaker kept the old fleet
    serving meanwhile), then the config and model this deploy created are deleted. Brand-new
    endpoint: it is deleted with every config, model and scaling resource of it we own."""
    endpoint = plan.endpoint_name
    if not attempted:
        return
    made = {"model": [c.params["ModelName"] for c in attempted if c.operation == "create_model"],
            "endpoint_config": [c.params["EndpointConfigName"] for c in attempted
                                if c.operation == "create_endpoint_config"]}
    try:
        if state.endpoint_status is None:  # brand-new: delete it and all of ours around it
            log(f"deleting the new endpoint {endpoint} and what was created for it")
            outcomes = _delete(clients, endpoint, made, discover=True, log=log)
        else:
            if any(c.operation == "update_endpoint" for c in attempted) and state.endpoint_config_name:
                log(f"rolling {endpoint} back to {state.endpoint_config_name}")
                sm.rollback_endpoint(clients[sm.SAGEMAKER], endpoint, state.endpoint_config_name,
                                     aas_client=clients[sm.AUTOSCALING], previous_state=state,
                                     log=log, timeout_s=opts.wait_timeout_s, poll_s=opts.poll_s,
                                     on_applied=lambda c: _note_done(endpoint, c))
            outcomes = _delete(clients, endpoint, made, discover=False, log=log)
    except Exception as e:  # noqa: BLE001 - reported, and the record keeps every resource
        log(f"rollback of {endpoint} failed: {one_line(e)}; what this deploy created stays in "
            f"{record.record_path(endpoint)}: `mme retire --endpoint {endpoint} --stop` deletes it")
        return
    for o in outcomes:
        log(f"rollback: {o.line()}")
    if any(o.status == cleanup.FAILED for o in outcomes):
        log(f"some resources of {endpoint} are left: `mme retire --endpoint {endpoint} --stop` deletes them")


def _delete(clients: dict[str, Any], endpoint: str, names: dict[str, list[str]], *,
            discover: bool, log: Log, dry_run: bool = False) -> list[cleanup.Outcome]:
    """Delete owned resources of ``endpoint`` (record + ``names`` + discovery), keeping the
    endpoint record in step: each deleted resource leaves it at once."""
    sm_client, aas = clients[sm.SAGEMAKER], clients[sm.AUTOSCALING]
    doc = record.read_record(endpoint) or {"resources": []}
    resources = doc["resources"] if discover else [
        r for r in doc["resources"] if r["name"] in {n for ns in names.values() for n in ns}]
    try:
        seen = cleanup.gather(sm_client, aas, endpoint, resources, names=names, discover=discover)
    except ClientError as e:
        raise aws_describe(e, service="sagemaker", resource=f"endpoint {endpoint}") from e

    def forget(kind: str, name: str) -> None:
        with record.updating(endpoint) as rec:
            record.drop_resource(rec, kind, name)

    return cleanup.delete_owned(sm_client, aas, endpoint, seen, dry_run=dry_run, log=log,
                                on_deleted=forget)


def retire_sagemaker_endpoint(endpoint: str, region: str, *, plan_doc: dict[str, Any] | None = None,
                              dry_run: bool = False, log: Log) -> list[cleanup.Outcome]:
    """Delete the endpoint and every config, model, scaling policy and scalable target of it
    that we own: those in the endpoint record, those a plan names, those found by name."""
    clients = CLIENT_FACTORY(region, None)
    names: dict[str, list[str]] = {}
    if plan_doc:
        plan = sm.EndpointPlan(**plan_doc)
        names = {"model": [plan.model_name], "endpoint_config": [plan.endpoint_config_name]}
    return _delete(clients, endpoint, names, discover=True, log=log, dry_run=dry_run)
