"""The typed build manifest (infra/records/manifest.py) and the build's house plan.

A manifest is read into one typed record whatever its age: a version-1 file (no
``schema_version``, with or without ``sample``) is upgraded in memory; a file this tool cannot
read is refused naming the file and the field. What the build writes keeps the field names
every reader (deploy, tests, bench/) already reads.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from infra.records.manifest import (
    SCHEMA_VERSION,
    Manifest,
    ManifestError,
    SampleRecord,
    StepRecord,
    Validation,
)
from tasks.build.package import publish_build, read_manifest
from tasks.build.verify import Sample

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _v1_doc(with_sample: bool) -> dict:
    """A manifest as the build wrote it before schema versions (field for field)."""
    doc = {
        "ensemble": "tiny", "target": "local-cpu", "target_model": "tiny.tar.gz",
        "artifact": "file:///somewhere/tiny.tar.gz", "sha256": "ab" * 32, "bytes": 123,
        "built_at": "2026-01-01T00:00:00+00:00", "build_seconds": 1.5, "spec_sha256": "cd" * 32,
        "tool_version": "0.1.0", "sources": {"onnx": {"opset": 18, "source": "/m.onnx"}},
        "validation": {"passed": True, "metric": "min_cosine", "value": 0.99999,
                       "threshold": 0.999, "load_seconds": 0.2},
        "steps": {"artifact:onnx": {"seconds": 0.1, "cached": True, "key": "k"},
                  "render": {"seconds": 0.2}},
    }
    if with_sample:
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        doc["sample"] = Sample(inputs={"X": x}, expected={"Y": x * 2}, context={"n": 2}).to_json()
    return doc


@pytest.mark.parametrize("with_sample", [True, False])
def test_a_version_1_file_is_read_and_upgraded(tmp_path: Path, with_sample: bool) -> None:
    (tmp_path / "tiny.manifest.json").write_text(json.dumps(_v1_doc(with_sample)))
    m = read_manifest(tmp_path, "tiny")
    assert isinstance(m, Manifest) and m.schema_version == SCHEMA_VERSION == 2
    assert (m.ensemble, m.target_model, m.bytes) == ("tiny", "tiny.tar.gz", 123)
    assert m.validation.passed is True and m.validation.metric == "min_cosine"
    assert (m.validation.model_extra or {})["load_seconds"] == 0.2  # a metric's extra kept
    assert m.steps["artifact:onnx"].cached is True and m.steps["render"].cached is None
    assert m.sources["onnx"]["opset"] == 18
    if with_sample:
        sample = Sample.from_json(m.required_sample())
        np.testing.assert_array_equal(sample.expected["Y"], np.arange(6).reshape(2, 3) * 2)
        assert sample.context == {"n": 2}
    else:
        assert m.sample is None
        with pytest.raises(ManifestError, match="'tiny' has no validation sample"):
            m.required_sample()


def test_a_newer_version_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.manifest.json"
    path.write_text(json.dumps({**_v1_doc(True), "schema_version": 3}))
    with pytest.raises(ManifestError, match=r"tiny\.manifest\.json: build manifest schema_version 3 is "
                                            r"newer than this tool reads \(1\.\.2\)"):
        read_manifest(tmp_path, "tiny")


def test_a_file_missing_a_field_is_refused_naming_file_and_field(tmp_path: Path) -> None:
    doc = _v1_doc(False)
    del doc["sha256"]
    (tmp_path / "tiny.manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match=r"tiny\.manifest\.json: not a readable version-1 "
                                            r"build manifest \(sha256: Field required\)"):
        read_manifest(tmp_path, "tiny")
    (tmp_path / "tiny.manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match=r"tiny\.manifest\.json: not JSON"):
        read_manifest(tmp_path, "tiny")
    (tmp_path / "tiny.manifest.json").write_text("[]")
    with pytest.raises(ManifestError, match="not a build manifest"):
        read_manifest(tmp_path, "tiny")


def test_what_the_build_writes_keeps_the_field_names(tmp_path: Path) -> None:
    """schema_version 2 on disk; otherwise the keys the old dict had: steps without a cache
    flag have no ``cached``; a deferred validation keeps its ``passed: null``."""
    archive = tmp_path / "staging" / "tiny.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(b"x")
    x = np.ones((1, 2), dtype=np.float32)
    m = Manifest(ensemble="tiny", target="sagemaker-gpu", target_model="tiny.tar.gz",
                 artifact=(tmp_path / "out" / "tiny.tar.gz").as_uri(), sha256="ab" * 32, bytes=1,
                 validation=Validation(passed=None, metric="min_cosine", value=None,
                                       threshold=0.999, deferred="needs a GPU"),
                 steps={"render": StepRecord(seconds=0.5),
                        "verify": StepRecord(seconds=0.0, cached=False, deferred=True)},
                 sample=Sample(inputs={"X": x}, expected={}).to_record())
    path = publish_build(archive, m, tmp_path / "out")
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == 2
    assert doc["steps"] == {"render": {"seconds": 0.5},
                            "verify": {"seconds": 0.0, "cached": False, "deferred": True}}
    assert doc["validation"] == {"passed": None, "metric": "min_cosine", "value": None,
                                 "threshold": 0.999, "deferred": "needs a GPU"}
    assert doc["sample"]["inputs"]["X"] == {"dtype": "float32", "shape": [1, 2], "data": [1.0, 1.0]}
    assert (tmp_path / "out" / "tiny.tar.gz").read_bytes() == b"x"
    assert read_manifest(tmp_path / "out", "tiny") == m


def test_records_are_read_by_attribute_only() -> None:
    """The dict-style access that carried callers over (``m["sha256"]``, ``m.get``, ``in``) is
    gone: a reader still using keys fails loudly here, not with a silently wrong answer."""
    m = Manifest.model_validate(_v1_doc(False))
    assert m.sha256 == "ab" * 32 and m.validation.threshold == 0.999
    assert m.sample is None and "sample" not in m.model_fields_set
    assert (m.validation.model_extra or {})["load_seconds"] == 0.2  # a metric's extra
    for record in (m, m.validation, m.steps["render"]):
        assert not hasattr(record, "get"), type(record).__name__
        with pytest.raises(TypeError):
            record["sha256"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        m.no_such_field  # noqa: B018


def test_sample_record_round_trip() -> None:
    texts = np.array([[b"a cat"], [b"a dog"]], dtype=object)
    sample = Sample(inputs={"TEXT": texts}, expected={"E": np.zeros((2, 4), np.float32)},
                    context={"labels": ["x"]})
    record = sample.to_record()
    assert isinstance(record, SampleRecord) and record.inputs["TEXT"].dtype == "bytes"
    back = Sample.from_json(record)
    assert back.inputs["TEXT"].tolist() == [[b"a cat"], [b"a dog"]]
    assert back.expected["E"].shape == (2, 4) and back.context == {"labels": ["x"]}


# ----------------------------------------------------------------------------- house plan


def _module_tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("name", ["build.py", "release.py", "watch.py"])
def test_build_side_flows_only_compose(name: str) -> None:
    """The Prefect tasks live in tasks/; these flows define none and read as a story."""
    path = PROJECT_ROOT / "flows" / name
    tree = _module_tree(path)
    decorated = [f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                 for d in f.decorator_list
                 if (isinstance(d, ast.Call) and getattr(d.func, "id", "") == "task")
                 or getattr(d, "id", "") == "task"]
    assert decorated == [], f"{name} defines tasks {decorated}: they belong in tasks/"
    limit = 150 if name == "build.py" else 200
    assert len(path.read_text().splitlines()) < limit


def test_every_flows_module_is_under_200_lines() -> None:
    """Issue 9's size rule, for every module under flows/ (the CLI package too), so a new
    command or flow that grows a module past it fails here, naming the module."""
    modules = sorted((PROJECT_ROOT / "flows").rglob("*.py"))
    assert PROJECT_ROOT / "flows" / "cli" / "__init__.py" in modules  # the CLI is a package
    too_long = {str(p.relative_to(PROJECT_ROOT)): n for p in modules
                if (n := len(p.read_text().splitlines())) >= 200}
    assert too_long == {}


def test_build_tasks_live_beside_what_they_wrap() -> None:
    from tasks.build.ensemble import build_ensemble_task
    from tasks.build.package import package_task
    from tasks.producers.produce import produce_task
    from tasks.build.render import load_spec_task, render_task
    from tasks.build.verify import reference_task, verify_task

    where = {t.name: t.fn.__module__ for t in (load_spec_task, produce_task, render_task,
                                               package_task, reference_task, verify_task,
                                               build_ensemble_task)}
    assert where == {"load-spec": "tasks.build.render", "produce-artifact": "tasks.producers.produce",
                     "render-repository": "tasks.build.render", "package": "tasks.build.package",
                     "reference": "tasks.build.verify", "verify": "tasks.build.verify",
                     "build-ensemble": "tasks.build.ensemble"}
