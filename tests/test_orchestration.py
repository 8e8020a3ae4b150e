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
from pathlib import Path

import httpx
import pytest

from infra.triton_server import free_port

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
        deadline = time.monotonic() + 120  # wait until the deployment (and its trigger) exist
        while time.monotonic() < deadline:
            autos = httpx.post(f"{url}/automations/filter", json={}).json()
            if any("deploy-on-new-model-test" in a["name"] for a in autos):
                break
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        time.sleep(3)  # let the triggers service pick up the new automation
        emit = subprocess.run([sys.executable, "-c", textwrap.dedent("""
            from prefect.events import emit_event
            emit_event(event="mme.model.landed",
                       resource={"prefect.resource.id": "file:///models/image_classifier/weights.pkl",
                                 "mme.ensemble": "image_classifier"},
                       payload={"key": "image_classifier/weights.pkl"})
        """)], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert emit.returncode == 0, emit.stderr
        dep_id = httpx.get(f"{url}/deployments/name/release/deploy-on-new-model-test").json()["id"]
        deadline = time.monotonic() + 300
        state = None
        while time.monotonic() < deadline:
            runs = httpx.post(f"{url}/flow_runs/filter", json={}).json()
            # (the deployments registered from prefect.yaml react to the event too: their runs
            # wait for a worker of the mme-process pool, which this test does not start)
            runs = [r for r in runs if r.get("deployment_id") == dep_id
                    and r.get("parameters", {}).get("ensemble") == "image_classifier"]
            if runs:
                state = runs[0]["state"]["type"]
                if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    break
            time.sleep(2)
        assert state == "COMPLETED", (state, (tmp_path / "serve.log").read_text()[-4000:])
        ledger = (tmp_path / "home" / "store" / "deployments" / f"{endpoint}.json").read_text()
        assert "image_classifier" in ledger
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        subprocess.run([sys.executable, "-m", "flows.cli", "endpoint", "stop", "--name", endpoint],
                       env=env, cwd=REPO, capture_output=True, timeout=60)


def test_second_deploy_of_an_endpoint_waits(prefect_server: dict, monkeypatch: pytest.MonkeyPatch):
    """The endpoint lock: two holders of the same endpoint never overlap; other endpoints don't wait."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.common import endpoint_lock

    spans: dict[str, tuple[float, float]] = {}

    def hold(name: str, endpoint: str) -> None:
        with temporary_settings({PREFECT_API_URL: prefect_server["url"]}):
            with endpoint_lock(endpoint):
                start = time.monotonic()
                time.sleep(2.0)
                spans[name] = (start, time.monotonic())

    threads = [threading.Thread(target=hold, args=(n, ep)) for n, ep in
               (("a", "same-ep"), ("b", "same-ep"), ("c", "other-ep"))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    (a0, a1), (b0, b1), (c0, _) = spans["a"], spans["b"], spans["c"]
    assert a1 <= b0 + 0.05 or b1 <= a0 + 0.05, f"same endpoint overlapped: {spans}"
    assert c0 - t0 < 3.0, "another endpoint must not wait"
