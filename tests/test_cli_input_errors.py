"""Bad input ends a command with exit 2 and ONE line naming the input at fault (file, row, field,
value), never a traceback: the planner's traffic CSV, image files given to ``mme invoke``, a
fleet prefix that lists no variant; an error inside a flow is said once, not once per Prefect
logger; ``mme plan DIR`` plans the current fleet only (stale manifests skipped, and said)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tasks.fleet.build import INDEX_FILE, FleetIndex, FleetIndexEntry
from tasks.planning.inputs import FleetInputError, fleet_from_dir

MME = [sys.executable, "-m", "flows.cli"]
REPO = Path(__file__).resolve().parents[1]


def _mme(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(MME + args, capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
                          check=False)


def _prefect_env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": str(PREFECT_API_URL.value())}


def _manifests(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        doc = {"schema_version": 2, "ensemble": name, "target": "sagemaker-gpu",
               "target_model": f"{name}.tar.gz", "artifact": str(folder / f"{name}.tar.gz"),
               "sha256": "0" * 64, "bytes": 50_000_000 + i * 1_000_000}
        (folder / f"{name}.manifest.json").write_text(json.dumps(doc))
    return folder


def _index(folder: Path, names: list[str]) -> None:
    index = FleetIndex(fleet="f1", target="sagemaker-gpu", variants={
        n: FleetIndexEntry(file=f"{n}.tar.gz", target_model=f"{n}.tar.gz", status="ok") for n in names})
    (folder / INDEX_FILE).write_text(index.model_dump_json())


def _one_error_line(r: subprocess.CompletedProcess, needle: str) -> str:
    """The command's single ``error:`` line, which contains ``needle``; no traceback."""
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], out[-3000:]
    return errors[0]


# ------------------------------------------------------------------------------ traffic CSV (item 1, 5)


@pytest.mark.prefect
def test_mme_plan_bad_traffic_csv_is_one_line_said_once(tmp_path: Path, prefect_harness) -> None:
    """The error is raised in a task of the plan flow; the task, its state, the flow and the
    flow's state each used to log it (4 copies + the CLI's): now the terminal shows it once."""
    fleet = _manifests(tmp_path / "fleet", ["e0", "e1"])
    bad = tmp_path / "traffic.csv"
    bad.write_text("variant,requests_per_second\ne0,2\ne1,inf\n")
    r = _mme(["plan", str(fleet), "--traffic", f"csv:{bad}", "--p99-ms", "1000",
              "--out", str(tmp_path / "plan.yaml")], _prefect_env())
    line = _one_error_line(r, "row 3, column requests_per_second: 'inf' is not a finite number")
    assert str(bad) in line
    assert (r.stdout + r.stderr).count("is not a finite number") == 1, r.stderr[-3000:]
    assert "Beginning flow run" in r.stderr  # Prefect's own progress lines are still shown


def test_the_terminal_filter_holds_only_what_the_cli_says_itself() -> None:
    """Unit: records about the error that ends the command are dropped on settle; a failure the
    flow got past (followed by an unrelated record) and a bug's records are shown."""
    from infra.errors import MMEError
    from infra.log_once import OnceOnTerminal
    from tasks.planning.traffic import TrafficError

    shown: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            shown.append(record.getMessage())

    handler = Collect()
    once = OnceOnTerminal(handler, lambda e: isinstance(e, MMEError))
    handler.addFilter(once)
    log = logging.getLogger("test.once")

    def failed(exc: Exception, text: str) -> None:
        try:
            raise exc
        except Exception:
            handler.handle(log.makeRecord("t", logging.ERROR, __file__, 1, text, None, sys.exc_info()))

    def line(text: str) -> None:
        handler.handle(log.makeRecord("t", logging.INFO, __file__, 1, text, None, None))

    swallowed = TrafficError("a task failed, the flow went on")
    failed(swallowed, "Task run failed with exception: TrafficError('a task failed, the flow went on')")
    line("Finished in state Failed('Task run encountered an exception TrafficError: a task failed, "
         "the flow went on')")
    assert shown == []  # held: maybe the CLI's own error line will say it
    line("Beginning the next task")  # unrelated: the held failure is shown, in order, then this
    assert len(shown) == 3 and shown[0].startswith("Task run failed") and shown[2] == "Beginning the next task"
    failed(KeyError("bug"), "Task run failed with exception: KeyError('bug')")
    assert shown[-1].endswith("KeyError('bug')")  # a bug is not the CLI's one line: shown at once
    final = TrafficError("traffic file t.csv, row 2, column requests_per_second: 'x' is not a number")
    failed(final, f"Task run failed with exception: {final!r}")
    line(f"Finished in state Failed({str(final)!r})")
    line(f"Flow run encountered an exception: TrafficError: {final}")
    n = len(shown)
    once.settle(final)
    assert len(shown) == n  # all three were about the error the CLI prints: none shown


# ------------------------------------------------------------------------------ mme plan DIR (item 2)


