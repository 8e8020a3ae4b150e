"""How a fleet variant is verified without a Triton load of its own (plain functions).

A Triton load of a Python-backend ensemble costs two stub processes here (~1 s to start, ~1.3 s
to unload); a thousand of them would be most of the build. So a fleet build loads a sample of
variants (the canaries) in a long-lived Triton (:mod:`tasks.fleet.verify`) and checks every
other variant's tarball against a canary that passed:

* **structure**: the same member files; every file that is not the variant's own (the DALI
  pipeline, the model code, the pre-processing config) byte-identical to the canary's; every
  ``config.pbtxt`` equal to the canary's except for tensor dims (a classifier's class count);
* **numbers**: the variant's own model file, read from the packed tarball, run with ONNX Runtime
  (the runtime the classifier step runs in Triton here) on the pre-processed sample that the
  fleet's DALI pipeline produced once, scored against the variant's reference with the
  template's metric and tolerance;
* **fit**: dims and label counts were checked against the model when the variant was staged
  (:func:`tasks.fleet.variant.fit_to_variant`).

What a per-variant Triton load would add is running the same code, on the same configs up to
dims, over the same bytes: the canary shows that code and those configs work in Triton, the
numbers check shows these bytes give the reference's answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from ensembles.spec import ArtifactRef, EnsembleSpec, Target
from tasks.fleet.variant import StagedVariant, VariantError
from tasks.build.verify import (
    Sample,
    Verification,
    encoder_features,
    onnx_feed,
    reference_sample,
    run_dali_cpu,
    sample_image,
    score,
)


@dataclass(frozen=True)
class SharedReference:
    """The sample request and what a variant's own model is fed for it, computed once per
    fleet: an image template's encoded image and its DALI output, a text template's sentence
    and its encoder's token embeddings and attention mask."""

    request: dict[str, np.ndarray]  # the ensemble's inputs for the sample
    tensors: dict[str, np.ndarray]  # the variant model's inputs for it, by the model's input name
    output_name: str
    model_param: str  # the validation parameter that names the variant's model artifact
    labels_param: str | None
    context: dict[str, Any]


def _params(spec: EnsembleSpec, artifacts: dict[str, Path], target: Target) -> dict[str, Any]:
    v = spec.validation
    assert v is not None
    params = {k: (artifacts.get(val.name) if isinstance(val, ArtifactRef) else val)
              for k, val in v.params.items()}
    return {k: (val.get(target, val.get("default")) if isinstance(val, dict) else val)
            for k, val in params.items()}


def shared_reference(spec: EnsembleSpec, artifacts: dict[str, Path], target: Target,
                     owned: tuple[str, ...]) -> SharedReference | None:
    """What every variant's reference shares, or None when the validation kind has no cheap
    per-variant form (every variant is then verified in Triton)."""
    v = spec.validation
    if v is None or v.kind not in ("image_classification", "text_classification"):
        return None
    model = v.params.get("model")
    if not isinstance(model, ArtifactRef) or model.name not in owned:
        return None
    params = _params(spec, artifacts, target)
    labels = v.params.get("labels")
    labels_param = "labels" if isinstance(labels, ArtifactRef) else None
    tolerance = float(params.get("max_abs_diff_tolerance") or 1e-4)
    if v.kind == "text_classification":
        return _text_reference(spec, params, labels_param, tolerance)
    if params.get("pipeline") is None:
        return None
    image = sample_image(str(params.get("image", "skimage:chelsea")))
    in_name, out_name = spec.inputs[0].name, spec.outputs[0].name
    tensor = run_dali_cpu(Path(params["pipeline"]), [image], in_name)
    from tasks.producers.classifiers import CAT_CLASSES

    return SharedReference(
        request={in_name: np.frombuffer(image, dtype=np.uint8).reshape(1, -1)},
        tensors={in_name: tensor}, output_name=out_name, model_param="model",
        labels_param=labels_param,
        context={"cat_classes": sorted(CAT_CLASSES), "max_abs_diff_tolerance": tolerance,
                 "image": str(params.get("image", "skimage:chelsea"))})


def _text_reference(spec: EnsembleSpec, params: dict[str, Any], labels_param: str | None,
                    tolerance: float) -> SharedReference:
    """A text template's sentence and the encoder's features for it (what each customer's
    head is fed: its answer on them is the customer's reference)."""
    sentence = str(params["sentence"])
    tensors = encoder_features(Path(params["tokenizer"]), Path(params["encoder"]), [sentence],
                               int(params.get("max_length", 128)))
    return SharedReference(
        request={spec.inputs[0].name: np.array([[sentence.encode()]], dtype=object)},
        tensors=tensors, output_name=spec.outputs[0].name, model_param="model",
        labels_param=labels_param,
        context={"max_abs_diff_tolerance": tolerance, "sentence": sentence})


