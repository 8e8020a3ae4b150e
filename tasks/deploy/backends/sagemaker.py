"""The ``sagemaker`` backend: a SageMaker multi-model endpoint.

The same steps as the local backend, against AWS: publish the tarballs to the endpoint's S3
model prefix, each version under its own TargetModel ``<ensemble>-<sha256[:12]>.tar.gz`` (never
over an object an instance may have loaded; skipped when the sha256 in the object's metadata
already matches), create or
update the model / endpoint config / endpoint and its autoscaling (the calls come from one
plan, so the dry run prints exactly what would run and a re-run with the same inputs makes no
call), wait for ``InService``, then invoke every ensemble by ``TargetModel`` and score it. A
failed validation rolls the endpoint back to the config it served before (blue/green:
SageMaker kept the old fleet until the new one was InService), puts the replaced S3 objects
back, and fails the deploy saying why. Every resource is written to the endpoint record as it
is made (:mod:`infra.records.endpoint`), so retire finds it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field, TypeAdapter, field_validator

from infra.records import endpoint as record
from infra.aws import sagemaker as sm
from infra.aws import sagemaker_cleanup as cleanup
from infra.aws.clients import AwsClients, ClientFactory, aws_clients
from infra.aws.errors import describe as aws_describe
from infra.aws.errors import one_line
from infra.errors import InvalidInput
from ensembles.spec import Target
from infra.jsontypes import JsonObject
from infra.records.endpoint import EnsembleLine
from infra.records.manifest import Manifest
from infra.store.objects import S3Store, open_store
from infra.aws.triton_container import triton_environment
from infra.triton.release import DEFAULT_RELEASE
from tasks.deploy.backends.base import (
    Backend,
    DELETED,
    INFO,
    LEFT,
    MISSING,
    Step,
    check_targets,
    delete_versions,
    missing_entry,
    prune_versions,
    publish_actions,
    restore_objects,
    settle,
    write_deploy_ledger,
)
from tasks.deploy.publish import Published, model_data_url, publish_artifact
from tasks.deploy.records import DeployedEnsemble, DeployPlan, DeployResult, EndpointHandle, ValidationReport
from tasks.deploy.validate import LoadWait, validate_deployed

Log = Callable[[str], None]


class SageMakerOptions(BaseModel):
    """Where and how the MME runs. Validated by Prefect from the flow's parameters."""

    region: str = "us-east-1"
    role_arn: str = Field(..., description="the endpoint's execution role (see `mme iam-policy`)")
    instance_type: str = "ml.g4dn.xlarge"
    instance_count: int = Field(default=1, ge=1)
    triton_release: str = str(DEFAULT_RELEASE)
    autoscaling_min: int | None = None
    autoscaling_max: int | None = None
    target_invocations_per_instance: float = 200.0
    model_cache: str = Field(default="Enabled", description="MultiModelConfig.ModelCacheSetting: "
                             "Enabled or Disabled (case-insensitive)")
    environment: dict[str, str] = Field(
        default_factory=dict, description="the Triton container's Environment, e.g. "
                                          "SAGEMAKER_TRITON_LOG_VERBOSE=false")
    inference_ami_version: str | None = Field(
        default=None, description="ProductionVariant.InferenceAmiVersion (the instances' AMI: "
                                  "NVIDIA driver and CUDA version); None lets SageMaker choose")
    shm_default_bytes: int | None = Field(
        default=None, description="SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE: each Python-backend model "
                                  "instance's shared memory (None: 4 MiB, infra.aws.triton_container)")
    shm_growth_bytes: int | None = Field(
        default=None, description="SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE (None: 1 MiB)")
    triton_log_verbose: int | None = Field(
        default=None, description="SAGEMAKER_TRITON_LOG_VERBOSE (None: 0, off; the container's own "
                                  "default is on: a CloudWatch line per request)")
    tags: dict[str, str] = Field(default_factory=dict, description="the caller's tags on the model, "
                                 "endpoint config and endpoint (SageMaker's tag rules are checked)")
    runtime_url: str | None = Field(
        default=None, description="send validation invokes to this runtime URL instead of "
                                  "AWS's (a VPC endpoint, or the local endpoint in tests)")
    wait_timeout_s: float = 3600.0
    poll_s: float = 30.0
    allow_target_mismatch: bool = Field(
        default=False, description="deploy builds made for another target (e.g. local-cpu) anyway")
    load_wait_s: float = Field(
        default=360.0, gt=0, description="validation retries 429 ModelNotReadyException for this "
                                         "long per model (SageMaker's load limit)")
    clients: ClientFactory | None = Field(
        default=None, exclude=True,
        description="how AWS clients are made: an infra.aws.clients.ClientFactory (region, runtime_url) "
                    "-> AwsClients; None: boto3's default chain. Tests pass moto-bound ones; "
                    "never serialized")

    @field_validator("model_cache")
    @classmethod
    def _cache_setting(cls, value: str) -> str:
        """``enabled``/``disabled`` (the CLI's spelling) -> AWS's ``Enabled``/``Disabled``."""
        normal = str(value).strip().capitalize()
        if normal not in ("Enabled", "Disabled"):
            raise InvalidInput(f"model_cache must be enabled or disabled, not {value!r}")
        return normal

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: dict[str, str]) -> dict[str, str]:
        return sm.check_environment(value)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        return sm.check_tags(value)

    @field_validator("inference_ami_version")
    @classmethod
    def _ami(cls, value: str | None) -> str | None:
        return None if value is None else sm.check_inference_ami_version(value)


