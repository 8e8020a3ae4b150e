"""What the planner hands on: the plan file (read back into `mme deploy`'s options, explicit
flags winning), the charts (real PNGs), and the footprint records (estimated with named
formulas, or read from a manifest's `footprint` field)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.deploy_options import DeployOptions, _sagemaker_options, apply_plan
from infra.records.manifest import parse_manifest
from tasks.planning import charts
from tasks.build.footprints import FORMULAS, estimate_footprint, from_manifest
from tasks.planning.search import Goal, SearchOptions, make_plan, plan_file
from tasks.planning.planfile import PlanFileError, read_plan_file, write_plan_file
from tasks.planning.traffic import zipf
from infra.aws.instance_catalog import load_catalog

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def written_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fp = estimate_footprint("m", 90_000_000, gpu=True)
    fleet = [fp.model_copy(update={"target_model": f"v{i}"}) for i in range(200)]
    traffic = zipf([f"v{i}" for i in range(200)], 1.1, 20.0, seed=0)
    types = [load_catalog().get("ml.g4dn.xlarge"), load_catalog().get("ml.g5.xlarge")]
    result = make_plan(types, fleet, traffic, Goal(1000.0), "us-east-1",
                       SearchOptions(sim_hours=0.25, warmup_hours=0.05))
    return write_plan_file(plan_file(result, "2026-12-01"), tmp_path_factory.mktemp("plan") / "plan.yaml")


def test_plan_file_round_trips_into_the_deploy_options(written_plan: Path) -> None:
    plan = read_plan_file(written_plan)
    o = DeployOptions(plan=written_plan, backend="sagemaker", store="s3://b/p", dry_run=True,
                      ensembles=[], env=[])  # the other options at their defaults
    filled = apply_plan(o, explicit=set())
    options = _sagemaker_options(filled)
    assert options.instance_type == plan.instance_type
    assert options.instance_count == plan.instance_count
    assert (options.autoscaling_min, options.autoscaling_max) == (plan.autoscaling.min, plan.autoscaling.max)
    assert options.target_invocations_per_instance == plan.autoscaling.target
    assert options.model_cache.lower() == plan.model_cache
    # a flag given on the command line wins over the file
    mine = apply_plan(replace(o, instance_count=7, instance_type="ml.g5.2xlarge"),
                      explicit={"instance_count", "instance_type"})
    assert (mine.instance_count, mine.instance_type) == (7, "ml.g5.2xlarge")
    assert mine.autoscaling_max == plan.autoscaling.max


def test_deploy_refuses_a_bad_plan_file_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "plan.yaml"
    bad.write_text("instance_type: ml.g4dn.xlarge\ninstance_count: 0\n")
    with pytest.raises(PlanFileError, match=r"plan\.yaml: .*instance_count: .*greater than or equal to 1"):
        read_plan_file(bad)
    result = CliRunner().invoke(app, ["deploy", "--backend", "sagemaker", "--dry-run", "--store", "s3://b/p",
                                      "--plan", str(bad)])
    assert result.exit_code == 2
    assert "plan.yaml" in result.output and "autoscaling" in result.output


@pytest.mark.prefect
def test_deploy_cli_takes_the_plan_and_explicit_flags_win(written_plan: Path, monkeypatch) -> None:
    """`mme deploy --plan` hands the plan's values to the deploy flow; `--instance-count` given
    on the command line wins. The flow is replaced by a recorder (this test is about the CLI
    wiring; the deploy flow is tested with a real endpoint elsewhere)."""
    import flows.deploy

    seen: dict[str, Any] = {}

    def recorder(**kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        return {"calls": [], "warnings": []}

    monkeypatch.setattr(flows.deploy, "deploy", recorder)
    plan = read_plan_file(written_plan)
    result = CliRunner().invoke(app, ["deploy", "--backend", "sagemaker", "--dry-run", "--store", "s3://b/p",
                                      "--plan", str(written_plan), "--instance-count", "9"])
    assert result.exit_code == 0, result.output
    sm = seen["sagemaker"]
    assert (sm.instance_type, sm.instance_count) == (plan.instance_type, 9)
    assert sm.autoscaling_max == plan.autoscaling.max and sm.model_cache.lower() == plan.model_cache


def test_charts_are_png_files(tmp_path: Path) -> None:
    a = charts.cost_vs_p99([{"label": "1x2 g4dn", "monthly_usd": 1000.0, "p99_ms": 12.0, "chosen": True},
                            {"label": "1x1 g4dn", "monthly_usd": 500.0, "p99_ms": 2100.0}],
                           baseline_monthly=50_000.0, goal_ms=1000.0, path=tmp_path / "a.png")
    b = charts.hit_vs_memory([charts.HitPoint(memory_gib=m, warm_hit_ratio=h, source=s)
                              for m, h, s in [(10, 0.5, "che"), (20, 0.8, "che"), (20, 0.79, "simulated")]],
                             tmp_path / "b.png")
    for path in (a, b):
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000


def test_estimated_footprints_name_their_formulas() -> None:
    fp = estimate_footprint("m", 100_000_000, gpu=True)
    assert fp.tarball_bytes.status == "measured"
    for fig in (fp.unpacked_bytes, fp.host_memory_bytes, fp.gpu_memory_bytes, fp.load_cold_s, fp.service_batch1_s):
        assert fig.status == "estimated" and fig.formula in FORMULAS
    # GPU memory = unpacked x 1.25 + one CUDA context (300 MiB)
    assert fp.gpu_memory_bytes.value == pytest.approx(100e6 * 1.1 * 1.25 + 300 * 2 ** 20)
    assert estimate_footprint("m", 100_000_000, gpu=False).gpu_memory_bytes.value == 0


def test_a_manifest_footprint_is_used_and_round_trips() -> None:
    base = {"ensemble": "e", "target": "sagemaker-gpu", "target_model": "e.tar.gz", "artifact": "e.tar.gz",
            "sha256": "0" * 64, "bytes": 1000}
    plain = from_manifest(parse_manifest(base, "m.json"))
    assert plain.gpu_memory_bytes.status == "estimated" and plain.gpu_memory_bytes.value > 0
    recorded = plain.model_copy(update={"service_batch1_s": plain.service_batch1_s.model_copy(
        update={"value": 0.123, "status": "measured", "where": "mme profile"})})
    m = parse_manifest(base | {"footprint": recorded.model_dump(mode="json")}, "m.json")
    again = parse_manifest(__import__("json").loads(m.to_json()), "m.json")
    got = from_manifest(again)
    assert got.service_batch1_s.value == 0.123 and got.service_batch1_s.status == "measured"
