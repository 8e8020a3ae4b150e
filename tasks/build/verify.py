"""Verify a built artifact numerically before it ships.

The tarball itself (not the folder it was made from) is extracted and loaded in a real
Triton server; the ensemble's outputs on the spec's sample inputs are compared with the
framework reference (e.g. sentence-transformers). The same sample and expected outputs go
into the build manifest, so a deploy can check the endpoint's answers without the framework.

Both steps are Prefect tasks here: ``reference`` (cached on the inputs that shape the sample)
and ``verify`` (a pass is cached on the tarball's sha256: same bytes, same answer).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.context import TaskRunContext
from pydantic import BaseModel, ConfigDict, Field

from ensembles.spec import ArtifactRef, EnsembleSpec, SpecError, Target
from infra.errors import UserError
from infra.jsontypes import JsonObject
from infra.records.manifest import SampleRecord, Validation
from infra.processes.ownership import owner
from tasks.build.footprints import CanaryTimes
from tasks.producers import cache
from tasks.runtime.text import short
from tasks.runtime.retry import retry_transient
from tasks.runtime.run_context import run_id, run_logger


class VerificationFailed(UserError, RuntimeError):
    """The ensemble's answers do not match the reference: never retried, never shipped."""


class TopClass(BaseModel):
    """One of the five most probable classes of a classifier's first answer."""

    model_config = ConfigDict(frozen=True)

    label: str
    prob: float
    index: int


class MetricResult(BaseModel):
    """What a metric found: its value and the details a failure message or report names
    (fields a metric does not measure stay None)."""

    model_config = ConfigDict(frozen=True)

    value: float
    per_item: list[float] | None = None
    top5: list[TopClass] | None = None
    max_abs_diff: float | None = None
    max_abs_diff_tolerance: float | None = None
    classes: int | None = None
    failure: str | None = None


class Verification(Validation):
    """A scored answer: the manifest's :class:`Validation` with every number the verify steps
    measure as a named field, so readers get attributes, not string keys. Times are set by the
    step that loaded the tarball (None where it was not loaded, e.g. an ONNX Runtime check)."""

    passed: bool
    metric: str
    value: float
    threshold: float
    per_item: list[float] | None = None
    top5: list[TopClass] | None = None
    max_abs_diff: float | None = None
    max_abs_diff_tolerance: float | None = None
    classes: int | None = None
    failure: str | None = None
    load_seconds: float | None = None
    unload_seconds: float | None = None
    service_seconds: float | None = None
    measured_on: str | None = None
    #: the canary's raw footprint readings (tasks/build/footprints.py canary_footprint's input:
    #: seconds, byte counts and a memory reading); never part of the manifest record
    footprint_times: CanaryTimes | None = Field(default=None, exclude=True)

    def detail(self) -> str:
        """Why it failed, or what it saw: the failure, else the top five classes."""
        if self.failure:
            return self.failure
        return str([t.model_dump() for t in self.top5] if self.top5 is not None else None)

    def to_validation(self, **extra: str) -> Validation:
        """The manifest's record: the fields that were measured (per-item numbers left out, as
        the manifest always left them out), plus ``extra`` (who checked it)."""
        doc = self.model_dump(mode="json", exclude_none=True, exclude={"per_item"})
        return Validation.model_validate(doc | extra)


@dataclass
class Sample:
    """Inputs, the reference's expected outputs, and what scoring needs (labels, tolerances)."""

    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    context: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> JsonObject:
        """The sample as JSON (numpy arrays as dtype, shape and flat data)."""
        return {
            "inputs": {k: _arr_to_json(v) for k, v in self.inputs.items()},
            "expected": {k: _arr_to_json(v) for k, v in self.expected.items()},
            "context": self.context,
        }

    def to_record(self) -> SampleRecord:
        """The sample as the manifest stores it."""
        return SampleRecord.model_validate(self.to_json())

    @classmethod
    def from_json(cls, doc: dict[str, Any] | SampleRecord) -> Sample:
        """From its JSON form or a manifest's :class:`SampleRecord` (``manifest.sample``)."""
        if isinstance(doc, SampleRecord):
            doc = doc.model_dump(mode="json")
        return cls(inputs={k: _arr_from_json(v) for k, v in doc["inputs"].items()},
                   expected={k: _arr_from_json(v) for k, v in doc["expected"].items()},
                   context=doc.get("context", {}))


