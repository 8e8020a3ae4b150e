"""A fused fleet end to end on the local endpoint: 12 example tenants in shards of 5 (three
shards), one tenant whose trunk differs (built separately, the reason in the report), every
tenant verified at build, deployed, invoked through the Router and compared with its own ONNX;
then one tenant's head changes and only its shard is rebuilt."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

from tasks.fleet.build import INDEX_FILE, FleetIndex

COUNT, SHARD = 12, 5
ODD = "tenant-0003"  # its trunk differs: built separately
CHANGED = "tenant-0008"  # its head changes for the rebuild (in shard 001 with ODD gone)
ENDPOINT = "fused-fleet-test"


def _edit(model_path: Path, pick: str) -> None:
    """Scale one initializer of the model: the first (``trunk``) or the head's weight (``head``)."""
    model = onnx.load(str(model_path))
    inits = list(model.graph.initializer)
    target = inits[0] if pick == "trunk" else next(
        i for i in inits if i.name == _head_weight(model))
    arr = numpy_helper.to_array(target).copy()
    arr.flat[0] = arr.flat[0] * 1.5 + 0.01
    target.CopyFrom(numpy_helper.from_array(arr, target.name))
    onnx.save(model, str(model_path))


def _head_weight(model: Any) -> str:
    from tasks.fleet.fusion import find_head

    head, why = find_head(model)
    assert head is not None, why
    return head.weight


def _tarballs(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.tar.gz")}


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory, mme_home: Path,
          prefect_harness: None) -> Iterator[dict[str, Any]]:
    from flows.fleet_build import fleet_build
    from tasks.fleet.example import make_example_fleet

    root = tmp_path_factory.mktemp("fused")
    models = root / "models"
    make_example_fleet(COUNT, models.as_uri(), seed=11, fleet_file=root / "fleet.yaml")
    doc = yaml.safe_load((root / "fleet.yaml").read_text())
    (root / "fleet.yaml").write_text(yaml.safe_dump({**doc, "layout": "fused", "shard_size": SHARD}))
    _edit(models / "tenants" / ODD / "model.onnx", "trunk")
    out = root / "build"
    first = fleet_build(str(root / "fleet.yaml"), output_dir=str(out), triton_sample=1)
    yield {"root": root, "models": models, "out": out, "first": first,
           "store_uri": (root / "store").as_uri()}


@pytest.mark.triton
@pytest.mark.prefect
def test_the_build_fuses_what_shares_the_trunk_and_builds_the_rest_separately(fused: dict[str, Any]) -> None:
    first, out = fused["first"], fused["out"]
    assert (first["built"], first["failed"]) == (COUNT, 0)
    index = FleetIndex.read((out / INDEX_FILE).read_text(), "index")
    assert sorted(index.shards) == [f"{index.fleet}-shard-00{i}" for i in range(3)]
    assert index.variants[ODD].layout == "separate" and index.variants[ODD].status == "ok"
    fusedv = {n: e for n, e in index.variants.items() if e.layout == "fused"}
    assert len(fusedv) == COUNT - 1
    for shard, entry in index.shards.items():
        sidecar = json.loads((out / f"{shard}.tenants.json").read_text())
        members = [t["name"] for t in sidecar["tenants"]]
        assert members == sorted(members) and len(members) <= SHARD
        for t in sidecar["tenants"]:
            e = index.variants[t["name"]]
            assert (e.shard, e.tenant, e.sha256) == (shard, t["index"], entry.sha256)
            classes = (fused["models"] / "tenants" / t["name"] / "classes.txt").read_text().split()
            assert t["classes"] == len(classes) == len(t["labels"])
        manifest = json.loads((out / f"{shard}.manifest.json").read_text())
        assert manifest["validation"]["passed"] and manifest["fleet"]["tenants"] == len(members)
        footprint = manifest["footprint"]  # measured on the shard itself, in the Triton that verified it
        assert footprint["source"]["measured_on"] == shard and footprint["target_model"] == f"{shard}.tar.gz"
        for fig in ("host_memory_bytes", "load_disk_s", "unload_s", "service_batch1_s"):
            assert footprint[fig]["status"] == "measured" and footprint[fig]["value"] > 0, fig
        assert footprint["host_memory_bytes"]["basis"] == "pss"
        assert f"fused shard {shard}" in footprint["load_disk_s"]["where"]
    assert {t for s in index.shards for t in
            [x["name"] for x in json.loads((out / f"{s}.tenants.json").read_text())["tenants"]]} == set(fusedv)


