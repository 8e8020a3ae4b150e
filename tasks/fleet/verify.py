"""Verify fleet variants in one long-lived Triton: load, check, unload, in turn.

Starting a server per ensemble would cost a server start per variant; one server, loading each
variant under its own namespace (as the endpoint does) from the very tarball that ships and
unloading it after its check, costs one load and one unload per variant.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from infra.errors import MMEError
from infra.triton.model_repo import namespace_repository
from infra.store.tarball import safe_extract
from infra.processes.ownership import owner
from tasks.fleet.variant import StagedVariant, VariantError, target_model_for
from tasks.build.verify import Sample, Verification, score
from tasks.runtime.hardware import hardware



def _serve(server: Any, client: Any, entry: str, staged: StagedVariant, sample: Sample,
           measure: bool) -> tuple[Any, dict[str, Any]]:
    """Load ``entry``, run its sample twice (the second, warm call is the planner's service
    time), measure the footprint when ``measure`` (memory against a reading taken before the
    load), unload. Returns the output and the times (a failed measurement is recorded as
    ``footprint_error``: the variant's check does not depend on it)."""
    import time

    from infra.aws.runtime_client import infer_direct
    from tasks.build.footprints import measure_loaded, triton_memory

    name = staged.variant.name
    before = triton_memory(server.pid) if measure and server.pid is not None else None
    t0 = time.perf_counter()
    server.load(entry)
    times: dict[str, Any] = {"load_s": time.perf_counter() - t0}
    try:
        got = infer_direct(client, entry, sample.inputs)
        t1 = time.perf_counter()
        infer_direct(client, entry, sample.inputs)
        times["service_s"] = time.perf_counter() - t1
        if before is not None:
            try:
                times["loaded"] = measure_loaded(server.pid, server.url, entry, sample.inputs,
                                                 staged.spec.max_batch_size, before)
            except Exception as e:  # noqa: BLE001 - the footprint falls back to a named estimate
                times["footprint_error"] = f"{type(e).__name__}: {e}"
    except RuntimeError as e:
        raise VariantError(f"variant {name!r}: Triton refused the sample: {e}") from None
    finally:
        t2 = time.perf_counter()
        server.unload(entry)
        times["unload_s"] = time.perf_counter() - t2
    return got, times


def _check_one(server: Any, client: Any, repo: Path, staged: StagedVariant,
               sample: Sample, scratch: Path, measure: bool = False) -> Verification:
    """Load one tarball under its namespace, run its sample, score it, unload it. ``measure``
    also measures its footprint (``result["footprint_times"]``: what
    :func:`tasks.build.footprints.canary_footprint` takes)."""
    import time

    v = staged.spec.validation
    assert v is not None
    name = staged.variant.name
    t0 = time.perf_counter()
    extracted = safe_extract(staged.tarball, scratch / "x")
    extract_s = time.perf_counter() - t0
    unpacked = sum(p.stat().st_size for p in extracted.rglob("*") if p.is_file())
    ns = namespace_repository(extracted, repo, target_model_for(staged.variant))
    try:
        got, times = _serve(server, client, ns.entry, staged, sample, measure)
    except MMEError as e:
        if isinstance(e, VariantError):
            raise
        raise VariantError(f"variant {name!r}: Triton could not load its tarball: {e}") from None
    finally:
        for model in ns.models:
            shutil.rmtree(repo / model, ignore_errors=True)
        shutil.rmtree(scratch / "x", ignore_errors=True)
    result = score(v.metric, v.threshold, sample, got).model_copy(update={
        "per_item": None, "load_seconds": round(times["load_s"], 3),
        "unload_seconds": round(times["unload_s"], 3),
        "service_seconds": round(times["service_s"], 4), "measured_on": hardware(),
        "footprint_times": ({**times, "extract_s": extract_s, "unpacked_bytes": unpacked,
                             "tarball_bytes": staged.tarball.stat().st_size} if measure else None)})
    if not result.passed:
        raise VariantError(f"variant {name!r}: in Triton, {v.metric} = {result.value:.6f} is "
                           f"below {v.threshold} ({result.detail()})")
    return result


def verify_in_triton(items: Sequence[tuple[StagedVariant, Sample]],
                     log: Callable[[str], None] = print) -> dict[str, Verification | Exception]:
    """Each staged variant's tarball checked in one Triton server; per variant its result or
    the error it failed with (a server that cannot start fails them all)."""
    import httpx

    from infra.triton.server import TritonServer

    out: dict[str, Verification | Exception] = {}
    if not items:
        return out
    with owner().scratch("mme-fleet-verify-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        with TritonServer(repo, log_path=Path(tmp) / "triton.log") as server, \
                httpx.Client(base_url=server.url, timeout=120) as client:
            measure = True  # the first canary that passes is measured (its footprint)
            for staged, sample in items:
                name = staged.variant.name
                try:
                    result = _check_one(server, client, repo, staged, sample, Path(tmp), measure)
                    out[name] = result
                    measure = False
                    log(f"triton verified {name}: {result.metric} = {result.value:.6f}")
                except Exception as e:  # noqa: BLE001 - reported per variant by the caller
                    out[name] = e
                    log(f"triton refused {name}: {e}")
    return out
