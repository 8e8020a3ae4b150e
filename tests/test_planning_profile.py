"""`mme profile`: the footprint of a real built ensemble, measured in a real Triton (host PSS and
USS of Triton + its Python stubs, load/unload and service times); GPU memory by NVML only where a GPU
is, otherwise estimated and said so."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.build.footprints import measure_footprint, nvml_used_bytes
from tasks.build.verify import Sample


@pytest.mark.triton
def test_measure_footprint_of_a_real_build(built_text_embedding: dict) -> None:
    m = built_text_embedding["manifest"]
    archive = built_text_embedding["archive"]
    sample = Sample.from_json(json.loads((built_text_embedding["output_dir"] /
                                          "text_embedding.manifest.json").read_text())["sample"])
    fp = measure_footprint(archive, m.ensemble, sample.inputs, max_batch=4, repeats=5)
    for fig in (fp.host_memory_bytes, fp.load_cold_s, fp.load_disk_s, fp.unload_s, fp.service_batch1_s,
                fp.service_max_batch_s, fp.unpacked_bytes):
        assert fig.status == "measured" and fig.value > 0 and fig.hardware
    assert fp.unpacked_bytes.value > fp.tarball_bytes.value * 0.5  # extracted files, not the gzip
    assert fp.host_memory_bytes.value > 10 * 2 ** 20  # a loaded MiniLM + Python stub: tens of MiB at least
    assert fp.host_memory_bytes.basis == "pss" and fp.host_memory_uss_bytes is not None
    assert fp.host_memory_uss_bytes.basis == "uss"
    assert 0 < fp.host_memory_uss_bytes.value <= fp.host_memory_bytes.value * 1.1  # private <= proportional
    assert fp.summary().host_mem.endswith(" pss")
    assert fp.load_cold_s.value >= fp.load_disk_s.value * 0.5
    assert fp.gpu_memory_bytes.status == "estimated"  # no GPU here (the CPU build: 0 bytes)


@pytest.mark.triton
def test_profile_cli_writes_the_footprint_into_the_manifest(built_text_embedding: dict, tmp_path) -> None:
    import shutil

    src = built_text_embedding["output_dir"]
    for name in ("text_embedding.tar.gz", "text_embedding.manifest.json"):
        shutil.copy(src / name, tmp_path / name)
    result = CliRunner().invoke(app, ["profile", str(tmp_path / "text_embedding.tar.gz"), "--max-batch", "2",
                                      "--write"])
    assert result.exit_code == 0, result.output
    assert "estimated" in result.output  # GPU memory: no NVML/GPU here
    doc = json.loads((tmp_path / "text_embedding.manifest.json").read_text())
    assert doc["footprint"]["service_batch1_s"]["status"] == "measured"


def test_old_rss_footprints_still_read_and_say_so() -> None:
    """A footprint recorded before the PSS probe (summed RSS, no basis) reads as basis "rss",
    and its table row says it overcounts; estimated figures carry no basis."""
    from tasks.build.footprints import Footprint, estimate_footprint

    doc = estimate_footprint("old", 10 * 2 ** 20, gpu=False).model_dump(mode="json")
    doc["host_memory_bytes"] = {"value": 208 * 2 ** 20, "status": "measured", "where": "mme profile"}
    old = Footprint.model_validate(doc)
    assert old.host_memory_bytes.basis == "rss" and old.host_memory_uss_bytes is None
    assert "rss (old record" in old.summary().host_mem
    assert Footprint.model_validate(old.model_dump(mode="json")).host_memory_bytes.basis == "rss"
    assert estimate_footprint("new", 10 * 2 ** 20, gpu=False).host_memory_bytes.basis is None


@pytest.mark.gpu
def test_gpu_memory_is_measured_with_nvml() -> None:
    reader = nvml_used_bytes()
    if reader is None:
        pytest.skip("no GPU/NVML on this host (pynvml missing or no driver): GPU memory is estimated "
                    "by the 'modelmesh-x1.25+cuda-context' formula instead; run on the GPU build host")
    used = reader()
    assert used is not None and used > 0
