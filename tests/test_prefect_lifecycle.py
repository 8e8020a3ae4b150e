"""The fleet lifecycle as a Prefect user meets it (issue 21): every deployment in
``prefect.yaml`` is valid and runs as registered, and a fleet build's failed variants are
visible where a Prefect user looks -- the task run that held each one ends Failed with one
WARNING line per variant, the flow run ends Failed with a one-line message and no traceback,
and the artifacts carry the fleet's name. Everything is read back through the Prefect API."""

from __future__ import annotations

import fnmatch
import importlib
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.prefect_runs import break_variants, example_names, named, read_back
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


def test_a_failed_fused_tenant_is_one_warning_line_and_the_report_lists_failures_first(caplog) -> None:
    """Without a server: the line a fused tenant's failure is said in (the same shape as a
    separate variant's, so the same search finds both), and the report's order."""
    from ensembles.fleet_spec import Variant
    from tasks.fleet.build import VariantOutcome
    from tasks.fleet.fused import TenantModel, failed_outcomes
    from tasks.fleet.report import fleet_markdown

    tenants = [TenantModel(variant=Variant(name=n, params={"classifier_onnx.source": f"s3://b/{n}/model.onnx"}),
                           model=b"", labels=[], digest="") for n in ("t1", "t2")]
    with caplog.at_level("WARNING"):
        got = failed_outcomes(tenants, "shard f-shard-001: every tenant answers differently fused", 0.0)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert lines == [f"variant {n} FAILED (fused tenant; files: s3://b/{n}/model.onnx): shard f-shard-001: "
                     f"every tenant answers differently fused" for n in ("t1", "t2")]
    assert [(o.name, o.status, o.layout) for o in got] == [("t1", "failed", "fused"), ("t2", "failed", "fused")]
    ok = VariantOutcome(name="t0", status="built", file="f-shard-000.tar.gz", target_model="f-shard-000.tar.gz")
    report = fleet_markdown("f", "local-cpu", [ok, *got], ["Fused tenants failed: 2 (`t1`, `t2`)"])
    assert report.index("## Failed") < report.index("- `t1`: shard f-shard-001") < report.index("Fused tenants")


def test_the_engine_says_an_expected_failed_end_in_one_line_and_a_bug_with_its_traceback(caplog) -> None:
    """What a worker's engine logs when a fleet build ends Failed (it raises the state's
    FleetBuildFailed): one line; any other exception keeps its traceback."""
    import logging

    from tasks.fleet.build import VariantOutcome
    from tasks.fleet.report import ENGINE_LOGGERS, FleetBuildFailed, failure_state

    assert failure_state("f", []) is None
    failed = VariantOutcome(name="t1", status="failed", file="", target_model="t1.tar.gz", reason="bad")
    assert failure_state("f", [failed]) is not None  # installs the one-line filter
    logger = logging.getLogger(ENGINE_LOGGERS[0])
    for exc in (FleetBuildFailed("fleet 'f': 1 of 1 variants failed: t1: bad"), ValueError("a bug")):
        try:
            raise exc
        except Exception:
            with caplog.at_level("ERROR", logger=logger.name):
                logger.error("Engine execution exited with unexpected exception", exc_info=True,
                             extra={"send_to_api": False})
    expected, bug = [r for r in caplog.records if r.name == logger.name][-2:]
    text = logging.Formatter().format(expected)
    assert "Traceback" not in text and "\n" not in text and "1 of 1 variants failed: t1: bad" in text
    assert "Traceback" in logging.Formatter().format(bug)


