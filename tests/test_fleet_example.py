"""The example fleet (tasks/fleet/example.py), its template (image_classifier_tenant), the
``matches_reference`` metric, s3:// model sources, and ``mme fleet`` on the command line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import onnxruntime as ort
import pytest
from moto import mock_aws

from ensembles.catalog import load_ensemble
from ensembles.fleet_spec import load_fleet, load_template, resolve_variants
from ensembles.render import parse_pbtxt, render_repository
from tasks.producers.classifiers import CAT_CLASSES, check_image, imagenet_label_names, preprocess_reference
from tasks.producers.fetch import ChecksumMismatch, SourceNotFound, fetch_model_file
from tasks.fleet.example import (
    MAX_CLASSES,
    MIN_CLASSES,
    base_scores,
    example_tenants,
    make_example_fleet,
    subset_reference,
)
from tasks.build.verify import Sample, matches_reference

COUNT = 5


@pytest.fixture(scope="module")
def work_home(mme_home: Path) -> Path:
    """The session's MME_HOME: the base export is cached in its work dir."""
    return mme_home


@pytest.fixture(scope="module")
def local_fleet(work_home: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("prefix")
    return out, make_example_fleet(COUNT, out.as_uri())


def _batch() -> np.ndarray:
    """chelsea (a cat), chelsea mirrored and seeded noise, preprocessed: [3, 3, 227, 227]."""
    cat = check_image()
    noise = np.random.default_rng(1).integers(0, 256, size=(150, 180, 3), dtype=np.uint8)
    return np.concatenate([preprocess_reference(cat), preprocess_reference(cat[:, ::-1]),
                           preprocess_reference(noise)])


# ------------------------------------------------------------------------------ the example


def test_example_writes_distinct_consistent_tenants(local_fleet) -> None:
    out, made = local_fleet
    assert [t.name for t in made.tenants] == [f"tenant-{i:04d}" for i in range(1, COUNT + 1)]
    digests = set()
    names = imagenet_label_names()
    for t in made.tenants:
        folder = out / "tenants" / t.name
        classes = [int(c) for c in (folder / "classes.txt").read_text().split()]
        labels = (folder / "labels.txt").read_text().splitlines()
        assert classes == list(t.classes) == sorted(set(classes))
        assert MIN_CLASSES <= len(classes) <= MAX_CLASSES
        assert labels == [names[c] for c in classes]
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        assert sess.get_outputs()[0].shape[1] == len(classes) == len(labels)
        digests.add(hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest())
    assert len(digests) == COUNT  # every customer's classifier is its own


def test_each_variant_equals_the_subset_reference(local_fleet) -> None:
    out, made = local_fleet
    x = _batch()
    scores = base_scores(made.base_onnx, x)
    base = ort.InferenceSession(str(made.base_onnx), providers=["CPUExecutionProvider"])
    # the base export ends in Softmax over the scores base_scores reads
    full = base.run(None, {"preprocessed": x})[0]
    assert np.abs(full - subset_reference(scores, list(range(1000)))).max() < 1e-5
    for t in made.tenants:
        sess = ort.InferenceSession(str(out / "tenants" / t.name / "model.onnx"),
                                    providers=["CPUExecutionProvider"])
        got = sess.run(None, {"preprocessed": x})[0]
        want = subset_reference(scores, t.classes)
        assert got.shape == (3, len(t.classes))
        assert np.abs(got - want).max() < 1e-5, t.name
        assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)  # a softmax over the subset itself


def test_the_example_writes_a_sample_photo_beside_its_tenants(local_fleet) -> None:
    """``<out>/cat.jpg`` (the build's check image as a JPEG) lets a newcomer invoke a variant
    with nothing downloaded; it sits outside the tenants' pattern, so no variant comes of it."""
    from PIL import Image

    out, made = local_fleet
    assert made.sample_image == (out / "cat.jpg").as_uri()
    with Image.open(out / "cat.jpg") as img:
        assert img.format == "JPEG" and img.size == (451, 300)
    assert len(made.tenants) == COUNT


def test_a_second_run_rewrites_nothing_and_reuses_the_base_export(local_fleet) -> None:
    out, made = local_fleet
    stamp = made.base_onnx.stat().st_mtime_ns
    before = {p: p.stat().st_mtime_ns for p in (out / "tenants").rglob("*") if p.is_file()}
    again = make_example_fleet(COUNT, out.as_uri())
    assert (again.written, again.unchanged) == (0, 3 * COUNT)
    assert again.base_onnx == made.base_onnx and made.base_onnx.stat().st_mtime_ns == stamp
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_the_written_fleet_file_resolves_and_checks(local_fleet) -> None:
    out, made = local_fleet
    assert made.fleet_file == (out / "fleet.yaml").resolve()
    fleet = load_fleet(made.fleet_file)
    spec, _ = load_template(fleet)
    got = resolve_variants(fleet)
    assert got.problems == []
    assert [v.name for v in got.variants] == [t.name for t in made.tenants]
    assert all(set(v.fingerprints) == {"classifier_onnx.source", "labels.source"} for v in got.variants)
    assert spec.name == "image_classifier_tenant"


