"""Retire finds and deletes what SageMaker deploys made; failed deploys are rolled back.

AWS is moto's (S3, SageMaker, Application Auto Scaling). moto lacks UpdateEndpoint and makes
every endpoint InService at once, so :class:`StuckSageMaker` wraps its client: UpdateEndpoint
as in tests/test_sagemaker.py, an endpoint that stays Creating/Updating (what makes a real
wait time out), SageMaker's refusal to update an endpoint that is still updating, and
injected failures of single calls. Validation invokes go to the local endpoint reading the
same moto S3 model prefix (as in tests/test_sagemaker_flow.py).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto import mock_aws
from typer.testing import CliRunner

import flows.retire  # noqa: F401 - imports Prefect now, so its log handlers bind to pytest's
#                       stream, not to a CliRunner's stream that is closed after the invoke
from infra.aws.errors import client_error
from infra.records.endpoint import read_record, record_path
from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint
from infra.aws.runtime_client import runtime_client_for

pytestmark = [pytest.mark.prefect]

REGION = "us-east-1"
BUCKET = "mme-models"
STORE = f"s3://{BUCKET}/mme"
ROLE = "arn:aws:iam::123456789012:role/mme-endpoint"


class StuckSageMaker:
    """moto's SageMaker client, plus: UpdateEndpoint; ``stick_after`` (an operation name)
    leaves the endpoint Creating/Updating after that call until ``release()``; UpdateEndpoint
    refused while it is transitional; ``fail[operation]`` raised instead of the call."""

    def __init__(self, client: Any, on_update: Any = None) -> None:
        from fixtures.sagemaker_moto import SageMakerWithUpdate

        self._inner = SageMakerWithUpdate(client)
        self._client = client
        self.stick_after: str | None = None
        self.stuck: dict[str, str] = {}
        self.fail: dict[str, Exception] = {}
        self.on_update = on_update

    def __getattr__(self, name: str) -> Any:
        if name in self.fail:
            def refuse(**params: Any) -> Any:
                raise self.fail[name]
            return refuse
        return getattr(self._client, name)

    def release(self) -> None:
        self.stuck.clear()

    def create_endpoint(self, **params: Any) -> dict[str, Any]:
        out = self._client.create_endpoint(**params)
        if self.stick_after == "create_endpoint":
            self.stuck[params["EndpointName"]] = "Creating"
        return out

    def update_endpoint(self, **params: Any) -> dict[str, Any]:
        if params["EndpointName"] in self.stuck:  # what SageMaker answers
            raise client_error("ValidationException", f"Cannot update in-progress endpoint "
                               f"\"{params['EndpointName']}\".", "UpdateEndpoint")
        out = self._inner.update_endpoint(**params)
        if self.on_update is not None:
            self.on_update()
        if self.stick_after == "update_endpoint":
            self.stuck[params["EndpointName"]] = "Updating"
        return out

    def describe_endpoint(self, **params: Any) -> dict[str, Any]:
        desc = self._client.describe_endpoint(**params)
        if params["EndpointName"] in self.stuck:
            desc["EndpointStatus"] = self.stuck[params["EndpointName"]]
        return desc


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $MME_HOME per test: the endpoint records of one test never meet another's."""
    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, home: Path):
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield


