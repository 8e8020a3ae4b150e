"""One grammar for the ``mme`` command line (issue 21): a fleet named the same way everywhere
(:func:`flows.cli.fleet_ref.resolve_fleet`), ``--json`` on every command that reports,
``--dry-run`` on every command that changes state, results on stdout without hard wraps, and
a classifier's answer as its top-k labels. Fast: no Triton, no Prefect server (the dry runs
call the flows' plain functions)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.fleet_ref import resolve_fleet
from infra.errors import UserError
from tasks.deploy.publish import versioned_target
from tasks.fleet.build import INDEX_FILE, FleetIndex, FleetIndexEntry
from tasks.fleet.routes import RouteVersion, RoutingTable, promote, read_routes, write_routes

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LONG = "tenant-" + "x" * 90  # a variant name longer than a terminal's 80 columns

#: the commands that report a result: each takes --json
REPORTING = {"build", "deploy", "retire", "rollback", "invoke", "plan", "profile", "endpoint status",
             "fleet show", "fleet example", "fleet build", "fleet deploy", "fleet routes",
             "fleet retire", "fleet rollback", "fleet gc", "fleet verify", "render", "cache-clear", "watch", "demo",
             "endpoint start", "endpoint stop"}
#: the commands that only read (or, for ``invoke``, send one request): every other command
#: changes state (files, an endpoint, a store, a routing table, events) and takes --dry-run.
#: Two exceptions, said in docs/reference/cli-json.md: ``plan`` writes only its own --out files
#: (a dry run would be the whole search), ``endpoint serve`` runs in the foreground until stopped.
READ_ONLY = {"endpoint status", "fleet routes", "fleet show", "fleet verify", "iam-policy", "invoke",
             "preflight", "plan", "endpoint serve"}


def _commands() -> dict[str, Any]:
    """Every leaf command of ``mme`` by its path ("fleet deploy")."""
    root = typer.main.get_command(app)
    out: dict[str, Any] = {}

    def visit(cmd: Any, path: str) -> None:
        if hasattr(cmd, "commands"):  # a group (Typer's own click types)
            for name, sub in cmd.commands.items():
                visit(sub, f"{path} {name}".strip())
        else:
            out[path] = cmd
    visit(root, "")
    return out


def test_every_help_lists_json_where_it_reports_and_dry_run_where_it_changes_state() -> None:
    """Runs every command's ``--help`` (as a user would) and reads its options."""
    commands = _commands()
    assert REPORTING | READ_ONLY <= set(commands)
    runner = CliRunner()
    for path in sorted(commands):
        got = runner.invoke(app, [*path.split(), "--help"], terminal_width=200)
        assert got.exit_code == 0, (path, got.output)
        if path in REPORTING:
            assert "--json " in got.output or "--json\n" in got.output, path
        if path not in READ_ONLY:
            assert "--dry-run" in got.output, path
    top = runner.invoke(app, ["--help"], terminal_width=200)
    assert "--quiet" in top.output and "--verbose" in top.output


def test_the_command_list_is_unchanged() -> None:
    root: Any = typer.main.get_command(app)
    names = [c.name for c in root.commands.values()]
    assert names == ["render", "build", "preflight", "deploy", "iam-policy", "retire", "rollback", "invoke",
                     "watch", "cache-clear", "demo", "plan", "profile", "endpoint", "fleet"], names
    assert list(root.commands["fleet"].commands) == ["show", "example", "build", "deploy", "routes",
                                                     "retire", "rollback", "gc", "verify"]


# ---------------------------------------------------------------- one fleet resolver


def _build_dir(home: Path, fleet: str = "f", target: str = "local-cpu",
               variants: dict[str, FleetIndexEntry] | None = None) -> Path:
    out = home / "artifacts" / target / "fleets" / fleet
    out.mkdir(parents=True)
    index = FleetIndex(fleet=fleet, target=target, variants=variants or {
        n: FleetIndexEntry(file=f"{n}.tar.gz", target_model=f"{n}.tar.gz", status="ok",
                           sha256=c * 64, bytes=100) for n, c in (("a", "1"), ("b", "2"))})
    (out / INDEX_FILE).write_text(index.model_dump_json())
    return out