def test_a_fleet_deploy_that_ends_failed_is_said_in_one_line_by_the_engine_too(caplog) -> None:
    """fleet-deploy ends Failed the same way (its state holds FleetDeployFailed): the filter is
    installed by its failure state and says it in one line."""
    import logging

    from tasks.fleet.deploy import FleetDeployFailed
    from tasks.fleet.deploy_report import deploy_failure
    from tasks.fleet.report import ENGINE_LOGGERS

    assert deploy_failure({"fleet": "f", "failed": {}}) is None
    state = deploy_failure({"fleet": "f", "failed": {"t1": "answered wrongly"}})
    assert state is not None and state.is_failed() and "t1: answered wrongly" in (state.message or "")
    logger = logging.getLogger(ENGINE_LOGGERS[1])
    try:
        raise FleetDeployFailed(state.message or "")
    except FleetDeployFailed:
        with caplog.at_level("ERROR", logger=logger.name):
            logger.error("Execution of flow run exited with unexpected exception", exc_info=True)
    text = logging.Formatter().format([r for r in caplog.records if r.name == logger.name][-1])
    assert "Traceback" not in text and "\n" not in text and "t1: answered wrongly" in text


# ------------------------------------------------------------------------------ a real server


@pytest.mark.prefect
@pytest.mark.triton  # the canaries are verified in a real tritonserver
def test_failed_variants_are_visible_where_a_prefect_user_looks(tmp_path, mme_home, prefect_harness) -> None:
    from flows.fleet_build import fleet_build
    from tasks.fleet.example import make_example_fleet

    prefix = tmp_path / "models"
    make_example_fleet(8, prefix.as_uri(), seed=5, fleet_file=tmp_path / "fleet.yaml")
    names = example_names(prefix / "tenants")
    broken = break_variants(prefix / "tenants", [names[1], names[4], names[6]])
    state = fleet_build(str(tmp_path / "fleet.yaml"), output_dir=str(tmp_path / "out"),
                        triton_sample=2, return_state=True)
    assert state.is_failed()
    got = read_back(state.state_details.flow_run_id)
    run, tasks, logs, arts = got.run, got.tasks, got.logs, got.artifacts

    assert run.state.is_failed() and "\n" not in run.state.message
    assert "3 of 8 variants failed" in run.state.message
    assert run.name == "fleet-build: tenants-example for local-cpu"
    assert {"fleet:tenants-example", "target:local-cpu"} <= set(run.tags)
    # one WARNING line per failed variant, said in the task run that built it
    warned = got.warned()
    assert set(warned) == broken
    held = set(warned.values())
    building = [t for t in named(tasks, "build-variants", "verify-canaries") if t.task_key]
    assert held and held <= {t.id for t in building}
    assert got.not_completed() == held
    assert all(t.name != "build-variants" for t in building)  # named with their variant range
    # Prefect's own ERROR line for each failed chunk names the state, not every outcome it holds
    said = [g.message for g in logs if g.task_run_id in held and "failed with state" in g.message]
    assert said and all("VariantOutcome(" not in m and len(m) < 1000 for m in said), said
    assert not got.tracebacks()
    assert not [g.message for g in logs if "fetched " in g.message]
    # artifacts scoped by fleet and target, failed variants first with whole reasons
    key = "tenants-example-local-cpu"
    assert {f"fleet-variants-{key}", f"fleet-failures-{key}", f"fleet-report-{key}",
            f"fleet-progress-{key}"} <= set(arts)
    rows = got.rows(f"fleet-variants-{key}")
    assert {r["variant"] for r in rows[:3]} == broken and all(r["status"] == "failed" for r in rows[:3])
    assert {r["variant"] for r in got.rows(f"fleet-failures-{key}")} == broken
    assert arts[f"fleet-variants-{key}"].description.endswith("5 ok, 3 failed")
    assert "\n\n## Failed\n\n" in arts[f"fleet-report-{key}"].data