class AutoScaling:
    """moto's Application Auto Scaling, deregistering as AWS does: "deregistering a scalable
    target deletes the scaling policies associated with it" (moto 5 keeps them)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def deregister_scalable_target(self, **params: Any) -> dict[str, Any]:
        for p in self._client.describe_scaling_policies(
                ServiceNamespace=params["ServiceNamespace"], ResourceId=params["ResourceId"],
                ScalableDimension=params["ScalableDimension"])["ScalingPolicies"]:
            self._client.delete_scaling_policy(
                PolicyName=p["PolicyName"], ServiceNamespace=p["ServiceNamespace"],
                ResourceId=p["ResourceId"], ScalableDimension=p["ScalableDimension"])
        return self._client.deregister_scalable_target(**params)


@pytest.fixture
def bind():
    """``bind(sm_client, runtime_url)``: every AWS client the deploy and retire flows (and the
    CLI running them) make comes from these, for the rest of the test (infra.aws.clients.using)."""
    from infra.aws.clients import AwsClients, using

    with contextlib.ExitStack() as stack:
        def _bind(sm_client: Any, runtime_url: str | None) -> None:
            def clients(region: str, _runtime_url: str | None) -> AwsClients:
                return AwsClients(
                    region=region, sagemaker=sm_client,
                    autoscaling=AutoScaling(boto3.client("application-autoscaling", region_name=region)),
                    runtime=runtime_client_for(runtime_url or "http://127.0.0.1:9", region=region))
            stack.enter_context(using(clients))
        yield _bind


@pytest.fixture
def fleet(aws, tmp_path: Path, bind):
    """(endpoint name, wrapped SageMaker client) with validation served by the local endpoint;
    an UpdateEndpoint brings up a new fleet, which starts with no model loaded."""
    name = "retire-mme"
    cfg = EndpointConfig(name=name, model_data_url=f"{STORE}/models/{name}", cache_dir=tmp_path / "cache")
    with LocalEndpoint(cfg) as ep:
        def new_fleet() -> None:
            for m in httpx.get(f"{ep.url}/models").json()["models"]:
                httpx.delete(f"{ep.url}/models/{m['target_model']}").raise_for_status()

        sm_client = StuckSageMaker(boto3.client("sagemaker", region_name=REGION), on_update=new_fleet)
        bind(sm_client, ep.url)
        yield name, sm_client


def _opts(**kw: Any) -> Any:
    from tasks.deploy.backends.sagemaker import SageMakerOptions

    # local-cpu builds stand in for GPU ones here (no GPU Triton): the target check is waived
    return SageMakerOptions(region=REGION, role_arn=ROLE, triton_release="24.09", poll_s=0,
                            allow_target_mismatch=True, **kw)


def _deploy(art: Path | str, endpoint: str, opts: Any) -> dict[str, Any]:
    from flows.deploy import deploy
    from tasks.deploy.records import BuildSource, Rollout

    return deploy(ensembles=["text_embedding"], endpoint=endpoint, backend="sagemaker",
                  build=BuildSource(target="local-cpu", dir=str(art)), store_uri=STORE,
                  rollout=Rollout(warm_invocations=1), sagemaker=opts)


def _aws_leftovers() -> dict[str, list[str]]:
    sm = boto3.client("sagemaker", region_name=REGION)
    aas = boto3.client("application-autoscaling", region_name=REGION)
    s3 = boto3.client("s3", region_name=REGION)
    return {
        "endpoints": [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]],
        "configs": [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]],
        "models": [m["ModelName"] for m in sm.list_models()["Models"]],
        "targets": [t["ResourceId"] for t in aas.describe_scalable_targets(
            ServiceNamespace="sagemaker")["ScalableTargets"]],
        "policies": [p["PolicyName"] for p in aas.describe_scaling_policies(
            ServiceNamespace="sagemaker")["ScalingPolicies"]],
        "objects": [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mme/models/").get("Contents", [])],
    }


NOTHING = {"endpoints": [], "configs": [], "models": [], "targets": [], "policies": [], "objects": []}


def _kinds(endpoint: str) -> dict[str, list[str]]:
    rec = read_record(endpoint)
    out: dict[str, list[str]] = {}
    for r in [] if rec is None else rec.resources:
        out.setdefault(r.kind, []).append(r.name)
    return out


# ---------------------------------------------------------------------------------- tests


def test_cli_retire_finds_the_sagemaker_endpoint_from_its_record(built_text_embedding: dict, fleet,
                                                                 prefect_harness) -> None:
    """Issue 8.5: `mme retire --endpoint E --stop` with no --store/--backend deletes the
    SageMaker endpoint, its configs, models, scaling policy and target, and the S3 objects;
    a second retire deletes nothing and says so (exit 1, or 0 with --missing-ok)."""
    from flows.cli import app

    endpoint, sm_client = fleet
    _deploy(built_text_embedding["output_dir"], endpoint, _opts(autoscaling_max=2))
    rec = read_record(endpoint)
    assert rec is not None
    assert rec.backend == "sagemaker" and rec.store_uri == STORE and rec.region == REGION
    assert {r.kind for r in rec.resources} == {
        "model", "endpoint_config", "endpoint", "scalable_target", "scaling_policy"}
    assert all(r.state == "created" for r in rec.resources)
    entry = rec.ensembles["text_embedding"]
    sha = built_text_embedding["manifest"].sha256
    assert entry.target_model == f"text_embedding-{sha[:12]}.tar.gz" and entry.state == "deployed"
    assert entry.sha256 == built_text_embedding["manifest"].sha256
    assert _aws_leftovers()["endpoints"] == [endpoint]

    runner = CliRunner()
    r = runner.invoke(app, ["retire", "--endpoint", endpoint, "--stop"])
    assert r.exit_code == 0, r.output
    assert f"endpoint {endpoint}: endpoint {endpoint}: deleted" in r.output
    assert _aws_leftovers() == NOTHING
    assert not record_path(endpoint).exists()

    again = runner.invoke(app, ["retire", "--endpoint", endpoint, "--stop"])
    assert again.exit_code == 1 and "nothing deleted" in again.output, again.output
    ok = runner.invoke(app, ["retire", "--endpoint", endpoint, "--stop", "--missing-ok"])
    assert ok.exit_code == 0, ok.output


def test_local_retire_of_an_unknown_endpoint_exits_1(home: Path, prefect_harness) -> None:
    """The old behaviour: 'was not running', exit 0, while a SageMaker endpoint billed on."""
    from flows.cli import app

    r = CliRunner().invoke(app, ["retire", "--endpoint", "never-deployed", "--stop"])
    assert r.exit_code == 1 and "nothing deleted for endpoint never-deployed" in r.output, r.output


def test_timed_out_create_is_rolled_back(built_text_embedding: dict, aws, bind, prefect_harness) -> None:
    """Issue 8.6: create_endpoint succeeded, the wait timed out: the new endpoint, its config
    and model are deleted, the uploaded object removed, the record left with nothing."""
    from infra.aws.sagemaker import EndpointTimeout

    endpoint = "stuck-new"
    sm_client = StuckSageMaker(boto3.client("sagemaker", region_name=REGION))
    sm_client.stick_after = "create_endpoint"
    bind(sm_client, None)
    with pytest.raises(EndpointTimeout, match="still Creating"):
        _deploy(built_text_embedding["output_dir"], endpoint, _opts(wait_timeout_s=0))
    assert _aws_leftovers() == NOTHING
    assert _kinds(endpoint) == {}


def test_timed_out_update_keeps_the_old_fleet_and_retire_deletes_everything(
        built_text_embedding: dict, fleet, prefect_harness) -> None:
    """Issue 8.6: the update's wait timed out and SageMaker refuses the rollback while the
    endpoint is still Updating: the old config keeps serving, every resource of both deploys is
    in the record, and a later retire (found from the record alone) deletes all of it."""
    from flows.retire import retire
    from infra.aws.sagemaker import EndpointTimeout

    endpoint, sm_client = fleet
    first = _deploy(built_text_embedding["output_dir"], endpoint, _opts(autoscaling_max=2))
    old_config = first["endpoint_config"]
    sm_client.stick_after = "update_endpoint"
    with pytest.raises(EndpointTimeout, match="still Updating"):
        _deploy(built_text_embedding["output_dir"], endpoint,
                _opts(autoscaling_max=3, instance_count=2, wait_timeout_s=0))
    kinds = _kinds(endpoint)
    assert len(kinds["endpoint_config"]) == 2 and old_config in kinds["endpoint_config"]
    assert kinds["endpoint"] == [endpoint] and len(kinds["model"]) == 1
    left = _aws_leftovers()
    assert len(left["configs"]) == 2 and left["objects"], left
    # the rollback deregistered autoscaling before SageMaker refused its update: the record
    # follows what AWS has, call by call, so a retire does not look for what is gone
    assert kinds.get("scalable_target", []) == left["targets"]
    assert kinds.get("scaling_policy", []) == left["policies"]

    sm_client.release()  # SageMaker finished the update some time later
    lines = retire(endpoint=endpoint, stop_endpoint=True)
    assert _aws_leftovers() == NOTHING, lines
    assert not record_path(endpoint).exists()
    deleted = [line for line in lines if ": deleted" in line]
    # every resource the record listed, and the S3 object
    assert len(deleted) == sum(len(v) for v in kinds.values()) + 1, lines


def test_new_endpoint_that_fails_validation_is_deleted(tampered_text_build: Path, fleet,
                                                        prefect_harness) -> None:
    """A brand-new endpoint whose ensemble answers wrongly: endpoint, configs, models,
    autoscaling and the uploaded object are all deleted; nothing is left to retire."""
    from tasks.deploy.validate import DeployValidationFailed

    endpoint, _ = fleet
    with pytest.raises(DeployValidationFailed, match="min_cosine"):
        _deploy(tampered_text_build, endpoint, _opts(autoscaling_max=2))
    assert _aws_leftovers() == NOTHING
    assert not record_path(endpoint).exists()


def test_retire_names_what_it_could_not_delete(built_text_embedding: dict, fleet, prefect_harness) -> None:
    """A delete AWS refuses: the rest is still deleted, the flow fails naming the resource and
    AWS's message, and the record keeps it for the next retire, which finishes the job."""
    from flows.retire import RetireIncomplete, retire

    endpoint, sm_client = fleet
    _deploy(built_text_embedding["output_dir"], endpoint, _opts())
    sm_client.fail["delete_model"] = client_error(
        "AccessDeniedException", "User is not authorized to perform: sagemaker:DeleteModel", "DeleteModel")
    with pytest.raises(RetireIncomplete) as info:
        retire(endpoint=endpoint, stop_endpoint=True)
    msg = str(info.value)
    assert "could not delete" in msg and "sagemaker.delete_model failed for model" in msg
    assert "AccessDeniedException: User is not authorized" in msg
    left = _aws_leftovers()
    assert left["endpoints"] == [] and left["configs"] == [] and len(left["models"]) == 1
    assert _kinds(endpoint) == {"model": left["models"]}

    del sm_client.fail["delete_model"]
    lines = retire(endpoint=endpoint, stop_endpoint=True)
    assert _aws_leftovers() == NOTHING and any("deleted" in line for line in lines)


