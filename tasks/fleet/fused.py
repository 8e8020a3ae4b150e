"""A fused fleet's build: the variants that share a trunk served by shards of one model each.

Why a module of its own: a fused fleet (``layout: fused``, :mod:`ensembles.fleet_spec`) packs
its variants differently (one tarball per ``shard_size`` tenants, not one per variant), but is
declared, indexed, reported, published and deployed as every fleet is; this module is the part
that differs, called by :func:`tasks.fleet.stages.fuse_shards` before the separate builds.

1. Nothing changed (every variant's input key, :func:`tasks.fleet.variant.input_key`, is the one
   its index entry records, and every shard tarball is in place): nothing is read or built.
2. Else, on a rebuild whose index records every fused tenant's analysis
   (:class:`tasks.fleet.build.TenantFusion`), only the changed tenants are fetched, each checked
   against the recorded trunk, graph and head (:func:`tasks.fleet.fusion.tenant_signature`);
   otherwise every variant's own model and labels are fetched and
   :func:`tasks.fleet.fusion.analyze_fleet` finds the shared trunk; a variant it refuses is
   built separately as today (the reason goes to the build report). The fusable ones, in
   name order, are split into shards of ``shard_size`` (``<fleet>-shard-000``...). A shard's
   key is the content of its tenants (their models' and labels' sha256) with the template key:
   an equal key with its tarball in place is not rebuilt, so a changed head rebuilds only its
   shard.
3. A changed shard is fused (:func:`~tasks.fleet.fusion.fuse`), every tenant checked against its
   own model in ONNX Runtime on the template's pre-processed validation sample (1e-6,
   :func:`~tasks.fleet.fusion.verify_fused`), rendered from :func:`ensembles.fused.fused_spec`
   with the fused model as the step's model file, packed with its tenants sidecar
   (``tenants.json``: each tenant's index, class count and labels) and verified in one Triton
   (:mod:`tasks.fleet.fused_triton`), then committed beside its manifest and sidecar.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from ensembles.fleet_spec import Variant
from ensembles.fused import TENANT, fused_spec
from ensembles.render import render_repository
from ensembles.spec import ArtifactRef, EnsembleSpec, Target
from infra.errors import UserError
from tasks.build.verify import Sample, onnx_feed
from tasks.fleet.build import FleetIndex, FleetIndexEntry, TenantFusion, VariantOutcome
from tasks.fleet.check import SharedReference
from tasks.fleet.fusion import FusedShard, FusionAnalysis, FusionError, TenantCheck, fuse, verify_fused
from tasks.fleet.fused_gpu import check_staged_model
from tasks.fleet.variant import FleetTemplate, input_key, produce_owned, variant_spec
from tasks.runtime.run_context import run_logger
from infra.store.tarball import pack_deterministic

#: Bump when what a shard's tarball holds changes shape: every shard is rebuilt.
FUSED_FORMAT = 1
#: Every tenant against its own model in ONNX Runtime: the fused graph runs the tenant's own
#: rows through the same node, so anything beyond float noise is a fusion bug.
ORT_TOLERANCE = 1e-6
#: The tenants sidecar: inside the tarball (at its root, beside the model folders) and beside it.
TENANTS_MEMBER = "tenants.json"
TENANTS_SUFFIX = ".tenants.json"
#: Tenants per shard invoked through the whole ensemble in Triton (first, middle, last).
TRITON_TENANTS = 3


class TenantRecord(BaseModel):
    """One tenant of a shard: its ``TENANT`` value, its class count and its own labels."""

    index: int
    name: str
    classes: int
    labels: list[str]


class TenantsSidecar(BaseModel):
    """``tenants.json``: who a shard serves, in index order (what the router and a raw
    caller need to name a tenant's classes: the shard's output carries no labels)."""

    fleet: str
    shard: str
    trunk_sha256: str
    tenants: list[TenantRecord]


@dataclass(frozen=True)
class TenantModel:
    """A variant's own model and labels, fetched, with their content digest."""

    variant: Variant
    model: bytes
    labels: list[str]
    digest: str