def _arr_to_json(a: np.ndarray) -> JsonObject:
    if a.dtype == object:
        return {"dtype": "bytes", "shape": list(a.shape),
                "data": [x.decode() if isinstance(x, bytes) else str(x) for x in a.reshape(-1)]}
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.reshape(-1).tolist()}


def _arr_from_json(d: dict[str, Any]) -> np.ndarray:
    if d["dtype"] == "bytes":
        return np.array([s.encode() for s in d["data"]], dtype=object).reshape(d["shape"])
    return np.array(d["data"], dtype=d["dtype"]).reshape(d["shape"])


# ---------------------------------------------------------------------------------- validators
def _sentence_reference(spec: EnsembleSpec, params: dict[str, Any]) -> Sample:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    sentences = [str(s) for s in params["sentences"]]
    model = SentenceTransformer(str(params["model"]), device="cpu")
    emb = model.encode(sentences, convert_to_numpy=True, normalize_embeddings=True)
    in_name, out_name = spec.inputs[0].name, spec.outputs[0].name
    texts = np.array([s.encode() for s in sentences], dtype=object).reshape(-1, 1)
    return Sample(inputs={in_name: texts}, expected={out_name: emb.astype(np.float32)})


def _output(sample: Sample, got: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    (name, want), = sample.expected.items()
    if name not in got:
        raise VerificationFailed(f"output {name!r} missing from the answer (got {sorted(got)})")
    have = np.asarray(got[name], dtype=np.float32)
    if have.size != want.size:
        raise VerificationFailed(f"output {name!r} has shape {list(have.shape)}, "
                                 f"expected {list(want.shape)}")
    return want.astype(np.float32), have.reshape(want.shape)


def min_cosine(sample: Sample, got: dict[str, np.ndarray]) -> MetricResult:
    """Smallest cosine similarity between expected and actual rows (1.0 = identical)."""
    want, have = _output(sample, got)
    num = (want * have).sum(axis=1)
    den = np.linalg.norm(want, axis=1) * np.linalg.norm(have, axis=1)
    cos = (num / np.clip(den, 1e-12, None)).tolist()
    return MetricResult(value=float(min(cos)), per_item=[float(c) for c in cos])


def top1_is_cat(sample: Sample, got: dict[str, np.ndarray]) -> MetricResult:
    """Share of images whose top-1 class is a cat class; probabilities must also match the
    classifier run directly (max abs difference within the sample's tolerance)."""
    ctx = sample.context
    if sample.expected:
        want, have = _output(sample, got)
    else:  # no framework reference could be run here (e.g. a TensorFlow graph): labels only
        name = ctx.get("output") or next(iter(got))
        if name not in got:
            raise VerificationFailed(f"output {name!r} missing from the answer (got {sorted(got)})")
        have = np.asarray(got[name], dtype=np.float32).reshape(1, -1)
        want = have
    labels: list[str] = ctx.get("labels", [])
    cats = set(ctx.get("cat_classes", []))
    top1 = have.argmax(axis=1)
    value = float(np.mean([int(i) in cats for i in top1]))
    max_diff = float(np.abs(have - want).max())
    tol = float(ctx.get("max_abs_diff_tolerance") or 1e-4)
    failure = None
    if max_diff > tol:
        failure = (f"probabilities differ from the classifier run directly by "
                   f"{max_diff:.3g} (tolerance {tol:.3g})")
        value = 0.0
    return MetricResult(value=value, top5=_top5(have, labels), max_abs_diff=max_diff,
                        max_abs_diff_tolerance=tol, failure=failure)


def _top5(have: np.ndarray, labels: list[str]) -> list[TopClass]:
    """The first image's five most probable classes, named by ``labels``."""
    order = np.argsort(-have[0])[:5]
    return [TopClass(label=labels[i] if i < len(labels) else str(i), prob=round(float(have[0, i]), 6),
                     index=int(i)) for i in order]


def matches_reference(sample: Sample, got: dict[str, np.ndarray]) -> MetricResult:
    """1.0 when the answer equals the classifier run directly on the same pre-processed input
    (max abs difference within the sample's tolerance) and there is one label per class, else
    0.0. For classifiers whose classes need not include the sample image's (a fleet customer's
    own subset of classes): no particular class is expected to win, every class must agree."""
    if not sample.expected:
        raise VerificationFailed("metric matches_reference needs a framework reference "
                                 "(validation kind image_classification or text_classification)")
    want, have = _output(sample, got)
    labels: list[str] = sample.context.get("labels", [])
    max_diff = float(np.abs(have - want).max())
    tol = float(sample.context.get("max_abs_diff_tolerance") or 1e-4)
    failure = None
    if len(labels) != have.shape[-1]:
        failure = f"{len(labels)} labels for {have.shape[-1]} classes"
    elif max_diff > tol:
        failure = (f"probabilities differ from the classifier run directly by "
                   f"{max_diff:.3g} (tolerance {tol:.3g})")
    return MetricResult(value=0.0 if failure else 1.0, top5=_top5(have, labels),
                        max_abs_diff=max_diff, max_abs_diff_tolerance=tol,
                        classes=int(have.shape[-1]), failure=failure)


def sample_image(name: str) -> bytes:
    """Encoded bytes of a named sample image: ``skimage:chelsea`` (a cat photo bundled with
    scikit-image, CC0) as a quality-95 JPEG, or a path to an image file."""
    if name.startswith("skimage:"):
        import io

        import skimage.data
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name.removeprefix("skimage:"))()).save(
            buf, format="JPEG", quality=95)
        return buf.getvalue()
    return Path(name).read_bytes()


