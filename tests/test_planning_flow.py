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
    before = (out.parent / "plan-cost-vs-p99.png").read_bytes()
    other = out.parent / "other.yaml"  # a second plan in the same folder keeps its own charts
    again = CliRunner().invoke(app, ["plan", str(fleet), "--traffic", "zipf:1.1:50", "--p99-ms", "1000",
                                     "--out", str(other)])
    assert again.exit_code == 0, again.output
    assert (out.parent / "other-cost-vs-p99.png").read_bytes()[:4] == b"\x89PNG"
    assert (out.parent / "plan-cost-vs-p99.png").read_bytes() == before


def test_mme_plan_refuses_bad_input_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(app, ["plan", "--traffic", "zipf:1.1:5", "--p99-ms", "1000"])
    assert r.exit_code == 2 and "--variants N --footprint-from" in r.output
    r = CliRunner().invoke(app, ["plan", str(empty), "--traffic", "zipf:1.1:5", "--p99-ms", "0"])
    assert r.exit_code == 2 and "--p99-ms 0.0 must be > 0" in r.output


def _fleet_manifests(folder: Path, n: int, measured: int | None = None) -> Path:
    """``n`` variants of one template (``tpl``), 3 MB tarballs; variant ``measured`` (if any)
    carries a footprint with host memory, load and service measured (208 MiB, 1.5 s, 17 ms)."""
    from tasks.build.footprints import MIB, Figure, estimate_footprint

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        doc: dict = {"schema_version": 2, "ensemble": "tpl_entry", "target": "local-cpu",
                     "target_model": f"tpl-v{i}.tar.gz", "artifact": str(folder / f"tpl-v{i}.tar.gz"),
                     "sha256": "0" * 64, "bytes": 3_000_000,
                     "fleet": {"name": "f", "template": "tpl", "variant": f"tpl-v{i}"}}
        if i == measured:
            m = {"status": "measured", "where": "mme profile (real Triton)", "hardware": "test host"}
            fp = estimate_footprint(f"tpl-v{i}.tar.gz", 3_000_000, gpu=False).model_copy(update={
                "host_memory_bytes": Figure(value=208 * MIB, basis="pss", **m),
                "load_disk_s": Figure(value=1.5, **m), "service_batch1_s": Figure(value=0.017, **m)})
            doc["footprint"] = fp.model_dump(mode="json")
        (folder / f"tpl-v{i}.manifest.json").write_text(json.dumps(doc))
    return folder


def test_mme_plan_says_which_figures_are_estimated_and_how_far_off(tmp_path: Path, prefect_harness) -> None:
    """Without footprints every figure is estimated ((e), with its formula); with one variant
    measured, the terminal sets the estimate against the measurement (208 MiB vs 67.9 MiB)."""
    args = ["--traffic", "zipf:1.1:5", "--p99-ms", "2000", "--out", str(tmp_path / "out" / "plan.yaml")]
    r = CliRunner().invoke(app, ["plan", str(_fleet_manifests(tmp_path / "est", 8)), *args])
    assert r.exit_code == 0, r.output
    assert "(e) tpl: host memory estimated 67.9 MiB per variant for 8 of 8 variants; basis: host memory = " \
           "unpacked bytes x 1.25" in r.output
    assert "(e) tpl: service at batch 1 estimated 10 ms per variant for 8 of 8 variants" in r.output
    assert "measured" not in r.output.split("chosen:")[0].split("footprints used")[1].replace("not measured", "")
    r = CliRunner().invoke(app, ["plan", str(_fleet_manifests(tmp_path / "mixed", 8, measured=3)), *args])
    assert r.exit_code == 0, r.output
    assert "(e) tpl: host memory estimated 67.9 MiB per variant for 7 of 8 variants" in r.output
    assert ("tpl: host memory estimated 67.9 MiB per variant, measured 208 MiB (pss) on tpl-v3 "
            "(mme profile (real Triton), test host): estimate was 3.1x low") in r.output
    assert "tpl: load from disk estimated 0.516 s per variant, measured 1.5 s on tpl-v3" in r.output


def test_mme_plan_refusals_name_the_bound_and_the_estimates(tmp_path: Path, prefect_harness) -> None:
    fleet = str(_fleet_manifests(tmp_path / "est", 4))
    base = ["plan", fleet, "--traffic", "zipf:1.1:5", "--out", str(tmp_path / "plan.yaml")]
    r = CliRunner().invoke(app, [*base, "--p99-ms", "5"])
    assert r.exit_code == 2 and "the service time alone (p99 10 ms" in r.output
    assert "footprints used:" in r.output and "(e) tpl: service at batch 1 estimated 10 ms" in r.output
    r = CliRunner().invoke(app, [*base, "--p99-ms", "1000", "--instance-types", "ml.m5.large,ml.x9.huge"])
    assert r.exit_code == 2 and "--instance-types: ml.x9.huge: not in the catalog" in r.output
    r = CliRunner().invoke(app, [*base, "--p99-ms", "1000", "--max-instances", "0"])
    assert r.exit_code == 2 and "--max-instances 0: must be >= 1" in r.output