@pytest.mark.prefect
@pytest.mark.triton  # the shard that holds a tenant is verified in a real tritonserver
def test_failed_fused_tenants_are_visible_the_same_way(tmp_path, mme_home, prefect_harness) -> None:
    """A fused fleet of 4 example tenants in shards of 2, three of them with a diverged (NaN)
    head: one is left out of shard 000 (it answers differently fused; its partner ships), and
    shard 001 fails (both its tenants do). Each is one WARNING line in the fuse-shards task run,
    which alone ends non-Completed; the flow goes on and ends Failed with one line."""
    from flows.fleet_build import fleet_build
    from fixtures.fused_heads import poison_head
    from tasks.fleet.example import make_example_fleet

    prefix = tmp_path / "models"
    make_example_fleet(4, prefix.as_uri(), seed=5, fleet_file=tmp_path / "fleet.yaml")
    doc = yaml.safe_load((tmp_path / "fleet.yaml").read_text())
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump({**doc, "layout": "fused", "shard_size": 2}))
    names = example_names(prefix / "tenants")
    for name in names[1:]:
        poison_head(prefix / "tenants" / name / "model.onnx")
    state = fleet_build(str(tmp_path / "fleet.yaml"), output_dir=str(tmp_path / "out"),
                        triton_sample=1, return_state=True)
    assert state.is_failed()
    got = read_back(state.state_details.flow_run_id)
    fleet = doc["name"]

    assert "\n" not in got.run.state.message and "3 of 4 variants failed" in got.run.state.message
    warned = got.warned()
    assert set(warned) == set(names[1:])
    (fuse,) = named(got.tasks, "fuse-shards")
    assert set(warned.values()) == {fuse.id} and got.not_completed() == {fuse.id}
    assert "3 of 4 fused tenants failed" in fuse.state.message
    # Prefect's own ERROR line for the failed task names the state, not every outcome it holds
    said = [g.message for g in got.logs if g.task_run_id == fuse.id and "failed with state" in g.message]
    assert said and all("VariantOutcome(" not in m and len(m) < 1000 for m in said), said
    assert not got.tracebacks()
    key = f"{fleet}-local-cpu"
    rows = got.rows(f"fleet-variants-{key}")
    assert [r["status"] for r in rows] == ["failed"] * 3 + ["built"] and rows[3]["variant"] == names[0]
    reasons = {r["variant"]: r["reason"] for r in rows[:3]}
    assert reasons[names[1]].startswith(f"left out of shard {fleet}-shard-000: answers differently fused")
    assert all(reasons[n].startswith(f"shard {fleet}-shard-001: every tenant answers differently fused")
               for n in names[2:])
    report = got.artifacts[f"fleet-report-{key}"].data
    assert report.index("## Failed") < report.index("Fused tenants failed: 3") < report.index("Fused: 1 tenants")


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


CATALOG_DEPLOYMENTS = ["nightly-build", "deploy", "watch-models", "retire"]  # run in this order
EVENT_ONLY = ["deploy-on-new-model", "fleet-build-on-model"]  # their triggers fill the rest
ROLLBACKS = ["rollback", "fleet-rollback"]  # need a version to go back to: set up by their test


def test_every_deployment_is_run_as_registered_by_a_test_or_is_event_only() -> None:
    """The two lists here and FLEET_DEPLOYMENTS cover prefect.yaml; an event-only deployment's
    flow needs a parameter its registered defaults lack and its trigger supplies."""
    assert set(BY_NAME) == set(FLEET_DEPLOYMENTS) | set(CATALOG_DEPLOYMENTS) | set(EVENT_ONLY) | set(ROLLBACKS)
    for name in EVENT_ONLY:
        dep = BY_NAME[name]
        flow = _flow(dep["entrypoint"])
        from_trigger = {p for t in dep["triggers"] for p in t.get("parameters", {})}
        assert from_trigger - set(dep.get("parameters") or {}), name
        required = set(flow.parameters.required or [])
        assert required <= set(dep.get("parameters") or {}) | from_trigger, name


