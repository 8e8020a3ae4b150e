"""The deploy/retire house plan: one backend protocol chosen once, each deploy step its own
retried task, typed records with a schema_version (old files read, newer ones refused naming
the file), one endpoint-settings document, one local-endpoint client, one AWS client factory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra.aws.clients import AwsClients, aws_clients, using


# ---------------------------------------------------------------------------------- backends
def test_backend_is_chosen_once_by_name(tmp_path: Path) -> None:
    from tasks.deploy.backends import BACKENDS, DeployBackend, backend_for
    from tasks.deploy.backends.local import LocalBackend
    from tasks.deploy.backends.sagemaker import SageMakerBackend, SageMakerOptions

    local = backend_for("local", endpoint="ep", store_uri=tmp_path.as_uri())
    assert isinstance(local, LocalBackend) and local.models_url == f"{tmp_path.as_uri()}/models/ep"
    opts = SageMakerOptions(role_arn="arn:aws:iam::123456789012:role/r")
    sm = backend_for("sagemaker", endpoint="ep", store_uri="s3://b/p", sagemaker=opts)
    assert isinstance(sm, SageMakerBackend) and sm.default_target == "sagemaker-gpu"
    assert set(BACKENDS) == {"local", "sagemaker"}
    for backend in (local, sm):  # every step of the protocol is there
        for step in ("check", "plan", "begin", "publish", "ensure_endpoint", "activate", "validate",
                     "rollback", "finish", "prune", "retire_ensemble", "retire_endpoint"):
            assert callable(getattr(backend, step)), (type(backend).__name__, step)
            assert step in DeployBackend.__dict__
    with pytest.raises(ValueError, match="backend 'azure': expected one of local, sagemaker"):
        backend_for("azure", endpoint="ep")
    with pytest.raises(ValueError, match="needs store_uri"):
        backend_for("sagemaker", endpoint="ep", sagemaker=opts)


def test_every_deploy_step_is_a_task_retrying_only_transient_failures() -> None:
    """So a SageMaker deploy shows publish, ensure-endpoint, activate, validate (and rollback)
    in the UI, each with its own retries; a retry never repeats a refused step."""
    from prefect import Task

    import tasks.deploy.steps as steps
    from tasks.runtime.retry import retry_transient

    tasks = {t.name: t for t in vars(steps).values() if isinstance(t, Task)}
    assert {"plan", "publish", "ensure-endpoint", "activate", "validate", "rollback", "prune",
            "retire-ensemble", "retire-endpoint"} <= set(tasks)
    retrying = {n: t for n, t in tasks.items() if t.retries}
    assert {"publish", "ensure-endpoint", "validate"} <= set(retrying)
    assert [n for n, t in retrying.items() if t.retry_condition_fn is not retry_transient] == []
    assert tasks["rollback"].retries == 0  # a rollback that failed is reported, not repeated


def test_flows_contain_no_backend_string_checks() -> None:
    """The backend name is read in one place (backend_for), not in the flows."""
    root = Path(__file__).resolve().parents[1]
    for path in ("flows/deploy.py", "flows/retire.py"):
        text = (root / path).read_text()
        assert '== "sagemaker"' not in text and '== "local"' not in text, path
        assert len(text.splitlines()) < 200, path


# ---------------------------------------------------------------------------------- records
def test_ledger_old_file_is_read_and_a_newer_one_refused(tmp_path: Path) -> None:
    from infra.versioned import RecordError
    from infra.store.objects import open_store
    from tasks.deploy.publish import read_ledger, write_ledger

    store_uri = (tmp_path / "store").as_uri()
    store, _ = open_store(store_uri)
    old = {"endpoint": "ep", "model_data_url": f"{store_uri}/models/ep", "ensembles": {"a": {
        "target_model": "a.tar.gz", "key": "models/ep/a.tar.gz", "uri": "file:///x/a.tar.gz",
        "sha256": "ab" * 32, "model_data_url": f"{store_uri}/models/ep",
        "deployed_at": "2026-01-01T00:00:00+00:00"}}}  # written before schema_version existed
    store.put_bytes("deployments/ep.json", json.dumps(old).encode())
    ledger = read_ledger(store_uri, "ep")
    assert ledger.schema_version == 1 and ledger.ensembles["a"].sha256 == "ab" * 32
    write_ledger(store_uri, "ep", ledger)  # rewritten with its version, same fields
    doc = json.loads(store.get_bytes("deployments/ep.json"))
    assert doc["schema_version"] == 1 and doc["ensembles"] == old["ensembles"]

    store.put_bytes("deployments/ep.json", json.dumps({**old, "schema_version": 7}).encode())
    with pytest.raises(RecordError, match=r"deployments/ep\.json: deploy ledger schema_version 7"):
        read_ledger(store_uri, "ep")
    store.put_bytes("deployments/ep.json", json.dumps({"endpoint": "ep", "ensembles": {
        "a": {"sha256": "x"}}}).encode())
    with pytest.raises(RecordError, match=r"deployments/ep\.json: .*ensembles\.a\.target_model"):
        read_ledger(store_uri, "ep")


def test_endpoint_record_is_typed_and_versioned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.records import endpoint as record
    from infra.versioned import RecordError

    monkeypatch.setenv("MME_HOME", str(tmp_path))
    record.note_call("ep", "create_model", {"ModelName": "m1"}, record.CREATING, backend="sagemaker")
    path = record.record_path("ep")
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == record.SCHEMA_VERSION and doc["backend"] == "sagemaker"
    assert record.EndpointRecord.model_validate(doc).resources[0].name == "m1"

    doc.pop("schema_version")  # a record from before the field: read as version 1
    path.write_text(json.dumps(doc))
    rec = record.read_record("ep")
    assert rec is not None and rec.resources[0].state == record.CREATING
    path.write_text(json.dumps({**doc, "schema_version": 2}))
    with pytest.raises(RecordError, match=rf"{path}: endpoint record schema_version 2"):
        record.read_record("ep")
    path.write_text(json.dumps({**doc, "resources": [{"kind": "model"}]}))
    with pytest.raises(RecordError, match=rf"{path}: .*resources\.0\.name"):
        record.read_record("ep")


def test_deploy_result_keeps_the_documented_json_shape() -> None:
    from tasks.deploy.records import DeployedEnsemble, DeployResult

    entry = DeployedEnsemble(name="t", target="local-cpu", artifact="file:///s/t.tar.gz",
                             sha256="0" * 64, bytes=10, uploaded=True, cold_tries=1,
                             validation={"metric": "min_cosine", "value": 1.0, "threshold": 0.99,
                                         "passed": True, "note": None},
                             latency_ms={"cold": 5.0, "p50": 1.0, "p99": 2.0, "n": 3})
    doc = DeployResult(endpoint="e", url="http://x", model_data_url="file:///s/models/e",
                       ensembles=[entry], endpoint_info={"pid": 1}).to_json()
    assert set(doc) == {"schema_version", "endpoint", "url", "model_data_url", "ensembles",
                        "endpoint_info"}
    (e,) = doc["ensembles"]
    assert e["latency_ms"]["n"] == 3 and isinstance(e["latency_ms"]["n"], int)
    assert e["validation"]["note"] is None  # the scorer's fields are kept as written
    assert "direct_triton_latency_ms" not in e


# ---------------------------------------------------------------------------------- settings
def test_endpoint_settings_travel_as_one_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher writes an EndpointConfig as JSON; the server reads the same type back."""
    from infra.endpoint.process import endpoint_settings
    from infra.endpoint.state import EndpointConfig, read_settings, settings_json

    monkeypatch.setenv("MME_HOME", str(tmp_path))
    cfg = endpoint_settings("ep", "file:///m", port=9, max_loaded_models=2)
    assert cfg.cache_dir == tmp_path / "endpoints" / "ep" / "cache"
    path = tmp_path / "settings.json"
    path.write_text(settings_json(cfg))
    assert read_settings(path) == cfg and isinstance(read_settings(path), EndpointConfig)
    path.write_text(json.dumps({**json.loads(settings_json(cfg)), "port": "eighty"}))
    with pytest.raises(ValueError, match=rf"{path}: not valid endpoint settings.*port"):
        read_settings(path)


