"""`mme plan` end to end through the Prefect flow: a directory of manifests in, the plan file,
the charts and the report artifacts (markdown + table) out; bad input refused naming it."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app
from tasks.planning.planfile import read_plan_file


def _manifests(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        doc = {"schema_version": 2, "ensemble": f"e{i}", "target": "sagemaker-gpu",
               "target_model": f"e{i}.tar.gz", "artifact": str(folder / f"e{i}.tar.gz"),
               "sha256": "0" * 64, "bytes": 50_000_000 + i * 1_000_000}
        (folder / f"e{i}.manifest.json").write_text(json.dumps(doc))
    return folder


def test_mme_plan_writes_the_plan_the_charts_and_the_report(tmp_path: Path, prefect_harness) -> None:
    from prefect.artifacts import Artifact

    fleet = _manifests(tmp_path / "fleet", 12)
    out = tmp_path / "out" / "plan.yaml"
    result = CliRunner().invoke(app, ["plan", str(fleet), "--traffic", "zipf:1.1:5", "--p99-ms", "1000",
                                      "--peak-factor", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    plan = read_plan_file(out)
    assert plan.instance_type.startswith("ml.") and plan.instance_count >= 1
    assert plan.autoscaling.min <= plan.instance_count <= plan.autoscaling.max
    for png in ("plan-cost-vs-p99.png", "plan-hit-vs-memory.png"):
        assert (out.parent / png).read_bytes()[:4] == b"\x89PNG"
    assert "days old" in result.output and "candidates evaluated" in result.output
    md = Artifact.get("capacity-plan")
    assert md is not None and "Footprints used" in str(md.data) and "one endpoint per variant" in str(md.data)
    assert "prices: on-demand" in str(md.data) and "zipf(s=1.1)" in str(md.data)
    assert Artifact.get("capacity-plan-table") is not None


def test_mme_plan_refuses_bad_input_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(app, ["plan", "--traffic", "zipf:1.1:5", "--p99-ms", "1000"])
    assert r.exit_code == 2 and "--variants N --footprint-from" in r.output
    r = CliRunner().invoke(app, ["plan", str(empty), "--traffic", "zipf:1.1:5", "--p99-ms", "0"])
    assert r.exit_code == 2 and "--p99-ms 0.0 must be > 0" in r.output
