"""The fleet build, for real: an example fleet of 20 per-customer SqueezeNet classifiers built
through the ``fleet-build`` flow (real DALI, ONNX Runtime and a long-lived Triton for the
canaries), rebuilt with nothing changed, with one changed, and with broken inputs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures.log_lines import LogLines

from ensembles.fleet_spec import Variant
from tasks.fleet.build import (
    INDEX_FILE,
    FleetIndex,
    FleetIndexEntry,
    pick_canaries,
    plan_builds,
    select_variants,
)
from tasks.fleet.variant import FleetTemplate, input_key

COUNT = 20
SAMPLE = 3


def _run(fleet_file: Path, out: Path, **kw):
    from flows.fleet_build import fleet_build

    return fleet_build(str(fleet_file), output_dir=str(out), triton_sample=SAMPLE, **kw)


def _manifests(out: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["ensemble"]: json.loads(p.read_text())
            for p in out.glob("*.manifest.json")}


@pytest.fixture(scope="module")
def example(tmp_path_factory, mme_home, prefect_harness):
    from tasks.fleet.example import make_example_fleet

    root = tmp_path_factory.mktemp("fleet")
    prefix = root / "models"
    made = make_example_fleet(COUNT, prefix.as_uri(), seed=7, fleet_file=root / "fleet.yaml")
    out = root / "out"
    said = LogLines()
    flow_runs = logging.getLogger("prefect.flow_runs")
    flow_runs.addHandler(said)
    try:
        first = _run(root / "fleet.yaml", out)
    finally:
        flow_runs.removeHandler(said)
    return {"root": root, "prefix": prefix, "fleet": root / "fleet.yaml", "out": out,
            "first": first, "made": made, "said": said.lines}


@pytest.mark.triton  # its canaries are verified in a real tritonserver
def test_first_build_verifies_every_variant(example):
    first, out = example["first"], example["out"]
    assert (first["built"], first["unchanged"], first["failed"]) == (COUNT, 0, 0)
    manifests = _manifests(out)
    assert len(manifests) == COUNT
    checked = [m["validation"]["checked_by"] for m in manifests.values()]
    assert checked.count("triton") == SAMPLE
    assert checked.count("onnxruntime+structure") == COUNT - SAMPLE
    assert all(m["validation"]["passed"] for m in manifests.values())
    for name, m in manifests.items():
        classes = (example["prefix"] / "tenants" / name / "classes.txt").read_text().split()
        expected = np.array(m["sample"]["expected"]["OUTPUT"]["data"])
        assert expected.size == len(classes)  # the output has the variant's class count
        assert (out / Path(m["artifact"]).name).exists()
        assert m["target_model"] == f"{name}.tar.gz"
    index = FleetIndex.model_validate_json((out / INDEX_FILE).read_text())
    assert sorted(index.variants) == sorted(manifests)
    assert {e.status for e in index.variants.values()} == {"ok"}


@pytest.mark.triton
def test_the_build_says_its_progress_across_the_chunks(example):
    """Issue 21: ``variants built n/20`` on the flow run's log as the chunks (side by side)
    build their variants, counting from the canaries verified before them, to the end."""
    lines = [line for line in example["said"] if line.startswith("variants built ")]
    counts = [int(line.split()[2].split("/")[0].rstrip(",")) for line in lines]
    assert lines and all(f"/{COUNT}" in line for line in lines), example["said"]
    assert counts == sorted(counts) and counts[0] > SAMPLE and counts[-1] == COUNT
    assert lines[-1].startswith(f"variants built {COUNT}/{COUNT} in ")


@pytest.mark.triton
def test_every_variant_records_the_footprint_measured_on_one_canary(example):
    """One canary per template is measured in the verifying Triton (memory by the endpoint's
    probe, basis pss; load, unload, service); every variant's manifest carries it with its
    source, and the planner's inputs have no estimated figure left."""
    from tasks.build.footprints import Figure, Footprint
    from tasks.planning.inputs import fleet_from_dir

    manifests = _manifests(example["out"])
    canaries = {n for n, m in manifests.items() if m["validation"]["checked_by"] == "triton"}
    sources = {json.dumps(m["footprint"]["source"], sort_keys=True) for m in manifests.values()}
    assert len(sources) == 1  # one measurement, recorded on every variant
    source = json.loads(sources.pop())
    assert source["measured_on"] in canaries
    assert source["template_key"] == manifests[source["measured_on"]]["fleet"]["template_key"]
    for m in manifests.values():
        fp = Footprint.model_validate(m["footprint"])
        assert fp.target_model == m["target_model"]
        assert fp.tarball_bytes.value == m["bytes"]  # its own bytes; the rest the canary's
        assert fp.host_memory_bytes.basis == "pss" and fp.host_memory_bytes.value > 0
        assert fp.load_disk_s.value > 0 and fp.service_batch1_s.value > 0
        assert "validation" in m and "footprint_times" not in m["validation"]
    names, fps, stale = fleet_from_dir(example["out"])
    assert (len(names), stale) == (COUNT, 0)
    figures = [getattr(fp, k) for fp in fps for k in type(fp).model_fields
               if isinstance(getattr(fp, k), Figure)]
    assert [f for f in figures if f.status == "estimated"] == []