def test_a_fleet_is_a_name_a_file_or_a_build_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    built = _build_dir(tmp_path / "home")
    by_folder = resolve_fleet(str(built))
    assert (by_folder.name, by_folder.file, by_folder.build_dir) == ("f", None, built.resolve())
    by_name = resolve_fleet("f")  # not in the catalog: found under the artifacts dir
    assert (by_name.name, by_name.build_dir) == ("f", built)
    routed_only = resolve_fleet("only-routed")
    assert (routed_only.name, routed_only.file, routed_only.build_dir) == ("only-routed", None, None)
    catalog = resolve_fleet("tenants-example")
    assert catalog.name == "tenants-example" and catalog.file is not None
    assert catalog.file.name == "tenants-example.yaml" and catalog.source == "tenants-example"
    as_file = resolve_fleet(str(catalog.file))
    assert as_file.name == "tenants-example" and as_file.source == str(catalog.file)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=f"folder without {INDEX_FILE}"):
        resolve_fleet(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no file"):
        resolve_fleet(str(tmp_path / "missing.yaml"))


def _table(uri: str, fleet: str = "f", names: tuple[str, ...] = ("a", "c"), sha: str = "1" * 64,
           endpoint: str = "ep-1") -> None:
    table = RoutingTable(fleet=fleet)
    for name in names:
        promote(table, name, RouteVersion(target_model=versioned_target(f"{name}.tar.gz", sha),
                                          sha256=sha, since=T0.isoformat(), endpoint=endpoint), T0)
    write_routes(uri, table, T0)


def test_routes_is_a_table_by_default_json_with_json_and_takes_a_build_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    built = _build_dir(tmp_path / "home")
    uri = (tmp_path / "store").as_uri()
    _table(uri, names=("a", LONG))
    runner = CliRunner()
    human = runner.invoke(app, ["fleet", "routes", str(built), "--store", uri])
    assert human.exit_code == 0, human.output
    row = next(ln for ln in human.stdout.splitlines() if LONG in ln)  # piped: one line, not wrapped
    assert "ep-1" in row and versioned_target(f"{LONG}.tar.gz", "1" * 64) in row
    doc = json.loads(runner.invoke(app, ["fleet", "routes", "f", "--store", uri, "--json"]).stdout)
    assert sorted(doc["variants"]) == sorted(["a", LONG]) and doc["fleet"] == "f"


# ---------------------------------------------------------------- dry runs


def test_fleet_retire_dry_run_says_what_it_would_do_and_writes_nothing(tmp_path: Path) -> None:
    uri = (tmp_path / "store").as_uri()
    _table(uri, names=("a", "b", "c"))
    before = read_routes(uri, "f").model_dump()
    runner = CliRunner()
    got = runner.invoke(app, ["fleet", "retire", "f", "--variant", "b", "--store", uri,
                              "--dry-run", "--json"])
    assert got.exit_code == 0, got.output
    doc = json.loads(got.stdout)
    assert (doc["dry_run"], doc["marked"], doc["removed"], doc["routed"]) == (True, ["b"], [], 3)
    now = json.loads(runner.invoke(app, ["fleet", "retire", "f", "--variant", "b", "--now",
                                         "--store", uri, "--dry-run", "--json"]).stdout)
    assert now["removed"] == ["b"] and now["routed"] == 2 and len(now["deleted"]) == 1
    human = runner.invoke(app, ["fleet", "retire", "f", "--all", "--store", uri, "--dry-run"])
    assert "3 would be marked retiring" in human.stdout and "(dry run)" in human.stdout
    assert read_routes(uri, "f").model_dump() == before


def test_fleet_deploy_dry_run_lists_the_jobs_from_the_build_and_the_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``a`` is routed at the built sha256 (unchanged), ``b`` is new, ``c`` left the build."""
    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    built = _build_dir(tmp_path / "home")
    uri = (tmp_path / "store").as_uri()
    _table(uri, names=("a", "c"))
    before = read_routes(uri, "f").model_dump()
    runner = CliRunner()
    got = runner.invoke(app, ["fleet", "deploy", str(built), "--endpoint", "ep-1", "--store", uri,
                              "--dry-run", "--json"])
    assert got.exit_code == 0, got.output
    doc = json.loads(got.stdout)
    assert [(j["variant"], j["kind"], j["endpoint"]) for j in doc["jobs"]] == [("b", "new", "ep-1")]
    assert doc["jobs"][0]["target_model"] == versioned_target("b.tar.gz", "2" * 64)
    assert (doc["unchanged"], doc["leaving"], doc["dry_run"]) == (1, ["c"], True)
    human = runner.invoke(app, ["fleet", "deploy", "f", "--endpoint", "ep-1", "--store", uri, "--dry-run"])
    assert human.exit_code == 0, human.output
    assert "would publish and validate 1" in human.stdout and "nothing changed" in human.stdout
    assert read_routes(uri, "f").model_dump() == before
    assert not (tmp_path / "store" / "models").exists()  # nothing published


# ---------------------------------------------------------------- quiet, errors, exit codes


def test_quiet_and_verbose_are_global_and_exclusive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "INFO")  # -q sets it for the process: restored after
    runner = CliRunner()
    both = runner.invoke(app, ["--quiet", "--verbose", "fleet", "routes", "f"])
    assert both.exit_code == 2 and "not both" in both.output
    uri = (tmp_path / "store").as_uri()
    _table(uri)
    quiet = runner.invoke(app, ["-q", "fleet", "routes", "f", "--store", uri, "--json"])
    assert quiet.exit_code == 0 and json.loads(quiet.stdout)["fleet"] == "f"
    missing = runner.invoke(app, ["-q", "fleet", "routes", "nosuch", "--store", uri])
    assert missing.exit_code == 2 and "no such fleet 'nosuch'" in missing.output  # errors stay
    runner.invoke(app, ["fleet", "routes", "f", "--store", uri])  # no -q: notes are said again
    from flows.cli.common import console

    assert console.quiet is False


@pytest.mark.prefect
def test_quiet_leaves_stderr_empty_and_stdout_one_json_document(tmp_path: Path, prefect_harness: None) -> None:
    """A flow command as a script runs it: ``mme -q fleet gc --dry-run --json`` prints the JSON
    document and nothing else; without -q, Prefect's logs go to stderr, never stdout."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "MME_HOME": str(tmp_path / "home"), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    args = [sys.executable, "-m", "flows.cli", "fleet", "gc", "--dry-run", "--json",
            "--store", (tmp_path / "store").as_uri()]
    loud = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert json.loads(loud.stdout) == {"dry_run": True, "objects": [], "files": []}
    assert loud.stderr.strip()  # Prefect's flow-run lines
    quiet = subprocess.run([*args[:3], "-q", *args[3:]], capture_output=True, text=True, env=env,
                           timeout=300, check=False)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr[-3000:]
    assert json.loads(quiet.stdout) == json.loads(loud.stdout)