@pytest.mark.prefect
@pytest.mark.triton  # the build verifies in Triton; the deploy validates on the local endpoint
def test_the_catalog_deployments_run_as_registered(tmp_path, monkeypatch, prefect_harness) -> None:
    """nightly-build, deploy, watch-models and retire registered on a real server, then each
    flow run with the parameters the server holds, in that order, on the embedded default (the
    flow function called directly: no worker). One change: watch-models scans a folder of this
    test's (its registered one is the example fleet's folder under /tmp, shared by the machine)."""
    from infra.endpoint.process import stop

    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    (tmp_path / "models").mkdir()
    registered = {name: _register(name) for name in CATALOG_DEPLOYMENTS}
    states = {}
    try:
        for name in CATALOG_DEPLOYMENTS:
            params = dict(registered[name])
            if name == "watch-models":
                params["source_uri"] = (tmp_path / "models").as_uri()
            states[name] = _flow(BY_NAME[name]["entrypoint"])(**params, return_state=True)
    finally:
        stop(registered["deploy"]["endpoint"])
    assert {n: s.type.value for n, s in states.items()} == {n: "COMPLETED" for n in CATALOG_DEPLOYMENTS}
    built = states["nightly-build"].result()
    assert len(built) == len(registered["nightly-build"]["ensembles"])


@pytest.mark.prefect
@pytest.mark.triton  # the rollback invokes the kept version on the local endpoint first
def test_the_rollback_deployments_run_as_registered(tmp_path, monkeypatch, prefect_harness) -> None:
    """rollback and fleet-rollback registered on a real server, each run with the parameters
    the server holds, after two versions were deployed: of the tiny ``pipe`` ensemble on
    local-mme (the one change: ``ensemble`` names it, not text_embedding, which would take a
    real build), and of the example fleet's tenant-0001 in its routing table."""
    from datetime import UTC, datetime

    from fixtures.pipe_builds import build_pipe, deploy_by_hand

    from infra.endpoint.process import start_background, stop
    from infra.records import endpoint as record
    from infra.store.objects import open_store
    from tasks.deploy.publish import model_data_url
    from tasks.fleet.routes import EndpointRef, Route, RouteVersion, RoutingTable, read_routes, write_routes

    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    store_uri = (tmp_path / "home" / "store").as_uri()  # the embedded store, as registered
    registered = {name: _register(name) for name in ROLLBACKS}
    endpoint = registered["rollback"]["endpoint"]
    build_pipe(tmp_path / "v1", k=1)
    deploy_by_hand(endpoint, store_uri, tmp_path / "v1")
    build_pipe(tmp_path / "home" / "artifacts" / "local-cpu", k=2)
    deploy_by_hand(endpoint, store_uri, tmp_path / "home" / "artifacts" / "local-cpu")
    kept = record.read_record(endpoint).ensembles["pipe"].kept_versions[0].target_model

    fleet, (variant,) = registered["fleet-rollback"]["fleet"], registered["fleet-rollback"]["variants"]
    prefix, _ = open_store(f"{store_uri}/models/{endpoint}")
    sha = {n: prefix.put_bytes(n, n.encode()).sha256 for n in ("t-new.tar.gz", "t-old.tar.gz")}
    now = datetime.now(UTC).isoformat()
    write_routes(store_uri, RoutingTable(
        fleet=fleet, endpoints={endpoint: EndpointRef(models_url=f"{store_uri}/models/{endpoint}")},
        variants={variant: Route(endpoint=endpoint, target_model="t-new.tar.gz", sha256=sha["t-new.tar.gz"],
                                 since=now, previous=[RouteVersion(target_model="t-old.tar.gz",
                                                                   sha256=sha["t-old.tar.gz"], since=now)])}),
        datetime.now(UTC))
    start_background(endpoint, model_data_url(store_uri, endpoint))
    try:
        states = {"rollback": _flow(BY_NAME["rollback"]["entrypoint"])(
                      **{**registered["rollback"], "ensemble": "pipe"}, return_state=True),
                  "fleet-rollback": _flow(BY_NAME["fleet-rollback"]["entrypoint"])(
                      **registered["fleet-rollback"], return_state=True)}
    finally:
        stop(endpoint)
    assert {n: s.type.value for n, s in states.items()} == {n: "COMPLETED" for n in ROLLBACKS}
    assert states["rollback"].result()["answered"] == {"Y": [1, 3]}
    assert record.target_model_for(endpoint, "pipe") == kept
    assert read_routes(store_uri, fleet).variants[variant].target_model == "t-old.tar.gz"
