"""``--dry-run`` on every ``mme`` command that changes state (issue 21): each names what it would
do (names, paths, counts), changes nothing on disk (a snapshot of paths, mtimes and sizes is
the same before and after), creates no endpoint state file, and with ``--json`` prints one
document with ``"dry_run": true``; bad input exits 2 as it does without ``--dry-run``.

Fast: no Triton, no Prefect server, no flow run (the dry runs call plain functions). The real
build steps here are cheap ones (the example fleet's shared DALI pipeline, under a second; the
image classifier's artifacts, a few seconds), to show plans keyed by the build's own keys. Three
tests of the full lane hold the plans against the real runs: ``mme watch --dry-run`` against
the scan (marker ``prefect``), ``mme fleet build --dry-run`` against a 3-variant build and
``mme build --dry-run`` against the session's image_classifier build (markers ``triton`` and
``prefect``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app

#: every command that changes state (an endpoint, a store, a file, a cache, an event bus)
STATE_CHANGING = {"build", "render", "deploy", "retire", "rollback", "watch", "cache-clear", "demo", "profile",
                  "endpoint start", "endpoint stop", "fleet example", "fleet build", "fleet deploy",
                  "fleet retire", "fleet rollback", "fleet gc"}

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``MME_HOME`` per test (the dry runs must leave it as they found it)."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("MME_HOME", str(folder))
    return folder


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``roots`` (folders included) with its mtime (ns) and size."""
    out: dict[str, tuple[int, int]] = {}
    for root in roots:
        if not root.exists():
            out[str(root)] = (-1, -1)
            continue
        for path in [root, *root.rglob("*")]:
            st = path.lstat()
            out[str(path)] = (st.st_mtime_ns, st.st_size)
    return out


def run(*args: str) -> Any:
    got = runner.invoke(app, list(args))
    assert got.exit_code == 0, got.output
    return got


def run_json(*args: str) -> dict[str, Any]:
    doc = json.loads(run(*args, "--json").stdout)
    assert doc["dry_run"] is True
    return doc


def test_every_state_changing_command_takes_dry_run() -> None:
    root: Any = typer.main.get_command(app)
    for path in sorted(STATE_CHANGING):
        cmd = root
        for part in path.split():
            cmd = cmd.commands[part]
        assert "dry_run" in {p.name for p in cmd.params}, path


def test_build_dry_run_names_each_artifact_and_the_tarball(home: Path) -> None:
    before = snapshot(home)
    doc = run_json("build", "text_embedding", "image_classifier", "--dry-run")
    plans = {p["ensemble"]: p for p in doc["ensembles"]}
    assert plans["text_embedding"]["artifacts"] == {"hf_model": "produce", "tokenizer": "after",
                                                    "encoder_onnx": "after"}
    assert plans["text_embedding"]["tarball"] == str(home / "artifacts/local-cpu/text_embedding.tar.gz")
    assert {p["status"] for p in plans.values()} == {"build"}
    human = run("build", "image_classifier", "--dry-run").stdout
    assert "image_classifier (local-cpu): would build" in human and "artifact dali_cpu: produce" in human
    assert "would build 1, 0 up to date; nothing changed (dry run)" in human
    assert snapshot(home) == before


def test_build_dry_run_sees_a_cached_artifact(home: Path) -> None:
    """A real step (the DALI pipeline, under a second) fills the cache; the plan says cached."""
    from ensembles.catalog import load_ensemble
    from tasks.producers import cache

    spec, _ = load_ensemble("image_classifier")
    cache.produce_cached(spec, "dali_cpu", {}, "local-cpu")
    before = snapshot(home)
    doc = run_json("build", "image_classifier", "--dry-run")
    assert doc["ensembles"][0]["artifacts"]["dali_cpu"] == "cached"
    assert doc["ensembles"][0]["artifacts"]["classifier_onnx"] == "produce"
    assert snapshot(home) == before


def test_build_dry_run_bad_input_exits_2_as_without(home: Path) -> None:
    for args in (["--set", "nodot"], ["--target", "nowhere"], ["no_such_ensemble"]):
        dry = runner.invoke(app, ["build", *args, "--dry-run"])
        assert dry.exit_code == 2, (args, dry.output)
    real = runner.invoke(app, ["build", "--set", "nodot"])  # refused before any flow run
    dry = runner.invoke(app, ["build", "--set", "nodot", "--dry-run"])
    assert real.exit_code == dry.exit_code == 2 and real.output == dry.output
    assert list(home.iterdir()) == []


