"""A fleet's build, in parts the ``fleet-build`` flow composes (plain functions + tasks).

1. :func:`prepare_template`: the template's shared artifacts, made once (cached on content like
   every artifact), and the template key (a change rebuilds every variant).
2. :func:`plan_builds`: which variants need building. The fleet index beside the tarballs
   (``fleet-index.json``) remembers each variant's input key (template key + its parameters +
   its sources' size/mtime or ETag from the one listing); an equal key with its tarball in
   place means nothing to do, without reading a single model file.
3. Canaries (:data:`build_canaries_task`): a few variants staged and verified in one long-lived
   Triton (load, check, unload in turn), then committed.
4. The rest (:data:`build_chunk_task`, chunks side by side on the task runner): staged and
   checked against a verified canary's structure and with ONNX Runtime on their packed model
   (see :mod:`tasks.fleet.check` for exactly what is checked where), then committed.
5. :func:`write_index` records every variant's outcome; failures keep their previous tarball.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed
from pydantic import BaseModel, ConfigDict

from ensembles.fleet_spec import FleetSpec, Variant, check_fleet_release, load_template
from ensembles.spec import EnsembleSpec, Target
from infra.errors import UserError
from infra.jsontypes import JsonObject
from infra.store.objects import atomic_path
from infra.versioned import VersionedDocument
from tasks.producers import cache
from tasks.build.ensemble import TOOL_VERSION, spec_digest
from tasks.fleet.check import (
    SharedReference,
    Structure,
    check_numbers,
    check_structure,
    shared_reference,
    variant_sample,
)
from tasks.fleet.variant import (
    FLEET_FORMAT,
    FleetTemplate,
    StagedVariant,
    VariantError,
    commit_variant,
    file_stem,
    input_key,
    manifest_for,
    owned_artifacts,
    read_members,
    stage_variant,
)
from tasks.fleet.progress import Progress, record_shared, share, unshare
from tasks.fleet.verify import verify_in_triton
from tasks.producers.produce import artifacts_for, check_artifacts
from tasks.runtime.run_context import run_logger
from tasks.build.footprints import Footprint
from tasks.build.verify import Sample, Verification

INDEX_FILE = "fleet-index.json"


def fleet_build_dir(spec: FleetSpec, output_dir: str | Path | None = None) -> Path:
    """Where ``fleet-build`` writes a fleet's build: ``output_dir`` (resolved), else by default
    (where deploy, plan and the CLI look for it) ``$MME_HOME/artifacts/<target>/fleets/<name>``."""
    from infra import paths

    if output_dir:
        return Path(output_dir).expanduser().resolve()
    return paths.artifacts_dir(spec.target) / "fleets" / spec.name

#: The tasks that build variants: each says one line per variant (its outcome), so the
#: fetch step's own "fetched <source> -> <staging path>" lines are dropped there (two lines
#: per variant, naming a temporary folder that is gone by the time anyone reads the log).
VARIANT_TASKS = frozenset({"build-variants", "verify-canaries"})

R = TypeVar("R")


class _QuietFetches(logging.Filter):
    """Drops the INFO lines of ``fetch_model_file`` in the variant-building tasks (their
    outcome line says what matters; the fetch's names a staging path)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.funcName == "fetch_model_file" and record.levelno <= logging.INFO
                    and getattr(record, "task_name", None) in VARIANT_TASKS)


def _install_quiet_fetches() -> None:
    task_runs = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, _QuietFetches) for f in task_runs.filters):
        task_runs.addFilter(_QuietFetches())


_install_quiet_fetches()


def variant_range_name(prefix: str) -> Any:
    """A ``task_run_name`` callable: ``<prefix>: tenant-0001..tenant-0025`` (the task's
    ``variants`` or ``canaries`` parameter), so a failed chunk is found by name in the UI."""

    def name(parameters: dict[str, Any]) -> str:
        got = parameters.get("variants") or parameters.get("canaries") or []
        names = sorted(v.name for v in got if isinstance(v, Variant))
        if not names:
            return prefix
        return f"{prefix}: {names[0]}" + (f"..{names[-1]} ({len(names)})" if len(names) > 1 else "")

    return name