def run_dali_cpu(serialized: Path, images: list[bytes], input_name: str) -> np.ndarray:
    """Run a serialized CPU DALI pipeline with DALI's Python API (as the local-cpu model does)."""
    from nvidia.dali import Pipeline

    pipe = Pipeline.deserialize(serialized_pipeline=Path(serialized).read_bytes(),
                                batch_size=len(images), num_threads=2, device_id=None,
                                prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
    pipe.build()
    pipe.feed_input(input_name, [np.frombuffer(b, dtype=np.uint8) for b in images])
    (out,) = pipe.run()
    return np.asarray(out.as_array(), dtype=np.float32)


def _image_reference(spec: EnsembleSpec, params: dict[str, Any]) -> Sample:
    """Checks the DALI pre-processing against a PIL/numpy reference, then records what the
    classifier gives when run directly (ONNX Runtime) on DALI's output as the expectation."""
    import onnxruntime as ort

    from tasks.producers.classifiers import CAT_CLASSES, load_labels
    from tasks.producers.image_reference import (MAX_ABS_TOLERANCE, MEAN_ABS_TOLERANCE, diff_stats,
                                       reference_preprocess)

    in_name, out_name = spec.inputs[0].name, spec.outputs[0].name
    image = sample_image(str(params.get("image", "skimage:chelsea")))
    dali_out = run_dali_cpu(Path(params["pipeline"]), [image], in_name)
    stats = diff_stats(dali_out[0], reference_preprocess(image))
    if stats["mean_abs"] > MEAN_ABS_TOLERANCE or stats["max_abs"] > MAX_ABS_TOLERANCE:
        raise VerificationFailed(
            f"ensemble {spec.name!r}: DALI pre-processing differs from the PIL/numpy reference "
            f"by mean {stats['mean_abs']:.3f}, max {stats['max_abs']:.3f} (tolerance mean "
            f"{MEAN_ABS_TOLERANCE}, max {MAX_ABS_TOLERANCE} on the 0-255 scale)")
    sess = ort.InferenceSession(str(params["model"]), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {sess.get_inputs()[0].name: dali_out})[0].astype(np.float32)
    # what the pre-processing difference does to the answer (informative: DALI is what ships)
    ref_probs = sess.run(None, {sess.get_inputs()[0].name: reference_preprocess(image)[None]})[0]
    data = np.frombuffer(image, dtype=np.uint8).reshape(1, -1)
    return Sample(
        inputs={in_name: data}, expected={out_name: probs},
        context={"labels": load_labels(Path(params["labels"])), "cat_classes": sorted(CAT_CLASSES),
                 "max_abs_diff_tolerance": float(params.get("max_abs_diff_tolerance", 1e-4)),
                 "preprocess_vs_reference": {k: round(float(v), 4) for k, v in stats.items()},
                 "probs_dali_vs_reference_preprocess_max_abs": round(
                     float(np.abs(probs - ref_probs).max()), 6),
                 "image": str(params.get("image", "skimage:chelsea"))})


#: The tensors a text template's tokenizer and encoder steps hand the step after them (the
#: names in the text templates: ensembles/catalog/text_embedding, text_intent_tenant).
TEXT_FEATURES = ("token_embeddings", "attention_mask")


def encoder_features(tokenizer: Path, encoder: Path, sentences: list[str],
                     max_length: int = 128) -> dict[str, np.ndarray]:
    """What a text template's tokenizer and encoder steps give the next step for ``sentences``
    on local-cpu, computed the way those steps compute it (the bundled tokenizer files, padded
    to the longest, truncated at ``max_length``; the encoder ONNX in ONNX Runtime):
    ``token_embeddings`` FP32 [batch, tokens, hidden] and ``attention_mask`` INT64 [batch,
    tokens]. Why here: a customer's head is checked on exactly what the ensemble feeds it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    enc = tok(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)
    sess = ort.InferenceSession(str(encoder), providers=["CPUExecutionProvider"])
    hidden = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return dict(zip(TEXT_FEATURES, (np.asarray(hidden, dtype=np.float32), mask), strict=True))


def run_onnx_on(model: Path | bytes, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """A model's first output on ``tensors`` (fed by the model's input names; a one-input
    model takes the only tensor whatever its name), FP32, with ONNX Runtime."""
    import onnxruntime as ort

    model_arg = model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(model_arg, providers=["CPUExecutionProvider"])
    feed = onnx_feed([i.name for i in sess.get_inputs()], tensors)
    return np.asarray(sess.run(None, feed)[0], dtype=np.float32)


def onnx_feed(names: list[str], tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``tensors`` as a model with inputs ``names`` takes them: by name, or the only tensor
    to the only input (an image classifier's input may be called anything)."""
    if len(names) == 1 and len(tensors) == 1:
        return {names[0]: next(iter(tensors.values()))}
    missing = [n for n in names if n not in tensors]
    if missing:
        raise VerificationFailed(f"the model takes inputs {names}; the sample gives "
                                 f"{sorted(tensors)} (missing {missing})")
    return {n: tensors[n] for n in names}


