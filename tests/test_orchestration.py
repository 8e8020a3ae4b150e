"""Prefect as users run it: deployments from prefect.yaml, the event-triggered deploy, the
endpoint lock. Against a real Prefect server (SQLite) that the test starts itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from infra.triton.server import free_port

pytestmark = [pytest.mark.prefect]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory):
    """`prefect server start` in its own PREFECT_HOME, with its event triggers service."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_UI_ENABLED": "false"}
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                             "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError((home / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError("prefect server did not start: " + (home / "server.log").read_text()[-3000:])
    yield {"url": url, "env": env, "home": home}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def _cli(args: list[str], env: dict, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _await_automation(url: str, name: str, proc: subprocess.Popen, log: Path) -> None:
    """Wait until the served deployment's trigger (an automation) exists."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        autos = httpx.post(f"{url}/automations/filter", json={}).json()
        if any(name in a["name"] for a in autos):
            return
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(1)  # polling interval


def _emit_until_a_run(env: dict, emit_code: str, runs: Callable[[], list[dict]], log: Path) -> dict:
    """Emit the event until the trigger starts a run, and return the first run. The triggers
    service loads a new automation asynchronously and has no readiness API: an event that beat
    the automation is not evaluated, so emit again (a new event id) only if no run appeared."""
    got: list[dict] = []
    for _attempt in range(4):
        emit = subprocess.run([sys.executable, "-c", textwrap.dedent(emit_code)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert emit.returncode == 0, emit.stderr
        deadline = time.monotonic() + 30
        while not (got := runs()) and time.monotonic() < deadline:
            time.sleep(0.5)  # polling interval
        if got:
            break
    assert got, "the trigger never fired after 4 events; serve log: " + log.read_text()[-3000:]
    return min(got, key=lambda r: r["created"])


def _await_final_state(url: str, run: dict, log: Path, timeout: float = 400) -> str:
    deadline = time.monotonic() + timeout
    state = run["state"]["type"]
    while state not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.monotonic() < deadline, ("the triggered run did not finish", state,
                                             log.read_text()[-4000:])
        time.sleep(1)  # polling interval
        state = httpx.get(f"{url}/flow_runs/{run['id']}").json()["state"]["type"]
    return state


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_prefect_yaml_registers_the_deployments(prefect_server: dict):
    env = prefect_server["env"]
    r = _cli(["work-pool", "create", "mme-process", "--type", "process"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _cli(["--no-prompt", "deploy", "--all"], env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    deps = httpx.post(f"{prefect_server['url']}/deployments/filter", json={}).json()
    by_name = {d["name"]: d for d in deps}
    assert {"nightly-build", "deploy-on-new-model", "deploy", "watch-models", "retire"} <= set(by_name)
    nightly = by_name["nightly-build"]
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert nightly["parameters"]["ensembles"] == ["text_embedding", "image_classifier"]
    assert by_name["retire"]["schedules"] == []
    # the trigger of deploy-on-new-model is an automation on mme.model.landed
    autos = httpx.post(f"{prefect_server['url']}/automations/filter", json={}).json()
    trig = [a for a in autos if "deploy-on-new-model" in a["name"]]
    assert trig and trig[0]["trigger"]["expect"] == ["mme.model.landed"]
    params = trig[0]["actions"][0]["parameters"]
    assert params["ensemble"] == "{{ event.resource['mme.ensemble'] }}"
    # a fleet's model files trigger the fleet build of the variants that name them, not a release
    assert {"fleet-build", "fleet-build-on-model"} <= set(by_name)
    assert trig[0]["trigger"]["match"]["mme.ensemble"] == [
        "text_embedding", "image_classifier", "image_classifier_inception"]
    fleet_trig = [a for a in autos if "fleet-build-on-model" in a["name"]]
    assert fleet_trig and fleet_trig[0]["trigger"]["expect"] == ["mme.model.landed"]
    assert fleet_trig[0]["actions"][0]["parameters"]["changed_uri"] == (
        "{{ event.resource['prefect.resource.id'] }}")


def test_new_model_event_runs_the_deploy(prefect_server: dict, tmp_path: Path):
    """Serve the release flow with the prefect.yaml trigger, emit what the watcher emits, and
    see the flow build and deploy the ensemble by itself."""
    env = {**prefect_server["env"], "MME_HOME": str(tmp_path / "home")}
    endpoint = "evt-mme"
    served = tmp_path / "serve.py"
    served.write_text(textwrap.dedent(f"""
        from prefect.events import DeploymentEventTrigger
        from flows.release import release

        if __name__ == "__main__":  # the runner starts flow runs in spawned processes
            release.serve(
                name="deploy-on-new-model-test", parameters={{"endpoint": "{endpoint}"}},
                triggers=[DeploymentEventTrigger(
                    expect={{"mme.model.landed"}}, match={{"prefect.resource.id": "*"}},
                    parameters={{"ensemble": "{{{{ event.resource['mme.ensemble'] }}}}",
                                "source_uri": "{{{{ event.resource['prefect.resource.id'] }}}}"}})])
    """))
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, str(served)], env=env, cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = prefect_server["url"]
        _await_automation(url, "deploy-on-new-model-test", proc, tmp_path / "serve.log")
        dep_id = httpx.get(f"{url}/deployments/name/release/deploy-on-new-model-test").json()["id"]

        def runs_of_deployment() -> list[dict]:
            runs = httpx.post(f"{url}/flow_runs/filter", json={}).json()
            # (the deployments registered from prefect.yaml react to the event too: their runs
            # wait for a worker of the mme-process pool, which this test does not start)
            return [r for r in runs if r.get("deployment_id") == dep_id
                    and r.get("parameters", {}).get("ensemble") == "image_classifier"]

        run = _emit_until_a_run(env, """
            from prefect.events import emit_event
            emit_event(event="mme.model.landed",
                       resource={"prefect.resource.id": "file:///models/image_classifier/weights.pkl",
                                 "mme.ensemble": "image_classifier"},
                       payload={"key": "image_classifier/weights.pkl"})
        """, runs_of_deployment, tmp_path / "serve.log")
        # the event's resource became the flow's parameters
        assert run["parameters"]["source_uri"] == "file:///models/image_classifier/weights.pkl"
        state = _await_final_state(url, run, tmp_path / "serve.log", timeout=300)
        assert state == "COMPLETED", (state, (tmp_path / "serve.log").read_text()[-4000:])
        ledger = (tmp_path / "home" / "store" / "deployments" / f"{endpoint}.json").read_text()
        assert "image_classifier" in ledger
    finally:
        _stop(proc)
        log.close()
        subprocess.run([sys.executable, "-m", "flows.cli", "endpoint", "stop", "--name", endpoint],
                       env=env, cwd=REPO, capture_output=True, timeout=60)


@pytest.mark.triton
def test_second_deploy_of_an_endpoint_waits(prefect_harness, built_image_classifier: dict) -> None:
    """Two real deploy flows of one endpoint, run at once: their steps never overlap, both
    complete. Asserted on the order of the task runs Prefect recorded, not on time.

    The test holds the endpoint's lock while both flows start, so both are inside ``deploy``
    and contend for the lock when it is released; while the test holds it, no deploy step
    runs at all.
    """
    import uuid as uuid_mod

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterName,
    )

    from flows.common import endpoint_lock
    from flows.deploy import deploy
    from infra.endpoint.process import stop
    from tasks.deploy.records import BuildSource, Rollout

    endpoint = f"lock-{uuid_mod.uuid4().hex[:6]}"
    names = {k: f"{endpoint}-{k}" for k in ("a", "b")}
    outcome: dict[str, object] = {}

    def run(key: str) -> None:
        try:
            outcome[key] = deploy.with_options(flow_run_name=names[key])(
                ensembles=["image_classifier"], endpoint=endpoint,
                build=BuildSource(dir=str(built_image_classifier["output_dir"])),
                rollout=Rollout(warm_invocations=2),
                return_state=True)
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome[key] = e

    def flow_runs() -> dict[str, object]:
        with get_client(sync_client=True) as client:
            found = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=list(names.values()))))
        return {r.name: r for r in found}

    def task_runs(flow_run_id) -> list:
        with get_client(sync_client=True) as client:
            return client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[flow_run_id])))

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in names]
    try:
        with endpoint_lock(endpoint):
            for t in threads:
                t.start()
            deadline = time.monotonic() + 120
            while True:
                runs = flow_runs()
                if len(runs) == 2 and all(r.state and r.state.is_running() for r in runs.values()):
                    break
                assert time.monotonic() < deadline, f"the deploys did not start: {runs}"
                assert all(t.is_alive() for t in threads), outcome
                time.sleep(0.2)  # polling interval
            held = {n: task_runs(r.id) for n, r in runs.items()}
            assert held == {n: [] for n in names.values()}, "a deploy step ran while the lock was held"
    finally:
        for t in threads:
            if t.is_alive() or t.ident is not None:
                t.join(600)
        stop(endpoint)
    assert not any(t.is_alive() for t in threads), "a deploy never finished"
    for key in names:
        state = outcome[key]
        assert not isinstance(state, BaseException), state
        assert state.is_completed(), (key, state)

    runs = flow_runs()
    spans = {}
    for key, name in names.items():
        steps = task_runs(runs[name].id)
        assert {t.name.rsplit("-", 1)[0] for t in steps} >= {"publish", "ensure-endpoint", "validate"}, \
            [t.name for t in steps]
        assert all(t.state.is_completed() for t in steps), [(t.name, t.state) for t in steps]
        spans[key] = (min(t.start_time for t in steps), max(t.end_time for t in steps))
    first, second = sorted(spans, key=lambda k: spans[k][0])
    # every step of the second deploy started after the last step of the first ended
    assert spans[first][1] <= spans[second][0], f"two deploys of {endpoint} overlapped: {spans}"
    # and the second flow run was already running (waiting) before the first one's steps ended
    assert runs[names[second]].start_time < spans[first][1], spans


def test_model_event_builds_and_publishes_its_fleet_variant_only(prefect_server: dict, tmp_path: Path):
    """A model file landing under a fleet's prefix (the event the watch flow and the Lambda
    emit) runs the served fleet-build with that file's URI: that variant alone is built,
    verified and published; the fleet's other variants are not touched."""
    from tasks.fleet.example import make_example_fleet

    env = {**prefect_server["env"], "MME_HOME": str(tmp_path / "home")}
    prefix = tmp_path / "models"
    make_example_fleet(3, prefix.as_uri(), seed=11, fleet_file=tmp_path / "fleet.yaml")
    out, store = tmp_path / "out", tmp_path / "store"
    served = tmp_path / "serve_fleet.py"
    served.write_text(textwrap.dedent(f"""
        from prefect.events import DeploymentEventTrigger
        from flows.fleet_build import fleet_build

        if __name__ == "__main__":
            fleet_build.serve(
                name="fleet-on-model-test",
                parameters={{"fleet": "{tmp_path / 'fleet.yaml'}", "output_dir": "{out}",
                            "publish_to": "{store.as_uri()}"}},
                triggers=[DeploymentEventTrigger(
                    expect={{"mme.model.landed"}},
                    match={{"prefect.resource.id": "{prefix.as_uri()}/tenants/*"}},
                    parameters={{"changed_uri": "{{{{ event.resource['prefect.resource.id'] }}}}"}})])
    """))
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, str(served)], env=env, cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    landed = (prefix / "tenants" / "tenant-0002" / "model.onnx").as_uri()
    try:
        url = prefect_server["url"]
        _await_automation(url, "fleet-on-model-test", proc, tmp_path / "serve.log")
        dep_id = httpx.get(f"{url}/deployments/name/fleet-build/fleet-on-model-test").json()["id"]

        def runs() -> list[dict]:
            found = httpx.post(f"{url}/flow_runs/filter", json={}).json()
            return [r for r in found if r.get("deployment_id") == dep_id]

        run = _emit_until_a_run(env, f"""
            from prefect.events import emit_event
            emit_event(event="mme.model.landed",
                       resource={{"prefect.resource.id": "{landed}", "mme.ensemble": "tenants"}},
                       payload={{"key": "tenants/tenant-0002/model.onnx"}})
        """, runs, tmp_path / "serve.log")
        assert run["parameters"]["changed_uri"] == landed
        state = _await_final_state(url, run, tmp_path / "serve.log")
        assert state == "COMPLETED", (state, (tmp_path / "serve.log").read_text()[-4000:])
        assert sorted(p.name for p in out.glob("*.tar.gz")) == ["tenant-0002.tar.gz"]
        assert sorted(p.name for p in store.glob("tenant-*")) == [
            "tenant-0002.manifest.json", "tenant-0002.tar.gz"]
    finally:
        _stop(proc)
        log.close()
