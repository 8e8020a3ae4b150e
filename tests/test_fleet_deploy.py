"""``fleet-deploy`` for real: a synthetic 1,000-variant build on moto's S3 + SageMaker (counted
with botocore event hooks), and a small real fleet (SqueezeNet tenants: real DALI, ONNX Runtime,
tritonserver) on the local endpoint: redeploy one changed variant, Router refresh after a route
change, a failing variant that keeps its previous version routed, retire and gc."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from fixtures.sagemaker_moto import existing_mme as _mme
from infra.store.objects import sha256_file
from tasks.fleet.build import INDEX_FILE
from tasks.fleet.deploy import DeployPolicy, FleetDeployFailed
from tasks.deploy.publish import versioned_target
from tasks.fleet.routes import RoutingTable, read_routes

BUCKET = "fleet-bucket"
COUNT = 1000
CHANGED = 10
CANARY = 5
X = [0.5, -1.0, 2.0, 0.25]
Y = [1.0, 2.0, 3.0, 4.0]


def _manifest(name: str, tarball: Path, sha: str, size: int) -> dict[str, Any]:
    arr = {"dtype": "float32", "shape": [1, 4]}
    return {"schema_version": 2, "ensemble": name, "target": "sagemaker-gpu",
            "target_model": f"{name}.tar.gz", "artifact": tarball.as_uri(), "sha256": sha,
            "bytes": size, "validation": {"passed": True, "metric": "min_cosine", "value": 1.0,
                                          "threshold": 0.999},
            "sample": {"inputs": {"x": {**arr, "data": X}}, "expected": {"y": {**arr, "data": Y}}},
            "fleet": {"name": "synthetic", "template": "none", "variant": name, "labels": {}}}


def _write_variant(out: Path, index: dict[str, Any], name: str, payload: bytes,
                   stem: str | None = None) -> None:
    """A tiny fake tarball + manifest + index entry, as the fleet build lays them out (files
    named ``stem``, by default the name: the build's file-safe form of a long name is short)."""
    tarball = out / f"{stem or name}.tar.gz"
    tarball.write_bytes(payload)
    sha, size = sha256_file(tarball), tarball.stat().st_size
    (out / f"{stem or name}.manifest.json").write_text(json.dumps(_manifest(name, tarball, sha, size)))
    index["variants"][name] = {"key": sha, "file": tarball.name, "target_model": f"{name}.tar.gz",
                               "sha256": sha, "bytes": size, "status": "ok"}


def _synthetic_build(out: Path, count: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"schema_version": 1, "fleet": "synthetic", "target": "sagemaker-gpu",
                             "variants": {}}
    for i in range(count):
        _write_variant(out, index, f"t{i:04d}", f"variant {i} v1".encode())
    (out / INDEX_FILE).write_text(json.dumps(index))
    return index


def _queue_answers(n: int, region: str = "us-east-1") -> None:
    """moto's sagemaker-runtime answers each new (TargetModel, body) with the next queued
    result (per region): queue the KServe answer every variant's sample expects."""
    import requests

    body = json.dumps({"model_name": "ensemble", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [1, 4], "data": Y}]})
    answer = {"Body": body, "ContentType": "application/json",
              "InvokedProductionVariant": "AllTraffic", "CustomAttributes": ""}
    requests.post("http://motoapi.amazonaws.com/moto-api/static/sagemaker/endpoint-results",
                  json={"region": region, "results": [answer] * n}, timeout=10)


def _count(calls: list[tuple[str, str, dict[str, Any]]], service: str,
           operation: str | None = None) -> int:
    return sum(1 for s, o, _ in calls if s == service and (operation is None or o == operation))