@dataclass(frozen=True, repr=False)
class Held(Generic[R]):
    """A result a task that ended Failed still hands back (``tasks.fleet.stages.outcome_of``
    unwraps it).

    Why not the value itself: Prefect logs a task's Failed state at ERROR with the repr of its
    data ("Task run failed with state: Failed(..., result=...)"), and a chunk's or a fused
    build's repr is every variant's outcome -- megabytes in one log line for a 1,000-variant
    fleet. This one's repr is its one-line summary."""

    value: R
    summary: str

    def __repr__(self) -> str:
        return f"<{self.summary}>"


def ended(result: R, outcomes: Sequence[VariantOutcome], what: str) -> R:
    """What a variant-building task returns: ``result`` itself when none of ``outcomes``
    failed; else a ``Failed`` state holding it (:class:`Held`), so that exactly the task runs
    that held a failure end Failed in the UI while the flow goes on with the others. Prefect
    makes a returned state the task run's state; its caller reads the same ``result`` with
    ``tasks.fleet.stages.outcome_of``."""
    failed = [o.name for o in outcomes if o.status == "failed"]
    if not failed:
        return result
    shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
    message = f"{len(failed)} of {len(outcomes)} {what} failed: {shown}"
    # cast: the engine, not the caller, receives the state (Prefect's typing has no such case)
    return cast(R, Failed(message=message, data=Held(result, message)))


def _sources(v: Variant) -> str:
    """The variant's own source files (its ``<artifact>.source`` parameters), for its log line."""
    return ", ".join(val for key, val in sorted(v.params.items()) if key.endswith(".source")) or "-"


class TenantFusion(BaseModel):
    """What a fused tenant's analysis found, kept in the fleet index so that a rebuild takes an
    unchanged tenant (same input key) from here without fetching or parsing its model: its
    model and labels' ``digest`` (what its shard's key is made of), class count, the trunk and
    graph hashes and head identity it was fused under (a changed tenant must match them)."""

    model_config = ConfigDict(frozen=True)
    digest: str
    classes: int
    trunk_sha256: str
    trunk_bytes: int
    graph_sha256: str
    head: str


class FleetIndexEntry(BaseModel):
    """What the fleet index remembers of one variant."""

    model_config = ConfigDict(extra="allow")
    key: str | None = None
    file: str
    target_model: str
    sha256: str | None = None
    bytes: int | None = None
    status: str  # "ok" (its tarball is current) or "failed" (its last build failed)
    reason: str | None = None
    checked_by: str | None = None
    built_at: float | None = None
    #: ``fused``: served by shard ``shard`` as its tenant ``tenant`` (a TENANT value); a
    #: shard's own entry (:attr:`FleetIndex.shards`) says ``fused`` with no shard.
    layout: Literal["separate", "fused"] = "separate"
    shard: str | None = None
    tenant: int | None = None
    fusion: TenantFusion | None = None  # fused: what its analysis found (see TenantFusion)


class FleetIndex(VersionedDocument):
    """``fleet-index.json``: the fleet's variants as last built, by name."""

    kind: ClassVar[str] = "fleet index"
    remedy: ClassVar[str] = "build the fleet again (`mme fleet build`)"
    fleet: str
    target: str
    template_key: str | None = None
    variants: dict[str, FleetIndexEntry] = {}
    #: A fused fleet's shards by name (``<fleet>-shard-000``): one tarball each.
    shards: dict[str, FleetIndexEntry] = {}


@dataclass
class VariantOutcome:
    """One variant's result in this run (picklable: it crosses Dask workers)."""

    name: str
    status: str  # built | unchanged | failed | skipped (not asked for in this run)
    file: str
    target_model: str
    key: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    checked_by: str | None = None
    validation: str | None = None
    reason: str | None = None
    seconds: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    layout: Literal["separate", "fused"] = "separate"
    shard: str | None = None  # fused: the shard that serves it, as its tenant ``tenant``
    tenant: int | None = None
    fusion: TenantFusion | None = None  # fused: what the index keeps of its analysis