def _run_onnx(model: bytes | str, tensors: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # variants run side by side: one thread each
    # one run per session: graph optimizations would cost more than they save (measured on
    # SqueezeNet: 44 ms to build the session with all of them, 8 ms with the basic ones)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, onnx_feed([i.name for i in sess.get_inputs()], tensors))[0],
                      dtype=np.float32)


def variant_sample(shared: SharedReference | None, staged: StagedVariant, target: Target) -> Sample:
    """The variant's reference: its own model run directly on the shared pre-processed
    sample (or the template's full reference when there is no shared form)."""
    if shared is None:
        return reference_sample(staged.spec, staged.produced, target)
    v = staged.spec.validation
    assert v is not None
    params = _params(staged.spec, staged.produced, target)
    try:
        probs = _run_onnx(str(params[shared.model_param]), shared.tensors)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        raise VariantError(f"variant {staged.variant.name!r}: its model does not run on the "
                           f"template's pre-processed sample: {e}") from None
    labels: list[str] = []
    if shared.labels_param and params.get(shared.labels_param):
        labels = Path(params[shared.labels_param]).read_text().splitlines()
    return Sample(inputs=dict(shared.request), expected={shared.output_name: probs},
                  context={**shared.context, "labels": labels})


def owned_members(staged: StagedVariant, target: Target, owned: tuple[str, ...]) -> dict[str, str]:
    """Tarball members that come from the variant's own artifacts -> that artifact."""
    out: dict[str, str] = {}
    for step in staged.spec.steps:
        be = step.backends.get(target)
        for dest, src in (be.files.items() if be else ()):
            if isinstance(src, ArtifactRef) and src.name in owned:
                out[f"{staged.spec.model_name(step.name)}/{dest}"] = src.name
    return out


def check_numbers(shared: SharedReference, staged: StagedVariant, sample: Sample,
                  target: Target, owned: tuple[str, ...], members: dict[str, bytes]) -> Verification:
    """The packed model file, run with ONNX Runtime on the shared tensor, scored against the
    variant's reference with the template's metric and threshold."""
    v = staged.spec.validation
    assert v is not None
    model_art = v.params[shared.model_param]
    assert isinstance(model_art, ArtifactRef)
    found = [m for m, art in owned_members(staged, target, owned).items()
             if art == model_art.name and m.endswith(".onnx") and m in members]
    if not found:
        raise VariantError(f"variant {staged.variant.name!r}: no model file of artifact "
                           f"{model_art} in the tarball")
    probs = _run_onnx(members[found[0]], shared.tensors)
    return score(v.metric, v.threshold, sample, {shared.output_name: probs}).model_copy(
        update={"per_item": None})


def _config_without_dims(data: bytes) -> str:
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = text_format.Parse(data.decode(), mc.ModelConfig())
    for tensor in list(cfg.input) + list(cfg.output):
        del tensor.dims[:]
    return text_format.MessageToString(cfg)


@dataclass(frozen=True)
class Structure:
    """A verified tarball's layout: file digests, and its configs with dims left out."""

    digests: dict[str, str]
    configs: dict[str, str]

    @classmethod
    def of(cls, members: dict[str, bytes]) -> Structure:
        """From a tarball's files (:func:`tasks.fleet.variant.read_members`)."""
        digests = {m: hashlib.sha256(data).hexdigest() for m, data in members.items()}
        configs = {m: _config_without_dims(data) for m, data in members.items()
                   if m.endswith("config.pbtxt")}
        return cls(digests=digests, configs=configs)


def check_structure(reference: Structure, staged: StagedVariant, target: Target,
                    owned: tuple[str, ...], members: dict[str, bytes]) -> None:
    """Refuse a tarball that differs from the verified canary's in anything but the variant's
    own files and tensor dims."""
    mine = Structure.of(members)
    name = staged.variant.name
    if set(mine.digests) != set(reference.digests):
        extra = sorted(set(mine.digests) - set(reference.digests))
        missing = sorted(set(reference.digests) - set(mine.digests))
        raise VariantError(f"variant {name!r}: its tarball's files differ from the verified "
                           f"canary's (extra {extra}, missing {missing})")
    own = owned_members(staged, target, owned)
    for member, digest in mine.digests.items():
        if member in own:
            continue
        if member in mine.configs:
            if mine.configs[member] != reference.configs[member]:
                raise VariantError(f"variant {name!r}: {member} differs from the verified "
                                   f"canary's in more than tensor dims")
        elif digest != reference.digests[member]:
            raise VariantError(f"variant {name!r}: {member} differs from the verified canary's "
                               f"(it is not the variant's own file)")