def test_retire_leaves_an_endpoint_it_does_not_own(aws, home: Path, bind, prefect_harness) -> None:
    """Someone else's endpoint of the same name: left alone, and the retire fails saying so."""
    from flows.retire import RetireIncomplete, retire

    sm_client = StuckSageMaker(boto3.client("sagemaker", region_name=REGION))
    bind(sm_client, None)
    sm_client.create_model(ModelName="theirs", ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": "1.dkr.ecr.us-east-1.amazonaws.com/x:1", "ModelDataUrl": "s3://b/p/", "Mode": "MultiModel"})
    sm_client.create_endpoint_config(EndpointConfigName="theirs-config", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "theirs", "InstanceType": "ml.g4dn.xlarge",
        "InitialInstanceCount": 1}])
    sm_client.create_endpoint(EndpointName="theirs", EndpointConfigName="theirs-config")
    with pytest.raises(RetireIncomplete, match="endpoint theirs: not ours, left in place"):
        retire(endpoint="theirs", backend="sagemaker", region=REGION, stop_endpoint=True)
    assert _aws_leftovers()["endpoints"] == ["theirs"]


class Crash(Exception):
    """Stands for the deploying process being killed: nothing after it runs."""


def test_a_crash_after_create_leaves_a_record_retire_uses(built_text_embedding: dict, aws, bind,
                                                         prefect_harness) -> None:
    """The deploy dies right after AWS created the endpoint, before it heard back (no wait,
    no rollback): the record already lists model, config and endpoint, and retire deletes them."""
    from flows.retire import retire

    endpoint = "crashed"
    sm_client = StuckSageMaker(boto3.client("sagemaker", region_name=REGION))
    real_create = sm_client.create_endpoint

    def dead(**params: Any) -> Any:  # a dead process makes no call: the rollback gets nowhere
        raise Crash("dead")

    def create_then_crash(**params: Any) -> Any:
        real_create(**params)
        sm_client.describe_endpoint = dead  # type: ignore[method-assign]  # the rollback's first call
        raise Crash("killed")

    sm_client.create_endpoint = create_then_crash  # type: ignore[method-assign]
    bind(sm_client, None)
    with pytest.raises(Crash, match="killed"):
        _deploy(built_text_embedding["output_dir"], endpoint, _opts())
    del sm_client.describe_endpoint  # (the next process, retire, is alive)
    doc = json.loads(record_path(endpoint).read_text())
    assert doc["backend"] == "sagemaker"
    assert {(r["kind"], r["state"]) for r in doc["resources"]} == {
        ("model", "created"), ("endpoint_config", "created"), ("endpoint", "creating")}

    lines = retire(endpoint=endpoint, stop_endpoint=True)
    assert _aws_leftovers() == NOTHING, lines
    assert not record_path(endpoint).exists()