def test_render_dry_run_lists_the_configs_and_writes_none(tmp_path: Path) -> None:
    out = tmp_path / "configs"
    doc = run_json("render", "text_embedding", "--out", str(out), "--dry-run")
    assert [Path(f["path"]).relative_to(out).as_posix() for f in doc["files"]] == [
        "text_embedding/config.pbtxt", "text_embedding__encoder/config.pbtxt",
        "text_embedding__postprocess/config.pbtxt", "text_embedding__preprocess/config.pbtxt"]
    assert all(f["bytes"] > 0 for f in doc["files"]) and not out.exists()
    run("render", "text_embedding", "--out", str(out))  # the real one writes those very files
    assert {str(p) for p in out.glob("*/config.pbtxt")} == {f["path"] for f in doc["files"]}
    assert {f["path"]: f["bytes"] for f in doc["files"]} == {
        str(p): p.stat().st_size for p in out.glob("*/config.pbtxt")}
    real = runner.invoke(app, ["render", "text_embedding", "--out", str(out)])
    dry = runner.invoke(app, ["render", "text_embedding", "--out", str(out), "--dry-run"])
    assert real.exit_code == dry.exit_code == 2 and "File exists" in dry.output


def test_cache_clear_dry_run_counts_and_deletes_nothing(home: Path) -> None:
    cache = home / "cache" / "artifacts" / "k"
    cache.mkdir(parents=True)
    for i, size in enumerate((10, 2000, 3 * 2**20)):
        (cache / f"f{i}").write_bytes(b"x" * size)
    before = snapshot(home)
    doc = run_json("cache-clear", "--dry-run")
    assert (doc["path"], doc["files"], doc["bytes"], doc["mib"]) == (str(home / "cache"), 3,
                                                                     10 + 2000 + 3 * 2**20, 3.0)
    human = run("cache-clear", "--dry-run").stdout
    assert f"would remove {home / 'cache'} (3 files, {10 + 2000 + 3 * 2**20} bytes" in human
    assert snapshot(home) == before
    gone = json.loads(run("cache-clear", "--json").stdout)
    assert (gone["dry_run"], gone["files"], (home / "cache").exists()) == (False, 3, False)


def _state(home: Path, name: str, owner: dict[str, Any] | None, pid: int) -> Path:
    folder = home / "endpoints" / name
    folder.mkdir(parents=True)
    path = folder / "endpoint.json"
    path.write_text(json.dumps({"name": name, "url": "http://127.0.0.1:9", "pid": pid,
                                "model_data_url": "file:///m", "triton_url": "http://127.0.0.1:8",
                                "cache_dir": str(folder / "cache"), "started_at": 0.0, "owner": owner}))
    return path


def test_endpoint_start_dry_run_says_the_settings_and_starts_nothing(home: Path) -> None:
    doc = run_json("endpoint", "start", "--name", "ep", "--max-loaded-models", "3",
                   "--triton-metrics-port", "-1", "--dry-run")
    assert (doc["action"], doc["state"], doc["model_data_url"]) == (
        "start", "absent", (home / "store" / "models" / "ep").as_uri())
    assert doc["cache_dir"] == str(home / "endpoints" / "ep" / "cache")
    assert doc["limits"]["max_loaded_models"] == 3 and doc["triton_metrics_port"] is None
    human = run("endpoint", "start", "--name", "ep", "--port", "8123", "--dry-run").stdout
    assert "would start endpoint ep on 127.0.0.1:8123" in human and "nothing changed (dry run)" in human
    assert list(home.iterdir()) == []  # no state file, no settings, no log


