"""A fused text fleet end to end on the local endpoint: 6 example customers' intent heads
(``mme fleet example --kind text``) in shards of 4 (two shards), fused, every tenant checked at
build (ONNX Runtime, and a few per shard through the whole ensemble in Triton), deployed, and
each tenant invoked through the Router with sentences and compared with its own head run on
the encoder's output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from tasks.fleet.build import INDEX_FILE, FleetIndex

COUNT, SHARD = 6, 4
ENDPOINT = "fused-text-fleet-test"
SENTENCES = ["Please cancel the order I placed yesterday.",
             "What will the weather be like in Lisbon next week, and should I pack an umbrella?"]


@pytest.fixture(scope="module")
def fused_text(tmp_path_factory: pytest.TempPathFactory, mme_home: Path,
               prefect_harness: None) -> Iterator[dict[str, Any]]:
    from flows.fleet_build import fleet_build
    from tasks.fleet.example_text import make_text_example_fleet

    root = tmp_path_factory.mktemp("fused-text")
    models = root / "models"
    make_text_example_fleet(COUNT, models.as_uri(), seed=9, fleet_file=root / "fleet.yaml", layout="fused")
    doc = yaml.safe_load((root / "fleet.yaml").read_text())
    (root / "fleet.yaml").write_text(yaml.safe_dump({**doc, "shard_size": SHARD}))
    out = root / "build"
    first = fleet_build(str(root / "fleet.yaml"), output_dir=str(out), triton_sample=1)
    yield {"root": root, "models": models, "out": out, "first": first, "fleet": doc["name"],
           "store_uri": (root / "store").as_uri()}


def _own_answers(out: Path, models: Path, scratch: Path) -> dict[str, np.ndarray]:
    """Every tenant's own head on what the shard's own tokenizer and encoder give for
    ``SENTENCES`` (computed here with ONNX Runtime, not through Triton)."""
    from infra.store.tarball import safe_extract
    from tasks.build.verify import encoder_features

    repo = safe_extract(sorted(out.glob("*-shard-000.tar.gz"))[0], scratch / "shard")
    tokenizer = next(repo.glob("*__preprocess/1/tokenizer"))
    encoder = next(repo.glob("*__encoder/1/model.onnx"))
    features = encoder_features(tokenizer, encoder, SENTENCES)
    answers = {}
    for folder in sorted((models / "tenants").iterdir()):
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        answers[folder.name] = np.asarray(sess.run(None, features)[0])
    return answers


@pytest.mark.triton
@pytest.mark.prefect
def test_a_fused_text_fleet_is_built_served_and_each_tenant_answers_as_its_own_head(
        fused_text: dict[str, Any], tmp_path: Path) -> None:
    from flows.fleet_deploy import fleet_deploy
    from infra.endpoint.process import stop
    from tasks.fleet.router import Router
    from tasks.fleet.routes import read_routes

    first, out, models = fused_text["first"], fused_text["out"], fused_text["models"]
    assert (first["built"], first["failed"]) == (COUNT, 0)
    index = FleetIndex.read((out / INDEX_FILE).read_text(), "index")
    assert sorted(index.shards) == [f"{index.fleet}-shard-00{i}" for i in range(2)]
    assert all(e.layout == "fused" and e.status == "ok" for e in index.variants.values())
    for shard in index.shards:
        manifest = json.loads((out / f"{shard}.manifest.json").read_text())
        assert manifest["validation"]["passed"]
        assert manifest["validation"]["tenants_checked_in_onnxruntime"] == manifest["fleet"]["tenants"]
        assert manifest["validation"]["max_abs_diff_fused_vs_own"] <= 1e-6
        sidecar = json.loads((out / f"{shard}.tenants.json").read_text())
        for t in sidecar["tenants"]:
            labels = (models / "tenants" / t["name"] / "labels.txt").read_text().split()
            assert t["labels"] == labels and t["classes"] == len(labels)
    own = _own_answers(out, models, tmp_path)
    texts = np.array([[s.encode()] for s in SENTENCES], dtype=object)
    store_uri, fleet = fused_text["store_uri"], fused_text["fleet"]
    try:
        got = fleet_deploy(str(fused_text["root"] / "fleet.yaml"), [ENDPOINT], store_uri=store_uri,
                           build_dir=str(out))
        assert not got["failed"]
        table = read_routes(store_uri, fleet)
        assert sorted(n for n, r in table.variants.items() if r.tenant is not None) == sorted(own)
        router = Router(store_uri, fleet, max_age_s=0)
        for name in sorted(own):
            answer = router.invoke(name, {"INPUT0": texts})["OUTPUT"]
            assert answer.shape == own[name].shape, name  # the tenant's own intents, per sentence
            assert float(np.abs(answer - own[name]).max()) <= 1e-4, name
            assert np.array_equal(answer.argmax(axis=-1), own[name].argmax(axis=-1)), name
    finally:
        stop(ENDPOINT)


@pytest.mark.triton
@pytest.mark.prefect
def test_a_separate_text_fleet_checks_the_variants_past_the_canary_in_onnx_runtime(
        tmp_path: Path, mme_home: Path, prefect_harness: None) -> None:
    """``--layout separate``: one tarball per customer; the canary is verified in Triton, the
    others by structure and by their own head run in ONNX Runtime on the shared sentence's
    encoder output (the two-input form of the fleet's shared reference)."""
    from flows.fleet_build import fleet_build
    from tasks.fleet.example_text import make_text_example_fleet

    made = make_text_example_fleet(3, (tmp_path / "models").as_uri(), seed=2,
                                   fleet_file=tmp_path / "fleet.yaml", layout="separate")
    out = tmp_path / "build"
    got = fleet_build(str(tmp_path / "fleet.yaml"), output_dir=str(out), triton_sample=1)
    assert (got["built"], got["failed"]) == (3, 0)
    index = FleetIndex.read((out / INDEX_FILE).read_text(), "index")
    assert index.shards == {} and all(e.layout == "separate" for e in index.variants.values())
    assert sorted(e.checked_by for e in index.variants.values()) == [
        "onnxruntime+structure", "onnxruntime+structure", "triton"]
    for t in made.tenants:
        manifest = json.loads(next(out.glob(f"{t.name}*.manifest.json")).read_text())
        assert manifest["validation"]["passed"] and manifest["validation"]["classes"] == t.intents
