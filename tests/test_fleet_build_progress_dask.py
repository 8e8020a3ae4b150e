"""Issue 21 under Dask: a fleet build's ``variants built n/N, R/s, ~T left`` lines when its chunk
tasks run in Dask worker processes, which cannot reach the flow's reporter.

The flow records each chunk's variants as the chunk's future completes
(:meth:`tasks.fleet.build.VariantsProgress.chunk_ended`); a chunk that recorded its variants
itself (threads) is not counted again. The first tests drive that recording with the outcomes
a chunk hands back (no flow); the last runs a real fleet build on a local Dask cluster of two
worker processes and reads the flow run's log back from the API.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.prefect_runs import break_variants, example_names, named, read_back

from tasks.fleet.build import VariantOutcome, VariantsProgress
from tasks.fleet.progress import Progress, record_shared, share, shared


def _reporter(total: int, done: int, lines: list[str]) -> VariantsProgress:
    """What :func:`tasks.fleet.build.variants_progress` makes, with a still clock and the lines
    kept."""
    progress = Progress("variants built", total, emit=lines.append, done=done, distinct=True,
                        clock=lambda: 0.0)
    return VariantsProgress(key=share(progress), progress=progress)


def _outcome(name: str, failed: bool = False) -> VariantOutcome:
    return VariantOutcome(name=name, status="failed" if failed else "built", file=f"{name}.tar.gz",
                          target_model=f"{name}.tar.gz", reason="bad model" if failed else None)


def _chunks() -> list[list[VariantOutcome]]:
    """Three chunks of the rest of a 10-variant build (2 canaries before them), one failure."""
    names = [f"v{i:02d}" for i in range(2, 10)]
    outcomes = [_outcome(n, failed=n == "v05") for n in names]
    return [outcomes[0:3], outcomes[3:6], outcomes[6:8]]


def _run_chunk(said: VariantsProgress, chunk: list[VariantOutcome],
               recorder: Callable[[str | None, str, str | None], bool]) -> bool:
    """What a chunk task does with the key (``recorder`` in its process), then what the flow
    does as its future completes; True: the chunk found the reporter."""
    found = all([recorder(said.key, o.name, o.reason) for o in chunk])
    said.chunk_ended(chunk)
    return found


def _elsewhere(key: str | None, item: str, reason: str | None) -> bool:
    """``record_shared`` in a Dask worker process: the key names no reporter there."""
    return record_shared(None, item, reason)


def test_a_dask_build_says_its_progress_per_chunk_from_the_flow() -> None:
    """Chunks that cannot reach the reporter: the flow counts each chunk's variants as the chunk
    ends, one line per chunk (a chunk's variants end at one moment), to 10/10 with the failure."""
    lines: list[str] = []
    said = _reporter(10, 2, lines)
    found = [_run_chunk(said, chunk, _elsewhere) for chunk in _chunks()]
    assert found == [False, False, False]
    assert lines == ["variants built 5/10", "variants built 8/10, 1 failed (latest: v05)",
                     "variants built 10/10, 1 failed (latest: v05)"]
    assert said.progress.done == 10 and said.progress.failed == ["v05"]
    assert shared(said.key) is None  # the last chunk unshared it


def test_a_threads_build_counts_each_variant_once() -> None:
    """Chunks that reach the reporter (threads) record each variant as it ends; the flow's
    record of the same chunk then counts nothing: per-variant lines, no double count."""
    lines: list[str] = []
    said = _reporter(10, 2, lines)
    found = [_run_chunk(said, chunk, record_shared) for chunk in _chunks()]
    assert found == [True, True, True]
    counts = [int(line.split()[2].split("/")[0].rstrip(",")) for line in lines]
    assert counts == list(range(3, 11))  # one line per variant (every 5% of 10 is every one)
    assert lines[-1] == "variants built 10/10, 1 failed (latest: v05)"
    assert said.progress.done == 10 and said.progress.failed == ["v05"]
    assert said.chunk_ended(_chunks()[0]) == 0  # a chunk recorded again counts nothing


def test_mixed_chunks_count_every_variant_once() -> None:
    """Some chunks on the flow's process (a Dask cluster with in-process workers alongside
    another), some not: each variant is counted exactly once whoever records it first."""
    lines: list[str] = []
    said = _reporter(10, 2, lines)
    a, b, c = _chunks()
    _run_chunk(said, a, record_shared)
    _run_chunk(said, b, _elsewhere)
    _run_chunk(said, c, record_shared)
    assert said.progress.done == 10 and said.progress.failed == ["v05"]
    assert sum("10/10" in line for line in lines) == 1


def test_record_all_is_one_moment_and_skips_what_was_counted() -> None:
    lines: list[str] = []
    p = Progress("items", 100, emit=lines.append, distinct=True, every=1, clock=lambda: 0.0)
    assert p.record("a") is True and p.record("a") is False
    assert p.record_all([("a", None), ("b", None), ("c", "broken")]) == 2
    assert lines == ["items 1/100", "items 3/100, 1 failed (latest: c)"]
    assert p.record_all([("b", None)]) == 0 and len(lines) == 2


@pytest.mark.triton  # the canary is verified in a real tritonserver
@pytest.mark.prefect
def test_a_fleet_build_on_dask_workers_says_n_of_n(tmp_path: Path, mme_home: Path, prefect_harness,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """MME_TASK_RUNNER=dask on a local cluster of two worker processes (where the flow's
    reporter is not): the flow run's log, read back from the API, has ``variants built n/8``
    lines counting up from the canary to 8/8, with the three broken variants counted once."""
    from distributed import LocalCluster

    from flows.fleet_build import fleet_build
    from tasks.fleet.example import make_example_fleet

    prefix = tmp_path / "models"
    make_example_fleet(8, prefix.as_uri(), seed=5, fleet_file=tmp_path / "fleet.yaml")
    names = example_names(prefix / "tenants")
    broken = break_variants(prefix / "tenants", [names[2], names[4], names[6]])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        monkeypatch.setenv("MME_TASK_RUNNER", "dask")
        monkeypatch.setenv("MME_DASK_ADDRESS", cluster.scheduler_address)
        monkeypatch.setenv("MME_MAX_WORKERS", "2")  # chunk_size(7, 2): chunks of one variant
        state = fleet_build(str(tmp_path / "fleet.yaml"), output_dir=str(tmp_path / "out"),
                            triton_sample=1, return_state=True)
        ran = [p for p in cluster.scheduler.task_prefixes if "build-variants" in p
               or "build_chunk" in p]
    assert ran, "the chunks did not run on the Dask workers"
    assert state.is_failed() and "3 of 8 variants failed" in state.message
    got = read_back(state.state_details.flow_run_id)
    lines = [g.message for g in got.logs if g.message.startswith("variants built ")]
    counts = [int(line.split()[2].split("/")[0].rstrip(",")) for line in lines]
    assert counts == list(range(2, 9)), lines  # from the canary's 1, a line per chunk's end
    assert sum(line.startswith("variants built 8/8") for line in lines) == 1, lines
    assert lines[-1].startswith("variants built 8/8, 3 failed (latest: "), lines
    assert lines[-1].split("latest: ")[1].split(")")[0] in broken
    assert len(named(got.tasks, "build-variants")) == 7  # chunks of one variant each


@pytest.mark.prefect
def test_an_ensemble_build_on_dask_workers_says_n_of_n(tmp_path: Path, mme_home: Path, prefect_harness,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``mme build`` on Dask worker processes: the flow says ``ensembles built n/2`` as each
    ensemble's task ends, each counted once: one built for sagemaker-gpu (verification deferred
    to the endpoint: no Triton here), one failing on a model archive that does not exist."""
    from distributed import LocalCluster

    from flows.build import build

    missing = tmp_path / "no-such-inception.tar.gz"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        monkeypatch.setenv("MME_TASK_RUNNER", "dask")
        monkeypatch.setenv("MME_DASK_ADDRESS", cluster.scheduler_address)
        state = build(ensembles=["image_classifier", "image_classifier_inception"],
                      target="sagemaker-gpu", output_dir=str(tmp_path / "out"),
                      overrides={"inception_archive.source": str(missing)}, return_state=True)
    assert state.is_failed() and missing.name in str(state.message), state.message
    assert (tmp_path / "out" / "image_classifier.tar.gz").exists()
    got = read_back(state.state_details.flow_run_id)
    lines = [g.message for g in got.logs if g.message.startswith("ensembles built ")]
    assert [line.split()[2].rstrip(",") for line in lines] == ["1/2", "2/2"], lines
    assert lines[-1].startswith(
        "ensembles built 2/2, 1 failed (latest: image_classifier_inception) in "), lines
