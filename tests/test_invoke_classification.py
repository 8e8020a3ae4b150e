"""``mme invoke``'s top-k through Triton's classification extension (issue 21): the request
(the output's ``"parameters": {"classification": k}`` in both body kinds), the answer's
``"score:index:label"`` strings, and, with a real Triton behind the local endpoint, the
catalog image classifier's top-k named by the served label file (``labels_from: "triton"``)
equal to the top-k computed here from the raw scores; a served model without a label file
falls back to the client-side top-k and says so.

What the real Triton showed (2.51, the wheel's): an ensemble's output answers with labels when
the composing model that produces it has the ``label_filename`` (the catalog's classifier step
has it; the ensemble's own output needs none); an output without one answers ``"score:index"``.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.invoke import Answer, answer_document
from infra.aws.runtime_client import encode_request, invoke, runtime_client_for
from infra.endpoint.request_check import check_request
from tasks.runtime.invoke_answer import (
    CLASS_OUTPUT,
    RankedClass,
    TopClass,
    has_labels,
    named,
    parse_classification,
    top_k,
    triton_classes,
)

ENDPOINT = "classify-ep"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the pytriton tritonserver is Linux-only")


# ---------------------------------------------------------------------------------- request
def _header(body: bytes, content_type: str) -> dict[str, Any]:
    size = int(content_type.split("json-header-size=")[1]) if "json-header-size=" in content_type else len(body)
    return json.loads(body[:size])


@pytest.mark.parametrize("binary", [True, False])
def test_the_request_asks_the_output_for_its_top_k(binary: bool) -> None:
    x = np.zeros((2, 4), np.float32)
    body, ct = encode_request({"X": x}, binary=binary, classify={"Y": 3})
    assert _header(body, ct)["outputs"] == [{"name": "Y", "parameters": {"classification": 3,
                                                                         **({"binary_data": True} if binary else {})}}]
    check_request(ct, body, None)  # the local endpoint's own check lets it through
    plain, pct = encode_request({"X": x}, binary=binary)
    assert "outputs" not in _header(plain, pct)  # no classify: every output, as scores


# ---------------------------------------------------------------------------------- answer
def test_score_index_label_strings_parse_and_labels_may_hold_colons() -> None:
    assert parse_classification(b"0.900000:1:one", "Y") == RankedClass(index=1, score=0.9, label="one")
    assert parse_classification("0.250000:7:ratio 1:2:3", "Y").label == "ratio 1:2:3"
    assert parse_classification(b"-1.500000:3", "Y") == RankedClass(index=3, score=-1.5, label=None)
    assert parse_classification(b"0.1:2:", "Y").label == ""  # an empty line of the label file
    for bad in (b"0.9", b"x:1:a", b"0.9:one:a", b""):
        with pytest.raises(ValueError, match=r"output 'Y': classification answer .* is not 'score:index\[:label\]'"):
            parse_classification(bad, "Y")


def test_a_classification_answer_reads_as_rows_of_ranked_classes() -> None:
    answer = np.array([[b"0.600000:2:c", b"0.300000:0:a"], [b"0.500000:1:b:x", b"0.400000:3"]], dtype=object)
    rows = triton_classes(answer, "OUTPUT")
    assert [[(c.index, c.label) for c in row] for row in rows] == [[(2, "c"), (0, "a")], [(1, "b:x"), (3, None)]]
    assert has_labels(rows)
    assert named(rows)[1] == [TopClass(index=1, label="b:x", score=0.5), TopClass(index=3, label="3", score=0.4)]
    one = triton_classes(np.array([b"0.700000:4"], dtype=object), "OUTPUT")  # 1-D: one row
    assert len(one) == 1 and not has_labels(one)
    with pytest.raises(ValueError, match="shape"):
        triton_classes(np.empty((1, 1, 1), dtype=object), "OUTPUT")


def test_the_document_says_where_the_labels_came_from() -> None:
    scores = np.array([[0.2, 0.8]], dtype=np.float32)
    theirs = Answer(outputs={}, endpoint="ep", target_model="m.tar.gz",
                    classes={CLASS_OUTPUT: [[TopClass(index=1, label="yes", score=0.8)]]})
    doc = answer_document(theirs, ["cat.jpg"], 1)
    assert doc["labels_from"] == "triton" and doc["outputs"] == {}
    assert doc["results"] == [{"input": "cat.jpg", "output": CLASS_OUTPUT,
                               "top_k": [{"index": 1, "label": "yes", "score": 0.8}]}]
    built = answer_document(Answer(outputs={"OUTPUT": scores}, endpoint="ep", target_model="m",
                                   labels=["no", "yes"], tenant=2), ["cat.jpg"], 1)
    assert built["labels_from"] == "build" and built["results"][0]["top_k"][0]["label"] == "yes"
    imagenet = answer_document(Answer(outputs={"OUTPUT": np.eye(1, 1000, 281, dtype=np.float32)},
                                      endpoint="ep", target_model="m"), ["cat.jpg"], 1)
    assert imagenet["labels_from"] == "imagenet" and imagenet["results"][0]["top_k"][0]["index"] == 281
    unknown = answer_document(Answer(outputs={"OUTPUT": scores}, endpoint="ep", target_model="m"),
                              ["cat.jpg"], 1)
    assert unknown["labels_from"] is None and unknown["results"][0]["top_k"][0]["label"] == "1"
    text = answer_document(Answer(outputs={"finaloutput": scores}, endpoint="ep", target_model="m"), [], 1)
    assert text["labels_from"] is None and text["results"] == []  # not a classifier's answer


def test_the_text_says_where_the_labels_came_from(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli.invoke import print_answer

    scores = np.array([[0.2, 0.8]], dtype=np.float32)
    print_answer(answer_document(Answer(outputs={"OUTPUT": scores}, endpoint="ep", target_model="s.tar.gz",
                                        labels=["no", "yes"], fleet="f", variant="t", tenant=2),
                                 ["cat.jpg"], 1))
    out = capsys.readouterr().out
    assert "labels: this machine's build" in out and "fused shard" in out and "yes" in out


# ---------------------------------------------------------------------------------- real Triton
def _labelled_pipe(root: Path, labels: list[str]) -> Path:
    """The tiny ``pipe`` -> ``add`` ensemble (Y = X) with a label file on ``add``'s output
    only (as the catalog's classifier step has it), packed as a tarball."""
    from fixtures.tiny_models import write_pipe_repo
    from infra.store.tarball import pack_deterministic

    repo = write_pipe_repo(root / "repo", 0.0, mbs=4)
    cfg = repo / "add" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace(
        'output [ { name: "Y", data_type: TYPE_FP32, dims: [ -1 ] } ]',
        'output [ { name: "Y", data_type: TYPE_FP32, dims: [ -1 ] label_filename: "labels.txt" } ]'))
    assert "label_filename" in cfg.read_text()
    (repo / "add" / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    dest = root / "store" / "pipe-labels.tar.gz"
    dest.parent.mkdir(parents=True)
    pack_deterministic(repo, dest)
    return dest.parent


@pytest.fixture(scope="module")
def endpoint_url(tmp_path_factory: pytest.TempPathFactory, built_image_classifier: dict) -> Iterator[str]:
    """A local endpoint serving the catalog image classifier as built (``image_classifier.tar.gz``),
    the same build with its label file taken out (``no-labels.tar.gz``), and the tiny labelled
    ``pipe-labels.tar.gz``."""
    from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint

    if not sys.platform.startswith("linux"):
        pytest.skip("the pytriton tritonserver is Linux-only")
    root = tmp_path_factory.mktemp("classify")
    store = _labelled_pipe(root, LABELS)
    shutil.copyfile(built_image_classifier["archive"], store / "image_classifier.tar.gz")
    _without_labels(built_image_classifier["archive"], root / "unpacked", store / "no-labels.tar.gz")
    ep = LocalEndpoint(EndpointConfig(name=ENDPOINT, model_data_url=store.as_uri(),
                                      cache_dir=root / "cache", triton_log=root / "triton.log"))
    ep.start()
    try:
        yield ep.url
    finally:
        ep.stop()


LABELS = ["zero", "one:1", "two", "a label: with colons: 3"]


def _without_labels(archive: Path, work: Path, dest: Path) -> None:
    """The built image classifier with no ``label_filename`` (and no labels.txt) anywhere."""
    from infra.store.tarball import pack_deterministic, safe_extract

    repo = safe_extract(archive, work)
    for cfg in repo.glob("*/config.pbtxt"):
        cfg.write_text("\n".join(ln for ln in cfg.read_text().splitlines() if "label_filename" not in ln) + "\n")
    for f in repo.glob("*/labels.txt"):
        f.unlink()
    assert "label_filename" not in "".join(c.read_text() for c in repo.glob("*/config.pbtxt"))
    pack_deterministic(repo, dest)


@pytest.mark.triton
@pytest.mark.prefect  # the module's endpoint serves the image build (a flow)
@linux_only
@pytest.mark.parametrize("binary", [True, False])
def test_the_endpoint_passes_classification_through_an_ensemble(endpoint_url: str, binary: bool) -> None:
    """Labels on the composing model's output name the ensemble's top-k; labels with ':' kept."""
    client = runtime_client_for(endpoint_url)
    x = np.array([[0.1, 0.9, 0.3, 0.2], [0.5, 0.1, 0.2, 0.7]], dtype=np.float32)
    raw = invoke(client, ENDPOINT, "pipe-labels.tar.gz", {"X": x}, binary=binary)["Y"]
    answer = invoke(client, ENDPOINT, "pipe-labels.tar.gz", {"X": x}, binary=binary, classify={"Y": 3})["Y"]
    assert answer.dtype == object and answer.shape == (2, 3)
    assert named(triton_classes(answer, "Y")) == top_k(raw, LABELS, 3)
    assert triton_classes(answer, "Y")[1][0].label == "a label: with colons: 3"


@pytest.mark.triton
@pytest.mark.prefect  # the module's endpoint serves the image build (a flow)
@linux_only
def test_a_model_without_the_class_output_is_asked_again_plainly(endpoint_url: str) -> None:
    """The endpoint refuses ``OUTPUT`` for a model that lacks it, naming ``output 'OUTPUT'``:
    ``ask_triton`` then sends the plain request and hands back the scores, no classes."""
    from functools import partial

    from botocore.exceptions import ClientError

    from tasks.runtime.invoke_answer import ask_triton

    client = runtime_client_for(endpoint_url)
    x = np.array([[0.1, 0.9, 0.3, 0.2]], dtype=np.float32)
    with pytest.raises(ClientError, match=f"output '{CLASS_OUTPUT}'"):
        invoke(client, ENDPOINT, "pipe-labels.tar.gz", {"X": x}, classify={CLASS_OUTPUT: 2})
    out, classes = ask_triton(partial(invoke, client, ENDPOINT, "pipe-labels.tar.gz", {"X": x}), 2)
    assert classes == {} and list(out) == ["Y"]
    np.testing.assert_array_equal(out["Y"], x)  # Y = X + 0


def _mme_invoke(url: str, target: str, image: Path, *extra: str) -> dict[str, Any]:
    got = CliRunner().invoke(app, ["invoke", "--image", str(image), "--url", url, "--endpoint", ENDPOINT,
                                   "--target-model", target, "--top-k", "5", "--json", *extra])
    assert got.exit_code == 0, got.output
    return json.loads(got.stdout)


@pytest.mark.triton
@pytest.mark.prefect
@linux_only
@pytest.mark.parametrize("extra", [[], ["--json-body"]])
def test_invoke_names_the_catalog_classifiers_top_k_by_the_served_labels(
        endpoint_url: str, built_image_classifier: dict, tmp_path: Path, extra: list[str]) -> None:
    """Triton's top-5 of chelsea equals the one ranked here from the raw scores with the build's
    labels.txt: same classes, same order, same scores (Triton prints 6 decimals)."""
    import tarfile

    from tasks.build.verify import sample_image

    image = tmp_path / "chelsea.jpg"
    image.write_bytes(sample_image("skimage:chelsea"))
    with tarfile.open(built_image_classifier["archive"]) as tar:
        member = next(m for m in tar.getnames() if m.endswith("__classifier/labels.txt"))
        f = tar.extractfile(member)
        assert f is not None
        labels = f.read().decode().splitlines()
    raw = invoke(runtime_client_for(endpoint_url), ENDPOINT, "image_classifier.tar.gz",
                 {"INPUT": np.frombuffer(image.read_bytes(), np.uint8).reshape(1, -1)})["OUTPUT"]
    want = top_k(raw, labels, 5)[0]
    doc = _mme_invoke(endpoint_url, "image_classifier.tar.gz", image, *extra)
    assert doc["labels_from"] == "triton"
    (result,) = doc["results"]
    got = result["top_k"]
    assert [(t["index"], t["label"]) for t in got] == [(t.index, t.label) for t in want]
    assert [t["score"] for t in got] == pytest.approx([t.score for t in want], abs=2e-6)
    assert got[0]["label"] in ("Egyptian cat", "tiger cat", "tabby")


@pytest.mark.triton
@pytest.mark.prefect
@linux_only
def test_a_served_model_without_labels_falls_back_to_the_top_k_computed_here(
        endpoint_url: str, tmp_path: Path) -> None:
    """No label file on the server: the scores are asked again and ranked here, named by
    ImageNet's names (a 1000-class output), and the answer says so."""
    from tasks.build.verify import sample_image

    image = tmp_path / "chelsea.jpg"
    image.write_bytes(sample_image("skimage:chelsea"))
    theirs = _mme_invoke(endpoint_url, "image_classifier.tar.gz", image)
    ours = _mme_invoke(endpoint_url, "no-labels.tar.gz", image)
    assert ours["labels_from"] == "imagenet"
    assert [t["label"] for t in ours["results"][0]["top_k"]] == [t["label"] for t in theirs["results"][0]["top_k"]]
    human = CliRunner().invoke(app, ["invoke", "--image", str(image), "--url", endpoint_url, "--endpoint",
                                     ENDPOINT, "--target-model", "no-labels.tar.gz", "--top-k", "2"])
    assert human.exit_code == 0, human.output
    assert "labels: ImageNet's class names (the served output has no label file" in human.stdout


# the 4-tenant example fleet (tests/fixtures/local_fleet.py), built and deployed locally
import fixtures.local_fleet as _shared  # noqa: E402

local_fleet = _shared.local_fleet  # the fixture, registered in this module


@pytest.mark.triton
@pytest.mark.prefect
@linux_only
def test_a_fleet_variants_top_k_comes_from_its_own_served_label_file(local_fleet: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    """A variant's own ensemble carries its tenant's labels.txt: Triton names the top-k with
    them, equal to the top-k ranked here from the raw scores (no build folder needed)."""
    from tasks.build.verify import sample_image
    from tasks.fleet.router import Router

    name = local_fleet["names"][1]
    own = (local_fleet["root"] / "models" / "tenants" / name / "labels.txt").read_text().splitlines()
    image = tmp_path / "cat.jpg"
    image.write_bytes(sample_image("skimage:chelsea"))
    raw = Router(local_fleet["store_uri"], local_fleet["fleet"]).invoke(
        name, {"INPUT": np.frombuffer(image.read_bytes(), np.uint8).reshape(1, -1)})["OUTPUT"]
    k = min(3, raw.shape[1])
    got = CliRunner().invoke(app, ["invoke", "--image", str(image), "--fleet", local_fleet["fleet"],
                                   "--variant", name, "--store", local_fleet["store_uri"],
                                   "--top-k", str(k), "--json"])
    assert got.exit_code == 0, got.output
    doc = json.loads(got.stdout)
    assert doc["labels_from"] == "triton" and doc["tenant"] is None
    top = doc["results"][0]["top_k"]
    want = top_k(raw, own, k)[0]
    assert [(t["index"], t["label"]) for t in top] == [(t.index, t.label) for t in want]
    assert [t["score"] for t in top] == pytest.approx([t.score for t in want], abs=2e-6)


@pytest.mark.triton
@pytest.mark.prefect
@linux_only
def test_a_fused_tenant_is_ranked_here_with_its_shards_sidecar_labels(
        tmp_path: Path, mme_home: Path, prefect_harness: None) -> None:
    """A fused shard's output serves every tenant of the shard, so it carries no label file:
    the tenant's top-k is ranked here from the scores and named by the build's tenants
    sidecar (``labels_from: "build"``), and the text says why."""
    import yaml

    from flows.fleet_build import fleet_build
    from flows.fleet_deploy import fleet_deploy
    from infra.endpoint.process import stop
    from tasks.build.verify import sample_image
    from tasks.fleet.example import make_example_fleet

    models, fleet_file, build = tmp_path / "models", tmp_path / "fleet.yaml", tmp_path / "build"
    make_example_fleet(3, models.as_uri(), seed=5, fleet_file=fleet_file)
    doc = yaml.safe_load(fleet_file.read_text())
    fleet_file.write_text(yaml.safe_dump({**doc, "layout": "fused", "shard_size": 3}))
    fleet_build(str(fleet_file), output_dir=str(build), triton_sample=1)
    store_uri = (tmp_path / "store").as_uri()
    image = tmp_path / "cat.jpg"
    image.write_bytes(sample_image("skimage:chelsea"))
    name = "tenant-0002"
    own = (models / "tenants" / name / "labels.txt").read_text().splitlines()
    args = ["invoke", "--image", str(image), "--fleet", str(build), "--variant", name,
            "--store", store_uri, "--top-k", "2"]
    try:
        assert not fleet_deploy(str(fleet_file), ["fused-invoke-test"], store_uri=store_uri,
                                build_dir=str(build))["failed"]
        got = CliRunner().invoke(app, [*args, "--json"])
        human = CliRunner().invoke(app, args)
    finally:
        stop("fused-invoke-test")
    assert got.exit_code == 0, got.output
    doc = json.loads(got.stdout)
    assert doc["tenant"] is not None and doc["labels_from"] == "build"
    top = doc["results"][0]["top_k"]
    assert len(top) == 2 and all(t["label"] == own[t["index"]] for t in top)
    assert human.exit_code == 0 and "a fused shard's output serves many tenants" in human.stdout
