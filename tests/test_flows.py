"""The build, deploy and retire flows, run as real Prefect flows with a real Triton."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from ensembles.catalog import CATALOG_DIR
from ensembles.spec import SpecError
from flows.common import is_transient
from infra.store.objects import open_store, sha256_file
from infra.store.tarball import safe_extract
from tasks.build.verify import VerificationFailed

pytestmark = [pytest.mark.prefect, pytest.mark.triton]


def _user_ensemble(tmp_path: Path, mutate) -> Path:
    """A copy of the catalog's text_embedding folder with its spec changed by ``mutate``."""
    folder = tmp_path / "my_ensemble"
    shutil.copytree(CATALOG_DIR / "text_embedding", folder)
    doc = yaml.safe_load((folder / "ensemble.yaml").read_text())
    mutate(doc)
    (folder / "ensemble.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def test_transient_classification():
    assert is_transient(ConnectionError("reset"))
    assert is_transient(TimeoutError())
    assert not is_transient(VerificationFailed("min_cosine too low"))
    assert not is_transient(SpecError("miswired"))
    assert not is_transient(None)


def test_miswired_spec_is_refused_before_any_work(tmp_path: Path, mme_home: Path, prefect_harness):
    from flows.build import build

    def miswire(doc):
        doc["steps"][2]["input_map"]["token_embeddings"] = "no_such_tensor"

    folder = _user_ensemble(tmp_path, miswire)
    out = tmp_path / "out"
    with pytest.raises(SpecError, match="no_such_tensor"):
        build(ensembles=[str(folder)], output_dir=str(out))
    assert not out.exists(), "nothing may be written for a refused spec"


def test_build_is_deterministic_and_verified(built_text_embedding: dict, tmp_path: Path, prefect_harness):
    from flows.build import build

    m = built_text_embedding["manifest"]
    assert m.validation.passed and m.validation.value >= 0.999
    assert m.sha256 == sha256_file(built_text_embedding["archive"])
    assert m.sources["hf_model"]["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    manifest_file = built_text_embedding["output_dir"] / "text_embedding.manifest.json"
    assert json.loads(manifest_file.read_text())["sample"]["expected"]["finaloutput"]["shape"] == [5, 384]
    # the tarball holds the model repository at its root
    repo = safe_extract(built_text_embedding["archive"], tmp_path / "x")
    assert sorted(p.name for p in repo.iterdir()) == [
        "text_embedding", "text_embedding__encoder", "text_embedding__postprocess",
        "text_embedding__preprocess"]
    assert (repo / "text_embedding__preprocess" / "1" / "tokenizer" / "tokenizer.json").exists()
    # no build-host paths in the ONNX (they would change the sha256 from machine to machine)
    import onnx

    model = onnx.load(str(repo / "text_embedding__encoder" / "1" / "model.onnx"))
    assert not any(n.metadata_props for n in model.graph.node)
    raw = (repo / "text_embedding__encoder" / "1" / "model.onnx").read_bytes()
    assert b"site-packages" not in raw and b"stack_trace" not in raw
    # same inputs -> same bytes
    again = build(ensembles=["text_embedding"], output_dir=str(tmp_path / "again"))
    assert again[0].sha256 == m.sha256


def test_failed_verification_ships_nothing(tmp_path: Path, mme_home: Path, prefect_harness):
    from flows.build import build

    def impossible(doc):
        doc["validation"]["threshold"] = 1.5  # cosine can never reach it

    folder = _user_ensemble(tmp_path, impossible)
    out = tmp_path / "out"
    with pytest.raises(VerificationFailed, match="below the threshold 1.5 by"):
        build(ensembles=[str(folder)], output_dir=str(out))
    assert not list(out.glob("*")) if out.exists() else True


def test_deploy_validate_rollback_and_retire(built_text_embedding: dict, tampered_text_build: Path,
                                             tmp_path: Path, mme_home: Path, prefect_harness):
    from flows.deploy import DeployValidationFailed, deploy
    from flows.retire import RetireIncomplete, retire
    from infra.endpoint.process import find_running
    from infra.aws.runtime_client import invoke, runtime_client_for
    from infra.records.endpoint import current_target
    from tasks.deploy.records import BuildSource, Rollout
    from tasks.build.verify import Sample

    store_uri = (tmp_path / "store").as_uri()
    art_dir = str(built_text_embedding["output_dir"])
    ep = "flow-ep"
    try:
        first = deploy(ensembles=["text_embedding"], endpoint=ep, build=BuildSource(dir=art_dir),
                       store_uri=store_uri, rollout=Rollout(warm_invocations=3))
        (entry,) = first["ensembles"]
        assert entry["uploaded"] and entry["validation"]["passed"]
        assert entry["latency_ms"]["cold"] > entry["latency_ms"]["p50"] > 0
        pid = find_running(ep).pid

        second = deploy(ensembles=["text_embedding"], endpoint=ep, build=BuildSource(dir=art_dir),
                        store_uri=store_uri, rollout=Rollout(warm_invocations=1))
        assert not second["ensembles"][0]["uploaded"], "unchanged artifact re-uploaded"
        assert find_running(ep).pid == pid, "endpoint must be reused, not redeployed"

        bad_dir = tampered_text_build
        with pytest.raises(DeployValidationFailed, match="min_cosine"):
            deploy(ensembles=["text_embedding"], endpoint=ep, build=BuildSource(dir=str(bad_dir)),
                   store_uri=store_uri, rollout=Rollout(warm_invocations=1))
        store, _ = open_store(store_uri)
        sha = built_text_embedding["manifest"].sha256
        key = f"models/flow-ep/text_embedding-{sha[:12]}.tar.gz"  # a versioned TargetModel
        assert entry["target_model"] == key.rsplit("/", 1)[-1] == current_target(ep, "text_embedding")
        assert store.head(key).sha256 == sha, "the serving version must be untouched"
        assert [i.key for i in store.list("models/flow-ep/")] == [key], "the failed upload is deleted"
        # and the endpoint serves the previous (good) model again
        doc = json.loads((built_text_embedding["output_dir"] / "text_embedding.manifest.json").read_text())
        sample = Sample.from_json(doc["sample"])
        got = invoke(runtime_client_for(find_running(ep).url), ep, current_target(ep, "text_embedding"),
                     sample.inputs)
        cos = (got["finaloutput"] * sample.expected["finaloutput"]).sum(axis=1)
        assert np.all(cos > 0.999)

        lines = retire(ensembles=["text_embedding"], endpoint=ep, store_uri=store_uri)
        assert "deleted" in lines[0]
        assert not store.exists(key)
        assert find_running(ep) is not None, "retiring an ensemble must not stop the endpoint"
        with pytest.raises(RetireIncomplete, match="not deployed"):  # nothing deleted: exit 1
            retire(ensembles=["not_ours"], endpoint=ep, store_uri=store_uri)
        lines = retire(ensembles=["not_ours"], endpoint=ep, store_uri=store_uri, missing_ok=True)
        assert "not deployed" in lines[0]
    finally:
        lines = retire(endpoint=ep, stop_endpoint=True, store_uri=store_uri)
    assert find_running(ep) is None
    assert "stopped" in lines[-1]


def _fake_inception_tarball(tmp_path: Path) -> Path:
    """A stand-in for the TF-slim Inception v3 tarball (its weights cannot be fetched here):
    same member names, a fake graph, 1001 labels starting with background."""
    import tarfile

    src = tmp_path / "inception_src"
    src.mkdir()
    (src / "inception_v3_2016_08_28_frozen.pb").write_bytes(b"not really a graph")
    (src / "imagenet_slim_labels.txt").write_text(
        "\n".join(["background"] + [f"class{i}" for i in range(1000)]) + "\n")
    archive = tmp_path / "inception_v3_2016_08_28_frozen.pb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(src.iterdir()):
            tar.add(f, arcname=f.name)
    return archive


def test_gpu_target_builds_are_ready_to_upload(tmp_path: Path, mme_home: Path, prefect_harness):
    """sagemaker-gpu tarballs: DALI `mixed` pipeline for Triton's DALI backend, the ONNX or the
    TensorFlow classifier, verification deferred to the endpoint (no GPU Triton here)."""
    from ensembles.render import parse_pbtxt
    from flows.build import build

    out = tmp_path / "gpu"
    archive = _fake_inception_tarball(tmp_path)
    manifests = build(ensembles=["image_classifier", "image_classifier_inception"],
                      target="sagemaker-gpu", output_dir=str(out),
                      overrides={"inception_archive.source": str(archive)})
    by_name = {m.ensemble: m for m in manifests}
    for m in manifests:
        assert m.validation.passed is None and m.validation.deferred
        assert m.sha256 == sha256_file(out / f"{m.ensemble}.tar.gz")
    assert by_name["image_classifier_inception"].sources["inception_archive"]["source"] == str(archive)

    repo = safe_extract(out / "image_classifier_inception.tar.gz", tmp_path / "inc")
    pre = parse_pbtxt((repo / "image_classifier_inception__preprocess" / "config.pbtxt").read_text())
    cls = parse_pbtxt((repo / "image_classifier_inception__classifier" / "config.pbtxt").read_text())
    assert pre.backend == "dali" and cls.platform == "tensorflow_graphdef"
    assert cls.output[0].name == "InceptionV3/Predictions/Softmax"
    assert cls.output[0].label_filename == "inception_labels.txt"
    assert (repo / "image_classifier_inception__classifier" / "1" / "model.graphdef").read_bytes() \
        == b"not really a graph"
    assert len((repo / "image_classifier_inception__classifier" / "inception_labels.txt")
               .read_text().splitlines()) == 1001
    # the GPU DALI pipeline decodes on the GPU ("mixed") and feeds the step input by name
    from tasks.producers.dali import external_source_names, parse_serialized

    dali = repo / "image_classifier_inception__preprocess" / "1" / "model.dali"
    assert external_source_names(dali) == ["INPUT"]
    ops = {op.name: [o.device for o in op.output] for op in parse_serialized(dali.read_bytes()).op}
    assert ops["decoders__Image"] == ["gpu"], ops  # device="mixed": decoded on the GPU
    assert ops["Resize"] == ["gpu"] and ops["CropMirrorNormalize"] == ["gpu"]

    sample = json.loads((out / "image_classifier.manifest.json").read_text())["sample"]
    assert sample["context"]["max_abs_diff_tolerance"] == 0.05  # the GPU decoder may differ


def test_unknown_override_is_refused(tmp_path: Path, mme_home: Path, prefect_harness):
    from flows.build import build

    with pytest.raises(SpecError, match="no_such_artifact.source"):
        build(ensembles=["image_classifier"], output_dir=str(tmp_path / "o"),
              overrides={"no_such_artifact.source": "x"})
    assert not (tmp_path / "o").exists()


def test_text_embedding_gpu_build_says_what_is_missing(tmp_path: Path, mme_home: Path, prefect_harness):
    from flows.build import build
    from tasks.producers.produce import NotAvailableHere

    with pytest.raises(NotAvailableHere, match="compile_tensorrt"):
        build(ensembles=["text_embedding"], target="sagemaker-gpu", output_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