# ---------------------------------------------------------------------------------- target check


def test_a_local_cpu_build_is_refused_before_anything_is_made(built_text_embedding: dict, aws,
                                                              bind, prefect_harness) -> None:
    """Issue 8.9: its Python models import the build host's packages, absent from SageMaker's
    Triton container: refused (dry run too), naming ensemble, target and backend, before any
    upload or AWS call."""
    from flows.deploy import TargetMismatch, deploy
    from tasks.deploy.records import BuildSource

    sm_client = StuckSageMaker(boto3.client("sagemaker", region_name=REGION))
    sm_client.fail["create_model"] = AssertionError("no AWS call may be made")
    bind(sm_client, None)
    strict = _opts().model_copy(update={"allow_target_mismatch": False})
    for dry_run in (True, False):
        with pytest.raises(TargetMismatch) as info:
            deploy(ensembles=["text_embedding"], endpoint="cpu-to-gpu", backend="sagemaker",
                   build=BuildSource(target="local-cpu", dir=str(built_text_embedding["output_dir"])),
                   store_uri=STORE, sagemaker=strict, dry_run=dry_run)
        msg = str(info.value)
        assert "text_embedding: built for target 'local-cpu', which the sagemaker backend cannot run" in msg
        assert "--allow-target-mismatch" in msg
    assert _aws_leftovers() == NOTHING
    assert not record_path("cpu-to-gpu").exists()


