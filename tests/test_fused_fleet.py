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
    assert {t for s in index.shards for t in
            [x["name"] for x in json.loads((out / f"{s}.tenants.json").read_text())["tenants"]]} == set(fusedv)