def check_builds(manifests: list[Manifest], opts: SageMakerOptions, log: Log) -> list[str]:
    """Before any AWS call: refuse TensorRT plans compiled for another Triton release than the
    one served; warn (and return the lines) when a plan was built on another GPU architecture
    than the instance type's (the instance type itself is checked by :func:`make_plan`)."""
    from infra.aws.gpu_instances import plan_gpu_warnings, plan_release_problems

    problems = plan_release_problems(manifests, opts.triton_release)
    if problems:
        raise InvalidInput("TensorRT plans built for another Triton release (a plan only loads "
                           "in the TensorRT version that built it):\n  - " + "\n  - ".join(problems))
    warnings = plan_gpu_warnings(manifests, opts.instance_type)
    for line in warnings:
        log(f"WARNING {line}")
    return warnings


def make_plan(endpoint: str, store_uri: str, opts: SageMakerOptions) -> sm.EndpointPlan:
    """The endpoint plan of these options, refused before any AWS call when SageMaker or Triton
    would refuse it later (store, instance type, release, AMI, tags, Triton settings); the
    container Environment carries the Triton settings explicitly (:mod:`infra.aws.triton_container`)."""
    if not store_uri.startswith("s3://"):
        raise InvalidInput(f"the sagemaker backend needs an s3:// store (got {store_uri!r}): "
                           f"pass --store s3://bucket/prefix")
    autoscaling = {}
    if opts.autoscaling_max is not None:
        autoscaling = {"autoscaling_min": opts.autoscaling_min, "autoscaling_max": opts.autoscaling_max,
                       "target_invocations_per_instance": opts.target_invocations_per_instance}
    environment = triton_environment(opts.environment, shm_default_bytes=opts.shm_default_bytes,
                                     shm_growth_bytes=opts.shm_growth_bytes,
                                     log_verbose=opts.triton_log_verbose)
    return sm.plan_for(endpoint, model_data_url(store_uri, endpoint), opts.role_arn,
                       region=opts.region, release=opts.triton_release,
                       instance_type=opts.instance_type, initial_instance_count=opts.instance_count,
                       model_cache_setting=opts.model_cache, environment=environment,
                       inference_ami_version=opts.inference_ami_version, tags=opts.tags, **autoscaling)


def plan_to_json(plan: sm.EndpointPlan) -> JsonObject:
    """The plan as the endpoint record and the ledger keep it (its constructor's fields), for
    a retire from any machine to find what it named."""
    return {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan) if f.init}