def test_a_plan_of_a_fleet_without_a_build_is_one_line_exit_2(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    got = CliRunner().invoke(app, ["plan", "nobuild", "--traffic", "zipf:1.1:10", "--p99-ms", "100"])
    assert got.exit_code == 2 and "no build of fleet 'nobuild'" in got.output


# ---------------------------------------------------------------- top-k labels


def test_top_k_names_each_rows_best_classes_by_its_labels() -> None:
    from tasks.runtime.invoke_answer import is_class_scores, top_k

    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)
    best = top_k(scores, ["cat", "dog", "fox"], 2)
    assert [[(t.label, t.index) for t in row] for row in best] == [[("dog", 1), ("fox", 2)],
                                                                    [("cat", 0), ("fox", 2)]]
    assert best[0][0].score == pytest.approx(0.7)
    assert [t.label for t in top_k(scores, None, 1)[0]] == ["1"]  # no labels: the index
    assert is_class_scores(scores) and not is_class_scores(scores[0])
    with pytest.raises(ValueError, match="top-k 0"):
        top_k(scores, None, 0)


def test_a_variants_labels_are_its_own_and_a_fused_tenants_come_from_its_shard(tmp_path: Path) -> None:
    from infra.records.manifest import MANIFEST_SUFFIX
    from tasks.fleet.fused import TENANTS_SUFFIX, TenantRecord, TenantsSidecar
    from tasks.fleet.router import variant_labels

    entries = {"own": FleetIndexEntry(file="own.tar.gz", target_model="own.tar.gz", status="ok"),
               "t1": FleetIndexEntry(file="s0.tar.gz", target_model="s0.tar.gz", status="ok",
                                     layout="fused", shard="s0", tenant=1)}
    built = _build_dir(tmp_path / "home", variants=entries)
    manifest = {"schema_version": 2, "ensemble": "own", "target": "local-cpu", "target_model":
                "own.tar.gz", "artifact": "file:///x/own.tar.gz", "sha256": "0" * 64, "bytes": 1,
                "sample": {"inputs": {}, "expected": {}, "context": {"labels": ["ant", "bee"]}}}
    (built / f"own{MANIFEST_SUFFIX}").write_text(json.dumps(manifest))
    sidecar = TenantsSidecar(fleet="f", shard="s0", trunk_sha256="0" * 64, tenants=[
        TenantRecord(index=0, name="t0", classes=1, labels=["zero"]),
        TenantRecord(index=1, name="t1", classes=2, labels=["one", "uno"])])
    (built / f"s0{TENANTS_SUFFIX}").write_text(sidecar.model_dump_json())
    assert variant_labels("f", "own", [built]) == ["ant", "bee"]
    assert variant_labels("f", "t1", [built]) == ["one", "uno"]
    assert variant_labels("f", "t1", [built], tenant=0) == ["zero"]  # the routing table's index wins
    assert variant_labels("f", "nobody", [built]) is None