def _text_classification_reference(spec: EnsembleSpec, params: dict[str, Any]) -> Sample:
    """A text classifier's (a customer's intent head's) answer on one sentence: the head ONNX
    run directly on what the template's tokenizer and encoder give for it. The ensemble must
    give the same probabilities (``matches_reference``): no particular intent is expected."""
    sentence = str(params["sentence"])
    features = encoder_features(Path(params["tokenizer"]), Path(params["encoder"]), [sentence],
                                int(params.get("max_length", 128)))
    probs = run_onnx_on(Path(params["model"]), features)
    labels = [ln for ln in Path(params["labels"]).read_text().splitlines() if ln.strip()]
    texts = np.array([[sentence.encode()]], dtype=object)
    return Sample(inputs={spec.inputs[0].name: texts}, expected={spec.outputs[0].name: probs},
                  context={"labels": labels, "sentence": sentence,
                           "max_abs_diff_tolerance": float(params.get("max_abs_diff_tolerance") or 1e-4)})


def _image_labels_only(spec: EnsembleSpec, params: dict[str, Any]) -> Sample:
    """For a classifier no framework here can run (Inception's TensorFlow graph): the sample
    image and its labels; the endpoint's answer is checked for a cat top-1 only."""
    from tasks.producers.classifiers import CAT_CLASSES

    image = sample_image(str(params.get("image", "skimage:chelsea")))
    offset = int(params.get("label_offset", 0))  # Inception's 1001 classes start with background
    labels = Path(params["labels"]).read_text().splitlines()
    return Sample(inputs={spec.inputs[0].name: np.frombuffer(image, dtype=np.uint8).reshape(1, -1)},
                  expected={}, context={"labels": labels, "output": spec.outputs[0].name,
                                        "cat_classes": sorted(i + offset for i in CAT_CLASSES),
                                        "image": str(params.get("image", "skimage:chelsea"))})


