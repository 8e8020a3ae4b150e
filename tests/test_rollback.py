"""``mme rollback`` (tasks/deploy/rollback.py): an ensemble goes back to the version it
replaced, after checking that the kept object is still ours and that the endpoint answers it;
every refusal leaves the endpoint record and the store's ledger byte for byte as they were.

Two versions of the tiny ``pipe`` ensemble (Y = X + 1, then X + 2), deployed by hand as a
validated deploy leaves them; the answering check runs against the real local endpoint over a
real Triton."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures.pipe_builds import X, build_pipe, deploy_by_hand
from fixtures.sagemaker_moto import EP as SM_EP
from fixtures.sagemaker_moto import REGION, STORE, aws, runtime  # noqa: F401 (fixtures)
from typer.testing import CliRunner

from flows.cli import app
from infra.records import endpoint as record
from infra.store.objects import ObjectStore, open_store
from tasks.deploy.publish import model_data_url, read_ledger

EP = "rollback-ep"


@dataclass
class Deployed:
    """Two deploys of pipe on ``endpoint``: v1 (kept), then v2 (current, built here)."""

    endpoint: str
    home: Path
    store_uri: str
    store: ObjectStore  # the endpoint's model prefix
    v1: str  # TargetModels
    v2: str
    v1_key: str

    def files(self) -> tuple[bytes, bytes]:
        """The record's and the ledger's bytes: what a refusal must leave as they were."""
        ledger, _ = open_store(self.store_uri)
        return (record.record_path(self.endpoint).read_bytes(),
                ledger.get_bytes(f"deployments/{self.endpoint}.json"))

    def current(self) -> tuple[str, list[str], str, list[str]]:
        """The record's current TargetModel and kept ones, then the ledger's."""
        entry = record.read_record(self.endpoint).ensembles["pipe"]  # type: ignore[union-attr]
        led = read_ledger(self.store_uri, self.endpoint).ensembles["pipe"]
        return (entry.target_model, [v.target_model for v in entry.kept_versions or []],
                led.target_model, [v.target_model for v in led.kept_versions or []])


def deploy_two(tmp_path: Path, endpoint: str, store_uri: str, **how: str) -> Deployed:
    """Build v1 and v2 (v2 in ``$MME_HOME/artifacts``: its manifest gives the sample) and
    deploy them in turn (``how``: the record's backend and region)."""
    home = Path(os.environ["MME_HOME"])
    sha1 = build_pipe(tmp_path / "v1", k=1)
    sha2 = build_pipe(home / "artifacts" / "local-cpu", k=2)
    v1_key = deploy_by_hand(endpoint, store_uri, tmp_path / "v1", **how)
    deploy_by_hand(endpoint, store_uri, home / "artifacts" / "local-cpu", **how)
    store, _ = open_store(model_data_url(store_uri, endpoint))  # the model prefix: keys are names
    return Deployed(endpoint=endpoint, home=home, store_uri=store_uri, store=store,
                    v1=f"pipe-{sha1[:12]}.tar.gz", v2=f"pipe-{sha2[:12]}.tar.gz", v1_key=v1_key)


@pytest.fixture
def deployed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Deployed:
    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    return deploy_two(tmp_path, EP, (tmp_path / "store").as_uri())


def mme(*args: str) -> tuple[int, str]:
    got = CliRunner().invoke(app, list(args), terminal_width=200)
    return got.exit_code, got.output


@pytest.mark.prefect  # the rollback runs as a flow
def test_refusals_change_nothing_and_no_invoke_switches(deployed: Deployed, prefect_harness: Any) -> None:
    d = deployed
    assert d.current() == (d.v2, [d.v1], d.v2, [d.v1])
    before = d.files()

    code, out = mme("rollback", "pipe", "--endpoint", "nowhere")
    assert code == 2 and "no record of endpoint 'nowhere'" in out, out
    code, out = mme("rollback", "other", "--endpoint", EP)
    assert code == 2 and "cannot roll other on rollback-ep back: not deployed" in out, out

    code, out = mme("rollback", "pipe", "--endpoint", EP, "--dry-run")
    assert code == 0 and f"would roll pipe on {EP} back: {d.v2} -> {d.v1}" in out, out
    code, out = mme("rollback", "pipe", "--endpoint", EP, "--dry-run", "--json")
    doc = json.loads(out)
    assert (doc["dry_run"], doc["from"], doc["to"]) == (True, d.v2, d.v1)
    assert d.files() == before

    code, out = mme("rollback", "pipe", "--endpoint", EP)  # no endpoint running to ask
    assert code == 2 and "is not running" in out and "--no-invoke" in out, out
    assert d.files() == before
    manifest = d.home / "artifacts" / "local-cpu" / "pipe.manifest.json"
    manifest.rename(manifest.with_suffix(".away"))
    code, out = mme("rollback", "pipe", "--endpoint", EP, "--url", "http://127.0.0.1:9")
    assert code == 2 and "no build of 'pipe' here" in out and "--no-invoke" in out, out
    manifest.with_suffix(".away").rename(manifest)
    assert d.files() == before

    original = d.store.get_bytes(d.v1_key)
    d.store.put_bytes(d.v1_key, b"someone else's upload")
    code, out = mme("rollback", "pipe", "--endpoint", EP, "--no-invoke")
    assert code == 2 and "was replaced" in out and d.v1 in out, out
    d.store.delete(d.v1_key)
    code, out = mme("rollback", "pipe", "--endpoint", EP, "--dry-run")
    assert code == 2 and "is gone from the store" in out, out
    assert d.files() == before

    d.store.put_bytes(d.v1_key, original)
    code, out = mme("rollback", "pipe", "--endpoint", EP, "--no-invoke", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert (doc["dry_run"], doc["from"], doc["to"], doc["answered"]) == (False, d.v2, d.v1, None)
    assert d.current() == (d.v1, [d.v2], d.v1, [d.v2])
    assert sorted(i.key for i in d.store.list()) == sorted([d.v1, d.v2]), "nothing uploaded or deleted"


def test_a_ledger_naming_another_current_version_is_left_alone(deployed: Deployed) -> None:
    from tasks.deploy.publish import write_ledger
    from tasks.deploy.rollback import apply_rollback, plan_rollback

    d = deployed
    ledger = read_ledger(d.store_uri, EP)
    ledger.ensembles["pipe"] = ledger.ensembles["pipe"].model_copy(
        update={"target_model": "pipe-elsewhere.tar.gz", "key": f"models/{EP}/pipe-elsewhere.tar.gz"})
    write_ledger(d.store_uri, EP, ledger)  # a deploy from another machine since
    new, line = apply_rollback(plan_rollback(EP, "pipe"))
    assert new.target_model == d.v1 and "another current version" in line
    assert read_ledger(d.store_uri, EP).ensembles["pipe"].target_model == "pipe-elsewhere.tar.gz"


@pytest.mark.triton
@pytest.mark.prefect
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs the Linux tritonserver")
def test_the_kept_version_is_invoked_before_the_switch(deployed: Deployed, tmp_path: Path,
                                                       prefect_harness: Any) -> None:
    from infra.aws.runtime_client import invoke, runtime_client_for
    from infra.endpoint.local_mme import LocalEndpoint
    from infra.endpoint.models import EndpointConfig

    d = deployed
    ep = LocalEndpoint(EndpointConfig(name=EP, model_data_url=model_data_url(d.store_uri, EP),
                                      cache_dir=tmp_path / "cache", triton_log=tmp_path / "triton.log"))
    ep.start()

    def answer() -> np.ndarray:
        target = record.target_model_for(EP, "pipe")
        return np.asarray(invoke(runtime_client_for(ep.url), EP, target, {"X": X})["Y"])

    try:
        np.testing.assert_allclose(answer(), X + 2)
        # the sample of the build here expects an output Z besides Y: v1 does not answer like it
        build_pipe(d.home / "artifacts" / "local-cpu", k=2, extra_expected={"Z": X})
        before = d.files()
        code, out = mme("rollback", "pipe", "--endpoint", EP, "--url", ep.url)
        assert code == 2 and "no output Z" in out and "not rolled back" in out, out
        assert d.files() == before
        build_pipe(d.home / "artifacts" / "local-cpu", k=2)

        code, out = mme("rollback", "pipe", "--endpoint", EP, "--url", ep.url, "--json")
        assert code == 0, out
        doc = json.loads(out)
        assert (doc["from"], doc["to"], doc["answered"]) == (d.v2, d.v1, {"Y": [1, 3]})
        assert "now names" in doc["ledger"]
        assert d.current() == (d.v1, [d.v2], d.v1, [d.v2])
        np.testing.assert_allclose(answer(), X + 1)

        code, out = mme("rollback", "pipe", "--endpoint", EP, "--url", ep.url)  # and forward again
        assert code == 0 and f"rolled pipe on {EP} back: TargetModel {d.v2}" in out, out
        assert "answered like the sample request expects: Y [1, 3]" in out
        assert d.current() == (d.v2, [d.v1], d.v2, [d.v1])
        np.testing.assert_allclose(answer(), X + 2)
    finally:
        ep.stop()


@pytest.mark.triton
@pytest.mark.prefect
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs the Linux tritonserver")
def test_a_sagemaker_rollback_reads_s3_and_invokes_through_the_runtime(
        runtime: Any,  # noqa: F811 - the runtime fixture, imported above
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: Any) -> None:
    """On moto: the kept object checked in S3, the invoke through the ``sagemaker-runtime``
    client of the record's region (answered by the local endpoint serving the same S3
    prefix), the ledger in S3 switched with the record."""
    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    d = deploy_two(tmp_path, SM_EP, STORE, backend="sagemaker", region=REGION)
    code, out = mme("rollback", "pipe", "--endpoint", SM_EP, "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert (doc["backend"], doc["from"], doc["to"], doc["answered"]) == ("sagemaker", d.v2, d.v1, {"Y": [1, 3]})
    assert d.current() == (d.v1, [d.v2], d.v1, [d.v2])