# ---------------------------------------------------------------------------------- AWS
def test_aws_clients_are_bound_by_context_not_by_patching() -> None:
    made: list[tuple[str, str | None]] = []

    def fake(region: str, runtime_url: str | None) -> AwsClients:
        made.append((region, runtime_url))
        return AwsClients(region=region, sagemaker="sm", autoscaling="aas", runtime="rt")

    with using(fake):
        clients = aws_clients("eu-west-1", "http://rt")
    assert made == [("eu-west-1", "http://rt")] and clients.by_service()["sagemaker"] == "sm"
    real = aws_clients("eu-west-1")  # outside: boto3's own clients again
    assert real.sagemaker.meta.region_name == "eu-west-1" and made == [("eu-west-1", "http://rt")]


def test_sagemaker_backend_uses_the_clients_it_is_given() -> None:
    from infra.aws.sagemaker import plan_calls
    from tasks.deploy.backends.sagemaker import (
        SageMakerBackend,
        SageMakerOptions,
        current_state,
    )

    calls: list[str] = []

    class NothingYet:
        """A SageMaker client on which nothing exists: every describe says "not found"."""

        def __getattr__(self, operation: str) -> Any:
            def describe(**params: Any) -> Any:
                from infra.aws.errors import client_error

                calls.append(operation)
                raise client_error("ValidationException", "Could not find it", operation)
            return describe

    def factory(region: str, url: str | None) -> AwsClients:
        return AwsClients(region=region, sagemaker=NothingYet(), autoscaling=None)

    opts = SageMakerOptions(role_arn="arn:aws:iam::123456789012:role/r", clients=factory)
    be = SageMakerBackend("given", "s3://b/p", opts, aws=opts.clients)
    state = current_state(be.clients, be.endpoint_plan, be.log)
    assert state.endpoint_status is None and "describe_endpoint" in calls  # the given client
    assert [c.operation for c in plan_calls(be.endpoint_plan, state)][:3] == [
        "create_model", "create_endpoint_config", "create_endpoint"]
    assert "clients" not in opts.model_dump()  # never serialized into a flow run's parameters


# ---------------------------------------------------------------------------------- local client
@pytest.mark.triton
def test_local_endpoint_client_speaks_the_admin_api(tmp_path: Path) -> None:
    """ping, models, unload, metrics, invoke against a real endpoint over a real Triton."""
    import numpy as np
    from fixtures.local_endpoint import X
    from fixtures.tiny_models import publish_pipe

    from infra.endpoint.client import LocalEndpointClient
    from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint

    prefix = tmp_path / "models"
    prefix.mkdir()
    publish_pipe(prefix, "pipe.tar.gz", k=2.0)
    cfg = EndpointConfig(name="client", model_data_url=prefix.as_uri(), cache_dir=tmp_path / "cache")
    with LocalEndpoint(cfg) as ep:
        client = LocalEndpointClient(ep.url)
        assert client.ping().status_code == 200
        assert client.models() == [] and client.internal_name("pipe.tar.gz") is None
        out = client.invoke("client", "pipe.tar.gz", {"X": X})
        assert np.allclose(out["Y"], X + 2.0)
        assert client.internal_name("pipe.tar.gz") is not None
        assert client.metrics().invocations == 1
        client.unload("pipe.tar.gz")
        assert client.internal_name("pipe.tar.gz") is None
