"""A fleet build run the way production runs it (issue 21): registered as a deployment on a
``process`` work pool from the repository's source, triggered, and picked up by a real process
worker in a subprocess (the flow runs in the worker's own child process, not in this one).
What a Prefect user then sees, read back through the API: the run ended Failed with a
one-line message, exactly the task runs that held a failed variant are non-Completed, one
WARNING line per failed variant, no traceback anywhere in the run's logs (the worker's own
lines included), and artifact keys that carry the fleet's name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest
from fixtures.prefect_runs import break_variants, example_names, named, read_back

ROOT = Path(__file__).resolve().parents[1]
#: The worker runs one flow run (the 8-variant example: a few tens of seconds) and exits;
#: this bounds a worker that never picks it up or hangs.
WORKER_TIMEOUT_S = 300


def _deploy(pool: str, parameters: dict[str, object]) -> str:
    """A ``process`` work pool and the fleet-build flow deployed on it from the repository's
    source (the worker's run pulls it: a working-directory step to the repository); returns
    the deployment's ``flow/name``."""
    from prefect import Flow, get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    flow = Flow.from_source(str(ROOT), "flows/fleet_build.py:fleet_build")
    flow.deploy(name=pool, work_pool_name=pool, parameters=parameters, build=False, push=False,
                print_next_steps=False)
    return f"{flow.name}/{pool}"


def _run_worker(pool: str, home: Path) -> subprocess.CompletedProcess[str]:
    """One process worker on ``pool`` that polls once, runs what it found to its end, exits."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "MME_HOME": str(home)}
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
           "--run-once", "--limit", "1"]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=WORKER_TIMEOUT_S, check=False)


@pytest.mark.prefect
@pytest.mark.triton  # the canaries are verified in a real tritonserver (in the worker's child)
def test_a_worker_run_fleet_build_shows_its_failures_as_a_direct_run_does(tmp_path, mme_home,
                                                                          prefect_harness) -> None:
    from prefect.deployments import run_deployment
    from tasks.fleet.example import make_example_fleet

    prefix = tmp_path / "models"
    make_example_fleet(8, prefix.as_uri(), seed=5, fleet_file=tmp_path / "fleet.yaml")
    names = example_names(prefix / "tenants")
    broken = break_variants(prefix / "tenants", [names[1], names[4], names[6]])
    pool = f"fleet-worker-{uuid4().hex[:8]}"
    deployment = _deploy(pool, {"fleet": str(tmp_path / "fleet.yaml"), "output_dir": str(tmp_path / "out"),
                                "triton_sample": 2})
    scheduled = run_deployment(deployment, timeout=0)
    worker = _run_worker(pool, mme_home)
    said = worker.stdout + worker.stderr
    assert worker.returncode == 0, said[-3000:]
    got = read_back(scheduled.id)

    run = got.run
    assert run.work_pool_name == pool and run.infrastructure_pid, "not run by the worker"
    assert run.state.is_failed(), f"{run.state.type}: {run.state.message}\n{said[-3000:]}"
    assert "\n" not in run.state.message and "3 of 8 variants failed" in run.state.message
    assert run.name == "fleet-build: tenants-example for local-cpu"
    warned = got.warned()
    assert set(warned) == broken
    held = set(warned.values())
    assert held <= {t.id for t in named(got.tasks, "build-variants", "verify-canaries")}
    assert got.not_completed() == held
    assert not got.tracebacks(), got.tracebacks()[0]
    assert "Traceback" not in said, said[max(0, said.find("Traceback") - 500):][:3000]
    key = "tenants-example-local-cpu"
    assert {f"fleet-variants-{key}", f"fleet-failures-{key}", f"fleet-report-{key}",
            f"fleet-progress-{key}"} <= set(got.artifacts)
    assert {r["variant"] for r in got.rows(f"fleet-failures-{key}")} == broken
