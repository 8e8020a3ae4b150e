"""`mme build --profile`: the footprint is measured at build time and recorded in the manifest
(what the capacity planner reads before it estimates anything)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.records.manifest import load_manifest
from tasks.build.footprints import from_manifest

pytestmark = [pytest.mark.triton, pytest.mark.prefect]


def test_build_with_profile_records_a_measured_footprint(built_image_classifier: dict, tmp_path: Path):
    from flows.build import build

    out = tmp_path / "out"
    (m,) = build(["image_classifier"], output_dir=str(out), profile=True)
    doc = json.loads((out / "image_classifier.manifest.json").read_text())
    fp = doc["footprint"]
    for name in ("host_memory_bytes", "load_cold_s", "load_disk_s", "unload_s", "service_batch1_s",
                 "service_max_batch_s"):
        assert fp[name]["status"] == "measured", name
        assert fp[name]["value"] > 0, name
    assert fp["host_memory_bytes"]["basis"] == "pss"  # counted as the endpoint's limit counts
    assert fp["host_memory_uss_bytes"]["basis"] == "uss"
    assert fp["gpu_memory_bytes"]["status"] == "estimated"  # no GPU here: said so, with its formula
    assert fp["max_batch"] == 8
    assert "profile" in doc["steps"]
    assert doc["sha256"] == m.sha256  # profiling does not touch the shipped bytes
    # the planner takes the measured figures from the manifest, not its estimates
    planned = from_manifest(load_manifest(out / "image_classifier.manifest.json"))
    assert planned.host_memory_bytes.status == "measured"
    assert planned.host_memory_bytes.value == fp["host_memory_bytes"]["value"]
