"""The planner and fused fleets (issue 20): a shard is one model that serves all its tenants
(its rate is the sum of theirs, so a request for any tenant of a loaded shard is a hit); a
fleet that can be planned both ways is planned both ways and the cheaper that meets the goal is
chosen, saying which and why; a layout the fleet cannot be planned as is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from infra.aws.instance_catalog import load_catalog
from tasks.build.footprints import MIB, Figure, estimate_footprint
from tasks.fleet.build import INDEX_FILE, FleetIndex, FleetIndexEntry
from tasks.planning.layouts import (LayoutError, as_layout, model_traffic, plan_layouts, read_fleet,
                                    synthetic_layouts)
from tasks.planning.search import Goal, SearchOptions
from tasks.planning.traffic import zipf

CAT = load_catalog()
SMALL = SearchOptions(sim_hours=0.25, warmup_hours=0.05, instance_types=("ml.m5.large", "ml.m5.xlarge"))
TYPES = [CAT.get("ml.m5.large"), CAT.get("ml.m5.xlarge")]


def _footprint(name: str, host_mib: float, load_s: float) -> dict[str, object]:
    """A measured-looking CPU footprint record (host memory and load time as given)."""
    fp = estimate_footprint(name, 3_000_000, gpu=False)
    return fp.model_copy(update={
        "host_memory_bytes": Figure(value=host_mib * MIB, status="measured", where="test", basis="pss"),
        "load_disk_s": Figure(value=load_s, status="measured", where="test"),
        "load_cold_s": Figure(value=load_s + 0.1, status="measured", where="test"),
    }).to_record()


def _manifest(folder: Path, stem: str, host_mib: float, load_s: float, fleet: dict[str, object]) -> Path:
    doc = {"schema_version": 2, "ensemble": stem, "target": "local-cpu", "target_model": f"{stem}.tar.gz",
           "artifact": (folder / f"{stem}.tar.gz").as_uri(), "sha256": "0" * 64, "bytes": 3_000_000,
           "fleet": fleet, "footprint": _footprint(f"{stem}.tar.gz", host_mib, load_s)}
    path = folder / f"{stem}.manifest.json"
    path.write_text(json.dumps(doc))
    return path


def _fused_build(folder: Path, tenants: int, size: int, apart: str | None = None) -> Path:
    """A fused fleet build's folder: ``tenants`` in shards of ``size`` (shard manifests with
    their footprints), plus ``apart`` built separately when given, and the fleet index."""
    folder.mkdir(parents=True, exist_ok=True)
    variants: dict[str, FleetIndexEntry] = {}
    shards: dict[str, FleetIndexEntry] = {}
    for i in range(tenants):
        shard = f"f-shard-{i // size:03d}"
        variants[f"t{i:03d}"] = FleetIndexEntry(file=f"{shard}.tar.gz", target_model=f"{shard}.tar.gz",
                                                status="ok", layout="fused", shard=shard, tenant=i % size)
        if shard not in shards:
            shards[shard] = FleetIndexEntry(file=f"{shard}.tar.gz", target_model=f"{shard}.tar.gz",
                                            status="ok", layout="fused")
            _manifest(folder, shard, 250, 1.4, {"name": "f", "template": "tpl", "layout": "fused",
                                                "shard": shard, "tenants": size})
    if apart:
        variants[apart] = FleetIndexEntry(file=f"{apart}.tar.gz", target_model=f"{apart}.tar.gz", status="ok")
        _manifest(folder, apart, 150, 1.0, {"name": "f", "template": "tpl"})
    index = FleetIndex(fleet="f", target="local-cpu", variants=variants, shards=shards)
    (folder / INDEX_FILE).write_text(index.model_dump_json())
    return folder


def test_a_fused_build_is_planned_as_shards_that_serve_their_tenants(tmp_path: Path) -> None:
    fleet = read_fleet(_fused_build(tmp_path / "b", 10, 4), None, None, None, None)
    assert list(fleet.layouts) == ["fused"] and len(fleet.variants) == 10
    models = fleet.layouts["fused"]
    assert models.names == ["f-shard-000", "f-shard-001", "f-shard-002"]
    assert models.model_of == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert models.footprints[0].host_memory_bytes.value == 250 * MIB
    assert fleet.no_comparison and "--footprint-from" in fleet.no_comparison
    traffic = zipf(fleet.variants, 1.1, 10.0, seed=3)
    per_shard = model_traffic(traffic, models)
    assert per_shard.variants == models.names
    assert np.allclose(per_shard.rates, [traffic.rates[:4].sum(), traffic.rates[4:8].sum(), traffic.rates[8:].sum()])


def test_a_fused_build_with_a_separate_variant_compares_both_layouts(tmp_path: Path) -> None:
    fleet = read_fleet(_fused_build(tmp_path / "b", 8, 4, apart="odd"), None, None, None, None)
    assert set(fleet.layouts) == {"fused", "separate"} and fleet.no_comparison is None
    fused, separate = fleet.layouts["fused"], fleet.layouts["separate"]
    odd = fleet.variants.index("odd")
    assert fused.names[fused.model_of[odd]] == "odd"  # the one built separately is its own model in both
    assert len(separate.footprints) == 9 and all(fp.host_memory_bytes.value == 150 * MIB
                                                 for fp in separate.footprints)


def test_auto_chooses_the_cheaper_layout_and_says_why(tmp_path: Path) -> None:
    sep = _manifest(tmp_path, "one", 150, 1.0, {"name": "f", "template": "tpl"})
    shard = _manifest(tmp_path, "f-shard-000", 250, 1.4, {"name": "f", "template": "tpl", "layout": "fused",
                                                          "shard": "f-shard-000", "tenants": 100})
    fleet = synthetic_layouts(200, sep, shard, None)
    assert len(fleet.layouts["fused"].footprints) == 2
    traffic = zipf(fleet.variants, 1.1, 20.0, seed=0)
    got = plan_layouts(TYPES, fleet, traffic, Goal(1000.0), "us-east-1", SMALL)
    assert got.layout == "fused" and got.models is fleet.layouts["fused"]
    assert got.costs["fused"] is not None and got.costs["separate"] is not None
    assert got.costs["fused"] < got.costs["separate"]
    assert got.lines[0].startswith("layout: fused (--layout auto: the cheaper layout that meets the goal)")
    assert any("x cheaper than separate" in line for line in got.lines)
    assert got.result.baseline.endpoints == 200  # one endpoint per variant, not per shard
    only = plan_layouts(TYPES, fleet, traffic, Goal(1000.0), "us-east-1",
                        SearchOptions(**{**SMALL.__dict__, "layout": "separate"}))
    assert only.layout == "separate" and list(only.costs) == ["separate"]


def test_a_layout_the_fleet_cannot_be_planned_as_is_refused_in_one_line(tmp_path: Path) -> None:
    sep = _manifest(tmp_path, "one", 150, 1.0, {"name": "f", "template": "tpl"})
    fleet = synthetic_layouts(5, sep, None, None)
    with pytest.raises(LayoutError, match="--layout fused: this fleet cannot be planned fused") as e:
        plan_layouts(TYPES, fleet, zipf(fleet.variants, 1.1, 1.0), Goal(1000.0), "us-east-1",
                     SearchOptions(**{**SMALL.__dict__, "layout": "fused"}))
    assert "\n" not in str(e.value)
    with pytest.raises(LayoutError, match="--layout 'both': expected one of auto, separate, fused"):
        as_layout("both")
    with pytest.raises(Exception, match="not a fused shard's manifest"):
        synthetic_layouts(5, None, sep, None)
