"""One fleet variant, from its own source files to a checked tarball (plain functions).

A fleet is one template ensemble and many variants that each replace some of its artifact
parameters (their own classifier file, their own labels). Work every variant shares (the DALI
pipeline, the template's own files) is made once by :mod:`tasks.fleet.build`; this module does a
variant's own part: fetch its files, fit the template's open dimensions to its model (a
per-customer classifier has its own class count), refuse a model that does not fit the template,
render, pack, and check the packed bytes.

Everything a variant does happens in its own work folder; its tarball reaches the output folder
only through :func:`commit_variant`, after it passed its checks, so a failed variant leaves
nothing behind that a publish could pick up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensembles.fleet_spec import Variant, variant_ensemble_name
from ensembles.render import render_repository
from ensembles.spec import ArtifactRef, EnsembleSpec, SpecError, Target, validate
from infra.jsontypes import JsonObject
from infra.errors import UserError
from infra.records.manifest import MANIFEST_SUFFIX, Manifest, SampleRecord, StepRecord, Validation
from infra.store.objects import atomic_path
from infra.store.tarball import pack_deterministic
from tasks.producers.produce import PRODUCERS, artifacts_for, resolve_params

#: Bump when what a variant's tarball holds changes shape: every variant is rebuilt.
FLEET_FORMAT = 1


class VariantError(UserError, ValueError):
    """One variant cannot be built; the message names the variant and the file at fault.
    Never retried: the other variants go on, this one is reported failed."""


@dataclass(frozen=True)
class FleetTemplate:
    """What every variant of a fleet shares, made once per build (picklable for Dask)."""

    fleet: str
    target: Target
    folder: Path
    spec: EnsembleSpec
    owned: tuple[str, ...]  # artifacts each variant makes itself (its params name them)
    shared: dict[str, Path]  # the other artifacts, made once
    shared_sources: dict[str, JsonObject]
    key: str  # template key: a change rebuilds every variant
    spec_sha256: str
    tool_version: str


@dataclass
class StagedVariant:
    """A variant built and packed in its work folder, not yet checked or committed."""

    variant: Variant
    spec: EnsembleSpec
    produced: dict[str, Path]
    sources: dict[str, dict[str, Any]]
    tarball: Path
    sha256: str
    bytes: int
    work: Path
    steps: dict[str, StepRecord] = field(default_factory=dict)


def file_stem(variant: Variant) -> str:
    """The variant's file name stem in the output folder: a name may hold ``.`` and be 1,004
    characters long (:data:`ensembles.fleet_spec.VARIANT_NAME`), a file name stem is kept short."""
    return variant_ensemble_name(variant.name)


def target_model_for(variant: Variant) -> str:
    """The TargetModel the variant is built as (deploy may version it)."""
    return f"{variant.name}.tar.gz"


def owned_artifacts(spec: EnsembleSpec, param_keys: set[str], target: Target) -> tuple[str, ...]:
    """Artifacts some variant overrides, plus every artifact made from one of them: those are
    made per variant; the rest once per fleet."""
    owned = {key.partition(".")[0] for key in param_keys} & set(spec.artifacts)
    changed = True
    while changed:
        changed = False
        for name, art in spec.artifacts.items():
            if name not in owned and any(isinstance(v, ArtifactRef) and v.name in owned
                                         for v in art.params.values()):
                owned.add(name)
                changed = True
    return tuple(n for n in artifacts_for(spec, target) if n in owned)


def variant_spec(template: FleetTemplate, variant: Variant) -> EnsembleSpec:
    """The template with the variant's artifact parameters (the template's name is kept: the
    endpoint namespaces every TargetModel's models, locally and on SageMaker)."""
    doc = template.spec.model_dump()
    for key, value in variant.params.items():
        art, _, param = key.partition(".")
        if art not in doc["artifacts"] or not param:
            raise VariantError(f"variant {variant.name!r} ({variant.origin}): parameter {key!r} "
                               f"names no artifact of template {template.spec.name!r}")
        doc["artifacts"][art]["params"][param] = value
    spec = EnsembleSpec.model_validate(doc)
    validate(spec)
    return spec


def produce_owned(template: FleetTemplate, variant: Variant, spec: EnsembleSpec,
                  work: Path) -> tuple[dict[str, Path], dict[str, JsonObject]]:
    """The variant's own artifacts (fetched or made in ``work``), beside the shared ones."""
    produced = dict(template.shared)
    sources = dict(template.shared_sources)
    for name in template.owned:
        art = spec.artifacts[name]
        where = f"variant {variant.name!r}, artifact {name!r}"
        try:
            path, meta = PRODUCERS[art.producer](
                work / "artifacts" / name, **resolve_params(art.params, produced, where))
        except UserError as e:
            raise VariantError(f"variant {variant.name!r} ({variant.origin}): {e}") from e
        produced[name] = Path(path)
        sources[name] = meta
    return produced, sources