def test_a_footprint_that_cannot_be_measured_falls_back_to_a_named_estimate():
    from tasks.fleet.build import TemplateFootprint
    from tasks.build.footprints import Footprint

    fp = TemplateFootprint(reason="measuring canary tenant-0001 failed: OSError: no /proc")
    doc = fp.for_variant("tenant-0002.tar.gz", 1000, "local")
    assert doc["source"]["reason"] == fp.reason
    assert Footprint.model_validate(doc).host_memory_bytes.status == "estimated"
    assert "NOT measured" in fp.note() and fp.reason in fp.note()


@pytest.mark.triton
def test_each_reference_is_the_base_model_restricted_to_the_variants_classes(example):
    """The exact, independent reference of the example fleet: the base SqueezeNet's class
    scores on the same DALI output, restricted to the variant's classes, then softmax. Every
    variant's recorded expected answer (what the endpoint is validated against) matches it."""
    from ensembles.fleet_spec import load_fleet, resolve_variants
    from tasks.fleet.build import prepare_template
    from tasks.fleet.example import base_scores, subset_reference
    from tasks.build.verify import run_dali_cpu, sample_image

    fleet = load_fleet(example["fleet"])
    template = prepare_template(fleet, resolve_variants(fleet).variants)
    tensor = run_dali_cpu(template.shared["dali_cpu"], [sample_image("skimage:chelsea")], "INPUT")
    scores = base_scores(example["made"].base_onnx, tensor)
    for name, m in _manifests(example["out"]).items():
        classes = [int(c) for c in (example["prefix"] / "tenants" / name / "classes.txt").read_text().split()]
        recorded = np.array(m["sample"]["expected"]["OUTPUT"]["data"], dtype=np.float32)
        assert np.abs(recorded - subset_reference(scores, classes)[0]).max() < 1e-5, name