def test_plan_counts_only_the_variants_of_the_fleet_index(tmp_path: Path) -> None:
    build = _manifests(tmp_path / "fleets" / "f1", ["a", "b", "c", "gone1", "gone2"])
    _index(build, ["a", "b", "c"])  # gone1, gone2: removed from the fleet, files left until gc
    single = _manifests(tmp_path / "single", ["solo"])  # no index: a single build, counted
    names, fps, stale = fleet_from_dir(tmp_path)
    assert sorted(names) == ["a", "b", "c", "solo"] and len(fps) == 4 and stale == 2
    assert fleet_from_dir(build / "gone1.manifest.json")[2] == 0  # one manifest named: it is planned
    assert fleet_from_dir(single)[:1] == (["solo"],)
    (build / INDEX_FILE).write_text("{not json")
    with pytest.raises(FleetInputError, match=rf"{INDEX_FILE}: not a readable fleet index"):
        fleet_from_dir(build)
    _index(build, ["other"])
    with pytest.raises(FleetInputError, match="none of its 5 build manifests"):
        fleet_from_dir(build)


@pytest.mark.prefect
def test_mme_plan_says_how_many_stale_manifests_it_skipped(tmp_path: Path, prefect_harness) -> None:
    build = _manifests(tmp_path / "fleet", [f"e{i}" for i in range(8)])
    _index(build, [f"e{i}" for i in range(5)])
    traffic = tmp_path / "t.csv"
    traffic.write_text("variant,requests_per_second\n" + "".join(f"e{i},1\n" for i in range(5)))
    r = CliRunner().invoke(app, ["plan", str(build), "--traffic", f"csv:{traffic}", "--p99-ms", "1000",
                                 "--out", str(tmp_path / "out" / "plan.yaml")])
    assert r.exit_code == 0, r.output
    assert "fleet: 5 variants; 3 stale manifests skipped" in r.output
    # a traffic row for a removed variant is refused: it is not in the fleet any more
    traffic.write_text("variant,requests_per_second\ne0,1\ne7,1\n")
    r = CliRunner().invoke(app, ["plan", str(build), "--traffic", f"csv:{traffic}", "--p99-ms", "1000",
                                 "--out", str(tmp_path / "out" / "plan.yaml")])
    assert r.exit_code == 2 and "variants not in the fleet: e7" in r.output


# ------------------------------------------------------------------------------ mme invoke --image (item 3)


def test_invoke_refuses_an_image_file_it_cannot_read(tmp_path: Path) -> None:
    folder = tmp_path / "pictures"
    folder.mkdir()
    url = "http://127.0.0.1:9"  # never reached: the files are read first
    missing = tmp_path / "missing.jpg"
    line = _one_error_line(_mme(["invoke", "--image", str(missing), "--url", url]), str(missing))
    assert line.endswith("no such file") and "--image" in line
    line = _one_error_line(_mme(["invoke", f"--image={folder}", "--url", url]), str(folder))
    assert line.endswith("is a directory, not a file")


def test_an_oserror_counts_as_the_users_only_on_a_path_they_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.cli.common import _exit_code, _typed_path_error

    monkeypatch.setattr(sys, "argv", ["mme", "invoke", "--image", "./cat.jpg", "--image", "b.png"])
    denied = PermissionError(13, "Permission denied", "cat.jpg")
    assert _typed_path_error(denied) == "--image ./cat.jpg: cannot be read (no permission)"
    assert _exit_code(denied) == 2
    internal = FileNotFoundError(2, "No such file or directory", "/somewhere/internal.json")
    assert _typed_path_error(internal) is None and _exit_code(internal) is None  # a bug: traceback
    assert _exit_code(FileNotFoundError("no filename")) is None


# ------------------------------------------------------------------------------ mme fleet show (item 4)


def _prefix_fleet(tmp_path: Path, uri: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"name": "f1", "template": "image_classifier_tenant", "prefix": {
        "uri": uri, "pattern": "tenants/{variant}/model.onnx",
        "params": {"classifier_onnx.source": "{match}", "labels.source": "tenants/{variant}/labels.txt"}}}))
    return path


def test_fleet_show_of_a_prefix_with_no_variant_exits_2_naming_it(tmp_path: Path) -> None:
    nothing = (tmp_path / "does-not-exist").as_uri()
    line = _one_error_line(_mme(["fleet", "show", str(_prefix_fleet(tmp_path, nothing))]), nothing)
    assert "no objects there" in line
    root = tmp_path / "models"
    (root / "tenants" / "t1").mkdir(parents=True)
    (root / "tenants" / "t1" / "weights.onnx").write_bytes(b"not the pattern's name")
    line = _one_error_line(_mme(["fleet", "show", str(_prefix_fleet(tmp_path, root.as_uri()))]),
                           "matches pattern 'tenants/{variant}/model.onnx'")
    assert root.as_uri() in line and "tenants/t1/weights.onnx" in line