def plan_from_json(doc: JsonObject) -> sm.EndpointPlan:
    """A plan :func:`plan_to_json` wrote, as the plan again (its fields checked)."""
    return TypeAdapter(sm.EndpointPlan).validate_python(doc)


def current_state(clients: AwsClients, plan: sm.EndpointPlan, log: Log) -> sm.DeployState:
    try:
        return sm.describe_state(clients.sagemaker, clients.autoscaling, plan)
    except Exception as e:
        if type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            log(f"no AWS credentials: assuming nothing exists yet ({e})")
            return sm.DeployState()
        if isinstance(e, ClientError):
            raise aws_describe(e, service="sagemaker", resource=f"endpoint {plan.endpoint_name}") from e
        raise


class SageMakerBackend:
    """:class:`~tasks.deploy.backends.DeployBackend` on SageMaker. ``aws`` makes its clients (once,
    on first use: a plan that is refused never makes one)."""

    name: Backend = "sagemaker"
    default_target: Target = "sagemaker-gpu"

    def __init__(self, endpoint: str, store_uri: str, opts: SageMakerOptions, *,
                 aws: ClientFactory | None = None, log: Log | None = None) -> None:
        self.endpoint, self.store_uri, self.opts = endpoint, store_uri, opts
        self.models_url = model_data_url(store_uri, endpoint)
        self._factory = aws or aws_clients
        self._clients: AwsClients | None = None
        self.log: Log = log or (lambda line: None)
        self._plan: sm.EndpointPlan | None = None
        self.before = sm.DeployState()  # the endpoint as it was before this deploy
        self.attempted: list[sm.Call] = []  # every control-plane call started, for the rollback
        self.warnings: list[str] = []

    @property
    def clients(self) -> AwsClients:
        if self._clients is None:
            self._clients = self._factory(self.opts.region, self.opts.runtime_url)
        return self._clients

    @property
    def endpoint_plan(self) -> sm.EndpointPlan:
        if self._plan is None:
            self._plan = make_plan(self.endpoint, self.store_uri, self.opts)
        return self._plan

    def check(self, manifests: list[Manifest]) -> list[str]:
        """The target, instance type and TensorRT release checks: all before any AWS call."""
        warnings = check_targets(manifests, self.name, allow_mismatch=self.opts.allow_target_mismatch)
        self.endpoint_plan  # noqa: B018 - refuses an instance type SageMaker MMEs cannot run
        self.warnings = warnings + check_builds(manifests, self.opts, self.log)
        return self.warnings

    def plan(self, manifests: list[Manifest]) -> DeployPlan:
        plan = self.endpoint_plan
        state = current_state(self.clients, plan, self.log)
        lines = publish_actions(manifests, self.models_url) + sm.format_calls(
            sm.plan_calls(plan, state)).splitlines()
        lines += [f"sagemaker-runtime.InvokeEndpoint EndpointName={self.endpoint} "
                  f"TargetModel={m.target_model} (validation)" for m in manifests]
        return DeployPlan(endpoint=self.endpoint, calls=lines, model_data_url=plan.model_data_url,
                          image=plan.image_uri, hourly_cost_usd=plan.hourly_cost(),
                          warnings=self.warnings)

    def begin(self, manifests: list[Manifest]) -> None:
        plan = self.endpoint_plan  # refuses a bad plan before any client is made
        store, _ = open_store(self.models_url)
        if isinstance(store, S3Store):  # always, for an s3:// store: the client that will upload
            sm.check_bucket_region(store.client, plan.model_data_url, self.opts.region)
        self.before = current_state(self.clients, plan, self.log)
        record.note_ensembles_publishing(self.endpoint, manifests, self.models_url,
                                         **self._record_defaults())

    def publish(self, manifest: Manifest, backup_dir: Path) -> Published:
        return publish_artifact(manifest, self.models_url, backup_dir)

    def ensure_endpoint(self) -> EndpointHandle:
        """Bring the endpoint to the plan. The calls are re-planned from what AWS has now, so
        a retry after a transient failure does not repeat a create that succeeded."""
        plan = self.endpoint_plan
        calls = sm.plan_calls(plan, current_state(self.clients, plan, self.log))
        if calls:
            apply_recorded(calls, self.clients, self.endpoint, self.opts, self.attempted, self.log)
        else:
            self.log(f"endpoint {self.endpoint} already matches the plan: no control-plane call needed")
        return EndpointHandle(url=f"sagemaker://{self.opts.region}/{self.endpoint}")

    def activate(self, handle: EndpointHandle, published: list[Published]) -> None:
        """Nothing to call: SageMaker loads the object on the first request for it. Said when
        an object was replaced under an endpoint that may have loaded the old one."""
        for pub in published:
            if pub.uploaded and pub.previous_backup and self.before.endpoint_status:
                self.log(f"{pub.ensemble}: WARNING {pub.target_model} held other bytes and was "
                         f"replaced in place; instances that already loaded it keep those until "
                         f"SageMaker unloads it")

    def validate(self, handle: EndpointHandle, manifest: Manifest, warm: int) -> ValidationReport:
        return validate_deployed(None, self.endpoint, manifest, warm_invocations=warm,
                                 runtime_client=self.clients.runtime,
                                 load_wait=LoadWait(limit_s=self.opts.load_wait_s))

    def rollback(self, handle: EndpointHandle | None, published: list[Published],
                 error: BaseException) -> list[str]:
        self.log(f"deploy of {self.endpoint} failed: {error}")
        roll_back(self.clients, self.endpoint_plan, self.before, self.attempted, self.opts, self.log)
        return restore_objects(published, self.models_url, error)

    def finish(self, handle: EndpointHandle, manifests: list[Manifest], published: list[Published],
               entries: list[DeployedEnsemble]) -> DeployResult:
        plan = self.endpoint_plan
        settle(self.endpoint, manifests, deployed=True)
        write_deploy_ledger(self.store_uri, self.endpoint, plan.model_data_url.rstrip("/"), published,
                            backend="sagemaker", region=self.opts.region, plan=plan_to_json(plan))
        return DeployResult(
            endpoint=self.endpoint, url=handle.url, model_data_url=plan.model_data_url,
            image=plan.image_uri, endpoint_config=plan.endpoint_config_name,
            hourly_cost_usd=plan.hourly_cost(), ensembles=entries, plan=plan_to_json(plan),
            calls=[f"{c.service}.{c.operation}" for c in self.attempted])

    def _record_defaults(self) -> dict[str, record.RecordDefault]:
        """What the endpoint record says about a SageMaker endpoint besides its resources."""
        plan = self.endpoint_plan
        return {"backend": "sagemaker", "store_uri": self.store_uri, "region": self.opts.region,
                "model_data_url": plan.model_data_url, "plan": plan_to_json(plan)}

    def prune(self, handle: EndpointHandle, manifests: list[Manifest], keep: int) -> list[Step]:
        # nothing to unload: SageMaker unloads an idle model on its own (the pruned versions
        # are ones no client is told to invoke any more)
        return prune_versions(self.endpoint, self.store_uri, [m.ensemble for m in manifests], keep)

    def retire_ensemble(self, ensemble: str, entry: EnsembleLine | None) -> Step:
        # (a deleted object stays loaded on instances that have it until SageMaker unloads
        # it; requests for it fail once it is unloaded)
        return missing_entry(self.endpoint, ensemble) if entry is None else delete_versions(ensemble, entry)

    def retire_endpoint(self, plan_doc: JsonObject | None) -> list[Step]:
        """Delete the endpoint and every config, model, scaling policy and scalable target of
        it that we own: those in the endpoint record, those a plan names, those found by name."""
        names: dict[str, list[str]] = {}
        if plan_doc:
            plan = plan_from_json(plan_doc)
            names = {"model": [plan.model_name], "endpoint_config": [plan.endpoint_config_name]}
        outcomes = _delete(self.clients, self.endpoint, names, discover=True, log=self.log)
        status = {cleanup.DELETED: DELETED, cleanup.MISSING: MISSING}
        steps = [Step(status.get(o.status, LEFT), f"endpoint {self.endpoint}: {o.line()}")
                 for o in outcomes]
        if not outcomes:
            steps.append(Step(INFO, f"endpoint {self.endpoint}: nothing of ours found on SageMaker "
                                    f"in {self.opts.region}"))
        return steps