REFERENCES: dict[str, Callable[[EnsembleSpec, dict[str, Any]], Sample]] = {
    "sentence_embedding": _sentence_reference,
    "image_classification": _image_reference,
    "image_labels_only": _image_labels_only,
    "text_classification": _text_classification_reference,
}
METRICS: dict[str, Callable[[Sample, dict[str, np.ndarray]], MetricResult]] = {
    "min_cosine": min_cosine,
    "top1_is_cat": top1_is_cat,
    "matches_reference": matches_reference,
}


def reference_sample(spec: EnsembleSpec, artifacts: dict[str, Path], target: Target = "local-cpu") -> Sample:
    v = spec.validation
    if v is None:
        raise SpecError(f"ensemble {spec.name!r} has no validation section: nothing to verify against")
    if v.kind not in REFERENCES:
        raise SpecError(f"ensemble {spec.name!r}: unknown validation kind {v.kind!r}")
    params = {k: (artifacts[val.name] if isinstance(val, ArtifactRef) else val)
              for k, val in v.params.items()}
    # a parameter may differ per target: {local-cpu: 1e-4, sagemaker-gpu: 0.05}
    params = {k: (val.get(target, val.get("default")) if isinstance(val, dict) else val)
              for k, val in params.items()}
    params["target"] = target
    return REFERENCES[v.kind](spec, params)


def score(metric: str, threshold: float, sample: Sample, got: dict[str, np.ndarray]) -> Verification:
    """``got`` scored with ``metric``: passed when its value reaches ``threshold``."""
    found = METRICS[metric](sample, got)
    return Verification(passed=bool(found.value >= threshold), metric=metric,
                        threshold=threshold, **found.model_dump(exclude_none=True))


def verify_archive(spec: EnsembleSpec, archive: Path, sample: Sample,
                   log: Callable[[str], None] = print) -> Verification:
    """Extract ``archive``, load it in a real Triton, run the sample, score it.

    Raises VerificationFailed (saying by how much) when the metric misses the threshold.
    """
    import httpx

    from infra.aws.runtime_client import infer_direct
    from infra.store.tarball import safe_extract
    from infra.triton.measure import LoadRun
    from infra.triton.server import TritonServer

    v = spec.validation
    assert v is not None
    with owner().scratch("mme-verify-") as tmp:
        repo = safe_extract(archive, Path(tmp) / "repo")
        with TritonServer(repo, log_path=Path(tmp) / "triton.log") as server, \
                LoadRun(server, spec.name, unload=False) as run:
            load_s = run.load_s
            with httpx.Client(base_url=server.url, timeout=120) as client:
                try:
                    got = infer_direct(client, spec.name, sample.inputs)
                except RuntimeError as e:
                    raise VerificationFailed(f"ensemble {spec.name!r}: {e}") from None
    result = score(v.metric, v.threshold, sample, got).model_copy(
        update={"load_seconds": round(load_s, 3)})
    log(f"verify {spec.name}: {v.metric} = {result.value:.6f} (threshold {v.threshold})")
    if not result.passed:
        detail = result.failure or (
            f"per item: {[round(x, 6) for x in result.per_item]}" if result.per_item is not None
            else f"top5: {result.detail()}")
        raise VerificationFailed(
            f"ensemble {spec.name!r}: {v.metric} = {result.value:.6f} is below the threshold "
            f"{v.threshold} by {v.threshold - result.value:.6f} ({detail})")
    return result