@dataclass
class StagedShard:
    """A shard fused, checked in ONNX Runtime and packed in its work folder."""

    name: str
    key: str
    tenants: list[TenantModel]
    tarball: Path
    sha256: str
    bytes: int
    sidecar: TenantsSidecar
    samples: list[Sample]  # the tenants to invoke in Triton (and at deploy), first is tenant 0
    work: Path
    max_abs_diff: float
    max_batch: int = 0  # the template's max batch size: the footprint's max-batch service time
    #: tenants that answered differently fused (name -> why): not in the shard, they keep
    #: their previous version (:func:`fuse_checked`)
    left_out: dict[str, str] = field(default_factory=dict)


@dataclass
class FusedBuild:
    """What the fused part of a build did: an outcome per fused tenant, the shard index entries
    of this build, the variants refused (built separately, with the reason), report lines."""

    outcomes: list[VariantOutcome] = field(default_factory=list)
    shards: dict[str, FleetIndexEntry] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def shard_name(fleet: str, number: int) -> str:
    """The shard's name (and TargetModel stem): ``<fleet>-shard-000``."""
    return f"{fleet}-shard-{number:03d}"


def shard_ensemble(shard: str) -> str:
    """The shard's ensemble name: an identifier (``-`` is not allowed in one)."""
    safe = "".join(c if c.isalnum() or c == "_" else "_" for c in shard)
    return safe if safe[:1].isalpha() else f"f_{safe}"