def test_the_invoke_document_has_the_target_model_and_top_k(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.cli.invoke import Answer, answer_document

    answer = Answer(outputs={"probabilities": np.array([[0.2, 0.8]], dtype=np.float32)},
                    endpoint="ep", target_model="t-abc.tar.gz", labels=["no", "yes"],
                    fleet="f", variant="t", tenant=3)
    doc: dict[str, Any] = answer_document(answer, ["cat.jpg"], 1)
    assert doc["target_model"] == "t-abc.tar.gz" and doc["tenant"] == 3 and doc["outputs"] == {}
    assert doc["results"] == [{"input": "cat.jpg", "output": "probabilities",
                               "top_k": [{"index": 1, "label": "yes", "score": pytest.approx(0.8)}]}]


def test_fleet_example_name_renames_the_written_fleet(tmp_path: Path) -> None:
    import yaml

    from flows.cli.fleet import _rename_fleet

    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"name": "tenants-example", "template": "t"}, sort_keys=False))
    _rename_fleet(path, "mine")
    assert yaml.safe_load(path.read_text()) == {"name": "mine", "template": "t"}
    bad = CliRunner().invoke(app, ["fleet", "example", "--out", str(tmp_path), "--name", "a b"])
    assert bad.exit_code == 2 and "--name 'a b'" in bad.output


# ---------------------------------------------------------------- a real fleet (Triton)
# the 4-tenant example fleet (tests/fixtures/local_fleet.py), built and deployed locally (the
# fixture imported: pytest registers it in this module too)
import fixtures.local_fleet as _shared  # noqa: E402

local_fleet = _shared.local_fleet  # the fixture, registered in this module


@pytest.mark.triton
@pytest.mark.prefect
def test_invoke_names_a_variants_top_k_by_its_own_labels(local_fleet: dict[str, Any],
                                                          tmp_path: Path) -> None:
    from PIL import Image
    from skimage import data

    built_fleet = local_fleet
    name = built_fleet["names"][0]
    own = (built_fleet["root"] / "models" / "tenants" / name / "labels.txt").read_text().splitlines()
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.jpg")
    args = ["invoke", "--image", str(tmp_path / "cat.jpg"), "--fleet", str(built_fleet["build"]),
            "--variant", name, "--store", built_fleet["store_uri"], "--top-k", "2"]
    runner = CliRunner()
    got = runner.invoke(app, [*args, "--json"])
    assert got.exit_code == 0, got.output
    doc = json.loads(got.stdout)
    route = read_routes(built_fleet["store_uri"], built_fleet["fleet"]).variants[name]
    assert (doc["variant"], doc["target_model"], doc["endpoint"]) == (name, route.target_model, route.endpoint)
    (result,) = doc["results"]
    assert len(result["top_k"]) == 2 and all(t["label"] == own[t["index"]] for t in result["top_k"])
    assert result["top_k"][0]["score"] >= result["top_k"][1]["score"]
    human = runner.invoke(app, args)
    assert human.exit_code == 0 and route.target_model in human.stdout
    assert result["top_k"][0]["label"] in human.stdout


def test_endpoint_triton_port_options_become_the_endpoints_triton_ports() -> None:
    """``--triton-*-port``: 0 a free port, a number that port, metrics -1 off (None)."""
    from flows.cli.endpoint import _triton_ports
    from infra.endpoint.process import endpoint_settings

    cfg = endpoint_settings("ep", "file:///m", triton=_triton_ports(8500, 0, -1))
    assert (cfg.triton_http_port, cfg.triton_grpc_port, cfg.triton_metrics_port) == (8500, 0, None)
    cfg = endpoint_settings("ep", "file:///m", triton=_triton_ports(0, 8501, 8502))
    assert (cfg.triton_http_port, cfg.triton_grpc_port, cfg.triton_metrics_port) == (0, 8501, 8502)