@dataclass
class TemplateFootprint:
    """The footprint every variant of this build records (``manifest.footprint``): measured on
    one canary in the Triton that verifies them (memory by the endpoint's probe, basis PSS;
    load, unload, service times), or, when that failed, why -- then each manifest carries the
    named estimate and says why, and the build report says so: never an estimate in silence."""

    measured: Footprint | None = None
    reason: str | None = None

    def for_variant(self, target_model: str, tarball_bytes: int, target: Target) -> JsonObject:
        """The footprint record a variant's manifest carries (measured on the canary, else the
        named estimate): a document, as the manifest stores it."""
        from tasks.build.footprints import variant_footprint

        return variant_footprint(self.measured, self.reason, target_model, tarball_bytes,
                                 gpu=target.endswith("gpu")).to_record()

    def note(self) -> str:
        """The build report's line about it."""
        if self.measured is None:
            return (f"Footprint: NOT measured ({self.reason or 'no canary passed'}); every variant built "
                    f"in this run records the named estimate (formulas, `source.estimated`)")
        fp = self.measured
        canary = fp.source.measured_on if fp.source else None
        return (f"Footprint: measured on canary `{canary}` and recorded on every variant built: "
                f"host memory {fp.host_memory_bytes.value / 2**20:.1f} MiB ({fp.host_memory_bytes.basis}), "
                f"load {fp.load_disk_s.value:.2f} s, unload {fp.unload_s.value:.2f} s, "
                f"service {fp.service_batch1_s.value * 1e3:.1f} ms at batch 1, "
                f"{fp.service_max_batch_s.value * 1e3:.1f} ms at batch {fp.max_batch}")


def measured_footprint(template: FleetTemplate, canary: str, result: Verification) -> TemplateFootprint:
    """The template's footprint from a passing canary's verify result (its ``footprint_times``,
    which the validation record leaves out), or why there is none."""
    from tasks.build.footprints import canary_footprint

    times = result.footprint_times
    if times is None:
        return TemplateFootprint(reason=f"canary {canary} was verified without a measurement")
    if times.loaded is None:
        return TemplateFootprint(reason=f"measuring canary {canary} failed: "
                                        f"{times.error or 'Triton process unknown'}")
    fp = canary_footprint(canary, template.key, times, times.loaded,
                          gpu=template.target.endswith("gpu"), hardware=str(result.measured_on))
    return TemplateFootprint(measured=fp)


def prepare_template(fleet: FleetSpec, variants: Sequence[Variant]) -> FleetTemplate:
    """Load the template, make its shared artifacts once, and compute its key. A fleet for a
    Triton release that cannot keep its variants apart is refused first (nothing is made)."""
    spec, folder = load_template(fleet)
    check_fleet_release(fleet, spec, variants)
    target = fleet.target
    keys = {k for v in variants for k in v.params}
    owned = owned_artifacts(spec, keys, target)
    shared: dict[str, Path] = {}
    shared_sources: dict[str, dict[str, Any]] = {}
    contents: dict[str, str] = {}
    for name in artifacts_for(spec, target):
        if name in owned:
            continue
        got = cache.produce_cached(spec, name, shared, target)
        shared[name], shared_sources[name], contents[name] = got.path, got.meta, got.content
    check_artifacts(spec, target, shared)
    return template_from(fleet, spec, folder, owned, shared, shared_sources, contents)


def template_from(fleet: FleetSpec, spec: EnsembleSpec, folder: Path, owned: tuple[str, ...],
                  shared: dict[str, Path], shared_sources: dict[str, Any],
                  contents: dict[str, str]) -> FleetTemplate:
    """The template and its key, from its shared artifacts (their paths, producers' metadata
    and content hashes). Pure: :func:`prepare_template` calls it once it made them, and
    ``mme fleet build --dry-run`` (:mod:`tasks.fleet.build_plan`) with the ones the cache holds,
    so both decide "unchanged" by the one key."""
    spec_doc = spec.model_dump(mode="json")
    for name in owned:  # the template's own sample sources do not shape any variant
        spec_doc["artifacts"][name]["params"] = {}
    key_doc = {"format": FLEET_FORMAT, "tool": TOOL_VERSION, "target": fleet.target, "spec": spec_doc,
               "folder": cache.content_hash(folder), "shared": contents}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True, default=str).encode()).hexdigest()
    return FleetTemplate(fleet=fleet.name, target=fleet.target, folder=folder, spec=spec, owned=owned,
                         shared=shared, shared_sources=shared_sources, key=key,
                         spec_sha256=spec_digest(folder), tool_version=TOOL_VERSION)


def load_index(output_dir: Path, fleet: str, target: Target) -> FleetIndex:
    """The fleet index in ``output_dir``, or an empty one (an unreadable index only costs a
    full rebuild, so it is not an error)."""
    path = output_dir / INDEX_FILE
    try:
        index = FleetIndex.read(path.read_text(), str(path))
    except (OSError, ValueError):
        return FleetIndex(fleet=fleet, target=target)
    if index.fleet != fleet or index.target != target:
        return FleetIndex(fleet=fleet, target=target)
    return index


