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
from collections.abc import Callable, Sequence
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
from tasks.fleet.build import FleetIndex, FleetIndexEntry
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
from tasks.fleet.fusion import analyze_fleet
from tasks.fleet.variant import FleetTemplate
from tasks.fleet.verify import scratch_triton, unpacked_into, with_triton_times

if TYPE_CHECKING:
    from infra.triton.server import TritonServer

CHECKED_BY = "fused: onnxruntime every tenant, triton"


def build_fused(template: FleetTemplate, shared: SharedReference | None, variants: Sequence[Variant],
                index: FleetIndex, out: Path, work_root: Path, shard_size: int,
                log: Callable[[str], None] = print) -> FusedBuild:
    """Fuse what fuses of ``variants``; returns the tenants' outcomes, the shards' index
    entries, and the variants refused (with the reason: the caller builds them separately)."""
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
        got, failed = fetch_all(template, variants, work)
        done.outcomes += [o for name, reason in failed.items()
                          for o in failed_outcomes([_bare(variants, name)], reason, t0)]
        analysis = analyze_fleet({n: t.model for n, t in got.items()})
        done.refused = dict(analysis.refused)
        shards = split_shards(template.fleet, analysis.fusable, shard_size)
        staged = []
        for name, members in shards.items():
            tenants = [got[n] for n in members]
            key, old = shard_key(template, name, tenants), index.shards.get(name)
            if old is not None and old.status == "ok" and old.key == key and (out / old.file).exists():
                done.shards[name] = old
                done.outcomes += fused_outcomes(old, name, tenants, template, "unchanged")
                continue
            try:
                staged.append(stage_shard(template, shared, name, tenants, analysis, work / name))
                done.outcomes += [o for n, why in sorted(staged[-1].left_out.items())
                                  for o in failed_outcomes([got[n]], f"left out of shard {name}: {why}; "
                                                           f"it keeps its previous version", t0)]
            except MMEError as e:
                _shard_failed(done, index, name, tenants, str(e), t0)
            except Exception as e:  # noqa: BLE001 - one shard's surprise must not stop the others
                _shard_failed(done, index, name, tenants, f"{type(e).__name__}: {e}", t0)
        rebuilt = _verify_and_commit(done, template, index, staged, out, t0, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fused = sum(1 for o in done.outcomes if o.status != "failed")
    done.lines.append(f"Fused: {fused} tenants in {len(done.shards)} shards of at most {shard_size} "
                      f"({rebuilt} built in this run; every tenant within {_max_diff(staged):.3g} "
                      f"of its own model); trunk `{analysis.trunk_sha256[:12]}` "
                      f"({analysis.trunk_bytes / 2**20:.1f} MiB)")
    done.lines += [f"Not fused (built separately): `{n}`: {r}" for n, r in sorted(done.refused.items())]
    return done


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
                       log: Callable[[str], None]) -> int:
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
                                        round(time.perf_counter() - t0, 2))
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
    except Exception as e:  # noqa: BLE001 - the server did not start: every shard fails
        for s in staged:
            out.setdefault(s.name, e)
    return out