def apply_recorded(calls: list[sm.Call], clients: AwsClients, endpoint: str,
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
            sm.apply([call], clients.by_service(), log=log, timeout_s=opts.wait_timeout_s, poll_s=opts.poll_s)
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


def roll_back(clients: AwsClients, plan: sm.EndpointPlan, state: sm.DeployState,
              attempted: list[sm.Call], opts: SageMakerOptions, log: Log) -> None:
    """Undo a failed deploy's control-plane part; never raises (the deploy's error is what
    the user must see), but says what is left and that ``mme retire`` removes it.

    Update of a serving endpoint: back to the config it served (SageMaker kept the old fleet
    serving meanwhile), then the config and model this deploy created are deleted. Brand-new
    endpoint: it is deleted with every config, model and scaling resource of it we own."""
    endpoint = plan.endpoint_name
    if not attempted:
        return
    made = {"model": [str(c.params["ModelName"]) for c in attempted if c.operation == "create_model"],
            "endpoint_config": [str(c.params["EndpointConfigName"]) for c in attempted
                                if c.operation == "create_endpoint_config"]}
    try:
        if state.endpoint_status is None:  # brand-new: delete it and all of ours around it
            log(f"deleting the new endpoint {endpoint} and what was created for it")
            outcomes = _delete(clients, endpoint, made, discover=True, log=log)
        else:
            if any(c.operation == "update_endpoint" for c in attempted) and state.endpoint_config_name:
                log(f"rolling {endpoint} back to {state.endpoint_config_name}")
                sm.rollback_endpoint(clients.sagemaker, endpoint, state.endpoint_config_name,
                                     aas_client=clients.autoscaling, previous_state=state,
                                     settings=sm.ApplySettings(
                                         log=log, timeout_s=opts.wait_timeout_s, poll_s=opts.poll_s,
                                         on_applied=lambda c: _note_done(endpoint, c)))
            outcomes = _delete(clients, endpoint, made, discover=False, log=log)
    except Exception as e:  # noqa: BLE001 - reported, and the record keeps every resource
        log(f"rollback of {endpoint} failed: {one_line(e)}; what this deploy created stays in "
            f"{record.record_path(endpoint)}: `mme retire --endpoint {endpoint} --stop` deletes it")
        return
    for o in outcomes:
        log(f"rollback: {o.line()}")
    if any(o.status == cleanup.FAILED for o in outcomes):
        log(f"some resources of {endpoint} are left: `mme retire --endpoint {endpoint} --stop` deletes them")


def _delete(clients: AwsClients, endpoint: str, names: dict[str, list[str]], *,
            discover: bool, log: Log, dry_run: bool = False) -> list[cleanup.Outcome]:
    """Delete owned resources of ``endpoint`` (record + ``names`` + discovery), keeping the
    endpoint record in step: each deleted resource leaves it at once."""
    sm_client, aas = clients.sagemaker, clients.autoscaling
    rec = record.read_record(endpoint)
    recorded = [] if rec is None else rec.resources
    resources = recorded if discover else [
        r for r in recorded if r.name in {n for ns in names.values() for n in ns}]
    try:
        seen = cleanup.gather(sm_client, aas, endpoint, resources, names=names, discover=discover)
    except ClientError as e:
        raise aws_describe(e, service="sagemaker", resource=f"endpoint {endpoint}") from e

    def forget(kind: str, name: str) -> None:
        with record.updating(endpoint) as rec:
            record.drop_resource(rec, kind, name)

    return cleanup.delete_owned(sm_client, aas, endpoint, seen, dry_run=dry_run, log=log,
                                on_deleted=forget)
