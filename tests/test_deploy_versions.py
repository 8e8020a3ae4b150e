"""A single-ensemble deploy publishes a versioned TargetModel and never overwrites an object.

``mme deploy`` used to overwrite ``<ensemble>.tar.gz`` in place: a SageMaker instance that had
loaded it kept serving the old bytes until it unloaded them, and the deploy's validation could
score the old version. Now each version is ``<ensemble>-<sha256[:12]>.tar.gz`` (the fleets'
scheme): validation invokes THAT TargetModel, the endpoint record names it as current once it
validated and keeps the previous one for rollback, and versions past the keep count (and an
unversioned object of an older deploy) are deleted after validation.

The ensembles are tiny ``pipe`` models (Y = X + k: one k per "version") with real manifests,
served by the real local endpoint over a real Triton; the SageMaker test runs the same story
on moto (S3 and SageMaker), its validation invokes answered by the local endpoint reading the
same moto S3 prefix, and records every S3 PutObject key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore import handlers

from fixtures.pipe_builds import X, build_pipe, deploy_by_hand
from fixtures.sagemaker_moto import BUCKET, EP, REGION, ROLE, STORE, aws, runtime  # noqa: F401 (fixtures)

from infra.records.endpoint import EndpointRecord
from infra.records.manifest import Manifest

pytestmark = [pytest.mark.prefect, pytest.mark.triton]

def _build(root: Path, name: str, k: float, expect_k: float | None = None) -> tuple[str, str]:
    """A build folder ``root/name`` of pipe (Y = X + k), its sample expecting X + ``expect_k``
    (default k). Returns (folder, sha256)."""
    return str(root / name), build_pipe(root / name, k, expect_k)


def _name(sha: str) -> str:
    return f"pipe-{sha[:12]}.tar.gz"


def _answer(url: str, endpoint: str, target_model: str) -> np.ndarray:
    from infra.aws.runtime_client import invoke, runtime_client_for

    return np.asarray(invoke(runtime_client_for(url), endpoint, target_model, {"X": X})["Y"])


def _invocations(url: str) -> dict[str, int]:
    """Requests per TargetModel loaded now, and in all (``"*"``), as the local endpoint counted them."""
    from infra.endpoint.client import LocalEndpointClient

    metrics = LocalEndpointClient(url).metrics()
    return {"*": metrics.invocations, **{t: r.invocations for t, r in metrics.models.items()}}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def _old_unversioned_deploy(endpoint: str, store_uri: str, folder: str) -> str:
    """What a deploy before versioning left: ``pipe.tar.gz`` in the model prefix, named as the
    current TargetModel in the endpoint record and the ledger. Returns its key."""
    from infra.store.objects import open_store

    key = deploy_by_hand(endpoint, store_uri, Path(folder), versioned=False)
    store, _ = open_store(store_uri)
    assert store.exists(f"models/{endpoint}/pipe.tar.gz")
    return key


def test_local_deploys_publish_validate_keep_and_prune_versions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: Any) -> None:
    from flows.deploy import DeployValidationFailed, deploy
    from flows.retire import retire
    from infra.records import endpoint as record
    from infra.endpoint.process import find_running
    from infra.store.objects import open_store
    from tasks.deploy.publish import read_ledger
    from tasks.deploy.records import BuildSource, Rollout

    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    ep, store_uri = "versions-ep", (tmp_path / "store").as_uri()
    store, _ = open_store(store_uri)
    v0, _ = _build(tmp_path, "v0", k=0.5)
    v1, sha1 = _build(tmp_path, "v1", k=1)
    bad, sha_bad = _build(tmp_path, "bad", k=20, expect_k=2)  # loads, answers wrongly
    v2, sha2 = _build(tmp_path, "v2", k=2)
    v3, sha3 = _build(tmp_path, "v3", k=3)
    assert len({sha1, sha_bad, sha2, sha3}) == 4

    def run(folder: str) -> dict[str, Any]:
        return deploy(ensembles=["pipe"], endpoint=ep, store_uri=store_uri,
                      build=BuildSource(dir=folder), rollout=Rollout(warm_invocations=2))

    try:
        legacy = _old_unversioned_deploy(ep, store_uri, v0)
        # ---- v1: its own TargetModel; the older deploy's unversioned object retired after it validated
        first = run(v1)
        (e1,) = first["ensembles"]
        url = first["url"]
        assert e1["target_model"] == _name(sha1) and e1["validation"]["passed"] and e1["uploaded"]
        assert e1["artifact"].endswith(f"/models/{ep}/{_name(sha1)}")
        assert not store.exists(legacy), "the unversioned object of the older deploy must be retired"
        assert len(first["pruned"]) == 1 and "unversioned, from an older deploy" in first["pruned"][0]
        assert record.current_target(ep, "pipe") == _name(sha1) == record.target_model_for(ep, "pipe")
        assert _record(ep).ensembles["pipe"].kept_versions is None

        # ---- a v2 that answers wrongly: rolled back; v1 current and serving, untouched
        before = _invocations(url)
        with pytest.raises(DeployValidationFailed, match="min_cosine") as failed:
            run(bad)
        after = _invocations(url)  # (the failed version was unloaded: its row is gone)
        assert after["*"] - before["*"] >= 1 and after[_name(sha1)] == before[_name(sha1)], \
            "validation must invoke the new TargetModel, never v1's"
        assert f"min_cosine = {_cosine(X + 20, X + 2):.6f}" in str(failed.value), "scored the new bytes"
        assert not store.exists(f"models/{ep}/{_name(sha_bad)}"), "the failed upload is deleted"
        assert record.current_target(ep, "pipe") == _name(sha1)
        np.testing.assert_allclose(_answer(url, ep, record.current_target(ep, "pipe")), X + 1)

        # ---- v2: validation invokes v2's TargetModel (answer X + 2, v1's count unchanged)
        before = _invocations(url)
        second = run(v2)
        (e2,) = second["ensembles"]
        after = _invocations(url)
        assert e2["target_model"] == _name(sha2) and e2["validation"]["passed"]
        assert after[_name(sha2)] >= 1 + 3 + 2  # cold, 3 warm-ups, 2 timed
        assert after[_name(sha1)] == before[_name(sha1)], "validation must not invoke v1"
        np.testing.assert_allclose(_answer(url, ep, _name(sha2)), X + 2)
        assert second["pruned"] == []
        entry = _record(ep).ensembles["pipe"]
        assert entry.target_model == _name(sha2) and entry.state == "deployed"
        assert [v.target_model for v in entry.kept_versions or []] == [_name(sha1)]
        assert store.head(f"models/{ep}/{_name(sha1)}").sha256 == sha1, "v1 kept for rollback"
        np.testing.assert_allclose(_answer(url, ep, _name(sha1)), X + 1)
        assert record.target_model_for(ep, "pipe") == _name(sha2)

        # ---- v3: v2 kept, v1 removed (keep 1), in the record and the ledger
        third = run(v3)
        assert third["ensembles"][0]["target_model"] == _name(sha3)
        assert len(third["pruned"]) == 1 and _name(sha1) in third["pruned"][0]
        assert "older than the 1 kept version" in third["pruned"][0]
        assert not store.exists(f"models/{ep}/{_name(sha1)}")
        assert store.exists(f"models/{ep}/{_name(sha2)}")
        names = sorted(i.key.rsplit("/", 1)[-1] for i in store.list(f"models/{ep}/"))
        assert names == sorted([_name(sha2), _name(sha3)])
        entry = _record(ep).ensembles["pipe"]
        assert [v.target_model for v in entry.kept_versions or []] == [_name(sha2)]
        ledger = read_ledger(store_uri, ep).ensembles["pipe"]
        assert ledger.target_model == _name(sha3) and ledger.target_models() == {_name(sha2), _name(sha3)}

        # ---- rollback: the record points back to v2; nothing uploaded or deleted
        back = record.rollback_version(ep, "pipe")
        assert back.target_model == _name(sha2) == record.target_model_for(ep, "pipe")
        assert [v.target_model for v in back.kept_versions or []] == [_name(sha3)]
        np.testing.assert_allclose(_answer(url, ep, record.target_model_for(ep, "pipe")), X + 2)
        assert sorted(i.key.rsplit("/", 1)[-1] for i in store.list(f"models/{ep}/")) == names

        # ---- retire: the current object and the kept one
        lines = retire(ensembles=["pipe"], endpoint=ep, store_uri=store_uri)
        assert lines[0].count("deleted") == 2, lines
        assert list(store.list(f"models/{ep}/")) == []
        rec = record.read_record(ep)
        assert rec is None or "pipe" not in rec.ensembles
    finally:
        retire(endpoint=ep, stop_endpoint=True, store_uri=store_uri, missing_ok=True)
    assert find_running(ep) is None


def test_record_versions_and_rollback_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record's version bookkeeping alone: a redeploy of a kept version makes it current
    (kept once), pruning picks unversioned objects and those past the keep count, and a
    rollback with nothing kept is refused naming why."""
    from infra.records import endpoint as record
    from infra.errors import InvalidInput
    from tasks.deploy.backends.base import past_keep, versioned_manifest

    monkeypatch.setenv("MME_HOME", str(tmp_path))

    def manifest(sha: str, versioned: bool = True) -> Manifest:
        m = Manifest(ensemble="e", target_model="e.tar.gz", artifact="file:///x", sha256=sha, bytes=1)
        return versioned_manifest(m) if versioned else m

    def deploy(m: Manifest) -> record.EnsembleLine:
        record.note_ensembles_publishing("ep", [m], "file:///s/models/ep")
        record.settle_ensembles("ep", ["e"], deployed=True)
        return _record("ep").ensembles["e"]

    a, b = manifest("a" * 64), manifest("b" * 64)
    assert a.target_model == "e-aaaaaaaaaaaa.tar.gz" and versioned_manifest(a) is a
    with pytest.raises(InvalidInput, match="no previous version is kept"):
        deploy(a) and record.rollback_version("ep", "e")
    entry = deploy(b)
    assert [v.target_model for v in entry.kept_versions or []] == [a.target_model]
    entry = deploy(a)  # a kept version deployed again: current, not kept twice
    assert entry.target_model == a.target_model
    assert [v.target_model for v in entry.kept_versions or []] == [b.target_model]

    old = record.VersionLine(target_model="e.tar.gz", key="e.tar.gz", uri="file:///e", sha256="c" * 64)
    kept = [record.VersionLine(target_model=f"e-{s * 12}.tar.gz", key=s, uri=f"file:///{s}",
                               sha256=s * 64) for s in "def"]
    assert past_keep([kept[0], old, *kept[1:]], 1) == [old, *kept[1:]]
    assert past_keep(kept, 0) == kept and past_keep(kept, 5) == []
    with pytest.raises(InvalidInput, match="not deployed"):
        record.rollback_version("ep", "other")