def test_class_subsets_are_distinct_and_about_a_third_hold_cats() -> None:
    tenants = example_tenants(300, seed=7)
    assert len({t.classes for t in tenants}) == 300
    share = sum(t.has_cat for t in tenants) / len(tenants)
    assert 0.25 < share < 0.42, share
    assert all(MIN_CLASSES <= len(t.classes) <= MAX_CLASSES for t in tenants)
    assert example_tenants(3, seed=7) == tenants[:3]  # a tenant's subset does not depend on N
    assert example_tenants(3, seed=8) != tenants[:3]
    assert any(set(t.classes) & CAT_CLASSES for t in tenants)


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="models")
        yield client


def test_example_into_s3_resolves_with_etags(s3, work_home: Path, tmp_path: Path) -> None:
    made = make_example_fleet(COUNT, "s3://models/fleets/a", s3_client=s3,
                              fleet_file=tmp_path / "fleet.yaml")
    assert made.out_uri == "s3://models/fleets/a" and made.written == 3 * COUNT
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="models")["Contents"]]
    tenant_keys = [k for k in keys if k != "fleets/a/cat.jpg"]  # the sample photo, beside them
    assert len(keys) == 3 * COUNT + 1 and all(k.startswith("fleets/a/tenants/tenant-") for k in tenant_keys)
    bodies = {s3.get_object(Bucket="models", Key=k)["Body"].read() for k in keys if k.endswith(".onnx")}
    assert len(bodies) == COUNT
    fleet = load_fleet(made.fleet_file)  # type: ignore[arg-type]
    got = resolve_variants(fleet, s3_client=s3)
    assert [v.name for v in got.variants] == [t.name for t in made.tenants] and got.problems == []
    assert all(v.fingerprints["classifier_onnx.source"].startswith("size:") and ":etag:" in
               v.fingerprints["classifier_onnx.source"] for v in got.variants)


# ------------------------------------------------------------------------------ s3:// sources


def test_fetch_model_file_from_s3(s3, tmp_path: Path) -> None:
    data = b"an onnx model, pretend"
    s3.put_object(Bucket="models", Key="t/1/model.onnx", Body=data)
    sha = hashlib.sha256(data).hexdigest()
    path, meta = fetch_model_file(tmp_path / "out", source="s3://models/t/1/model.onnx",
                                  filename="model.onnx", sha256=sha)
    assert path.read_bytes() == data and meta["sha256"] == sha and meta["sha256_verified"]
    with pytest.raises(SourceNotFound, match=r"s3://models/t/2/model.onnx: no such object"):
        fetch_model_file(tmp_path / "out2", source="s3://models/t/2/model.onnx", filename="model.onnx")
    with pytest.raises(ChecksumMismatch):
        fetch_model_file(tmp_path / "out3", source="s3://models/t/1/model.onnx", filename="model.onnx",
                         sha256="0" * 64)
    for failed in ("out2", "out3"):  # nothing half-written where the build looks
        assert not (tmp_path / failed / "model.onnx").exists()
        assert list((tmp_path / failed).iterdir()) == []


def test_a_model_retrained_into_the_same_s3_key_is_a_new_build_input(s3) -> None:
    """The artifact cache key of an s3:// source without a sha256 pin follows the object's
    size and ETag: otherwise a rebuild would reuse the old model fetched from the same URI."""
    from tasks.producers.cache import artifact_key
    from tasks.build.ensemble import apply_overrides

    spec, _ = load_ensemble("image_classifier_tenant")
    spec = apply_overrides(spec, {"classifier_onnx.source": "s3://models/t/model.onnx"})
    s3.put_object(Bucket="models", Key="t/model.onnx", Body=b"model v1")
    first = artifact_key(spec, "classifier_onnx", {}, "local-cpu")
    assert artifact_key(spec, "classifier_onnx", {}, "local-cpu") == first
    s3.put_object(Bucket="models", Key="t/model.onnx", Body=b"model v2, retrained")
    assert artifact_key(spec, "classifier_onnx", {}, "local-cpu") != first


# ------------------------------------------------------------------------------ the template


def test_the_template_validates_and_renders_with_a_variable_class_count(tmp_path: Path) -> None:
    spec, folder = load_ensemble("image_classifier_tenant")
    assert spec.outputs[0].dims == [-1] and spec.validation is not None
    assert spec.validation.metric == "matches_reference"
    # local-cpu: one Python model (pre-processing and classifier in one stub); the GPU: the
    # native DALI and onnxruntime models
    for target, models in (("local-cpu", ["classify"]), ("sagemaker-gpu", ["classifier", "preprocess"])):
        out = render_repository(spec, target, tmp_path / target, configs_only=True)
        assert sorted(p.name for p in out.iterdir()) == sorted(
            ["image_classifier_tenant", *(f"image_classifier_tenant__{m}" for m in models)])
        cfg = parse_pbtxt((out / f"image_classifier_tenant__{models[0]}" / "config.pbtxt").read_text())
        assert list(cfg.output[0].dims) == [-1]
    # the pre-processing model code is the image classifier's own file, referenced
    src = spec.step("classify").backends["local-cpu"].files["1/preprocess_model.py"]
    assert isinstance(src, str) and (folder / src).resolve() == \
        (folder.parent / "image_classifier" / "preprocess" / "model.py").resolve()
    assert {spec.artifacts[a].producer for a in ("classifier_onnx", "labels")} == {"fetch_model_file"}


