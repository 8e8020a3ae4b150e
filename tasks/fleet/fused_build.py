"""The fused part of a fleet build, start to end: plan the shards, build the changed ones,
verify them in one Triton, commit them (see :mod:`tasks.fleet.fused` for the parts).

Why apart from :mod:`tasks.fleet.fused`: that module makes one shard; this one decides which
shards a run makes and checks them where they will run. A shard is verified in a real Triton
(one server for every shard of the run, each loaded, invoked for a few tenants through the
whole ensemble with the validation image, unloaded): each answer is compared with the tenant's
own ONNX on the same DALI output (top-5 in order, max abs difference within the template's
tolerance for the target).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from ensembles.fleet_spec import Variant
from infra.errors import MMEError
from infra.jsontypes import JsonObject
from infra.records.manifest import MANIFEST_SUFFIX, Manifest, Validation
from infra.store.objects import atomic_path
from infra.triton.measure import LoadRun
from tasks.build.footprints import LoadedFigures
from tasks.build.verify import Verification, score
from tasks.fleet.build import FleetIndex, FleetIndexEntry, TenantFusion
from tasks.fleet.check import SharedReference
from tasks.fleet.fused import (
    TENANTS_SUFFIX,
    FusedBuild,
    StagedShard,
    TenantModel,
    failed_outcomes,
    fetch_all,
    fused_outcomes,
    shard_key,
    split_shards,
    stage_shard,
    unchanged_build,
)
from tasks.fleet.fusion import FusionAnalysis, analyze_fleet, tenant_signature
from tasks.fleet.progress import Progress
from tasks.fleet.variant import FleetTemplate, input_key
from tasks.fleet.verify import scratch_triton, unpacked_into, with_triton_times

if TYPE_CHECKING:
    from infra.triton.server import TritonServer

CHECKED_BY = "fused: onnxruntime every tenant, triton"


@dataclass
class _Plan:
    """What the shards of a run are made from: the analysis, each fusable tenant's record (from
    the index for an unchanged tenant, from its model for a fetched one), the variants by name,
    the models fetched so far and the work folder they go to, and the variants refused (built
    separately)."""

    analysis: FusionAnalysis
    records: dict[str, TenantFusion]
    variants: dict[str, Variant]
    got: dict[str, TenantModel]
    work: Path
    refused: dict[str, str] = field(default_factory=dict)


def build_fused(template: FleetTemplate, shared: SharedReference | None, variants: Sequence[Variant],
                index: FleetIndex, out: Path, work_root: Path, shard_size: int,
                log: Callable[[str], None] = print) -> FusedBuild:
    """Fuse what fuses of ``variants``; returns the tenants' outcomes, the shards' index
    entries, and the variants refused (with the reason: the caller builds them separately).
    A rebuild fetches and analyses only the tenants whose input changed (:func:`_plan_changed`)
    and the tenants of the shards that must be fused again; else every tenant (:func:`_plan_all`)."""
    quick = unchanged_build(template, variants, index, out)
    if quick is not None:
        return quick
    done = FusedBuild()
    if shared is None:
        done.refused = {v.name: "the template's validation has no shared pre-processed sample to "
                                "check a fused tenant against" for v in variants}
        return done
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fused-", dir=work_root))
    try:
        plan = _plan_changed(template, variants, index, out, work)
        if plan is None:
            plan = _plan_all(template, variants, work, done, t0)
        done.refused = dict(plan.refused)
        staged = _stage_shards(done, template, shared, index, out, plan,
                               split_shards(template.fleet, plan.analysis.fusable, shard_size), t0)
        rebuilt = _verify_and_commit(done, template, index, staged, out, t0, log, plan.records)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    done.lines += _report_lines(done, plan.analysis, staged, rebuilt, shard_size)
    return done


def _report_lines(done: FusedBuild, analysis: FusionAnalysis, staged: Sequence[StagedShard],
                  rebuilt: int, shard_size: int) -> list[str]:
    """The fleet report's lines on the fused part: the failed tenants first (a person looks
    for them; each one's reason is under the report's Failed), then the shards, then the
    variants not fused."""
    failed = sorted(o.name for o in done.outcomes if o.status == "failed")
    lines: list[str] = []
    if failed:
        lines.append(f"Fused tenants failed: {len(failed)} (" + ", ".join(f"`{n}`" for n in failed[:10])
                     + (f" and {len(failed) - 10} more" if len(failed) > 10 else "") + ")")
    lines.append(f"Fused: {len(done.outcomes) - len(failed)} tenants in {len(done.shards)} shards of at "
                 f"most {shard_size} ({rebuilt} built in this run; every tenant within "
                 f"{_max_diff(staged):.3g} of its own model); trunk `{analysis.trunk_sha256[:12]}` "
                 f"({analysis.trunk_bytes / 2**20:.1f} MiB)")
    return lines + [f"Not fused (built separately): `{n}`: {r}" for n, r in sorted(done.refused.items())]


def _plan_all(template: FleetTemplate, variants: Sequence[Variant], work: Path, done: FusedBuild,
              t0: float) -> _Plan:
    """Every tenant fetched and analysed together (a first build, or when the index cannot
    say what is unchanged); a tenant that cannot be fetched fails here."""
    got, failed = fetch_all(template, variants, work)
    done.outcomes += [o for name, reason in failed.items()
                      for o in failed_outcomes([_bare(variants, name)], reason, t0)]
    analysis = analyze_fleet({n: t.model for n, t in got.items()})
    head = analysis.head.identity if analysis.head else ""
    records = {n: TenantFusion(digest=got[n].digest, classes=c, trunk_sha256=analysis.trunk_sha256,
                               trunk_bytes=analysis.trunk_bytes, graph_sha256=analysis.graph_sha256,
                               head=head)
               for n, c in analysis.classes.items()}
    return _Plan(analysis=analysis, records=records, variants={v.name: v for v in variants}, got=got,
                 work=work, refused=dict(analysis.refused))


def _recorded(template: FleetTemplate, variants: Sequence[Variant], index: FleetIndex,
              out: Path) -> tuple[dict[str, TenantFusion], dict[str, str]] | None:
    """The index's records of the fused tenants whose input key is unchanged, and the unchanged
    variants built separately (refused, as the unchanged build says), when the index can stand
    in for the full analysis: same template and variant names, every fused one with its record
    under one trunk, its shard in place. Else None."""
    if index.template_key != template.key or {v.name for v in variants} != set(index.variants):
        return None
    known: dict[str, TenantFusion] = {}
    refused: dict[str, str] = {}
    for v in variants:
        e = index.variants[v.name]
        same = e.status == "ok" and e.key is not None and e.key == input_key(template.key, v)
        if e.layout != "fused":
            if same:
                refused[v.name] = e.reason or "built separately"
            continue
        shard = index.shards.get(e.shard or "")
        if e.fusion is None or shard is None or shard.status != "ok" or not (out / shard.file).exists():
            return None
        if same:
            known[v.name] = e.fusion
    fleet = {(r.trunk_sha256, r.graph_sha256, r.head) for r in known.values()}
    return (known, refused) if len(fleet) == 1 else None


def _plan_changed(template: FleetTemplate, variants: Sequence[Variant], index: FleetIndex, out: Path,
                  work: Path) -> _Plan | None:
    """Only the changed tenants fetched, each checked on its own against the recorded trunk,
    graph and head. None (the caller analyses every tenant, with today's reasons) when the
    index cannot stand in, a changed tenant cannot be fetched, or one does not match."""
    recorded = _recorded(template, variants, index, out)
    if recorded is None:
        return None
    known, refused = recorded
    changed = [v for v in variants if v.name not in known and v.name not in refused]
    if not changed:
        return None
    ref = next(iter(known.values()))
    got, failed = fetch_all(template, changed, work)
    if failed:
        return None
    records = dict(known)
    head = None
    for name, t in got.items():
        sig = tenant_signature(t.model)
        if isinstance(sig, str) or (sig.trunk_sha256, sig.graph_sha256, sig.head.identity) != (
                ref.trunk_sha256, ref.graph_sha256, ref.head):
            return None
        head = sig.head
        records[name] = ref.model_copy(update={"digest": t.digest, "classes": sig.classes})
    analysis = FusionAnalysis(head=head, reference=min(records), trunk_sha256=ref.trunk_sha256,
                              trunk_bytes=ref.trunk_bytes, graph_sha256=ref.graph_sha256,
                              classes={n: r.classes for n, r in records.items()})
    return _Plan(analysis=analysis, records=records, variants={v.name: v for v in variants}, got=got,
                 work=work, refused=refused)


def _stage_shards(done: FusedBuild, template: FleetTemplate, shared: SharedReference, index: FleetIndex,
                  out: Path, plan: _Plan, shards: Mapping[str, list[str]], t0: float) -> list[StagedShard]:
    """Each shard unchanged (its key, from its tenants' recorded digests, is the index's, its
    tarball in place) or fused again: its tenants' models fetched if not yet, every one checked."""
    by_name = plan.variants
    staged: list[StagedShard] = []
    for name, members in shards.items():
        light = [plan.got.get(n) or TenantModel(variant=by_name[n], model=b"", labels=[],
                                                digest=plan.records[n].digest) for n in members]
        key, old = shard_key(template, name, light), index.shards.get(name)
        if old is not None and old.status == "ok" and old.key == key and (out / old.file).exists():
            done.shards[name] = old
            done.outcomes += fused_outcomes(old, name, light, template, "unchanged", fusion=plan.records)
            continue
        try:
            tenants = _fetched(template, [by_name[n] for n in members], plan)
            staged.append(stage_shard(template, shared, name, tenants, plan.analysis, plan.work / name))
            done.outcomes += [o for n, why in sorted(staged[-1].left_out.items())
                              for o in failed_outcomes([plan.got[n]], f"left out of shard {name}: {why}; "
                                                       f"it keeps its previous version", t0)]
        except MMEError as e:
            _shard_failed(done, index, name, light, str(e), t0)
        except Exception as e:  # noqa: BLE001 - one shard's surprise must not stop the others
            _shard_failed(done, index, name, light, f"{type(e).__name__}: {e}", t0)
    return staged


def _fetched(template: FleetTemplate, members: Sequence[Variant], plan: _Plan) -> list[TenantModel]:
    """The shard's tenants' models (fetched now those not fetched yet: a rebuild's unchanged
    tenants of a changed shard); a tenant whose content is not the recorded one fails the shard."""
    missing = [v for v in members if v.name not in plan.got]
    got, failed = fetch_all(template, missing, plan.work)
    if failed:
        name, why = next(iter(failed.items()))
        raise MMEError(f"fetching tenant {name}: {why}")
    stale = [n for n, t in got.items() if t.digest != plan.records[n].digest]
    if stale:
        raise MMEError(f"tenant {stale[0]}'s model is not the one its index entry records "
                       f"(its source changed under an unchanged input key): build again")
    plan.got.update(got)
    return [plan.got[v.name] for v in members]


def _bare(variants: Sequence[Variant], name: str) -> TenantModel:
    v = next(x for x in variants if x.name == name)
    return TenantModel(variant=v, model=b"", labels=[], digest="")


def _max_diff(staged: Sequence[StagedShard]) -> float:
    return max((s.max_abs_diff for s in staged), default=0.0)


def _shard_failed(done: FusedBuild, index: FleetIndex, name: str, tenants: Sequence[TenantModel],
                  reason: str, t0: float) -> None:
    """A shard that failed: its tenants fail with its reason; its previous tarball (if any)
    stays in the index, marked failed."""
    done.outcomes += failed_outcomes(tenants, f"shard {name}: {reason}", t0)
    old = index.shards.get(name)
    if old is not None:
        done.shards[name] = old.model_copy(update={"status": "failed", "reason": reason, "key": None})


def _verify_and_commit(done: FusedBuild, template: FleetTemplate, index: FleetIndex,
                       staged: Sequence[StagedShard], out: Path, t0: float,
                       log: Callable[[str], None], records: Mapping[str, TenantFusion]) -> int:
    """Verify the staged shards in Triton and commit those that pass; returns how many."""
    results = verify_shards_in_triton(staged, log)
    committed = 0
    for s in staged:
        got = results[s.name]
        if isinstance(got, Exception):
            _shard_failed(done, index, s.name, s.tenants, str(got), t0)
            continue
        entry = commit_shard(s, template, out, got, time.perf_counter() - t0)
        done.shards[s.name] = entry
        done.outcomes += fused_outcomes(entry, s.name, s.tenants, template, "built",
                                        round(time.perf_counter() - t0, 2), fusion=records)
        committed += 1
    return committed


def commit_shard(s: StagedShard, template: FleetTemplate, out: Path, result: Verification,
                 seconds: float) -> FleetIndexEntry:
    """Move a verified shard's tarball in, then its sidecar and manifest (each atomically: the
    tarball first, so a manifest never names bytes that are not there)."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / f"{s.name}.tar.gz") as tmp:
        os.replace(s.tarball, tmp)
    with atomic_path(out / f"{s.name}{TENANTS_SUFFIX}") as tmp:
        tmp.write_text(s.sidecar.model_dump_json(indent=1))
    validation = Validation.model_validate({**result.to_validation(checked_by=CHECKED_BY).model_dump(),
                                            "tenants_checked_in_triton": len(s.samples),
                                            "tenants_checked_in_onnxruntime": len(s.tenants),
                                            "max_abs_diff_fused_vs_own": s.max_abs_diff})
    manifest = Manifest(
        ensemble=s.name, target=template.target, target_model=f"{s.name}.tar.gz",
        artifact=(out / f"{s.name}.tar.gz").resolve().as_uri(), sha256=s.sha256, bytes=s.bytes,
        built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        build_seconds=round(seconds, 2), spec_sha256=template.spec_sha256,
        tool_version=template.tool_version, validation=validation,
        sample=s.samples[0].to_record(), footprint=shard_footprint(s, template, result),
        fleet={"name": template.fleet, "template": template.spec.name, "shard": s.name,
               "tenants": len(s.tenants), "template_key": template.key, "layout": "fused",
               "tenant_samples": [x.to_json() for x in s.samples[1:]]})
    with atomic_path(out / f"{s.name}{MANIFEST_SUFFIX}") as tmp:
        tmp.write_text(manifest.to_json())
    return FleetIndexEntry(key=s.key, file=f"{s.name}.tar.gz", target_model=f"{s.name}.tar.gz",
                           sha256=s.sha256, bytes=s.bytes, status="ok", checked_by=CHECKED_BY,
                           built_at=time.time(), layout="fused")


# ------------------------------------------------------------------------------ Triton


def _serve_tenants(server: TritonServer, client: httpx.Client, entry: str, s: StagedShard
                   ) -> tuple[list[Verification], LoadRun, LoadedFigures | str]:
    """Load the shard through the one harness (memory against a reading before the load),
    invoke each sampled tenant through the whole ensemble and score it against its own model,
    then measure what the loaded shard adds and its service times, unload. The first wrong
    answer raises; a failed measurement is returned as its reason (the check does not depend
    on it)."""
    from infra.aws.runtime_client import infer_direct
    from tasks.build.footprints import measure_loaded

    results: list[Verification] = []
    loaded: LoadedFigures | str
    with LoadRun(server, entry, memory=True) as run:
        for sample in s.samples:
            got = infer_direct(client, entry, sample.inputs)
            r = score("matches_reference", 1.0, sample, got)
            if not r.passed:
                raise MMEError(f"in Triton, tenant {sample.context['tenant']} answered "
                               f"unlike its own model: {r.detail()}")
            results.append(r)
        try:
            loaded = measure_loaded(run, s.samples[0].inputs, s.max_batch)
        except Exception as e:  # noqa: BLE001 - the shard's footprint falls back to a named estimate
            loaded = f"{type(e).__name__}: {e}"
    return results, run, loaded


def _check_shard(server: TritonServer, client: httpx.Client, repo: Path, s: StagedShard,
                 scratch: Path) -> Verification:
    """Load the shard's tarball under its namespace, invoke each sampled tenant, score each
    against its own model, measure the shard's footprint on itself (``footprint_times``: the
    raw readings, as a fleet canary's), unload. The first failure raises."""
    with unpacked_into(repo, s.tarball, f"{s.name}.tar.gz", scratch) as unpacked:
        try:
            results, run, loaded = _serve_tenants(server, client, unpacked.entry, s)
        except RuntimeError as e:
            raise MMEError(f"Triton refused the shard's request: {e}") from None
    worst = max(results, key=lambda r: r.max_abs_diff or 0.0)
    service = loaded.service_batch1_s if isinstance(loaded, LoadedFigures) else None
    return with_triton_times(worst, run, service, unpacked.canary_times(run, loaded))


def shard_footprint(s: StagedShard, template: FleetTemplate, result: Verification) -> JsonObject:
    """The shard's footprint record, measured on the shard itself in the Triton that verified
    it (``source.measured_on`` names the shard); when measuring failed, the named estimate
    with ``source.estimated`` saying why: never an estimate in silence."""
    from tasks.build.footprints import canary_footprint, variant_footprint

    gpu = template.target.endswith("gpu")
    times = result.footprint_times
    if times is None or times.loaded is None:
        reason = times.error if times is not None else "the shard was verified without a measurement"
        return variant_footprint(None, f"measuring shard {s.name} failed: {reason}",
                                 f"{s.name}.tar.gz", s.bytes, gpu=gpu).to_record()
    fp = canary_footprint(s.name, template.key, times, times.loaded, gpu=gpu,
                          hardware=str(result.measured_on), role="fused shard")
    return fp.model_copy(update={"target_model": f"{s.name}.tar.gz"}).to_record()


def verify_shards_in_triton(staged: Sequence[StagedShard], log: Callable[[str], None] = print
                            ) -> dict[str, Verification | Exception]:
    """Each staged shard checked in one Triton server; per shard its result (the worst of its
    tenants) or the error it failed with (a server that cannot start fails them all)."""
    out: dict[str, Verification | Exception] = {}
    if not staged:
        return out
    progress = Progress("shards verified", len(staged), emit=log)  # n/N, rate, time left
    try:
        with scratch_triton("mme-fleet-fused-") as t:
            for s in staged:
                try:
                    out[s.name] = _check_shard(t.server, t.client, t.repo, s, t.scratch)
                    log(f"triton verified shard {s.name}: {len(s.samples)} tenants answer as "
                        f"their own models")
                except Exception as e:  # noqa: BLE001 - reported per shard by the caller
                    out[s.name] = e
                    log(f"triton refused shard {s.name}: {e}")
                progress.record(s.name, "refused" if isinstance(out[s.name], Exception) else None)
    except Exception as e:  # noqa: BLE001 - the server did not start: every shard fails
        for s in staged:
            out.setdefault(s.name, e)
    return out