def _own_answers(out: Path, models: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    """Every tenant's own ONNX on the DALI output of ``image`` (the pipeline a shard ships)."""
    import onnxruntime as ort

    from tasks.build.verify import run_dali_cpu
    from tasks.fleet.variant import read_members

    shard = sorted(out.glob("*-shard-000.tar.gz"))[0]
    dali = next(data for name, data in read_members(shard).items() if name.endswith("model.dali"))
    (out.parent / "model.dali").write_bytes(dali)
    tensor = run_dali_cpu(out.parent / "model.dali", [image.tobytes()], "INPUT")
    answers = {}
    for folder in sorted((models / "tenants").iterdir()):
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        answers[folder.name] = np.asarray(sess.run(None, {sess.get_inputs()[0].name: tensor})[0])
    return answers


@pytest.mark.triton
@pytest.mark.prefect
def test_deployed_tenants_answer_as_their_own_models_and_a_changed_head_rebuilds_its_shard(
        fused: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.fleet_build import fleet_build
    from flows.fleet_deploy import fleet_deploy
    from infra.endpoint.process import stop
    from infra.records.manifest import load_manifest
    from tasks.build.verify import Sample
    from tasks.fleet.router import Router
    from tasks.fleet.routes import read_routes

    out, models, store_uri = fused["out"], fused["models"], fused["store_uri"]
    fleet = yaml.safe_load((fused["root"] / "fleet.yaml").read_text())["name"]
    try:
        got = fleet_deploy(str(fused["root"] / "fleet.yaml"), [ENDPOINT], store_uri=store_uri,
                           build_dir=str(out))
        assert not got["failed"]
        table = read_routes(store_uri, fleet)
        tenants = {n: r for n, r in table.variants.items() if r.tenant is not None}
        assert len(tenants) == COUNT - 1 and table.variants[ODD].tenant is None
        image = Sample.from_json(load_manifest(out / f"{fleet}-shard-000.manifest.json")
                                 .required_sample()).inputs["INPUT"]
        own = _own_answers(out, models, image)
        router = Router(store_uri, fleet, max_age_s=0)
        for name in sorted(own):
            answer = router.invoke(name, {"INPUT": image})["OUTPUT"]
            assert answer.shape == own[name].shape, name  # the tenant's own classes
            assert np.array_equal(np.argsort(-answer[0])[:5], np.argsort(-own[name][0])[:5]), name
            assert float(np.abs(answer - own[name]).max()) <= 1e-4, name
    finally:
        stop(ENDPOINT)

    before = _tarballs(out)
    again = fleet_build(str(fused["root"] / "fleet.yaml"), output_dir=str(out), triton_sample=1)
    assert (again["built"], again["unchanged"]) == (0, COUNT) and _tarballs(out) == before
    _edit(models / "tenants" / CHANGED / "model.onnx", "head")
    fetched = _count_fetches(monkeypatch)
    third = fleet_build(str(fused["root"] / "fleet.yaml"), output_dir=str(out), triton_sample=1)
    after = _tarballs(out)
    changed = sorted(n for n in after if after[n] != before.get(n))
    index = FleetIndex.read((out / INDEX_FILE).read_text(), "index")
    assert changed == [f"{index.variants[CHANGED].shard}.tar.gz"]
    members = [n for n, e in index.variants.items() if e.shard == index.variants[CHANGED].shard]
    assert third["built"] == len(members) and third["failed"] == 0
    # the rebuild fetched its shard's tenants only (the changed one first), analysed no fleet
    assert sorted(fetched) == sorted(members) and fetched[0] == CHANGED


def _count_fetches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tenants a build fetches from now on, in order; a whole-fleet analysis fails the test."""
    import tasks.fleet.fused as fused_mod
    import tasks.fleet.fused_build as fused_build

    fetched: list[str] = []
    real = fused_mod.fetch_tenant

    def counting(template: Any, v: Any, work: Path) -> Any:
        fetched.append(v.name)
        return real(template, v, work)

    def no_analysis(models: Any) -> Any:
        raise AssertionError(f"the whole fleet analysed again ({len(models)} models)")

    monkeypatch.setattr(fused_mod, "fetch_tenant", counting)
    monkeypatch.setattr(fused_build, "analyze_fleet", no_analysis)
    return fetched