def plan_builds(template: FleetTemplate, variants: Sequence[Variant], index: FleetIndex,
                output_dir: Path) -> tuple[list[Variant], list[VariantOutcome]]:
    """(variants to build, outcomes of the unchanged ones). O(variants): one dict lookup and one
    ``stat`` each."""
    to_build: list[Variant] = []
    unchanged: list[VariantOutcome] = []
    for v in variants:
        key = input_key(template.key, v)
        old = index.variants.get(v.name)
        stem = file_stem(v)
        if (key is not None and old is not None and old.status == "ok" and old.key == key
                and (output_dir / f"{stem}.tar.gz").exists()):
            unchanged.append(VariantOutcome(
                name=v.name, status="unchanged", file=old.file, target_model=old.target_model,
                key=key, sha256=old.sha256, bytes=old.bytes, checked_by=old.checked_by,
                labels=v.labels))
        else:
            to_build.append(v)
    return to_build, unchanged


def select_variants(todo: Sequence[Variant], only: Sequence[str] | None,
                    changed_uri: str | None) -> tuple[list[Variant], list[Variant]]:
    """(to build now, left for later): ``only`` names variants; ``changed_uri`` (a model file
    an event reported) picks the variants whose parameters name it. Neither: all of them."""
    if not only and not changed_uri:
        return list(todo), []
    names = set(only or ())
    picked = [v for v in todo if v.name in names or
              (changed_uri is not None and changed_uri in v.params.values())]
    chosen = {v.name for v in picked}
    return picked, [v for v in todo if v.name not in chosen]


def skipped(variants: Sequence[Variant], index: FleetIndex) -> list[VariantOutcome]:
    """Variants this run was not asked to build: their index records stay as they are."""
    out = []
    for v in variants:
        old = index.variants.get(v.name)
        out.append(VariantOutcome(
            name=v.name, status="skipped", file=old.file if old else f"{file_stem(v)}.tar.gz",
            target_model=old.target_model if old else f"{v.name}.tar.gz",
            key=old.key if old else None, sha256=old.sha256 if old else None,
            bytes=old.bytes if old else None, labels=v.labels))
    return out


def pick_canaries(variants: Sequence[Variant], count: int, seed: str) -> list[Variant]:
    """``count`` variants to verify in Triton: a seeded sample (the same fleet picks the same
    ones), always including the first by name."""
    if count >= len(variants):
        return list(variants)
    ordered = sorted(variants, key=lambda v: v.name)
    rest = random.Random(seed).sample(ordered[1:], max(0, count - 1))
    return [ordered[0], *rest]


def _failed(v: Variant, reason: str, t0: float) -> VariantOutcome:
    """The variant's failed outcome, said as one WARNING line (name, its files, reason) in
    the task it failed in."""
    from tasks.fleet.variant import target_model_for

    run_logger().warning("variant %s FAILED (files: %s): %s", v.name, _sources(v), reason)
    return VariantOutcome(name=v.name, status="failed", file=f"{file_stem(v)}.tar.gz",
                          target_model=target_model_for(v), reason=reason,
                          seconds=round(time.perf_counter() - t0, 2), labels=v.labels)


def _committed(staged: StagedVariant, template: FleetTemplate, output_dir: Path, sample: Sample,
               result: Verification, checked_by: str, t0: float,
               footprint: TemplateFootprint) -> VariantOutcome:
    """Write the manifest (with the template's footprint), move the tarball in, and say so."""
    validation = result.to_validation(checked_by=checked_by)
    seconds = time.perf_counter() - t0
    manifest = manifest_for(staged, template, output_dir, validation, sample.to_record(), seconds)
    manifest.footprint = footprint.for_variant(manifest.target_model, staged.bytes, template.target)
    commit_variant(staged, manifest, output_dir)
    v = staged.variant
    run_logger().info("variant %s built: %s, sha256 %s, checked by %s, %.1f s", v.name,
                      manifest.target_model, staged.sha256[:12], checked_by, seconds)
    return VariantOutcome(name=v.name, status="built", file=f"{file_stem(v)}.tar.gz",
                          target_model=manifest.target_model, key=input_key(template.key, v),
                          sha256=staged.sha256, bytes=staged.bytes, checked_by=checked_by,
                          validation=validation.summary(), seconds=round(seconds, 2),
                          labels=v.labels)