def test_an_old_manifest_without_a_target_is_refused(built_text_embedding: dict, tmp_path: Path) -> None:
    from flows.deploy import TargetMismatch, check_targets
    from infra.records.manifest import parse_manifest

    doc = json.loads((built_text_embedding["output_dir"] / "text_embedding.manifest.json").read_text())
    doc.pop("target")
    old = parse_manifest(doc, "an old text_embedding.manifest.json")  # read as the deploy reads it
    assert old.target is None
    with pytest.raises(TargetMismatch, match="text_embedding: its manifest records no build target .*"
                                             "rebuild it with `mme build text_embedding --target sagemaker-gpu`"):
        check_targets([old], "sagemaker", allow_mismatch=False)
    warnings = check_targets([old], "sagemaker", allow_mismatch=True)
    assert len(warnings) == 1 and warnings[0].startswith("WARNING (--allow-target-mismatch)")
    rebuilt = old.model_copy(update={"target": "sagemaker-gpu"})
    assert check_targets([rebuilt], "sagemaker", allow_mismatch=False) == []
    assert check_targets([old], "local", allow_mismatch=False) == []


def test_cli_refuses_the_mismatch_with_exit_2(built_text_embedding: dict, prefect_harness) -> None:
    from flows.cli import app

    args = ["deploy", "text_embedding", "--backend", "sagemaker", "--target", "local-cpu",
            "--store", STORE, "--endpoint", "cli-mismatch", "--dry-run"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "TargetMismatch: text_embedding: built for target 'local-cpu'" in r.output, r.output