def _changes(calls: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """SageMaker calls that are not read-only (anything but Describe*/List*)."""
    return [o for s, o, _ in calls if s == "sagemaker" and not o.startswith(("Describe", "List"))]


def test_1000_variant_fleet_on_moto_redeploys_10_changed_with_no_control_plane_call(
        tmp_path: Path, prefect_harness: None, aws_calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws

    from flows.fleet_deploy import fleet_deploy

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    build = tmp_path / "build"
    index = _synthetic_build(build, COUNT)
    store_uri = f"s3://{BUCKET}/mme"
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        _queue_answers(COUNT + CHANGED + 50)
        _mme("fleet-ep", store_uri)
        assert _changes(aws_calls) == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"], \
            "the hook sees control-plane calls"
        aws_calls.clear()
        first = fleet_deploy("synthetic", ["fleet-ep"], backend="sagemaker", store_uri=store_uri,
                             build_dir=str(build), policy=DeployPolicy(concurrency=16, json_body=True))
        assert len(first["live"]) == COUNT and first["routed"] == COUNT and not first["failed"]
        assert _changes(aws_calls) == [] and _count(aws_calls, "sagemaker") == 3  # 3 describes
        assert _count(aws_calls, "sagemaker-runtime", "InvokeEndpoint") == COUNT

        changed = [f"t{i:04d}" for i in range(0, COUNT, COUNT // CHANGED)]
        for name in changed:
            _write_variant(build, index, name, f"variant {name} v2".encode())
        (build / INDEX_FILE).write_text(json.dumps(index))
        aws_calls.clear()
        second = fleet_deploy("synthetic", ["fleet-ep"], backend="sagemaker", store_uri=store_uri,
                              build_dir=str(build), policy=DeployPolicy(canary=CANARY, seed=1, json_body=True))

        puts = [p["Key"] for s, o, p in aws_calls if (s, o) == ("s3", "PutObject")
                and p["Key"].endswith(".tar.gz")]
        assert sorted(k.rsplit("/", 1)[-1] for k in puts) == sorted(
            versioned_target(f"{n}.tar.gz", index["variants"][n]["sha256"]) for n in changed)
        assert _changes(aws_calls) == [], "no SageMaker control-plane change"
        invoked = [p["TargetModel"] for s, o, p in aws_calls if (s, o) == ("sagemaker-runtime",
                                                                           "InvokeEndpoint")]
        assert len(invoked) == CHANGED + CANARY
        assert sorted(second["live"]) == sorted(changed) and len(second["canaries"]) == CANARY
        table = read_routes(store_uri, "synthetic")
        for name in changed:  # the new version routed, the old one kept for rollback
            route = table.variants[name]
            assert route.sha256 == index["variants"][name]["sha256"]
            v1 = hashlib.sha256(f"variant {int(name[1:])} v1".encode()).hexdigest()
            assert [p.target_model for p in route.previous] == [versioned_target(f"{name}.tar.gz", v1)]


def test_dropping_a_shard_moves_only_its_variants_validated_on_their_new_endpoint(
        tmp_path: Path, prefect_harness: None, aws_calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws

    from flows.fleet_deploy import fleet_deploy

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    build = tmp_path / "build"
    _synthetic_build(build, 60)
    store_uri = f"s3://{BUCKET}/mme"
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        _queue_answers(200)
        _mme("ep-a", store_uri)
        _mme("ep-b", store_uri)
        fleet_deploy("synthetic", ["ep-a", "ep-b"], backend="sagemaker", store_uri=store_uri,
                     build_dir=str(build), policy=DeployPolicy(json_body=True))
        before = read_routes(store_uri, "synthetic")
        on_b = sorted(n for n, r in before.variants.items() if r.endpoint == "ep-b")
        assert 10 <= len(on_b) <= 50  # both shards hold part of the fleet
        aws_calls.clear()
        got = fleet_deploy("synthetic", ["ep-a"], backend="sagemaker", store_uri=store_uri,
                           build_dir=str(build), policy=DeployPolicy(json_body=True))
        assert got["moved"] == on_b and sorted(got["validated"]) == on_b
        invoked = {(p["EndpointName"], p["TargetModel"]) for s, o, p in aws_calls
                   if o == "InvokeEndpoint"}
        assert invoked == {("ep-a", before.variants[n].target_model) for n in on_b}
        assert _changes(aws_calls) == []
        after = read_routes(store_uri, "synthetic")
        assert {n for n, r in after.variants.items() if r.endpoint == "ep-a"} == set(after.variants)
        assert all(after.variants[n] == before.variants[n] for n in before.variants if n not in on_b)
        moved = after.variants[on_b[0]]  # its ep-b copy is kept as the previous version
        assert [(p.endpoint, p.target_model) for p in moved.previous] == [("ep-b", moved.target_model)]
        assert set(after.endpoints) == {"ep-a", "ep-b"}


# ------------------------------------------------------------------ the endpoint as SageMaker has it
def _no_region(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No region anywhere: not in the environment, not in an AWS profile."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "aws-config").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))


def _writes(calls: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """Every call that uploads, invokes or changes something."""
    return _changes(calls) + [o for s, o, _ in calls if (s, o) in (
        ("s3", "PutObject"), ("s3", "CreateMultipartUpload"), ("s3", "DeleteObject"),
        ("sagemaker-runtime", "InvokeEndpoint"))]


def test_a_store_other_than_the_endpoints_model_data_url_is_refused_before_any_write(
        tmp_path: Path, prefect_harness: None, aws_calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model prefix is the endpoint's ModelDataUrl, not whatever --store says: another
    --store would publish where SageMaker never looks. One line naming both, exit 2."""
    import boto3
    from moto import mock_aws

    from flows.fleet_deploy import fleet_deploy
    from infra.errors import UserError

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    build = tmp_path / "build"
    _synthetic_build(build, 3)
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        _mme("fleet-ep", f"s3://{BUCKET}/mme")
        aws_calls.clear()
        with pytest.raises(UserError) as e:
            fleet_deploy("synthetic", ["fleet-ep"], backend="sagemaker", store_uri=f"s3://{BUCKET}/other",
                         build_dir=str(build), policy=DeployPolicy(json_body=True))
        line = str(e.value)
        assert "\n" not in line
        assert f"--store s3://{BUCKET}/other would publish to s3://{BUCKET}/other/models/fleet-ep/" in line
        assert f"endpoint fleet-ep (in us-east-1) loads models from s3://{BUCKET}/mme/models/fleet-ep/" in line
        assert f"give --store s3://{BUCKET}/mme or leave --store out" in line
        assert _writes(aws_calls) == [] and _count(aws_calls, "s3") == 0
        aws_calls.clear()
        got = _cli("fleet", "deploy", "synthetic", "--endpoint", "fleet-ep", "--backend", "sagemaker",
                   "--store", f"s3://{BUCKET}/other", "--build-dir", str(build))
        assert got.exit_code == 2, got.output
        (err,) = [ln for ln in _lines(got.output) if ln.startswith("error:")]
        assert f"s3://{BUCKET}/other/models/fleet-ep/" in err and f"s3://{BUCKET}/mme/models/fleet-ep/" in err
        assert _writes(aws_calls) == []


def test_without_store_the_prefix_and_store_come_from_the_endpoint_in_the_callers_region(
        tmp_path: Path, prefect_harness: None, aws_calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --store: the endpoint's ModelDataUrl says where to publish (and the routing table goes
    to its store); the region is AWS_REGION's, and the table records it. Triton 23.04 (the first
    release whose serve script namespaces models) is accepted."""
    import boto3
    from moto import mock_aws

    from flows.fleet_deploy import fleet_deploy

    _no_region(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    build = tmp_path / "build"
    index = _synthetic_build(build, 3)
    store_uri = f"s3://{BUCKET}/team/mme"
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        _queue_answers(10, region="eu-west-1")
        _mme("fleet-ep", store_uri, release="23.04", region="eu-west-1")
        aws_calls.clear()
        got = fleet_deploy("synthetic", ["fleet-ep"], backend="sagemaker", store_uri=None,
                           build_dir=str(build), policy=DeployPolicy(json_body=True))
        assert len(got["live"]) == 3 and not got["failed"]
        assert got["routes"] == f"{store_uri}/routes/synthetic.json"
        puts = sorted(p["Key"] for s, o, p in aws_calls if (s, o) == ("s3", "PutObject")
                      and p["Key"].endswith(".tar.gz"))
        assert puts == sorted(f"team/mme/models/fleet-ep/{versioned_target(f'{n}.tar.gz', v['sha256'])}"
                              for n, v in index["variants"].items())
        table = read_routes(store_uri, "synthetic")
        assert table.endpoints["fleet-ep"].region == "eu-west-1"
        assert table.endpoints["fleet-ep"].models_url == f"{store_uri}/models/fleet-ep"
        assert {ep for _, o, p in aws_calls if o == "InvokeEndpoint" for ep in [p["EndpointName"]]} == {"fleet-ep"}
        assert _changes(aws_calls) == []


def test_a_variant_whose_rebuild_failed_stays_routed_and_is_not_retired(
        tmp_path: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A variant still in the fleet whose last build failed (its index entry says so) is not in
    the deploy's desired set, yet it is a member: the deploy keeps it on the version it is
    routed by and says so (``held``) instead of marking a live tenant retiring."""
    import boto3
    from moto import mock_aws

    from flows.fleet_deploy import fleet_deploy

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    build = tmp_path / "build"
    index = _synthetic_build(build, 3)
    store_uri = f"s3://{BUCKET}/mme"
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        _queue_answers(10)
        _mme("fleet-ep", store_uri)
        first = fleet_deploy("synthetic", ["fleet-ep"], backend="sagemaker", store_uri=store_uri,
                             build_dir=str(build), policy=DeployPolicy(json_body=True))
        assert len(first["live"]) == 3 and first["held"] == []
        before = read_routes(store_uri, "synthetic").variants["t0001"]
        index["variants"]["t0001"].update(status="failed", reason="model.onnx: unreadable")
        (build / INDEX_FILE).write_text(json.dumps(index))
        second = fleet_deploy("synthetic", ["fleet-ep"], backend="sagemaker", store_uri=store_uri,
                              build_dir=str(build), policy=DeployPolicy(json_body=True, grace_s=0))
        after = read_routes(store_uri, "synthetic").variants["t0001"]
    assert second["held"] == ["t0001"] and second["retiring"] == [] and second["removed"] == []
    assert after.retiring_since is None and after.target_model == before.target_model
    assert "members" not in (second["build"] or {})  # the index's names stay out of the JSON


def test_no_region_is_refused_before_any_aws_call(
        tmp_path: Path, prefect_harness: None, aws_calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import mock_aws

    from flows.fleet_deploy import fleet_deploy
    from infra.errors import UserError

    _no_region(monkeypatch, tmp_path)
    build = tmp_path / "build"
    _synthetic_build(build, 2)
    with mock_aws():
        aws_calls.clear()
        with pytest.raises(UserError, match=r"no AWS region for the SageMaker endpoints: give --region, "
                                            r"or set AWS_REGION or AWS_DEFAULT_REGION"):
            fleet_deploy("synthetic", ["fleet-ep"], backend="sagemaker", store_uri=f"s3://{BUCKET}/mme",
                         build_dir=str(build), policy=DeployPolicy(json_body=True))
        assert aws_calls == []


@pytest.mark.parametrize("release", ["21.08", "22.12", "23.03"])
def test_an_endpoint_on_triton_before_23_04_is_refused_naming_the_release(
        tmp_path: Path, prefect_harness: None, aws_calls: list, monkeypatch: pytest.MonkeyPatch,
        release: str) -> None:
    """SageMaker's serve script passes --model-namespacing from 23.04: before, the second
    variant (same model names as the first) would fail to load. Refused before any write."""
    import boto3
    from moto import mock_aws

    from flows.fleet_deploy import fleet_deploy
    from infra.errors import UserError

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    build = tmp_path / "build"
    _synthetic_build(build, 2)
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        _mme("old-ep", f"s3://{BUCKET}/mme", release=release)
        aws_calls.clear()
        with pytest.raises(UserError) as e:
            fleet_deploy("synthetic", ["old-ep"], backend="sagemaker", store_uri=None,
                         build_dir=str(build), policy=DeployPolicy(json_body=True))
        line = str(e.value)
        assert "\n" not in line
        assert f"endpoint old-ep (785573368785.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:" \
               f"{release}-py3): Triton {release} cannot serve a fleet" in line
        assert "--model-namespacing" in line and "from 23.04 on" in line
        assert "not unique across all model repositories" in line
        assert _writes(aws_calls) == [] and _count(aws_calls, "s3") == 0


def test_a_missing_endpoint_or_a_foreign_model_prefix_is_refused(
        tmp_path: Path, prefect_harness: None, aws_calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws

    from flows.fleet_deploy import fleet_deploy
    from infra.errors import UserError

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    build = tmp_path / "build"
    _synthetic_build(build, 2)
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        with pytest.raises(UserError, match=r"endpoint nowhere does not exist in us-east-1: .*--region"):
            fleet_deploy("synthetic", ["nowhere"], backend="sagemaker", store_uri=None,
                         build_dir=str(build), policy=DeployPolicy(json_body=True))
        _mme("theirs", "", model_data_url=f"s3://{BUCKET}/their-models/")
        with pytest.raises(UserError, match=rf"loads models from s3://{BUCKET}/their-models/, not "
                                            r"<store>/models/theirs/"):
            fleet_deploy("synthetic", ["theirs"], backend="sagemaker", store_uri=None,
                         build_dir=str(build), policy=DeployPolicy(json_body=True))
        assert _writes(aws_calls)[-3:] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]


def test_the_s3_key_may_be_1024_bytes_with_its_prefix_and_not_one_more(
        tmp_path: Path, prefect_harness: None, aws_calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefix ``mme/models/fleet-ep/`` (20) + ``<name>-<sha12>.tar.gz`` (name + 20): a name of
    984 makes a key of exactly 1,024 bytes (published); 985 is refused naming the variant,
    before anything is uploaded."""
    import boto3
    from moto import mock_aws

    from flows.fleet_deploy import fleet_deploy
    from infra.errors import UserError

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    build = tmp_path / "build"
    build.mkdir()
    index: dict[str, Any] = {"schema_version": 1, "fleet": "synthetic", "target": "sagemaker-gpu",
                             "variants": {}}
    _write_variant(build, index, "k" * 984, b"at the cap", stem="at-cap")
    (build / INDEX_FILE).write_text(json.dumps(index))
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        _queue_answers(5)
        _mme("fleet-ep", f"s3://{BUCKET}/mme")
        aws_calls.clear()
        got = fleet_deploy("synthetic", ["fleet-ep"], backend="sagemaker", store_uri=None,
                           build_dir=str(build), policy=DeployPolicy(json_body=True))
        assert got["live"] == ["k" * 984]
        (key,) = [p["Key"] for s, o, p in aws_calls if (s, o) == ("s3", "PutObject")
                  and p["Key"].endswith(".tar.gz")]
        assert len(key.encode()) == 1024
        _write_variant(build, index, "m" * 985, b"one over", stem="one-over")
        (build / INDEX_FILE).write_text(json.dumps(index))
        aws_calls.clear()
        with pytest.raises(UserError) as e:
            fleet_deploy("synthetic", ["fleet-ep"], backend="sagemaker", store_uri=None,
                         build_dir=str(build), policy=DeployPolicy(json_body=True))
        line = str(e.value)
        assert "\n" not in line and f"variant {'m' * 985!r} on endpoint fleet-ep: its S3 key would be " \
            "1025 bytes (model prefix 'mme/models/fleet-ep/' + TargetModel of 1005), over S3's 1024: " \
            "shorten the name by 1 characters" in line
        assert _writes(aws_calls) == []


def test_a_built_name_the_rules_refuse_or_a_file_name_too_long_refuses_the_publish() -> None:
    """A build from before the name rules (a Unicode name) is refused at deploy, naming the
    character; a file store writes file names of at most 255 bytes (its temp name included)."""
    from tasks.fleet.deploy import Job, key_problem

    def job(name: str) -> Job:
        return Job(name, "ep", versioned_target(f"{name}.tar.gz", "ab" * 32), "ab" * 32, 1,
                   Path("x.tar.gz"), Path("x.manifest.json"), "new")

    problem = key_problem(job("tenant-é"), "s3://b/mme/models/ep")
    assert problem is not None and "'é' (LATIN SMALL LETTER E WITH ACUTE)" in problem
    assert "rename it and rebuild" in problem
    # the store's longest file name is '.tmp-.sha256-<name>-<8 random>': 233 + 22 = 255, NAME_MAX
    assert key_problem(job("f" * 213), "file:///srv/store/models/ep") is None  # 233 bytes
    problem = key_problem(job("f" * 214), "file:///srv/store/models/ep")
    assert problem is not None and "is 234 bytes, over the 233 a file store can write" in problem


# ------------------------------------------------------------------ a real fleet, local endpoint
import fixtures.local_fleet as _shared  # noqa: E402

local_fleet = _shared.local_fleet  # the fixture, registered in this module
ENDPOINT, SMALL = _shared.ENDPOINT, _shared.SMALL


def _redo(build: Path, name: str, change: str) -> str:
    """Give variant ``name`` a new build output: ``"repack"`` adds a harmless file (a new digest,
    the same answers), ``"garbage"`` replaces the tarball with bytes that are no archive.
    The fleet index and manifest follow, as a rebuild would write them; returns the new sha256."""
    from infra.store.tarball import pack_deterministic, safe_extract

    doc = json.loads((build / INDEX_FILE).read_text())
    entry = doc["variants"][name]
    tarball = build / entry["file"]
    if change == "repack":
        work = build.parent / f"redo-{name}-{entry['sha256'][:8]}"
        repo = safe_extract(tarball, work)
        (repo / "NOTES.txt").write_text(f"rebuilt {entry['sha256']}\n")
        sha, size = pack_deterministic(repo, tarball)
    else:
        tarball.write_bytes(os.urandom(4096))
        sha, size = sha256_file(tarball), tarball.stat().st_size
    entry.update(sha256=sha, bytes=size)
    (build / INDEX_FILE).write_text(json.dumps(doc))
    manifest = tarball.with_name(entry["file"].removesuffix(".tar.gz") + ".manifest.json")
    m = json.loads(manifest.read_text())
    m.update(sha256=sha, bytes=size)
    manifest.write_text(json.dumps(m))
    return sha


def _restore_routed(fleet: dict[str, Any], name: str) -> None:
    """Make ``name``'s build output the version its route points to again (copied back from the
    store), as a rebuild of its routed sources would: undoes a ``"garbage"`` :func:`_redo`."""
    import shutil

    route = read_routes(fleet["store_uri"], fleet["fleet"]).variants[name]
    build = fleet["build"]
    doc = json.loads((build / INDEX_FILE).read_text())
    entry = doc["variants"][name]
    tarball = build / entry["file"]
    shutil.copyfile(fleet["prefix"] / route.target_model, tarball)
    entry.update(sha256=route.sha256, bytes=tarball.stat().st_size)
    (build / INDEX_FILE).write_text(json.dumps(doc))
    manifest = tarball.with_name(entry["file"].removesuffix(".tar.gz") + ".manifest.json")
    m = json.loads(manifest.read_text())
    m.update(sha256=route.sha256, bytes=entry["bytes"])
    manifest.write_text(json.dumps(m))


def _objects(prefix: Path) -> dict[str, tuple[int, int]]:
    """Each model object under the prefix: (inode, mtime_ns); a re-upload changes them."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in prefix.glob("*.tar.gz")
            if not p.name.startswith(".")}  # (not the store's digest sidecars)


def _deploy(fleet: dict[str, Any], **policy: Any) -> dict[str, Any]:
    from flows.fleet_deploy import fleet_deploy

    return fleet_deploy(fleet["fleet"], [ENDPOINT], store_uri=fleet["store_uri"],
                        build_dir=str(fleet["build"]), policy=DeployPolicy(**policy))


def _answers_right(router: Any, build: Path, name: str) -> bool:
    from infra.records.manifest import load_manifest
    from tasks.build.verify import Sample, score

    m = load_manifest(next(build.glob(f"{name}.manifest.json")))
    sample = Sample.from_json(m.required_sample())
    got = router.invoke(name, sample.inputs)
    return bool(score(m.validation.metric or "", m.validation.threshold or 0.0, sample, got).passed)


@pytest.mark.triton
def test_first_deploy_routes_every_variant_and_the_router_answers(local_fleet: dict[str, Any]) -> None:
    from tasks.fleet.router import Router

    first, names = local_fleet["first"], local_fleet["names"]
    assert sorted(first["live"]) == names and sorted(first["validated"]) == names
    table = read_routes(local_fleet["store_uri"], local_fleet["fleet"])
    index = json.loads((local_fleet["build"] / INDEX_FILE).read_text())
    for name in names:
        route = table.variants[name]
        assert (route.endpoint, route.target_model) == (
            ENDPOINT, versioned_target(f"{name}.tar.gz", index["variants"][name]["sha256"]))
        assert (local_fleet["prefix"] / route.target_model).exists()
    router = Router(local_fleet["store_uri"], local_fleet["fleet"])
    assert _answers_right(router, local_fleet["build"], names[0])
    assert router.resolve(names[0]) == (ENDPOINT, table.variants[names[0]].target_model)


def test_validation_progress_says_n_of_n_every_k_variants_and_each_failure() -> None:
    """Lines (and progress-artifact states) every ``every`` variants and at the end, whatever
    the time; each failure said as it happens, in the deploy's words. A clock that stands
    still gives no rate (nothing can be measured)."""
    from tasks.fleet.progress import Progress

    lines: list[str] = []
    errors: list[str] = []
    states: list[float] = []
    p = Progress("validated", 10, emit=lines.append, error=errors.append, artifact=states.append,
                 every=3, clock=lambda: 0.0,
                 fail_line="variant {item} failed validation ({done}/{total}): {reason}")
    for i in range(10):
        p.record(f"v{i}", "wrong answer" if i == 4 else None)
    assert lines == ["validated 3/10", "validated 6/10, 1 failed (latest: v4)",
                     "validated 9/10, 1 failed (latest: v4)", "validated 10/10, 1 failed (latest: v4)"]
    assert states == [30.0, 60.0, 90.0, 100.0]
    assert errors == ["variant v4 failed validation (5/10): wrong answer"]
    assert p.summary("validated") == {"validated": 10, "total": 10, "failed": 1, "updates": 4}


def test_validation_progress_says_so_after_the_interval_even_between_k() -> None:
    """A slow fleet: every record past ``interval_s`` since the last line says one (a fake
    clock advancing 6 s a read: once at the start, once per record; 5 s interval), though
    ``every`` was not reached; each line with the rate so far and the time left at it."""
    from tasks.fleet.progress import Progress, progress_every

    ticks = iter(range(0, 1000, 6))
    lines: list[str] = []
    p = Progress("validated", 4, emit=lines.append, every=100, clock=lambda: float(next(ticks)))
    for i in range(4):
        p.record(f"v{i}", None)
    assert lines == ["validated 1/4, 0.17/s, ~18 s left", "validated 2/4, 0.17/s, ~12 s left",
                     "validated 3/4, 0.17/s, ~6 s left", "validated 4/4 in 24 s, 0.17/s"]
    assert (progress_every(4), progress_every(100), progress_every(1000)) == (1, 5, 50)


def test_loaded_budget_unloads_the_oldest_validated_beyond_keep() -> None:
    from tasks.fleet.progress import LoadedBudget

    gone: list[tuple[str, str]] = []
    budget = LoadedBudget(2, lambda endpoint, tm: gone.append((endpoint, tm)))
    for i in range(5):
        budget.validated("a", f"t{i}.tar.gz")
    budget.validated("b", "u0.tar.gz")  # per endpoint
    assert gone == [("a", "t0.tar.gz"), ("a", "t1.tar.gz"), ("a", "t2.tar.gz")]


@pytest.mark.triton
def test_a_local_deploy_reports_progress_and_leaves_at_most_keep_loaded(
        local_fleet: dict[str, Any]) -> None:
    """Every variant validated again (canaries), one at a time, ``keep_loaded=1``: one progress
    line and artifact state per variant (4 variants: every 1), the artifact at 100 %, and of
    the fleet's versions only one left loaded on the endpoint."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from infra.endpoint.process import find_running
    from infra.endpoint.client import LocalEndpointClient

    assert local_fleet["first"]["validation"]["updates"] == SMALL
    got = _deploy(local_fleet, canary=SMALL, concurrency=1, keep_loaded=1)
    assert got["validation"] == {"validated": SMALL, "total": SMALL, "failed": 0, "updates": SMALL,
                                 "unloaded": SMALL - 1, "keep_loaded": 1}
    running = find_running(ENDPOINT)
    assert running is not None
    routed = {r.target_model for r in read_routes(local_fleet["store_uri"], local_fleet["fleet"]).variants.values()}
    loaded = [m for m in LocalEndpointClient(running.url).models()
              if m.target_model in routed and m.state == "loaded"]
    assert len(loaded) <= 1
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["fleet-deploy-progress"])))
    assert arts and max(arts, key=lambda a: a.created).data == 100.0


@pytest.mark.triton
def test_redeploy_with_one_changed_variant_uploads_and_validates_only_it(
        local_fleet: dict[str, Any], aws_calls: list) -> None:
    name = local_fleet["names"][0]
    before_table = read_routes(local_fleet["store_uri"], local_fleet["fleet"])
    before = _objects(local_fleet["prefix"])
    sha = _redo(local_fleet["build"], name, "repack")
    got = _deploy(local_fleet)
    after = _objects(local_fleet["prefix"])
    new = versioned_target(f"{name}.tar.gz", sha)
    assert set(after) - set(before) == {new}  # exactly one upload...
    assert {k: after[k] for k in before} == before  # ...and nothing else rewritten
    invoked = [p["TargetModel"] for s, o, p in aws_calls if o == "InvokeEndpoint"]
    assert invoked == [new]  # exactly one validation invoke, of the new version
    assert got["live"] == [name] and got["published"] == [name]
    route = read_routes(local_fleet["store_uri"], local_fleet["fleet"]).variants[name]
    assert route.target_model == new
    assert [p.target_model for p in route.previous] == [before_table.variants[name].target_model]


@pytest.mark.triton
def test_router_refreshes_its_table_when_the_route_changed(local_fleet: dict[str, Any]) -> None:
    from tasks.fleet.router import Router

    name = local_fleet["names"][1]
    router = Router(local_fleet["store_uri"], local_fleet["fleet"])
    old = router.resolve(name)[1]
    assert _answers_right(router, local_fleet["build"], name) and router.reads == 1
    _redo(local_fleet["build"], name, "repack")
    got = _deploy(local_fleet, keep_versions=0)  # the old version is deleted and unloaded
    assert any(uri.endswith(old) for uri in got["deleted"])
    assert _answers_right(router, local_fleet["build"], name)  # stale route -> refresh -> retry
    assert router.reads == 2 and router.resolve(name)[1] != old


@pytest.mark.triton
def test_cli_prints_routes_and_invokes_by_fleet_and_variant(local_fleet: dict[str, Any],
                                                             tmp_path: Path) -> None:
    from PIL import Image
    from skimage import data
    from typer.testing import CliRunner

    from flows.cli import app

    store_uri, fleet, name = local_fleet["store_uri"], local_fleet["fleet"], local_fleet["names"][0]
    runner = CliRunner()
    shown = runner.invoke(app, ["fleet", "routes", fleet, "--store", store_uri, "--json"])
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert doc["variants"][name]["endpoint"] == ENDPOINT and doc["schema_version"] == RoutingTable.current_version
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.jpg")
    got = runner.invoke(app, ["invoke", "--image", str(tmp_path / "cat.jpg"), "--fleet", fleet,
                              "--variant", name, "--store", store_uri, "--json", "--top-k", "1000"])
    assert got.exit_code == 0, got.output
    (result,) = json.loads(got.stdout)["results"]
    assert abs(sum(t["score"] for t in result["top_k"]) - 1.0) < 1e-3  # the tenant's own softmax
    bad = runner.invoke(app, ["invoke", "--image", str(tmp_path / "cat.jpg"), "--fleet", fleet,
                              "--variant", "no-such-tenant", "--store", store_uri])
    assert bad.exit_code != 0 and "no-such-tenant" in bad.output


@pytest.mark.triton
def test_a_failing_variant_keeps_its_previous_version_while_others_go_live(
        local_fleet: dict[str, Any]) -> None:
    bad, good = local_fleet["names"][2], local_fleet["names"][3]
    before = read_routes(local_fleet["store_uri"], local_fleet["fleet"])
    _redo(local_fleet["build"], bad, "garbage")
    good_sha = _redo(local_fleet["build"], good, "repack")
    with pytest.raises(FleetDeployFailed, match=rf"1 variant\(s\) did not go live.*{bad}: "):
        _deploy(local_fleet)
    table = read_routes(local_fleet["store_uri"], local_fleet["fleet"])
    assert table.variants[bad] == before.variants[bad]  # still on its previous version
    assert table.variants[good].sha256 == good_sha
    assert not any(p.name.startswith(f"{bad}-") and p.name != before.variants[bad].target_model
                   for p in local_fleet["prefix"].glob("*.tar.gz"))  # the failed upload is gone


@pytest.mark.triton
def test_retire_after_grace_then_gc_deletes_only_what_nothing_references(
        local_fleet: dict[str, Any]) -> None:
    from flows.fleet_retire import fleet_gc, fleet_retire

    store_uri, fleet, prefix = local_fleet["store_uri"], local_fleet["fleet"], local_fleet["prefix"]
    name = local_fleet["names"][3]
    versions = [v.target_model for v in read_routes(store_uri, fleet).variants[name].versions()]
    t0 = "2026-01-01T12:00:00+00:00"
    assert fleet_retire(fleet, [name], store_uri=store_uri, clock=t0)["marked"] == [name]
    early = fleet_retire(fleet, [name], store_uri=store_uri, clock="2026-01-01T12:59:00+00:00")
    assert early["removed"] == [] and name in read_routes(store_uri, fleet).variants
    late = fleet_retire(fleet, [name], store_uri=store_uri, clock="2026-01-01T13:00:00+00:00")
    assert late["removed"] == [name] and name not in read_routes(store_uri, fleet).variants
    assert not any((prefix / v).exists() for v in versions)

    (prefix / "orphan.tar.gz").write_bytes(b"left over")
    routed = {v.target_model for r in read_routes(store_uri, fleet).variants.values()
              for v in r.versions()}
    listed = fleet_gc(store_uri=store_uri, dry_run=True)["objects"]
    assert [u.rsplit("/", 1)[-1] for u in listed] == ["orphan.tar.gz"]
    assert (prefix / "orphan.tar.gz").exists()  # a dry run deletes nothing
    fleet_gc(store_uri=store_uri)
    assert not (prefix / "orphan.tar.gz").exists()
    assert all((prefix / t).exists() for t in routed)


# ------------------------------------------------------------------ fleet safety
def _cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})  # tables unwrapped


def _lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.strip()]


def test_retire_takes_the_whole_fleet_only_with_all(tmp_path: Path, prefect_harness: None) -> None:
    from flows.fleet_retire import fleet_retire
    from infra.errors import UserError
    from tasks.fleet.routes import RouteVersion, RoutingTable, promote, write_routes
    from tasks.fleet.routes import parse_time as t

    uri = (tmp_path / "store").as_uri()
    table = RoutingTable(fleet="whole")
    for name in ("a", "b", "c"):
        promote(table, name, RouteVersion(target_model=f"{name}-1.tar.gz", sha256="1" * 64,
                                          since="2026-01-01T00:00:00+00:00", endpoint="ep"),
                t("2026-01-01T00:00:00"))
    write_routes(uri, table, t("2026-01-01T00:00:00"))
    with pytest.raises(UserError, match=r"variants, a shard, or --all"):
        fleet_retire("whole", store_uri=uri)  # the flow refuses it too, not just the CLI
    assert all(r.retiring_since is None for r in read_routes(uri, "whole").variants.values())
    got = _cli("fleet", "retire", "whole", "--all", "--store", uri)
    assert got.exit_code == 0, got.output
    assert "fleet whole: 3 marked retiring, 0 removed" in got.output
    assert all(r.retiring_since for r in read_routes(uri, "whole").variants.values())


def _inline_copy(fleet: dict[str, Any], path: Path, drop: str, extra: str) -> Path:
    """The fixture's fleet as an inline fleet file: every variant but ``drop`` with exactly the
    params (sources) it was built from, plus ``extra`` (another tenant's files, never built)."""
    import yaml

    from ensembles.fleet_spec import load_fleet, resolve_variants

    spec = load_fleet(fleet["root"] / "fleet.yaml")
    variants = {v.name: v for v in resolve_variants(spec).variants}
    rows = [{"name": n, "params": v.params, "labels": v.labels}
            for n, v in sorted(variants.items()) if n != drop]
    rows.append({"name": extra, "params": variants[fleet["names"][0]].params})
    path.write_text(yaml.safe_dump({"name": spec.name, "template": spec.template,
                                    "target": spec.target, "variants": rows}))
    return path


@pytest.mark.triton
def test_deploying_a_fleet_file_that_its_build_does_not_match_is_refused(
        local_fleet: dict[str, Any], tmp_path: Path) -> None:
    names, store_uri = local_fleet["names"], local_fleet["store_uri"]
    before = read_routes(store_uri, local_fleet["fleet"])
    changed = _inline_copy(local_fleet, tmp_path / "fleet.yaml", drop=names[-1], extra="newcomer")
    got = _cli("fleet", "deploy", str(changed), "--endpoint", ENDPOINT, "--store", store_uri,
               "--build-dir", str(local_fleet["build"]))
    assert got.exit_code == 2, got.output
    (line,) = [ln for ln in _lines(got.output) if ln.startswith("error:")]
    assert "FleetBuildStale" in line and "disagree" in line
    assert f"in the file but not built: newcomer; built but not in the file: {names[-1]}" in line
    assert "built from other sources" not in line  # the others' sources are what was built
    assert f"run `mme fleet build {changed}` first" in line
    assert read_routes(store_uri, local_fleet["fleet"]) == before  # nothing deployed


@pytest.mark.triton
def test_a_deploy_that_unretires_says_which_variants_and_by_which_build(
        local_fleet: dict[str, Any]) -> None:
    store_uri, fleet, build = local_fleet["store_uri"], local_fleet["fleet"], local_fleet["build"]
    name = local_fleet["names"][1]
    _restore_routed(local_fleet, local_fleet["names"][2])  # the garbage build of an earlier test
    retired = _cli("fleet", "retire", fleet, "--variant", name, "--store", store_uri)
    assert retired.exit_code == 0 and "1 marked retiring" in retired.output, retired.output
    assert read_routes(store_uri, fleet).variants[name].retiring_since
    got = _cli("fleet", "deploy", str(local_fleet["root"] / "fleet.yaml"), "--endpoint", ENDPOINT,
               "--store", store_uri, "--build-dir", str(build))
    assert got.exit_code == 0, got.output
    build_id = hashlib.sha256((build / INDEX_FILE).read_bytes()).hexdigest()[:12]
    sha = json.loads((build / INDEX_FILE).read_text())["variants"][name]["sha256"]
    out = " ".join(got.output.split())  # (rich wraps the summary line)
    assert "0 marked retiring, 1 un-retired" in out
    assert f"1 retiring variant(s) un-retired: they are in build {build_id}" in out
    assert f"un-retired {name}: sha256 {sha[:12]}, manifest {build / name}.manifest.json" in out
    assert read_routes(store_uri, fleet).variants[name].retiring_since is None
    again = _deploy(local_fleet)  # nothing retiring any more: nothing to report
    assert again["unretired"] == {} and again["build"]["id"] == build_id


def test_verify_refuses_a_fleet_with_no_routing_table(tmp_path: Path, prefect_harness: None) -> None:
    got = _cli("fleet", "verify", "nosuchfleet", "--store", (tmp_path / "store").as_uri())
    assert got.exit_code == 2 and "no such fleet 'nosuchfleet'" in got.output
    assert "(known: none)" in got.output


@pytest.mark.triton
def test_a_routed_object_deleted_behind_the_tools_back_is_found_and_deploy_verify_repairs_it(
        local_fleet: dict[str, Any], aws_calls: list) -> None:
    store_uri, fleet, prefix = local_fleet["store_uri"], local_fleet["fleet"], local_fleet["prefix"]
    _restore_routed(local_fleet, local_fleet["names"][2])  # the garbage build of an earlier test
    name = local_fleet["names"][0]
    route = read_routes(store_uri, fleet).variants[name]
    (prefix / route.target_model).unlink()
    found = _cli("fleet", "verify", fleet, "--store", store_uri)
    assert found.exit_code == 1, found.output
    (row,) = [ln for ln in found.stdout.splitlines() if route.target_model in ln]
    assert name in row and "current" in row and "missing" in row
    assert "1 problem(s) remain" in found.output
    plain = _deploy(local_fleet)  # what a deploy without --verify says: nothing to do
    assert name not in plain["published"] and not (prefix / route.target_model).exists()

    aws_calls.clear()
    got = _deploy(local_fleet, verify=True)
    assert got["verify"]["states"].get("repaired") == 1 and got["verify"]["remaining"] == []
    assert name in got["validated"] and got["failed"] == {}
    invoked = [p["TargetModel"] for s, o, p in aws_calls if o == "InvokeEndpoint"]
    assert invoked == [route.target_model]  # the repaired version answered, by its own name
    assert sha256_file(prefix / route.target_model) == route.sha256
    assert read_routes(store_uri, fleet).variants[name] == route  # the route itself is as it was
    clean = _cli("fleet", "verify", fleet, "--store", store_uri)
    assert clean.exit_code == 0 and "0 problem(s) remain" in clean.output, clean.output


@pytest.mark.triton
def test_verify_repair_restores_a_corrupt_object_from_the_build_and_drops_a_lost_kept_one(
        local_fleet: dict[str, Any]) -> None:
    store_uri, fleet, prefix = local_fleet["store_uri"], local_fleet["fleet"], local_fleet["prefix"]
    name = local_fleet["names"][1]
    _restore_routed(local_fleet, local_fleet["names"][2])  # the garbage build of an earlier test
    _redo(local_fleet["build"], name, "repack")
    _deploy(local_fleet, keep_versions=1)  # its old version is kept for rollback
    current = read_routes(store_uri, fleet).variants[name]
    kept = (name, current.previous[0])
    (prefix / current.target_model).write_bytes(b"not a model any more")
    (prefix / kept[1].target_model).unlink()  # a rollback version no build holds any more
    got = _cli("fleet", "verify", fleet, "--repair", "--store", store_uri, "--build-dir",
               str(local_fleet["build"]))
    assert got.exit_code == 0, got.output
    (fixed,) = [ln for ln in got.stdout.splitlines() if current.target_model in ln]
    assert name in fixed and "current" in fixed and "repaired" in fixed
    (lost,) = [ln for ln in got.stdout.splitlines() if kept[1].target_model in ln]
    assert kept[0] in lost and "previous" in lost and "dropped" in lost
    assert sha256_file(prefix / current.target_model) == current.sha256
    after = read_routes(store_uri, fleet)
    assert kept[1].target_model not in [p.target_model for p in after.variants[kept[0]].previous]
    assert after.variants[name].target_model == current.target_model
    assert "0 problem(s) remain" in got.output
    assert _cli("fleet", "verify", fleet, "--store", store_uri).exit_code == 0