@pytest.mark.triton
@pytest.mark.prefect
def test_the_template_builds_alone_and_verifies_in_triton(local_fleet, prefect_harness,
                                                          tmp_path: Path) -> None:
    """`mme build image_classifier_tenant --set ...` with one tenant's files: the real build
    flow fetches them, renders the [-1] output, packs, and verifies the tarball in Triton."""
    from flows.build import build
    from tasks.build.package import read_manifest

    out, made = local_fleet
    tenant = next(t for t in made.tenants if not t.has_cat)  # no cat class: top1_is_cat could not pass
    folder = out / "tenants" / tenant.name
    (m,) = build(ensembles=["image_classifier_tenant"], target="local-cpu", output_dir=str(tmp_path),
                 overrides={"classifier_onnx.source": (folder / "model.onnx").as_uri(),
                            "labels.source": (folder / "labels.txt").as_uri()})
    assert m.validation.passed is True and m.validation.metric == "matches_reference"
    full = read_manifest(tmp_path, "image_classifier_tenant")
    assert full.sample is not None
    (expected,) = full.sample.model_dump(mode="json")["expected"].values()
    assert expected["shape"] == [1, len(tenant.classes)]


def test_matches_reference_scores_agreement_not_a_class() -> None:
    want = np.array([[0.7, 0.2, 0.1]], np.float32)
    sample = Sample(inputs={}, expected={"OUTPUT": want},
                    context={"labels": ["a", "b", "c"], "max_abs_diff_tolerance": 1e-4})
    found = matches_reference(sample, {"OUTPUT": want + 5e-5})
    assert found.value == 1.0 and found.top5 and found.top5[0].label == "a" and found.failure is None
    found = matches_reference(sample, {"OUTPUT": want[:, ::-1].copy()})
    assert found.value == 0.0 and "differ from the classifier run directly" in (found.failure or "")
    two_labels = Sample(inputs={}, expected={"OUTPUT": want}, context={"labels": ["a", "b"]})
    found = matches_reference(two_labels, {"OUTPUT": want})
    assert found.value == 0.0 and found.failure == "2 labels for 3 classes"


# ------------------------------------------------------------------------------ the CLI


def _mme(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MME_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_cli_example_then_show_lists_variants_and_problems(work_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "prefix"
    r = _mme(["fleet", "example", "--count", "3", "--out", out.as_uri(), "--seed", "4"], work_home)
    assert r.returncode == 0, r.stderr
    assert "3 tenants" in r.stdout and str(out / "fleet.yaml") in r.stdout  # results: stdout
    shown = _mme(["fleet", "show", str(out / "fleet.yaml"), "--json"], work_home)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert [v["name"] for v in doc["variants"]] == ["tenant-0001", "tenant-0002", "tenant-0003"]
    (out / "tenants" / "tenant-0002" / "labels.txt").unlink()
    table = _mme(["fleet", "show", str(out / "fleet.yaml")], work_home)
    assert table.returncode == 1
    assert "tenant-0001" in table.stdout and "tenant-0003" in table.stdout
    assert "problem:" in table.stderr and "tenant-0002" in table.stderr and "labels.txt" in table.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\ntemplate: image_classifier_tenant\n")
    refused = _mme(["fleet", "show", str(bad)], work_home)
    assert refused.returncode == 2 and "exactly one variant source" in refused.stderr


def test_cli_example_says_its_progress_on_stderr_and_nothing_with_quiet(work_home: Path,
                                                                        tmp_path: Path) -> None:
    """Issue 21: ``tenants written n/30`` lines (with a rate once time has passed) on stderr as
    the tenants are written, the result alone on stdout; ``-q`` silences the progress."""
    import re

    r = _mme(["fleet", "example", "--count", "30", "--out", (tmp_path / "a").as_uri()], work_home)
    assert r.returncode == 0, r.stderr
    said = re.findall(r"^tenants written (\d+)/30\b.*$", r.stderr, re.MULTILINE)
    assert said and said[-1] == "30", r.stderr
    assert "tenants written" not in r.stdout and "30 tenants" in r.stdout
    quiet = _mme(["-q", "fleet", "example", "--count", "30", "--out", (tmp_path / "b").as_uri()],
                 work_home)
    assert quiet.returncode == 0, quiet.stderr
    assert "/30" not in quiet.stderr and "30 tenants" in quiet.stdout