# ------------------------------------------------------------------------------ Prefect tasks


def _reference_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    key = cache.reference_key(parameters["spec"], parameters["artifacts"], parameters["target"])
    hit = cache.lookup_reference(key)
    return cache.prefect_cache_key("reference", key, hit.nonce if hit else None, context.task_run.id)


@task(name="reference", cache_key_fn=_reference_cache_key, persist_result=True, timeout_seconds=900)
def reference_task(spec: EnsembleSpec, artifacts: dict[str, Path], target: Target) -> tuple[Sample, bool]:
    """The framework's answers on the spec's sample (cached on the inputs that shape them)."""
    key = cache.reference_key(spec, artifacts, target)
    hit = cache.lookup_reference(key)
    if hit is not None:
        return Sample.from_json(hit.value), True
    sample = reference_sample(spec, artifacts, target)
    try:
        cache.store_reference(key, sample.to_json(), nonce=run_id())
    except (TypeError, ValueError, OSError) as e:  # not JSON-able: computed again next time
        run_logger().warning("%s: reference sample not cached: %s", spec.name, e)
    return sample, False


# Targets whose tarballs this host's Triton can load: the local tritonserver is a CPU build
# with the Python backend only (no TensorRT, DALI, ONNX Runtime or TensorFlow backend).
LOCALLY_VERIFIABLE = ("local-cpu",)


def deferred_validation(spec: EnsembleSpec, target: Target) -> Validation:
    """The manifest's validation for a target this host cannot load: checked at deploy time."""
    v = spec.validation
    return Validation(passed=None, metric=v.metric if v else None, value=None,
                      threshold=v.threshold if v else None,
                      deferred=(f"target {target!r} cannot be loaded by this host's CPU Triton "
                                f"(its backends need a GPU): the tarball is checked by the "
                                f"validation invoke on the endpoint at deploy time, against the "
                                f"sample and expected outputs recorded in this manifest"))


def _verify_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    key = cache.verify_key(parameters["spec"], parameters["archive_sha256"],
                           parameters["sample"].to_json(), parameters["target"])
    hit = cache.lookup_verify(key)
    return cache.prefect_cache_key("verify", key, hit.nonce if hit else None, context.task_run.id)


@task(name="verify", cache_key_fn=_verify_cache_key, persist_result=True, retries=1,
      retry_condition_fn=retry_transient, timeout_seconds=900)
def verify_task(spec: EnsembleSpec, archive: Path, archive_sha256: str, sample: Sample,
                target: Target) -> tuple[Verification, bool]:
    """Verify the tarball in a real Triton, unless these very bytes already passed against
    this validation section and sample (only a pass is remembered)."""
    key = cache.verify_key(spec, archive_sha256, sample.to_json(), target)
    hit = cache.lookup_verify(key)
    if hit is not None:
        run_logger().info("%s: tarball %s already verified (%s); not loading it again", spec.name,
                          short(archive_sha256), short(key))
        return Verification.model_validate(hit.value), True
    result = verify_archive(spec, archive, sample, log=run_logger().info)
    cache.store_verify(key, result.model_dump(mode="json", exclude_none=True), nonce=run_id())
    return result, False
