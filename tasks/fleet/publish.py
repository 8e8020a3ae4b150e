"""Publish a fleet's tarballs and manifests to a store prefix: the Prefect task over
:func:`infra.store.sync.sync_files` (concurrent uploads, unchanged objects skipped by one index
read, the index written last).

The task says ``objects published n/N, R/s, ~T left`` and moves a ``fleet-publish-progress`` bar
as objects finish (at most every ~5% or 5 s, so a thousand objects cost about twenty API calls,
not a thousand: :class:`tasks.fleet.progress.Progress`) and writes a
``fleet-publish`` markdown report: counts, bytes, store requests, the failed keys and why.
A partial publish does not raise: the report's ``failed`` goes back to the flow, which fails
naming those variants (their previous objects, if any, are still whole in the store and the
index still describes them). An unreachable store is retried (:func:`tasks.runtime.retry.retry_transient`);
a retry skips whatever the first try published.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from infra.store.objects import open_store
from infra.store.sync import LocalObject, SyncReport, sync_files
from tasks.fleet.progress import Progress
from tasks.runtime.text import human_bytes
from tasks.runtime.retry import retry_transient

DEFAULT_WORKERS = 16


def _join(base: str, prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{base}/{prefix}" if base and prefix else base or prefix


def _progress(description: str, log: Callable[[str], None]) -> Callable[[int, int], None]:
    """The ``progress(done, total)`` callback a sync calls as objects finish: ``objects
    published n/N, R/s, ~T left`` on the run's log and a progress artifact, at most every ~5%
    or 5 s (:class:`tasks.fleet.progress.Progress`). Its first call (the objects the index says
    are there already) starts it: they are not in the rate."""
    bar = cast(UUID, create_progress_artifact(progress=0.0, key="fleet-publish-progress",
                                              description=description))
    reporter: list[Progress] = []

    def move(percent: float) -> None:
        update_progress_artifact(bar, percent)

    def progress(done: int, total: int) -> None:
        if not total:  # nothing to publish: the bar full, no line
            move(100.0)
            return
        if not reporter:
            reporter.append(Progress("objects published", total, emit=log, done=done, artifact=move))
            if done < total:
                return
        reporter[0].advance(done)

    return progress


def publish_markdown(report: SyncReport, location: str) -> str:
    """The ``fleet-publish`` report: what was uploaded, skipped, deleted, what failed and why."""
    lines = [f"# Publish to `{location}`", "",
             f"- uploaded: {len(report.uploaded)} ({human_bytes(report.bytes_uploaded)})",
             f"- unchanged (skipped): {len(report.skipped)}",
             f"- deleted: {len(report.deleted)}",
             f"- store requests: {report.requests} "
             f"({', '.join(f'{k} {v}' for k, v in sorted(report.calls.items()))})",
             f"- index rebuilt from a listing: {'yes' if report.index_rebuilt else 'no'}",
             f"- seconds: {report.seconds:.2f} with {report.workers} workers"]
    if report.failed:
        lines += ["", "| failed key | reason |", "|---|---|"]
        lines += [f"| {key} | {reason.replace('|', '/').replace(chr(10), ' ')[:300]} |"
                  for key, reason in report.failed]
    return "\n".join(lines) + "\n"


@task(name="publish-fleet", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=retry_transient)
def publish_fleet_task(store_uri: str, prefix: str, built: Mapping[str, LocalObject], *,
                       workers: int = DEFAULT_WORKERS, delete_missing: bool = False) -> SyncReport:
    """Sync ``built`` (key relative to ``prefix`` -> local file) to ``<store_uri>/<prefix>``."""
    store, base = open_store(store_uri)
    full = _join(base, prefix)
    location = f"{store_uri.rstrip('/')}/{prefix.strip('/')}" if prefix.strip("/") else store_uri
    log = get_run_logger()
    progress = _progress(f"Objects published of {len(built)} to {location}", log.info)
    report = sync_files(store, full, built, workers=workers, delete_missing=delete_missing,
                        progress=progress)
    log.info("published to %s: %d uploaded (%s), %d unchanged, %d deleted, %d failed; "
             "%d store requests in %.2f s", location, len(report.uploaded),
             human_bytes(report.bytes_uploaded), len(report.skipped), len(report.deleted),
             len(report.failed), report.requests, report.seconds)
    for key, reason in report.failed:
        log.error("not published: %s: %s", key, reason)
    create_markdown_artifact(key="fleet-publish", markdown=publish_markdown(report, location),
                             description=f"Publish of {len(built)} objects to {location}")
    return report