def test_endpoint_dry_runs_judge_the_record_and_signal_nothing(home: Path) -> None:
    """A record naming this very process (proven alive) is "running": stop would signal it, and
    the dry run does not (this test is still here); a dead pid's record is stale, left as is."""
    from infra.processes.procfs import ProcessIdentity

    me = ProcessIdentity.current()
    live = _state(home, "live", me.to_dict(), os.getpid())
    dead = _state(home, "dead", {**me.to_dict(), "start": me.start + 1}, os.getpid())
    before = snapshot(home)
    stop = run_json("endpoint", "stop", "--name", "live", "--dry-run")
    assert (stop["action"], stop["pid"], stop["state"]) == ("stop", os.getpid(), "running")
    start = run_json("endpoint", "start", "--name", "live", "--model-data-url", "file:///m", "--dry-run")
    assert (start["action"], start["url"]) == ("none", "http://127.0.0.1:9")
    assert "already running at http://127.0.0.1:9" in run("endpoint", "start", "--name", "live",
                                                           "--model-data-url", "file:///m", "--dry-run").stdout
    other = runner.invoke(app, ["endpoint", "start", "--name", "live", "--model-data-url", "file:///n",
                                "--dry-run"])
    assert other.exit_code == 2 and "already running with model prefix file:///m, not file:///n" in other.output
    stale = run_json("endpoint", "stop", "--name", "dead", "--dry-run")
    assert (stale["action"], stale["state"]) == ("remove stale state file", "stale")
    assert run_json("endpoint", "stop", "--name", "none", "--dry-run")["action"] == "none"
    assert snapshot(home) == before and live.exists() and dead.exists()


