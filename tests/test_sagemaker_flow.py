"""build -> deploy -> validate -> retire on the `sagemaker` backend, with moto for AWS.

S3, SageMaker and Application Auto Scaling are moto's. moto's sagemaker-runtime answers with a
canned body, so the validation invokes go to the local multi-model endpoint, which reads the
SAME moto S3 model prefix the MME was created with: the request path the SageMaker runtime
would serve, over a real Triton. (Those artifacts are the local-cpu builds: the GPU ones need a
GPU Triton.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from fixtures.sagemaker_moto import BUCKET, EP, REGION, ROLE, STORE, aws, runtime  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.prefect, pytest.mark.triton]


def test_deploy_validate_rollback_retire(built_text_embedding: dict, tampered_text_build: Path,
                                         runtime, tmp_path: Path, prefect_harness):  # noqa: F811 - the runtime fixture, imported above
    from flows.deploy import deploy
    from flows.retire import retire
    from tasks.deploy.backends.sagemaker import SageMakerOptions
    from tasks.deploy.records import BuildSource, Rollout
    from tasks.deploy.validate import DeployValidationFailed

    ep, sm_client = runtime
    s3 = boto3.client("s3", region_name=REGION)
    key = f"mme/models/{EP}/text_embedding-{built_text_embedding['manifest'].sha256[:12]}.tar.gz"
    art = str(built_text_embedding["output_dir"])
    opts = SageMakerOptions(region=REGION, role_arn=ROLE, triton_release="24.09",
                            autoscaling_max=2, poll_s=0, allow_target_mismatch=True)
    common = dict(ensembles=["text_embedding"], endpoint=EP, backend="sagemaker",
                  build=BuildSource(target="local-cpu", dir=art), store_uri=STORE,
                  rollout=Rollout(warm_invocations=2))

    # dry run: every call listed, nothing made
    dry = deploy(**common, sagemaker=opts, dry_run=True)
    text = "\n".join(dry["calls"])
    for op in ("PutObject", "create_model", "create_endpoint_config", "create_endpoint",
               "wait_in_service", "register_scalable_target", "put_scaling_policy", "InvokeEndpoint"):
        assert op in text, (op, text)
    assert "MultiModel" in text and "sagemaker-tritonserver:24.09-py3" in dry["image"]
    assert sm_client.list_endpoints()["Endpoints"] == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="mme/models/")

    state = deploy(**common, sagemaker=opts, return_state=True)
    first = state.result()
    assert first["ensembles"][0]["validation"]["passed"] and first["ensembles"][0]["uploaded"]
    # every step of the SageMaker deploy is its own task run (own retries, own line in the UI)
    assert _task_runs(state.state_details.flow_run_id) == [
        "publish", "ensure-endpoint", "activate", "validate", "prune"]
    assert "sagemaker.create_endpoint" in first["calls"]
    desc = sm_client.describe_endpoint(EndpointName=EP)
    assert desc["EndpointStatus"] == "InService"
    model = sm_client.describe_model(ModelName=first["plan"]["endpoint_name"] and
                                     sm_client.describe_endpoint_config(
                                         EndpointConfigName=desc["EndpointConfigName"])
                                     ["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["Mode"] == "MultiModel"
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"{STORE}/models/{EP}/"
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["Metadata"]["sha256"] == built_text_embedding["manifest"].sha256
    first_config = desc["EndpointConfigName"]

    # idempotent: same inputs, no control-plane call, no upload
    again = deploy(**common, sagemaker=opts)
    assert again["calls"] == [] and not again["ensembles"][0]["uploaded"]

    # a new build that answers wrongly, with a new fleet size: rolled back, the serving object
    # untouched (the new version had its own key) and the failed upload deleted
    bigger = opts.model_copy(update={"instance_count": 2, "autoscaling_max": 3})
    with pytest.raises(DeployValidationFailed, match="min_cosine"):
        deploy(**{**common, "build": BuildSource(dir=str(tampered_text_build))},
               sagemaker=bigger)
    assert sm_client.describe_endpoint(EndpointName=EP)["EndpointConfigName"] == first_config
    assert [u["EndpointConfigName"] for u in sm_client.updates][-1] == first_config
    assert s3.head_object(Bucket=BUCKET, Key=key)["Metadata"]["sha256"] == \
        built_text_embedding["manifest"].sha256
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mme/models/")["Contents"]] == [key]

    lines = retire(endpoint=EP, store_uri=STORE, stop_endpoint=True)
    assert any("deleted" in line for line in lines)
    assert sm_client.list_endpoints()["Endpoints"] == []
    assert sm_client.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm_client.list_models()["Models"] == []
    aas = boto3.client("application-autoscaling", region_name=REGION)
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="mme/models/")


def _task_runs(flow_run_id: Any) -> list[str]:
    """The task names of a flow run's task runs, in the order they started."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [r.name.rsplit("-", 1)[0] for r in sorted(runs, key=lambda r: r.start_time or r.created)]
