"""The fleet lifecycle as a Prefect user meets it (issue 21): every deployment in
``prefect.yaml`` is valid and runs as registered, and a fleet build's failed variants are
visible where a Prefect user looks -- the task run that held each one ends Failed with one
WARNING line per variant, the flow run ends Failed with a one-line message and no traceback,
and the artifacts carry the fleet's name. Everything is read back through the Prefect API."""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import shutil
from pathlib import Path
from typing import Any
from uuid import UUID

import onnx
import pytest
import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS: list[dict[str, Any]] = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
BY_NAME = {d["name"]: d for d in DEPLOYMENTS}
FLEET_DEPLOYMENTS = ["fleet-build", "fleet-deploy", "fleet-retire", "fleet-gc", "plan"]


def _flow(entrypoint: str) -> Flow[Any, Any]:
    """The flow an entrypoint names (``flows/x.py:fn``), imported as the worker would find it."""
    path, _, attr = entrypoint.partition(":")
    assert (ROOT / path).is_file(), f"entrypoint {entrypoint}: no file {path}"
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    got = getattr(module, attr)
    assert isinstance(got, Flow), f"entrypoint {entrypoint} is not a flow"
    return got


# ------------------------------------------------------------------------------ no server


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_every_deployment_resolves_and_its_parameters_validate(name: str) -> None:
    dep = BY_NAME[name]
    flow = _flow(dep["entrypoint"])
    registered = dep.get("parameters") or {}
    # what a run gets: the registered parameters, plus a trigger's (rendered from the event)
    for given in [{**registered, **t.get("parameters", {})} for t in dep.get("triggers", [])] or [registered]:
        flow.validate_parameters(given)  # raises naming the bad or missing parameter
    assert all(s.get("active") is False for s in dep.get("schedules", [])), \
        f"{name}: an example schedule must be paused (active: false)"


def test_the_fleet_lifecycle_is_deployed_and_described() -> None:
    assert set(FLEET_DEPLOYMENTS) <= set(BY_NAME)
    for name in FLEET_DEPLOYMENTS:
        flow = _flow(BY_NAME[name]["entrypoint"])
        props = flow.parameters.properties
        missing = [p for p, schema in props.items() if not schema.get("description")]
        assert not missing, f"{flow.name}: no description (docstring Args:) for {missing}"
    assert BY_NAME["fleet-deploy"]["parameters"]["backend"] == "local"
    assert "AWS" in BY_NAME["fleet-deploy"]["description"]


def test_the_deploy_on_build_automation_is_opt_in_and_the_trigger_matches_the_example() -> None:
    from ensembles.fleet_spec import load_fleet

    (auto,) = BY_NAME["fleet-deploy"]["triggers"]
    assert auto["enabled"] is False and auto["expect"] == ["prefect.flow-run.Completed"]
    assert auto["match_related"]["prefect.resource.name"] == "fleet-build"
    assert "flow_run.parameters['fleet']" in auto["parameters"]["fleet"]
    (on_model,) = BY_NAME["fleet-build-on-model"]["triggers"]
    spec = load_fleet(BY_NAME["fleet-build-on-model"]["parameters"]["fleet"])
    assert spec.prefix is not None
    model = spec.prefix.uri.rstrip("/") + "/" + spec.prefix.pattern.format(variant="tenant-0001")
    assert fnmatch.fnmatch(model, on_model["match"]["prefect.resource.id"])


# ------------------------------------------------------------------------------ a real server