def _onnx_io(path: Path, where: str) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """(inputs, outputs) of an ONNX file: name -> dims, -1 where not fixed (batch included)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError, ValueError, OSError...
        raise VariantError(f"{where}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    inits = {i.name for i in model.graph.initializer}

    def dims(value: Any) -> list[int]:
        return [d.dim_value if d.HasField("dim_value") else -1
                for d in value.type.tensor_type.shape.dim]

    return ({v.name: dims(v) for v in model.graph.input if v.name not in inits},
            {v.name: dims(v) for v in model.graph.output})


def _pick(tensors: dict[str, list[int]], name: str) -> list[int] | None:
    """The ONNX tensor called ``name``, or the only one there is."""
    if name in tensors:
        return tensors[name]
    return next(iter(tensors.values())) if len(tensors) == 1 else None


def _onnx_feeds(step: dict[str, Any], be: dict[str, Any]) -> list[dict[str, Any]]:
    """What the step's ONNX model is fed: the step's inputs, or, for a step that runs its own
    pre-processing first (``runtime:dali_onnx_model.py``: local-cpu's one-stub image
    classifier), the tensor in between, which its parameters describe (``preprocessed_dims``,
    ``onnx_input``), and any further input of the step."""
    params = be.get("parameters") or {}
    if "preprocessed_dims" not in params:
        return list(step["inputs"])
    between = {"name": params.get("onnx_input", "preprocessed"),
               "dims": [int(d) for d in params["preprocessed_dims"].split(",")]}
    return [between, *step["inputs"][1:]]


def _fit_step(spec: EnsembleSpec, step: dict[str, Any], be: dict[str, Any], onnx_path: Path,
              where: str) -> dict[str, list[int]]:
    """Fill the step's open output dims from its ONNX file; refuse inputs that do not fit.
    Returns the filled output dims by step output name."""
    inputs, outputs = _onnx_io(onnx_path, where)
    skip = 1 if spec.max_batch_size > 0 else 0  # Triton's dims leave the batch dimension out
    for t in _onnx_feeds(step, be):
        have = _pick(inputs, t["name"])
        if have is None:
            continue
        have = have[skip:]
        fits = len(have) == len(t["dims"]) and all(
            a == b or -1 in (a, b) for a, b in zip(have, t["dims"], strict=True))
        if not fits:
            raise VariantError(f"{where}: the model takes input {t['name']!r} of shape {have} "
                               f"(batch dimension left out); the template feeds {t['dims']}")
    filled: dict[str, list[int]] = {}
    for t in step["outputs"]:
        have = _pick(outputs, t["name"])
        if have is None or -1 not in t["dims"]:
            continue
        have = have[skip:]
        if len(have) != len(t["dims"]):
            raise VariantError(f"{where}: the model's output {t['name']!r} has shape {have}; "
                               f"the template expects {t['dims']}")
        t["dims"] = [h if d == -1 else d for d, h in zip(t["dims"], have, strict=True)]
        filled[t["name"]] = t["dims"]
    return filled


def _source_name(meta: dict[str, Any] | None, path: Path) -> str:
    return str((meta or {}).get("source") or path.name)


def fit_to_variant(spec: EnsembleSpec, target: Target, produced: dict[str, Path],
                   sources: dict[str, dict[str, Any]], variant: Variant) -> EnsembleSpec:
    """The spec with its open (-1) dims taken from the variant's ONNX models (a classifier's
    class count), checked: each model's input must be what the template feeds it, and a
    label file must have one line per class."""
    doc = spec.model_dump()
    filled_tensors: dict[str, list[int]] = {}
    for step in doc["steps"]:
        be = step["backends"].get(target) or {}
        for dest, src in be.get("files", {}).items():
            ref = ArtifactRef.parse(src)
            if ref is None or not dest.endswith(".onnx"):
                continue
            where = (f"variant {variant.name!r}, model file "
                     f"{_source_name(sources.get(ref.name), produced[ref.name])}")
            for out, dims in _fit_step(spec, step, be, produced[ref.name], where).items():
                if out in step["output_map"]:
                    filled_tensors[step["output_map"][out]] = dims
            _check_labels(step, be, produced, sources, variant)
    for t in doc["outputs"]:
        if t["name"] in filled_tensors and -1 in t["dims"]:
            t["dims"] = filled_tensors[t["name"]]
    try:
        fitted = EnsembleSpec.model_validate(doc)
        validate(fitted)
    except (SpecError, ValueError) as e:
        raise VariantError(f"variant {variant.name!r} ({variant.origin}): does not fit the "
                           f"template: {e}") from None
    return fitted


def _check_labels(step: dict[str, Any], be: dict[str, Any], produced: dict[str, Path],
                  sources: dict[str, dict[str, Any]], variant: Variant) -> None:
    """A label file must name each class of the output it labels once."""
    for t in step["outputs"]:
        label_file = t.get("label_filename")
        ref = ArtifactRef.parse(be.get("files", {}).get(label_file)) if label_file else None
        if ref is None or ref.name not in produced or -1 in t["dims"]:
            continue
        path = produced[ref.name]
        try:
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise VariantError(f"variant {variant.name!r}: label file "
                               f"{_source_name(sources.get(ref.name), path)} cannot be read: {e}") from None
        classes = 1
        for d in t["dims"]:
            classes *= d
        if len(lines) != classes:
            raise VariantError(
                f"variant {variant.name!r}: label file {_source_name(sources.get(ref.name), path)} "
                f"has {len(lines)} labels but the model's output {t['name']!r} has {classes} classes")


def stage_variant(template: FleetTemplate, variant: Variant, work: Path) -> StagedVariant:
    """Fetch, fit, render and pack one variant in ``work`` (nothing outside it is touched)."""
    import time

    steps: dict[str, StepRecord] = {}
    t0 = time.perf_counter()
    spec = variant_spec(template, variant)
    produced, sources = produce_owned(template, variant, spec, work)
    steps["fetch"] = StepRecord(seconds=round(time.perf_counter() - t0, 3))
    t0 = time.perf_counter()
    spec = fit_to_variant(spec, template.target, produced, sources, variant)
    try:
        repo = render_repository(spec, template.target, work / "repo", catalog_dir=template.folder,
                                 artifacts=produced)
    except SpecError as e:
        raise VariantError(f"variant {variant.name!r} ({variant.origin}): {e}") from None
    steps["render"] = StepRecord(seconds=round(time.perf_counter() - t0, 3))
    t0 = time.perf_counter()
    tarball = work / "staging" / f"{file_stem(variant)}.tar.gz"
    tarball.parent.mkdir(parents=True, exist_ok=True)
    sha, size = pack_deterministic(repo, tarball)
    shutil.rmtree(repo, ignore_errors=True)  # the tarball is what ships and what is checked
    steps["package"] = StepRecord(seconds=round(time.perf_counter() - t0, 3))
    return StagedVariant(variant=variant, spec=spec, produced=produced, sources=sources,
                         tarball=tarball, sha256=sha, bytes=size, work=work, steps=steps)


def read_members(tarball: Path) -> dict[str, bytes]:
    """Every file of a tarball, by member name, in one pass over the gzip stream (a second
    pass per member would decompress the whole archive again)."""
    out: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                out[member.name] = f.read()
    return out


def member_digests(tarball: Path) -> dict[str, str]:
    """sha256 of every file in a tarball, by member name."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in read_members(tarball).items()}