def test_watch_dry_run_lists_the_events_and_emits_none(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "incoming"
    for key in ("text_embedding/model.onnx", "image_classifier/model.onnx", "notes.txt"):
        (source / key).parent.mkdir(parents=True, exist_ok=True)
        (source / key).write_bytes(b"m")
    before = snapshot(home, source)
    doc = run_json("watch", source.as_uri(), "--dry-run")
    assert sorted((e["ensemble"], e["change"]) for e in doc["events"]) == [
        ("image_classifier", "new"), ("text_embedding", "new")]
    assert (doc["model_files"], doc["removed"]) == (2, [])
    human = run("watch", source.as_uri(), "--dry-run").stdout
    assert "would emit mme.model.landed" in human and "would emit 2 events" in human
    assert snapshot(home, source) == before  # no watch state written


def test_fleet_example_dry_run_lists_the_files(tmp_path: Path) -> None:
    out = tmp_path / "fleet"
    doc = run_json("fleet", "example", "--count", "3", "--out", str(out), "--dry-run")
    assert doc["tenants"] == ["tenant-0001", "tenant-0002", "tenant-0003"]
    assert len(doc["files"]) == 3 * 3 + 2 and not any(f["exists"] for f in doc["files"])
    assert doc["fleet_file"] == str(out / "fleet.yaml")
    text = run_json("fleet", "example", "--kind", "text", "--count", "2", "--out", str(out), "--dry-run")
    assert len(text["files"]) == 2 * 2 + 1 and not out.exists()
    bad = runner.invoke(app, ["fleet", "example", "--out", str(out), "--kind", "sound", "--dry-run"])
    assert bad.exit_code == 2 and "--kind 'sound'" in bad.output


def test_fleet_example_dry_run_into_s3_lists_the_objects_and_no_fleet_file(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An s3:// prefix (moto): the objects it would put, one listing of what is there, and no
    fleet file unless --fleet-file is given; nothing put."""
    import boto3
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="fleets/a/tenants/tenant-0002/labels.txt", Body=b"x\n")
        doc = run_json("fleet", "example", "--count", "2", "--out", "s3://models/fleets/a", "--dry-run")
        assert (doc["out"], doc["fleet_file"]) == ("s3://models/fleets/a", None)
        assert [f["uri"] for f in doc["files"] if f["exists"]] == [
            "s3://models/fleets/a/tenants/tenant-0002/labels.txt"]
        assert len(doc["files"]) == 2 * 3 + 1 and doc["files"][-1]["uri"] == "s3://models/fleets/a/cat.jpg"
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="models")["Contents"]] == [
            "fleets/a/tenants/tenant-0002/labels.txt"]


@pytest.fixture
def example_fleet(tmp_path: Path) -> Path:
    """A real 3-tenant example fleet (its files, no build)."""
    out = tmp_path / "fleet"
    run("fleet", "example", "--count", "3", "--out", str(out))
    return out / "fleet.yaml"


def test_fleet_example_dry_run_after_the_example_says_they_exist(example_fleet: Path) -> None:
    out = example_fleet.parent
    before = snapshot(out)
    doc = run_json("fleet", "example", "--count", "3", "--out", str(out), "--dry-run")
    assert all(f["exists"] for f in doc["files"]) and snapshot(out) == before


def test_fleet_build_dry_run_plans_by_the_builds_own_key(example_fleet: Path, home: Path) -> None:
    from ensembles.fleet_spec import load_fleet, resolve_variants
    from tasks.fleet.build import VariantOutcome, fleet_build_dir, load_index, prepare_template, write_index
    from tasks.fleet.variant import file_stem, input_key, target_model_for

    names = ["tenant-0001", "tenant-0002", "tenant-0003"]
    before = snapshot(home, example_fleet.parent)
    fresh = run_json("fleet", "build", str(example_fleet), "--dry-run")
    assert (fresh["build"], fresh["unchanged"], fresh["template_key"]) == (names, [], None)
    assert fresh["shared"] == {"dali_cpu": "produce"}
    assert snapshot(home, example_fleet.parent) == before

    spec = load_fleet(str(example_fleet))
    variants = resolve_variants(spec).variants
    template = prepare_template(spec, variants)  # the shared DALI pipeline, for real (< 1 s)
    keyed = run_json("fleet", "build", str(example_fleet), "--dry-run")
    assert (keyed["template_key"], keyed["build"], keyed["shared"]) == (template.key, names,
                                                                         {"dali_cpu": "cached"})

    # the index a build writes (its own write_index) for three built variants with their tarballs
    out = fleet_build_dir(spec)
    out.mkdir(parents=True)
    outcomes = [VariantOutcome(name=v.name, status="built", file=f"{file_stem(v)}.tar.gz",
                               target_model=target_model_for(v), key=input_key(template.key, v),
                               sha256="0" * 64, bytes=1) for v in variants]
    for o in outcomes:
        (out / o.file).write_bytes(b"t")
    write_index(out, template, load_index(out, spec.name, spec.target), outcomes, variants, {})
    before = snapshot(home, example_fleet.parent)
    built = run_json("fleet", "build", str(example_fleet), "--dry-run")
    assert (built["build"], built["unchanged"], built["dropped"]) == ([], names, [])
    assert snapshot(home, example_fleet.parent) == before
    (out / outcomes[0].file).unlink()  # a tarball gone: that variant is built again
    before = snapshot(home, example_fleet.parent)
    again = run_json("fleet", "build", str(example_fleet), "--dry-run", "--only", "tenant-0003")
    assert (again["build"], again["later"], again["unchanged"]) == ([], ["tenant-0001"], names[1:])
    human = run("fleet", "build", str(example_fleet), "--dry-run").stdout
    assert "would build tenant-0001" in human and "would build 1, leave 2 unchanged" in human
    assert snapshot(home, example_fleet.parent) == before


def test_profile_dry_run_names_the_manifest_it_would_write(tmp_path: Path) -> None:
    from infra.records.manifest import Manifest
    from tasks.build.verify import Sample

    tarball = tmp_path / "e.tar.gz"
    tarball.write_bytes(b"t")
    sample = Sample(inputs={"x": np.zeros((1, 2), np.float32)}, expected={}, context={})
    manifest = tmp_path / "e.manifest.json"
    manifest.write_text(Manifest(ensemble="e", target_model="e.tar.gz", artifact=tarball.as_uri(),
                                 sha256="0" * 64, bytes=1, sample=sample.to_record()).to_json())
    before = snapshot(tmp_path)
    doc = run_json("profile", str(tarball), "--write", "--dry-run")
    assert (doc["manifest"], doc["tarball"], doc["write"]) == (str(manifest), str(tarball), True)
    assert f"would record the footprint in {manifest}" in run("profile", str(tarball), "--write",
                                                              "--dry-run").stdout
    assert snapshot(tmp_path) == before
    missing = [runner.invoke(app, ["profile", str(tmp_path / "no.tar.gz"), *flag]) for flag in ([], ["--dry-run"])]
    assert [m.exit_code for m in missing] == [2, 2] and missing[0].output == missing[1].output


def test_demo_dry_run_lists_its_steps(home: Path, tmp_path: Path) -> None:
    doc = run_json("demo", "--report", str(tmp_path / "r.json"), "--dry-run")
    assert [b["ensemble"] for b in doc["builds"]] == ["text_embedding", "image_classifier"]
    assert doc["endpoint"] == "mme-demo" and doc["report"] == str(tmp_path / "r.json")
    assert any("stop endpoint mme-demo" in s for s in doc["steps"])
    assert list(home.iterdir()) == [] and not (tmp_path / "r.json").exists()


def test_the_mme_script_sweeps_nothing_on_a_dry_run(home: Path) -> None:
    """``mme`` sweeps what dead runs left before a command (it signals processes and removes
    folders); before a dry run it does not: a dead owner's run folder stays until a real one."""
    import subprocess
    import sys

    from infra.processes import leftovers
    from infra.processes.procfs import ProcessIdentity

    me = ProcessIdentity.current()
    dead = ProcessIdentity(pid=me.pid, start=me.start + 1, boot=me.boot)  # this pid, another process
    leftovers.write_ledger(home / "run" / "dead", leftovers.empty_ledger(dead))
    before = snapshot(home)
    env = {**os.environ, "MME_HOME": str(home)}
    got = subprocess.run([sys.executable, "-m", "flows.cli", "cache-clear", "--dry-run", "--json"],
                         capture_output=True, text=True, env=env, check=True)
    assert json.loads(got.stdout)["dry_run"] is True and snapshot(home) == before
    subprocess.run([sys.executable, "-m", "flows.cli", "cache-clear"], capture_output=True, env=env,
                   check=True)
    assert not (home / "run" / "dead").exists()  # the real command swept it: the test can fail


def test_build_dry_run_says_up_to_date_when_the_tarball_is_built_from_the_cached_artifacts(
        home: Path) -> None:
    """Every artifact of image_classifier produced for real (its steps, a few seconds), then the
    manifest a build writes beside its tarball: equal keys, spec and tool -> up to date; a
    manifest of other inputs -> build."""
    import hashlib

    from ensembles.catalog import load_ensemble
    from infra.records.manifest import Manifest, StepRecord
    from tasks.build.ensemble import TOOL_VERSION
    from tasks.producers import cache
    from tasks.producers.produce import artifacts_for

    spec, folder = load_ensemble("image_classifier")
    produced: dict[str, Path] = {}
    steps: dict[str, StepRecord] = {}
    for name in artifacts_for(spec, "local-cpu"):
        got = cache.produce_cached(spec, name, dict(produced), "local-cpu")
        produced[name] = got.path
        steps[f"artifact:{name}"] = StepRecord(seconds=0.0, cached=False, key=got.key)
    assert run_json("build", "image_classifier", "--dry-run")["ensembles"][0]["reason"] == (
        "every artifact cached; no tarball with a manifest at the output yet")
    out = home / "artifacts" / "local-cpu"
    out.mkdir(parents=True)
    (out / "image_classifier.tar.gz").write_bytes(b"t")
    manifest = Manifest(ensemble="image_classifier", target="local-cpu", target_model="image_classifier.tar.gz",
                        artifact=(out / "image_classifier.tar.gz").as_uri(), sha256="0" * 64, bytes=1,
                        spec_sha256=hashlib.sha256((folder / "ensemble.yaml").read_bytes()).hexdigest(),
                        tool_version=TOOL_VERSION, steps=steps)
    (out / "image_classifier.manifest.json").write_text(manifest.to_json())
    before = snapshot(home)
    plan = run_json("build", "image_classifier", "--dry-run")["ensembles"][0]
    assert (plan["status"], set(plan["artifacts"].values())) == ("up to date", {"cached"})
    assert "would build 0, 1 up to date" in run("build", "image_classifier", "--dry-run").stdout
    assert snapshot(home) == before
    steps["artifact:labels"] = StepRecord(seconds=0.0, key="another")
    (out / "image_classifier.manifest.json").write_text(manifest.model_copy(update={"steps": steps}).to_json())
    assert run_json("build", "image_classifier", "--dry-run")["ensembles"][0]["status"] == "build"


def test_endpoint_start_dry_run_refuses_a_taken_port_as_start_does(home: Path) -> None:
    """The real start refuses a taken --port before it starts anything; the dry run says the
    same line with the same exit code (both through the ``mme`` script)."""
    import socket
    import subprocess
    import sys

    env = {**os.environ, "MME_HOME": str(home)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        got = [subprocess.run([sys.executable, "-m", "flows.cli", "endpoint", "start", "--port", port, *flag],
                              capture_output=True, text=True, env=env) for flag in ([], ["--dry-run"])]
    assert [g.returncode for g in got] == [2, 2], [g.stderr for g in got]
    assert got[0].stderr == got[1].stderr and f"cannot serve on 127.0.0.1:{port}" in got[1].stderr
    assert not (home / "endpoints").exists()


def test_fused_fleet_build_dry_run_says_the_tenants_are_fused_again(tmp_path: Path, home: Path) -> None:
    """A fused fleet with no build yet: every tenant in ``build`` and the note saying the build
    fuses them by content (it alone can tell an unchanged tenant apart)."""
    from ensembles.fleet_spec import load_fleet, resolve_variants
    from tasks.fleet.build import prepare_template

    out = tmp_path / "fused"
    run("fleet", "example", "--count", "2", "--out", str(out), "--layout", "fused")
    spec = load_fleet(str(out / "fleet.yaml"))
    prepare_template(spec, resolve_variants(spec).variants)  # the shared DALI pipeline (< 1 s)
    before = snapshot(home, out)
    doc = run_json("fleet", "build", str(out / "fleet.yaml"), "--dry-run")
    assert (doc["layout"], doc["build"], doc["shards"]) == ("fused", ["tenant-0001", "tenant-0002"], [])
    assert doc["note"] is not None and "fuses them again by content" in doc["note"]
    assert snapshot(home, out) == before


@pytest.mark.prefect
def test_watch_dry_run_lists_exactly_what_the_real_scan_emits(home: Path, tmp_path: Path,
                                                              prefect_harness: None) -> None:
    """The plan against the real run (a flow run on Prefect's test server): the same events;
    after it, the dry run sees its state and lists nothing, then a changed file as changed."""
    source = tmp_path / "incoming"
    for key in ("text_embedding/model.onnx", "image_classifier/model.onnx", "image_classifier/w.bin"):
        (source / key).parent.mkdir(parents=True, exist_ok=True)
        (source / key).write_bytes(b"m")
    planned = run_json("watch", source.as_uri(), "--dry-run")["events"]
    real = json.loads(run("watch", source.as_uri(), "--json").stdout)
    assert real["dry_run"] is False and len(planned) == 3
    assert sorted((e["uri"], e["change"]) for e in planned) == sorted(
        (e["uri"], e["change"]) for e in real["events"])
    assert run_json("watch", source.as_uri(), "--dry-run")["events"] == []
    (source / "image_classifier" / "w.bin").write_bytes(b"longer")
    again = run_json("watch", source.as_uri(), "--dry-run")["events"]
    assert [(Path(e["uri"]).name, e["change"]) for e in again] == [("w.bin", "changed")]


@pytest.mark.triton
@pytest.mark.prefect
def test_fleet_build_dry_run_agrees_with_the_real_build(tmp_path: Path, home: Path,
                                                        prefect_harness: None) -> None:
    """A real 3-variant build (canary in Triton): the plan before it lists the 3 it builds; after
    it, none to build and 3 unchanged; one tenant's model touched, exactly that one, which is
    what the next real build builds."""
    from flows.fleet_build import fleet_build

    out = tmp_path / "fleet"
    run("fleet", "example", "--count", "3", "--out", str(out))
    fleet = str(out / "fleet.yaml")
    names = ["tenant-0001", "tenant-0002", "tenant-0003"]
    assert run_json("fleet", "build", fleet, "--dry-run")["build"] == names
    first = fleet_build(fleet, triton_sample=1)
    assert (first["built"], first["unchanged"]) == (3, 0)
    after = run_json("fleet", "build", fleet, "--dry-run")
    assert (after["build"], after["unchanged"]) == ([], names)
    model = out / "tenants" / "tenant-0002" / "model.onnx"
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: a new source fingerprint
    changed = run_json("fleet", "build", fleet, "--dry-run")
    assert (changed["build"], changed["unchanged"]) == (["tenant-0002"], ["tenant-0001", "tenant-0003"])
    second = fleet_build(fleet, triton_sample=1)
    assert (second["built"], second["unchanged"]) == (1, 2)


@pytest.mark.triton
@pytest.mark.prefect
def test_build_dry_run_says_up_to_date_after_the_real_build(built_image_classifier: dict, mme_home: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """After the real image_classifier build (the session's, verified in Triton), its plan is
    up to date with every artifact cached, and the build's output is left as it was."""
    monkeypatch.setenv("MME_HOME", str(mme_home))
    out = built_image_classifier["output_dir"]
    before = snapshot(out)
    plan = run_json("build", "image_classifier", "--output-dir", str(out), "--dry-run")["ensembles"][0]
    assert (plan["status"], set(plan["artifacts"].values())) == ("up to date", {"cached"})
    assert plan["tarball"] == str(built_image_classifier["archive"])
    assert snapshot(out) == before
