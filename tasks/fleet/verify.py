"""Verify fleet variants in one long-lived Triton: load, check, unload, in turn.

Starting a server per ensemble would cost a server start per variant; one server, loading each
variant under its own namespace (as the endpoint does) from the very tarball that ships and
unloading it after its check, costs one load and one unload per variant.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np

from infra.errors import MMEError
from infra.triton.measure import LoadRun
from infra.triton.model_repo import namespace_repository
from infra.store.tarball import safe_extract
from infra.processes.ownership import owner
from tasks.fleet.variant import StagedVariant, VariantError, target_model_for
from tasks.build.footprints import CanaryTimes, LoadedFigures
from tasks.build.verify import Sample, Verification, score
from tasks.runtime.hardware import hardware

if TYPE_CHECKING:
    from infra.triton.server import TritonServer


@dataclass(frozen=True)
class Unpacked:
    """A shipped tarball extracted and namespaced into the verifying Triton's repository (as the
    endpoint loads it): the model to load (``entry``) and the readings a canary's footprint
    takes from the unpacking."""

    entry: str
    tarball_bytes: int
    unpacked_bytes: int
    extract_s: float

    def canary_times(self, run: LoadRun, loaded: LoadedFigures | str | None) -> CanaryTimes:
        """The raw footprint readings of this tarball's load (``loaded``: what
        :func:`tasks.build.footprints.measure_loaded` found, or why it failed)."""
        took = run.result
        return CanaryTimes(tarball_bytes=self.tarball_bytes, unpacked_bytes=self.unpacked_bytes,
                           extract_s=self.extract_s, load_s=took.load_s, unload_s=took.unload_s or 0.0,
                           loaded=loaded if isinstance(loaded, LoadedFigures) else None,
                           error=loaded if isinstance(loaded, str) else None)


@contextmanager
def unpacked_into(repo: Path, tarball: Path, target_model: str, scratch: Path) -> Iterator[Unpacked]:
    """``tarball`` extracted under ``scratch`` and namespaced into ``repo`` as ``target_model``
    for the ``with`` block, then removed from both (a variant's check and a fused shard's
    check load tarballs the same way, one after another, in one server)."""
    t0 = time.perf_counter()
    extracted = safe_extract(tarball, scratch / "x")
    extract_s = time.perf_counter() - t0
    unpacked = sum(p.stat().st_size for p in extracted.rglob("*") if p.is_file())
    ns = namespace_repository(extracted, repo, target_model)
    try:
        yield Unpacked(entry=ns.entry, tarball_bytes=tarball.stat().st_size, unpacked_bytes=unpacked,
                       extract_s=extract_s)
    finally:
        for model in ns.models:
            shutil.rmtree(repo / model, ignore_errors=True)
        shutil.rmtree(scratch / "x", ignore_errors=True)


def with_triton_times(result: Verification, run: LoadRun, service_s: float | None,
                      times: CanaryTimes | None) -> Verification:
    """``result`` (scored from Triton's answer) with the load's times, where it was measured
    and the canary's readings; ``per_item`` is dropped (fleet results stay small)."""
    took = run.result
    return result.model_copy(update={
        "per_item": None, "load_seconds": round(took.load_s, 3),
        "unload_seconds": round(took.unload_s or 0.0, 3),
        "service_seconds": round(service_s, 4) if service_s is not None else None,
        "measured_on": hardware(), "footprint_times": times})


def _serve(server: TritonServer, client: httpx.Client, entry: str, staged: StagedVariant, sample: Sample,
           measure: bool) -> tuple[dict[str, np.ndarray], LoadRun, LoadedFigures | str | None]:
    """Load ``entry`` through the one harness, run its sample twice (the second, warm call is
    the planner's service time), measure the footprint when ``measure`` (memory against a
    reading taken before the load), unload. Returns the output, the run (its times), and the
    measurement, or why it failed (the variant's check does not depend on it)."""
    from infra.aws.runtime_client import infer_direct
    from tasks.build.footprints import measure_loaded

    name = staged.variant.name
    loaded: LoadedFigures | str | None = None
    with LoadRun(server, entry, memory=measure) as run:
        try:
            got = infer_direct(client, entry, sample.inputs)
            run.service_time(lambda: infer_direct(client, entry, sample.inputs), warm_up=False)
            if run.measures_memory:
                try:
                    loaded = measure_loaded(run, sample.inputs, staged.spec.max_batch_size)
                except Exception as e:  # noqa: BLE001 - the footprint falls back to a named estimate
                    loaded = f"{type(e).__name__}: {e}"
        except RuntimeError as e:
            raise VariantError(f"variant {name!r}: Triton refused the sample: {e}") from None
    return got, run, loaded


def _check_one(server: TritonServer, client: httpx.Client, repo: Path, staged: StagedVariant,
               sample: Sample, scratch: Path, measure: bool = False) -> Verification:
    """Load one tarball under its namespace, run its sample, score it, unload it. ``measure``
    also measures its footprint (``result.footprint_times``: what
    :func:`tasks.build.footprints.canary_footprint` takes)."""
    v = staged.spec.validation
    assert v is not None
    name = staged.variant.name
    with unpacked_into(repo, staged.tarball, target_model_for(staged.variant), scratch) as unpacked:
        try:
            got, run, loaded = _serve(server, client, unpacked.entry, staged, sample, measure)
        except MMEError as e:
            if isinstance(e, VariantError):
                raise
            raise VariantError(f"variant {name!r}: Triton could not load its tarball: {e}") from None
    times = unpacked.canary_times(run, loaded) if measure else None
    result = with_triton_times(score(v.metric, v.threshold, sample, got), run,
                               run.result.service_s or 0.0, times)
    if not result.passed:
        raise VariantError(f"variant {name!r}: in Triton, {v.metric} = {result.value:.6f} is "
                           f"below {v.threshold} ({result.detail()})")
    return result


def verify_in_triton(items: Sequence[tuple[StagedVariant, Sample]],
                     log: Callable[[str], None] = print) -> dict[str, Verification | Exception]:
    """Each staged variant's tarball checked in one Triton server; per variant its result or
    the error it failed with (a server that cannot start fails them all)."""
    out: dict[str, Verification | Exception] = {}
    if not items:
        return out
    with scratch_triton("mme-fleet-verify-") as t:
        measure = True  # the first canary that passes is measured (its footprint)
        for staged, sample in items:
            name = staged.variant.name
            try:
                result = _check_one(t.server, t.client, t.repo, staged, sample, t.scratch, measure)
                out[name] = result
                measure = False
                log(f"triton verified {name}: {result.metric} = {result.value:.6f}")
            except Exception as e:  # noqa: BLE001 - reported per variant by the caller
                out[name] = e
                log(f"triton refused {name}: {e}")
    return out


@dataclass(frozen=True)
class ScratchTriton:
    """A Triton for one run's checks: the server, one HTTP client to it, the (initially empty)
    repository the checks load into, and the scratch folder around them."""

    server: TritonServer
    client: httpx.Client
    repo: Path
    scratch: Path


@contextmanager
def scratch_triton(prefix: str) -> Iterator[ScratchTriton]:
    """One long-lived Triton in this owner's scratch (swept if the run is killed), with its log
    beside its repository: what a fleet build's variant and shard checks share."""
    from infra.triton.server import TritonServer

    with owner().scratch(prefix) as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        with TritonServer(repo, log_path=Path(tmp) / "triton.log") as server, \
                httpx.Client(base_url=server.url, timeout=120) as client:
            yield ScratchTriton(server, client, repo, Path(tmp))