# ------------------------------------------------------------------------- sagemaker (moto)
@pytest.fixture
def s3_puts() -> Iterator[list[tuple[str, str]]]:
    """(key, sha256 metadata) of every S3 PutObject / CreateMultipartUpload any client makes
    meanwhile (a builtin botocore handler, as moto hooks every session)."""
    puts: list[tuple[str, str]] = []

    def hook(event_name: str, params: dict[str, Any], **_: Any) -> None:
        if event_name.endswith((".PutObject", ".CreateMultipartUpload")):
            puts.append((params["Key"], (params.get("Metadata") or {}).get("sha256", "")))

    entry = ("before-parameter-build.s3", hook)
    handlers.BUILTIN_HANDLERS.append(entry)
    yield puts
    handlers.BUILTIN_HANDLERS.remove(entry)


def test_sagemaker_deploys_never_overwrite_an_object(
        runtime: Any,  # noqa: F811 - the runtime fixture, imported above
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        s3_puts: list[tuple[str, str]], prefect_harness: Any) -> None:
    """v1, a v2 that answers wrongly (rolled back), v2 (twice), v3 on the sagemaker backend:
    every model key is written once, and only the current and the kept version stay."""
    import boto3

    from flows.deploy import DeployValidationFailed, deploy
    from flows.retire import retire
    from infra.records import endpoint as record
    from tasks.deploy.backends.sagemaker import SageMakerOptions
    from tasks.deploy.records import BuildSource, Rollout

    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    ep, _ = runtime
    v1, sha1 = _build(tmp_path, "v1", k=1)
    bad, sha_bad = _build(tmp_path, "bad", k=20, expect_k=2)
    v2, sha2 = _build(tmp_path, "v2", k=2)
    v3, sha3 = _build(tmp_path, "v3", k=3)
    opts = SageMakerOptions(region=REGION, role_arn=ROLE, triton_release="24.09", poll_s=0,
                            allow_target_mismatch=True)  # local-cpu builds stand in for GPU ones
    s3 = boto3.client("s3", region_name=REGION)

    def run(folder: str) -> dict[str, Any]:
        return deploy(ensembles=["pipe"], endpoint=EP, backend="sagemaker", build=BuildSource(dir=folder),
                      store_uri=STORE, rollout=Rollout(warm_invocations=1), sagemaker=opts)

    def objects() -> list[str]:
        listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="mme/models/")
        return sorted(o["Key"].rsplit("/", 1)[-1] for o in listing.get("Contents", []))

    assert run(v1)["ensembles"][0]["target_model"] == _name(sha1)
    with pytest.raises(DeployValidationFailed, match="min_cosine"):
        run(bad)
    assert objects() == [_name(sha1)] and record.current_target(EP, "pipe") == _name(sha1)
    np.testing.assert_allclose(_answer(ep.url, EP, _name(sha1)), X + 1)
    assert run(v2)["ensembles"][0]["target_model"] == _name(sha2)
    np.testing.assert_allclose(_answer(ep.url, EP, _name(sha2)), X + 2)
    assert objects() == sorted([_name(sha1), _name(sha2)])
    assert run(v2)["ensembles"][0]["uploaded"] is False  # the same version again: no upload
    third = run(v3)
    assert len(third["pruned"]) == 1 and _name(sha1) in third["pruned"][0]
    assert objects() == sorted([_name(sha2), _name(sha3)])

    models = [(k, sha) for k, sha in s3_puts if "/models/" in k]
    assert sorted(k.rsplit("/", 1)[-1] for k, _ in models) == sorted(
        _name(s) for s in (sha1, sha_bad, sha2, sha3))
    assert len({k for k, _ in models}) == len(models), f"a model key was written twice: {models}"
    # each name is written with the bytes it names (its 12 hex are their sha256's first 12)
    assert all(sha.startswith(k.rsplit("-", 1)[-1].removesuffix(".tar.gz")) for k, sha in models)
    retire(endpoint=EP, store_uri=STORE, stop_endpoint=True)
    assert objects() == []


def _record(endpoint: str) -> EndpointRecord:
    """The endpoint's record, which the test's deploys must have written."""
    from infra.records.endpoint import read_record

    rec = read_record(endpoint)
    assert rec is not None, f"no record of {endpoint}"
    return rec