def manifest_for(staged: StagedVariant, template: FleetTemplate, output_dir: Path,
                 validation: Validation, sample: SampleRecord, seconds: float) -> Manifest:
    """The variant's build manifest (same record as a single ensemble's, plus its fleet)."""
    v = staged.variant
    return Manifest(
        ensemble=v.name, target=template.target, target_model=target_model_for(v),
        artifact=(output_dir / f"{file_stem(v)}.tar.gz").resolve().as_uri(),
        sha256=staged.sha256, bytes=staged.bytes,
        built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        build_seconds=round(seconds, 2), spec_sha256=template.spec_sha256,
        tool_version=template.tool_version, sources=staged.sources, validation=validation,
        steps=staged.steps, sample=sample,
        fleet={"name": template.fleet, "template": template.spec.name, "variant": v.name,
               "labels": v.labels, "template_key": template.key})


def commit_variant(staged: StagedVariant, manifest: Manifest, output_dir: Path) -> None:
    """Move a checked tarball and its manifest into ``output_dir`` (each atomically: the
    tarball first, so a manifest never names bytes that are not there)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = file_stem(staged.variant)
    with atomic_path(output_dir / f"{stem}.tar.gz") as tmp:
        os.replace(staged.tarball, tmp)
    with atomic_path(output_dir / f"{stem}{MANIFEST_SUFFIX}") as tmp:
        tmp.write_text(manifest.to_json())
    shutil.rmtree(staged.work, ignore_errors=True)


def input_key(template_key: str, variant: Variant) -> str | None:
    """What decides a variant's tarball: the template key, its parameters and the identity of
    its source files. None when a source's identity is unknown before fetching it (then the
    variant is rebuilt every time, and unchanged bytes are still recognised by their sha256)."""
    sources = {k: v for k, v in variant.params.items() if k.endswith(".source")}
    if any(k not in variant.fingerprints for k in sources):
        return None
    doc = {"format": FLEET_FORMAT, "template": template_key, "params": variant.params,
           "fingerprints": variant.fingerprints}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