def _read_back(flow_run_id: UUID) -> tuple[Any, list[Any], list[Any], dict[str, Any]]:
    """(the flow run, its task runs, its logs, its artifacts by key) from the API."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        only = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        tasks = client.read_task_runs(flow_run_filter=only)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        arts = {a.key: a for a in client.read_artifacts(flow_run_filter=only)}
    return run, tasks, logs, arts


def _break(tenants: Path, names: list[str]) -> set[str]:
    """A corrupt model, a labels file one line short, a model of the wrong input shape."""
    corrupt, labels, shape = names
    (tenants / corrupt / "model.onnx").write_bytes(b"not an onnx model")
    lines = (tenants / labels / "labels.txt").read_text().splitlines()
    (tenants / labels / "labels.txt").write_text("\n".join(lines[:-1]) + "\n")
    model = onnx.load(str(tenants / shape / "model.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 224
    onnx.save(model, str(tenants / shape / "model.onnx"))
    return set(names)


@pytest.mark.prefect
@pytest.mark.triton  # the canaries are verified in a real tritonserver
def test_failed_variants_are_visible_where_a_prefect_user_looks(tmp_path, mme_home, prefect_harness) -> None:
    from flows.fleet_build import fleet_build
    from tasks.fleet.example import make_example_fleet

    prefix = tmp_path / "models"
    make_example_fleet(8, prefix.as_uri(), seed=5, fleet_file=tmp_path / "fleet.yaml")
    names = sorted(p.name for p in (prefix / "tenants").iterdir())
    broken = _break(prefix / "tenants", [names[1], names[4], names[6]])
    state = fleet_build(str(tmp_path / "fleet.yaml"), output_dir=str(tmp_path / "out"),
                        triton_sample=2, return_state=True)
    assert state.is_failed()
    run, tasks, logs, arts = _read_back(state.state_details.flow_run_id)

    assert run.state.is_failed() and "\n" not in run.state.message
    assert "3 of 8 variants failed" in run.state.message
    assert run.name == "fleet-build: tenants-example for local-cpu"
    assert {"fleet:tenants-example", "target:local-cpu"} <= set(run.tags)
    # one WARNING line per failed variant, said in the task run that built it
    warned: dict[str, UUID] = {}
    for log in logs:
        m = re.match(r"variant (\S+) FAILED", log.message)
        if m and log.level == 30:
            assert m[1] not in warned, f"two WARNING lines for {m[1]}"
            warned[m[1]] = log.task_run_id
    assert set(warned) == broken
    held = set(warned.values())
    building = [t for t in tasks if t.task_key and t.name.startswith(("build-variants", "verify-canaries"))]
    assert held and held <= {t.id for t in building}
    assert {t.id for t in tasks if not t.state.is_completed()} == held
    assert all(t.name != "build-variants" for t in building)  # named with their variant range
    assert not [g.message for g in logs if "Traceback" in g.message]
    assert not [g.message for g in logs if "fetched " in g.message]
    # artifacts scoped by fleet and target, failed variants first with whole reasons
    key = "tenants-example-local-cpu"
    assert {f"fleet-variants-{key}", f"fleet-failures-{key}", f"fleet-report-{key}",
            f"fleet-progress-{key}"} <= set(arts)
    rows = json.loads(arts[f"fleet-variants-{key}"].data)
    assert {r["variant"] for r in rows[:3]} == broken and all(r["status"] == "failed" for r in rows[:3])
    assert {r["variant"] for r in json.loads(arts[f"fleet-failures-{key}"].data)} == broken
    assert arts[f"fleet-variants-{key}"].description.endswith("5 ok, 3 failed")
    assert "\n\n## Failed\n\n" in arts[f"fleet-report-{key}"].data


def _register(name: str) -> dict[str, Any]:
    """Register the deployment as ``prefect deploy`` would (no work pool needed to store it)
    and return the parameters the server holds for it."""
    from prefect import get_client

    dep = BY_NAME[name]
    flow = _flow(dep["entrypoint"])
    flow.to_deployment(name=name, parameters=dep.get("parameters") or {},
                       description=dep.get("description")).apply()
    with get_client(sync_client=True) as client:
        return dict(client.read_deployment_by_name(f"{flow.name}/{name}").parameters)


@pytest.mark.prefect
@pytest.mark.triton  # the build's canaries and the deploy's validation run in Triton
def test_the_fleet_deployments_run_as_registered(tmp_path, monkeypatch, prefect_harness) -> None:
    """Each fleet deployment registered on a real server, then its flow run with the
    parameters the server holds (the flow function called directly: no worker). One change:
    ``fleet`` names a copy of the example fleet file whose model prefix is in this test's
    folder (the catalog's names a fixed folder under /tmp, shared by everything on a machine).
    """
    from ensembles.fleet_spec import fleet_path
    from infra.endpoint.process import stop

    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    doc = yaml.safe_load(fleet_path("tenants-example").read_text())
    doc["prefix"]["uri"] = (tmp_path / "models").as_uri() + "/"
    fleet_file = tmp_path / "tenants-example.yaml"
    fleet_file.write_text(yaml.safe_dump(doc))
    registered = {name: _register(name) for name in FLEET_DEPLOYMENTS}
    states = {}
    try:
        for name in FLEET_DEPLOYMENTS:
            params = dict(registered[name])
            if name in ("fleet-build", "fleet-deploy"):
                params["fleet"] = str(fleet_file)
            states[name] = _flow(BY_NAME[name]["entrypoint"])(**params, return_state=True)
    finally:
        stop("local-mme")
        shutil.rmtree(tmp_path / "models", ignore_errors=True)
    assert {n: s.type.value for n, s in states.items()} == {n: "COMPLETED" for n in FLEET_DEPLOYMENTS}
    built = states["fleet-build"].result()
    assert built["built"] == registered["fleet-build"]["example_tenants"]