@pytest.mark.triton
def test_noop_rebuild_builds_nothing(example):
    out = example["out"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar.gz")}
    again = _run(example["fleet"], out)
    assert (again["built"], again["unchanged"]) == (0, COUNT)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar.gz")} == before


@pytest.mark.triton
def test_one_changed_model_rebuilds_that_variant_only(example):
    out, tenants = example["out"], example["prefix"] / "tenants"
    names = sorted(p.name for p in tenants.iterdir())
    changed, donor = names[4], names[5]
    for f in ("model.onnx", "labels.txt", "classes.txt"):
        shutil.copy(tenants / donor / f, tenants / changed / f)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar.gz")}
    again = _run(example["fleet"], out)
    assert (again["built"], again["unchanged"]) == (1, COUNT - 1)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar.gz")}
    assert [n for n in after if after[n] != before[n]] == [f"{changed}.tar.gz"]
    m = _manifests(out)[changed]
    assert m["validation"]["checked_by"] == "triton"  # one changed variant: verified in Triton
    assert m["sources"]["classifier_onnx"]["sha256"] == _manifests(out)[donor]["sources"]["classifier_onnx"]["sha256"]


@pytest.mark.triton
def test_event_uri_builds_only_its_variant(example):
    out, tenants = example["out"], example["prefix"] / "tenants"
    names = sorted(p.name for p in tenants.iterdir())
    a, b = names[6], names[7]
    for name in (a, b):  # both change; the event names only a's model file
        data = onnx.load(str(tenants / name / "model.onnx"))
        data.doc_string = "retrained"
        onnx.save(data, str(tenants / name / "model.onnx"))
    got = _run(example["fleet"], out, changed_uri=(tenants / a / "model.onnx").as_uri())
    assert got["built"] == 1
    index = FleetIndex.model_validate_json((out / INDEX_FILE).read_text())
    assert index.variants[a].status == "ok" and index.variants[b].status == "ok"
    again = _run(example["fleet"], out)  # b is still due, and only b
    assert again["built"] == 1


def _break(tenants: Path, names: list[str]) -> dict[str, str]:
    """Corrupt model, labels count mismatch, wrong input shape: variant -> file at fault."""
    from fixtures.prefect_runs import break_variants

    corrupt, labels, shape = names[0], names[1], names[2]
    break_variants(tenants, [corrupt, labels, shape])
    return {corrupt: "model.onnx", labels: "labels.txt", shape: "model.onnx"}


def _check_artifacts(flow_run_id, names: list[str], broken: dict[str, str]) -> None:
    """The run's table lists every variant with its status and reason; the report lists the
    failures by variant; the progress bar reached 100 %."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))}
    key = "tenants-example-local-cpu"  # artifact keys are scoped by fleet and target
    assert {f"fleet-variants-{key}", f"fleet-report-{key}", f"fleet-progress-{key}",
            f"fleet-failures-{key}", "fleet-publish"} <= set(arts)
    rows = {r["variant"]: r for r in json.loads(arts[f"fleet-variants-{key}"].data)}
    assert sorted(rows) == names
    assert {n for n, r in rows.items() if r["status"] == "failed"} == set(broken)
    assert all(r["reason"] for n, r in rows.items() if n in broken)
    assert all(r["status"] == "built" and r["sha256"] for n, r in rows.items() if n not in broken)
    report = arts[f"fleet-report-{key}"].data
    assert all(f"`{n}`" in report for n in broken) and "3 failed" in report
    assert arts[f"fleet-progress-{key}"].data == 100.0


@pytest.mark.triton
def test_bad_variants_fail_alone_and_nothing_of_them_is_written(tmp_path, mme_home, prefect_harness):
    from tasks.fleet.example import make_example_fleet
    from tasks.fleet.report import FleetBuildFailed

    prefix = tmp_path / "models"
    make_example_fleet(6, prefix.as_uri(), seed=3, fleet_file=tmp_path / "fleet.yaml")
    tenants = prefix / "tenants"
    names = sorted(p.name for p in tenants.iterdir())
    broken = _break(tenants, names)
    out, store = tmp_path / "out", tmp_path / "store"
    state = _run(tmp_path / "fleet.yaml", out, publish_to=store.as_uri(), return_state=True)
    assert state.is_failed()
    with pytest.raises(FleetBuildFailed) as err:
        state.result()
    message = str(err.value)
    _check_artifacts(state.state_details.flow_run_id, names, broken)
    assert "3 of 6 variants failed" in message
    for name, file in broken.items():
        assert name in message
        assert (tenants / name / file).as_uri() in message or f"{name}/{file}" in message
    assert "224" in message and "labels" in message
    built = sorted(p.name for p in out.glob("*.tar.gz"))
    assert built == sorted(f"{n}.tar.gz" for n in names if n not in broken)
    assert not [p for n in broken for p in out.glob(f"{n}.*")]
    index = FleetIndex.model_validate_json((out / INDEX_FILE).read_text())
    assert {n for n, e in index.variants.items() if e.status == "failed"} == set(broken)
    # the others were published (tarball and manifest under the TargetModel name), not them
    published = sorted(p.name for p in store.glob("tenant-*.tar.gz"))
    assert published == built
    assert sorted(p.name for p in store.glob("tenant-*.manifest.json")) == sorted(
        f"{n}.manifest.json" for n in names if n not in broken)
    indexed = json.loads((store / "_index.json").read_text())["objects"]
    assert sorted(indexed) == sorted([*published, *(p.name for p in store.glob("tenant-*.manifest.json"))])


# ------------------------------------------------------------------------------ pure parts


def _template(key: str) -> FleetTemplate:
    from ensembles.fleet_spec import load_fleet  # noqa: F401 - the template spec is not needed here
    from ensembles.spec import load_spec
    from ensembles.catalog import CATALOG_DIR

    spec = load_spec(CATALOG_DIR / "image_classifier_tenant" / "ensemble.yaml")
    return FleetTemplate(fleet="f", target="local-cpu", folder=Path("."), spec=spec,
                         owned=("classifier_onnx", "labels"), shared={}, shared_sources={},
                         key=key, spec_sha256="0", tool_version="t")


def _variants(n: int) -> list[Variant]:
    return [Variant(name=f"t{i:03d}", params={"classifier_onnx.source": f"file:///m/t{i}/model.onnx"},
                    fingerprints={"classifier_onnx.source": f"size:{i}:mtime_ns:1"}, origin="x")
            for i in range(n)]


def test_new_template_key_rebuilds_every_variant(tmp_path):
    variants = _variants(5)
    old = _template("a")
    index = FleetIndex(fleet="f", target="local-cpu", template_key="a", variants={
        v.name: FleetIndexEntry(key=input_key("a", v), file=f"{v.name}.tar.gz",
                           target_model=f"{v.name}.tar.gz", status="ok") for v in variants})
    for v in variants:
        (tmp_path / f"{v.name}.tar.gz").write_bytes(b"x")
    todo, unchanged = plan_builds(old, variants, index, tmp_path)
    assert (len(todo), len(unchanged)) == (0, 5)
    todo, unchanged = plan_builds(_template("b"), variants, index, tmp_path)
    assert (len(todo), len(unchanged)) == (5, 0)
    (tmp_path / "t002.tar.gz").unlink()  # a tarball deleted behind our back is rebuilt
    todo, _ = plan_builds(old, variants, index, tmp_path)
    assert [v.name for v in todo] == ["t002"]


def test_unknown_source_identity_is_always_rebuilt():
    v = Variant(name="x", params={"classifier_onnx.source": "https://h/m.onnx"}, origin="x")
    assert input_key("k", v) is None


def test_canaries_are_stable_and_include_the_first():
    variants = _variants(50)
    a = pick_canaries(variants, 4, "fleet")
    assert a == pick_canaries(list(reversed(variants)), 4, "fleet")
    assert a[0].name == "t000" and len({v.name for v in a}) == 4
    assert pick_canaries(variants[:3], 4, "fleet") == variants[:3]


def test_select_by_event_uri_or_name():
    variants = _variants(5)
    picked, later = select_variants(variants, None, "file:///m/t3/model.onnx")
    assert [v.name for v in picked] == ["t003"] and len(later) == 4
    picked, later = select_variants(variants, ["t001", "t004"], None)
    assert [v.name for v in picked] == ["t001", "t004"]
    assert select_variants(variants, None, None) == (variants, [])


@pytest.mark.triton
def test_cli_fleet_build_reports_counts(example):
    from typer.testing import CliRunner

    from flows.cli import app

    r = CliRunner().invoke(app, ["fleet", "build", str(example["fleet"]), "--output-dir",
                                 str(example["out"]), "--triton-sample", str(SAMPLE)])
    assert r.exit_code == 0, r.output
    assert f"{COUNT} variants, 0 built, {COUNT} unchanged, 0 failed" in r.output