def build_checked(template: FleetTemplate, shared: SharedReference | None,
                  structure: Structure | None, v: Variant, work_root: Path,
                  output_dir: Path, footprint: TemplateFootprint) -> VariantOutcome:
    """Stage one variant, check it against the canary's structure and its own reference
    with ONNX Runtime, and commit it; any failure is this variant's outcome, not an error."""
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f"{file_stem(v)[:40]}-", dir=work_root))
    try:
        staged = stage_variant(template, v, work)
        sample = variant_sample(shared, staged, template.target)
        if shared is None or structure is None:
            raise VariantError(f"variant {v.name!r}: no check without Triton exists for this "
                               f"template's validation; verify it in Triton (--triton-sample all)")
        members = read_members(staged.tarball)
        check_structure(structure, staged, template.target, template.owned, members)
        result = check_numbers(shared, staged, sample, template.target, template.owned, members)
        if not result.passed:
            raise VariantError(f"variant {v.name!r}: {result.metric} = {result.value:.6f} "
                               f"is below {result.threshold} ({result.detail()})")
        return _committed(staged, template, output_dir, sample, result, "onnxruntime+structure", t0,
                          footprint)
    except UserError as e:
        return _failed(v, str(e), t0)
    except Exception as e:  # noqa: BLE001 - one variant's surprise must not stop the others
        return _failed(v, f"{type(e).__name__}: {e}", t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class VariantsProgress:
    """The build's ``variants built n/N[, f failed], R/s, ~T left`` reporter
    (:class:`tasks.fleet.progress.Progress`, counting each variant once) and the key by which
    chunk tasks find it (``key``)."""

    key: str
    progress: Progress

    def chunk_ended(self, outcomes: Sequence[VariantOutcome]) -> int:
        """Record a finished chunk's variants, failures included, from the flow: the ones its
        task could not record itself (it ran where the reporter is not: a Dask worker process)
        are counted now, as one moment; the ones it recorded (threads) are not counted again.
        Returns how many were new; the last one unshares the reporter."""
        new = self.progress.record_all(
            (o.name, (o.reason or "failed") if o.status == "failed" else None) for o in outcomes)
        if self.progress.done >= self.progress.total:
            unshare(self.key)
        return new


def variants_progress(total: int, done: int) -> VariantsProgress:
    """A reporter of the build's ``total`` variants (``done`` of them already, the canaries)
    that every chunk task records on as each variant ends: ``variants built n/N[, f failed],
    R/s, ~T left`` on the flow run's log, across the chunks running side by side (each failure
    has its own WARNING line already). A chunk on another process (a Dask worker) finds no
    reporter there: the flow records its variants as it ends (:meth:`VariantsProgress.chunk_ended`),
    so a Dask build says the same lines at chunk granularity."""
    progress = Progress("variants built", total, emit=run_logger().info, done=done, distinct=True)
    return VariantsProgress(key=share(progress), progress=progress)


@task(name="build-variants", cache_policy=NO_CACHE, task_run_name=variant_range_name("build-variants"))
def build_chunk_task(template: FleetTemplate, shared: SharedReference | None,
                     structure: Structure | None, variants: list[Variant], work_root: Path,
                     output_dir: Path, footprint: TemplateFootprint,
                     progress: str | None = None) -> list[VariantOutcome]:
    """A chunk of variants, one after the other (chunks run side by side): one task per
    chunk, not per variant, keeps a thousand-variant run's API traffic small. Each variant's
    end is recorded on the run's reporter (``progress``: its key, :func:`variants_progress`)
    where this process has it; elsewhere (a Dask worker) the flow records them as the chunk
    ends. Ends Failed (holding every outcome) when one of them failed (:func:`ended`)."""
    outcomes = []
    for v in variants:
        outcomes.append(build_checked(template, shared, structure, v, work_root, output_dir, footprint))
        record_shared(progress, v.name, outcomes[-1].reason if outcomes[-1].status == "failed" else None)
    return ended(outcomes, outcomes, "variants")


def _stage_canaries(template: FleetTemplate, shared: SharedReference | None,
                    canaries: Sequence[Variant], work_root: Path,
                    ) -> tuple[list[tuple[StagedVariant, Sample, float]], list[VariantOutcome]]:
    staged: list[tuple[StagedVariant, Sample, float]] = []
    failed: list[VariantOutcome] = []
    for v in canaries:
        t0 = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix=f"{file_stem(v)[:40]}-", dir=work_root))
        try:
            s = stage_variant(template, v, work)
            staged.append((s, variant_sample(shared, s, template.target), t0))
        except Exception as e:  # noqa: BLE001 - reported as this variant's failure
            shutil.rmtree(work, ignore_errors=True)
            failed.append(_failed(v, str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}", t0))
    return staged, failed


@task(name="verify-canaries", cache_policy=NO_CACHE, task_run_name=variant_range_name("verify-canaries"))
def build_canaries_task(template: FleetTemplate, shared: SharedReference | None,
                        canaries: list[Variant], work_root: Path,
                        output_dir: Path,
                        ) -> tuple[list[VariantOutcome], Structure | None, TemplateFootprint]:
    """Stage the canaries, verify each in one long-lived Triton, commit those that pass.
    Returns their outcomes, the structure of the first that passed (what the others are
    checked against), or None when none did, and the footprint measured on it; ends Failed
    holding them when a canary failed (:func:`ended`)."""
    log = run_logger()
    staged, outcomes = _stage_canaries(template, shared, canaries, work_root)
    results = verify_in_triton([(s, sample) for s, sample, _ in staged], log=log.info)
    structure: Structure | None = None
    passed = [(n, r) for n, r in results.items() if not isinstance(r, Exception)]
    footprint = (measured_footprint(template, *passed[0]) if passed
                 else TemplateFootprint(reason="no canary passed Triton verification"))
    if footprint.reason:
        log.warning("footprint of %s not measured: %s", template.fleet, footprint.reason)
    for s, sample, t0 in staged:
        got = results[s.variant.name]
        if isinstance(got, Exception):
            outcomes.append(_failed(s.variant, str(got), t0))
            shutil.rmtree(s.work, ignore_errors=True)
            continue
        if structure is None:
            structure = Structure.of(read_members(s.tarball))
        outcomes.append(_committed(s, template, output_dir, sample, got, "triton", t0, footprint))
    return ended((outcomes, structure, footprint), outcomes, "canaries")


def chunked(items: Sequence[Variant], size: int) -> Iterable[list[Variant]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


def chunk_size(count: int, workers: int) -> int:
    """About 8 chunks per worker (so progress moves and a slow chunk does not hold the end),
    at most 25 variants each."""
    return max(1, min(25, -(-count // max(1, workers * 8))))


def write_index(output_dir: Path, template: FleetTemplate, index: FleetIndex,
                outcomes: Sequence[VariantOutcome], variants: Sequence[Variant],
                shards: Mapping[str, FleetIndexEntry] | None = None) -> FleetIndex:
    """The new fleet index (atomically): built and unchanged variants are ``ok``; a failed
    variant keeps its previous tarball's record with ``status: failed`` and the reason;
    variants no longer declared are dropped from the index (their files stay until gc).
    ``shards``: a fused fleet's shards of this build (None: the index's are kept)."""
    declared = {v.name for v in variants}
    entries: dict[str, FleetIndexEntry] = {}
    for o in outcomes:
        old = index.variants.get(o.name)
        if o.status == "skipped":
            if old is not None:
                entries[o.name] = old
            continue
        if o.status == "failed":
            base = old.model_dump() if old else {"file": o.file, "target_model": o.target_model}
            entries[o.name] = FleetIndexEntry.model_validate({**base, "status": "failed", "reason": o.reason,
                                                         "key": None})
        else:
            entries[o.name] = FleetIndexEntry(key=o.key, file=o.file, target_model=o.target_model,
                                         sha256=o.sha256, bytes=o.bytes, status="ok",
                                         checked_by=o.checked_by,
                                         built_at=time.time() if o.status == "built" else
                                         (old.built_at if old else None),
                                         layout=o.layout, shard=o.shard, tenant=o.tenant,
                                         fusion=o.fusion)
    new = FleetIndex(fleet=template.fleet, target=template.target, template_key=template.key,
                     variants={k: entries[k] for k in sorted(entries) if k in declared},
                     shards=dict(index.shards if shards is None else shards))
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / INDEX_FILE) as tmp:
        tmp.write_text(new.model_dump_json(indent=1))
    return new


@task(name="prepare-template", cache_policy=NO_CACHE)
def prepare_template_task(fleet: FleetSpec, variants: list[Variant]) -> tuple[FleetTemplate, SharedReference | None]:
    """The template's shared work, done once per build, and the shared reference input."""
    template = prepare_template(fleet, variants)
    shared = shared_reference(template.spec, template.shared, template.target, template.owned)
    return template, shared