def split_shards(fleet: str, names: Sequence[str], size: int) -> dict[str, list[str]]:
    """The fusable tenants, in name order, in shards of at most ``size``."""
    ordered = sorted(names)
    return {shard_name(fleet, i // size): ordered[i:i + size] for i in range(0, len(ordered), size)}


# ------------------------------------------------------------------------------ unchanged


def _entry_fits(index: FleetIndex, template: FleetTemplate, v: Variant, out: Path) -> bool:
    entry = index.variants.get(v.name)
    key = input_key(template.key, v)
    if entry is None or key is None or entry.key != key or entry.status != "ok":
        return False
    if entry.layout != "fused":
        return True  # built separately last time, unchanged: the separate plan keeps it
    shard = index.shards.get(entry.shard or "")
    return shard is not None and shard.status == "ok" and (out / shard.file).exists()


def unchanged_build(template: FleetTemplate, variants: Sequence[Variant], index: FleetIndex,
                    out: Path) -> FusedBuild | None:
    """The build when nothing changed since the index was written (no file read), else None."""
    if index.template_key != template.key or {v.name for v in variants} != set(index.variants):
        return None
    if not all(_entry_fits(index, template, v, out) for v in variants):
        return None
    done = FusedBuild()
    used: set[str] = set()
    for v in variants:
        e = index.variants[v.name]
        if e.layout != "fused":
            done.refused[v.name] = e.reason or "built separately"
            continue
        used.add(e.shard or "")
        done.outcomes.append(VariantOutcome(
            name=v.name, status="unchanged", file=e.file, target_model=e.target_model, key=e.key,
            sha256=e.sha256, bytes=e.bytes, checked_by=e.checked_by, labels=v.labels,
            layout="fused", shard=e.shard, tenant=e.tenant, fusion=e.fusion))
    done.shards = {s: index.shards[s] for s in sorted(used)}
    done.lines.append(f"Fused: {len(done.outcomes)} tenants in {len(used)} shards, all unchanged")
    return done


# ------------------------------------------------------------------------------ fetching


def label_artifact(spec: EnsembleSpec, step: str, target: Target) -> str | None:
    """The artifact the fused step's label file comes from (None: the step has none)."""
    s = spec.step(step)
    be = s.backends.get(target)
    for out in s.outputs:
        ref = ArtifactRef.parse(be.files.get(out.label_filename)) if be and out.label_filename else None
        if ref is not None:
            return ref.name
    return None


def fetch_tenant(template: FleetTemplate, v: Variant, work: Path) -> TenantModel:
    """The variant's own model and labels (its owned artifacts, fetched into ``work``)."""
    fusion = template.spec.fusion
    assert fusion is not None
    spec = variant_spec(template, v)
    produced, _ = produce_owned(template, v, spec, work)
    model = produced[fusion.artifact].read_bytes()
    labels_art = label_artifact(spec, fusion.step_for(template.target), template.target)
    labels: list[str] = []
    if labels_art is not None:
        labels = [ln for ln in produced[labels_art].read_text().splitlines() if ln.strip()]
    digest = hashlib.sha256(model + b"\0" + "\n".join(labels).encode()).hexdigest()
    return TenantModel(variant=v, model=model, labels=labels, digest=digest)


def fetch_all(template: FleetTemplate, variants: Sequence[Variant], work: Path,
              workers: int = 4) -> tuple[dict[str, TenantModel], dict[str, str]]:
    """Every variant's model and labels (side by side); a variant that cannot be fetched is
    returned with its reason (it fails; the others go on)."""
    def one(v: Variant) -> TenantModel | str:
        folder = work / "fetch" / hashlib.sha256(v.name.encode()).hexdigest()[:16]
        try:
            return fetch_tenant(template, v, folder)
        except UserError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001 - one variant's surprise must not stop the others
            return f"{type(e).__name__}: {e}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    got: dict[str, TenantModel] = {}
    failed: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleet-fetch") as pool:
        for v, res in zip(variants, pool.map(one, variants), strict=True):
            if isinstance(res, str):
                failed[v.name] = res
            else:
                got[v.name] = res
    return got, failed


def shard_key(template: FleetTemplate, name: str, tenants: Sequence[TenantModel]) -> str:
    """What decides a shard's tarball: the template, the fusion, its tenants' content in order."""
    doc = {"format": FUSED_FORMAT, "template": template.key, "shard": name,
           "fusion": template.spec.fusion.model_dump() if template.spec.fusion else None,
           "tenants": [[t.variant.name, t.digest] for t in tenants]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------ staging


def _own_answer(model: bytes, tensors: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feed = onnx_feed([i.name for i in sess.get_inputs()], tensors)
    return np.asarray(sess.run(None, feed)[0], dtype=np.float32)


def _model_inputs(model: bytes, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``tensors`` by the model's own input names (one image tensor, or a text head's token
    embeddings and attention mask): what the fused and the tenant's own model are fed."""
    import onnx

    graph = onnx.load_from_string(model).graph
    inits = {i.name for i in graph.initializer}
    return onnx_feed([i.name for i in graph.input if i.name not in inits], tensors)


def tenant_sample(shared: SharedReference, tenant: TenantModel, index: int) -> Sample:
    """The request that asks the shard for ``tenant`` (the validation image or sentence and its
    index) and the tenant's own model's answer on the same pre-processed input."""
    want = _own_answer(tenant.model, shared.tensors)
    return Sample(inputs={**shared.request, TENANT: np.array([[index]], dtype=np.int32)},
                  expected={shared.output_name: want},
                  context={**shared.context, "labels": tenant.labels, "tenant": tenant.variant.name})


def _checked_indices(count: int) -> list[int]:
    return sorted({0, count // 2, count - 1})[:TRITON_TENANTS]


@dataclass(frozen=True)
class CheckedFusion:
    """A fused model whose every tenant answers as its own model, and the tenants left out
    because they did not (name -> why): they keep their previous version, the others ship."""

    fused: FusedShard
    checks: list[TenantCheck]
    left_out: dict[str, str]


def fuse_checked(models: Mapping[str, bytes], order: Sequence[str], analysis: FusionAnalysis,
                 inputs: Mapping[str, np.ndarray], tolerance: float = ORT_TOLERANCE) -> CheckedFusion:
    """Fuse ``order`` and check every tenant against its own model; a tenant that answers
    differently leaves the shard (the shard is fused again without it), so one tenant cannot
    hold back the others. Refuses (:class:`FusionError`) when no tenant is left."""
    left_out: dict[str, str] = {}
    members = list(order)
    while members:
        fused = fuse(models, members, analysis)
        checks = verify_fused(fused, models, inputs)
        bad = [c for c in checks if not c.ok(tolerance)]
        if not bad:
            return CheckedFusion(fused=fused, checks=checks, left_out=left_out)
        for c in bad:
            left_out[c.tenant] = (f"answers differently fused (max abs diff {c.max_abs_diff:.3g}, top-5 "
                                  f"{'same' if c.same_top5 else 'differs'}; tolerance {tolerance:g})")
        members = [m for m in members if m not in left_out]
    first = next(iter(left_out.items()))
    raise FusionError(f"every tenant answers differently fused: {first[0]} {first[1]}"
                      f"{f' and {len(left_out) - 1} more' if len(left_out) > 1 else ''}")


def stage_shard(template: FleetTemplate, shared: SharedReference, name: str, tenants: list[TenantModel],
                analysis: FusionAnalysis, work: Path) -> StagedShard:
    """Fuse ``tenants`` (in that order), check every one against its own model (one that answers
    differently leaves the shard: ``left_out``), render the shard's ensemble with the fused
    model and pack it with its tenants sidecar. The shard's key is that of the tenants it holds."""
    fusion = template.spec.fusion
    assert fusion is not None
    models = {t.variant.name: t.model for t in tenants}
    checked = fuse_checked(models, [t.variant.name for t in tenants], analysis,
                           _model_inputs(tenants[0].model, shared.tensors))
    fused = checked.fused
    check_staged_model(template.spec, template.target, fusion.step_for(template.target), fused.model,
                       f"fused shard {name}")
    tenants = [t for t in tenants if t.variant.name not in checked.left_out]
    work.mkdir(parents=True, exist_ok=True)
    model_path = work / "fused.onnx"
    model_path.write_bytes(fused.model)
    spec = fused_spec(template.spec, fusion.step, shard_ensemble(name))
    repo = render_repository(spec, template.target, work / "repo", catalog_dir=template.folder,
                             artifacts={**template.shared, fusion.artifact: model_path})
    sidecar = TenantsSidecar(fleet=template.fleet, shard=name, trunk_sha256=analysis.trunk_sha256,
                             tenants=[TenantRecord(index=i, name=t.variant.name, classes=len(t.labels)
                                                   or fused.classes[i], labels=t.labels)
                                      for i, t in enumerate(tenants)])
    (repo / TENANTS_MEMBER).write_text(sidecar.model_dump_json(indent=1))
    tarball = work / "staging" / f"{name}.tar.gz"
    tarball.parent.mkdir(parents=True, exist_ok=True)
    sha, size = pack_deterministic(repo, tarball)
    shutil.rmtree(repo, ignore_errors=True)
    samples = [tenant_sample(shared, tenants[i], i) for i in _checked_indices(len(tenants))]
    return StagedShard(name=name, key=shard_key(template, name, tenants), tenants=tenants,
                       tarball=tarball, sha256=sha, bytes=size, sidecar=sidecar, samples=samples,
                       work=work, max_abs_diff=max(c.max_abs_diff for c in checked.checks),
                       max_batch=template.spec.max_batch_size, left_out=checked.left_out)


def fused_outcomes(shard: FleetIndexEntry, name: str, tenants: Sequence[TenantModel],
                   template: FleetTemplate, status: str, seconds: float = 0.0,
                   fusion: Mapping[str, TenantFusion] | None = None) -> list[VariantOutcome]:
    """The outcome of each tenant of a shard that is built (or unchanged); ``fusion``: what the
    index keeps of each tenant's analysis (the next rebuild reads it instead of the model)."""
    return [VariantOutcome(name=t.variant.name, status=status, file=shard.file,
                           target_model=shard.target_model, key=input_key(template.key, t.variant),
                           sha256=shard.sha256, bytes=shard.bytes, checked_by=shard.checked_by,
                           validation=f"fused in {name} as tenant {i}", labels=t.variant.labels,
                           seconds=seconds, layout="fused", shard=name, tenant=i,
                           fusion=(fusion or {}).get(t.variant.name))
            for i, t in enumerate(tenants)]


def _sources(v: Variant) -> str:
    """The tenant's own source files (its ``<artifact>.source`` parameters), for its log line."""
    return ", ".join(val for key, val in sorted(v.params.items()) if key.endswith(".source")) or "-"


def failed_outcomes(tenants: Sequence[TenantModel], reason: str, t0: float) -> list[VariantOutcome]:
    """Every tenant of a shard that failed (or the one left out of it): the reason is each
    one's, said as one WARNING line per tenant (name, its files, reason) in the task that found
    it -- the same line a separately built variant's failure is (:mod:`tasks.fleet.build`), so
    a Prefect user finds both the same way."""
    log = run_logger()
    for t in tenants:
        log.warning("variant %s FAILED (fused tenant; files: %s): %s", t.variant.name,
                    _sources(t.variant), reason)
    return [VariantOutcome(name=t.variant.name, status="failed", file="", layout="fused",
                           target_model=f"{t.variant.name}.tar.gz", reason=reason,
                           seconds=round(time.perf_counter() - t0, 2), labels=t.variant.labels)
            for t in tenants]
