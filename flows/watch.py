"""The ``watch`` flow: poll a model source location and emit ``mme.model.landed`` events.

The polling alternative to S3 notifications -> :mod:`infra.aws.lambda_handler` (Prefect open source
has no webhooks).  Each run lists the source (``file://`` or ``s3://``, through
:func:`infra.store.objects.open_store`), compares the listing with what the previous run reported, and
emits one Prefect event per NEW or CHANGED model file; a deployment with a
``DeploymentEventTrigger(expect={"mme.model.landed"}, ...)`` reacts to them.  Serve it on a
schedule, e.g.::

    watch.serve(name="watch-models", interval=60,
                parameters={"source_uri": "s3://models-bucket/incoming"})

Rules (pure functions in :mod:`tasks.deploy.watch`, tested without Prefect):

- model file: the key ends with one of ``suffixes`` (:func:`infra.aws.lambda_handler.is_model_key`);
- ensemble: the longest ``ensemble_map`` key prefix, else the key's first path segment
  (``text_embedding/model.safetensors`` -> ``text_embedding``); a top-level key with no map
  match has no ensemble: it is not tracked (a warning each run names it);
- changed (:func:`change_reasons`): a different ``size``, a different ``last_modified``, or a
  different ``sha256`` when both the old and the new record know it (store listings do not
  carry content hashes, S3 ETags included, so in practice size and mtime decide);
- keys are relative to the source location; the event resource id is the object URI.

State: a small JSON object (``$MME_HOME/watch/<sha256(source_uri)[:16]>.json`` by default,
or ``state_uri``: a local path, ``file://`` or ``s3://`` object) written atomically AFTER the
events were emitted and flushed.  A crash in between re-emits on the next run, and that is
harmless: event ids are ``uuid5(uri, size, last_modified, sha256)``, and the Prefect server
stores an id once and its triggers skip ids already seen.  Deleted objects are dropped from the
state and reported in the return value (``"change": "removed"``), never as events.
"""


import logging

from prefect import flow

from infra.aws.lambda_handler import (
    DEFAULT_SUFFIXES,
    EVENT_NAME,
    ensemble_for,
    landed_event,
    stable_event_id,
)
from tasks.runtime.run_context import run_logger
from tasks.deploy.watch import scan_source, write_state

__all__ = ["watch"]


def _flush_events(timeout: float = 30.0) -> None:
    """Wait until the queued events went out, so the state is only written after delivery.

    ``emit_event`` hands events to a background worker; draining it stops that worker (the
    next ``emit_event`` starts a new one).  Best effort: a failure here is only logged (and a
    failed send is logged by Prefect's worker itself).  The worker's routine "Still
    processing items" warning during a drain is muted: it is the drain working, not a problem.
    """
    worker_log = logging.getLogger("EventsWorker")
    level = worker_log.level
    worker_log.setLevel(logging.ERROR)
    try:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=timeout, at_exit=False)
    except Exception as exc:  # noqa: BLE001
        run_logger("mme.watch").warning("could not flush emitted events: %s", exc)
    finally:
        worker_log.setLevel(level)


# --------------------------------------------------------------------------- flow


@flow(name="watch-models", log_prints=False)
def watch(
    source_uri: str,
    state_uri: str | None = None,
    suffixes: list[str] = list(DEFAULT_SUFFIXES),  # noqa: B006 - never mutated
    ensemble_map: dict[str, str] | None = None,
) -> list[dict]:
    """Emit ``mme.model.landed`` for each new or changed model file under ``source_uri``.

    Returns the emitted event payloads (each plus ``"change": "new" | "changed"`` and the
    ``"event_id"`` it was emitted with), followed
    by one entry per object gone since the last run (``"change": "removed"``, no event).
    """
    from prefect.events import emit_event

    log = run_logger("mme.watch")
    found = scan_source(source_uri, state_uri, suffixes, ensemble_map)
    source_uri, state_uri, previous, listing = found.source_uri, found.state_uri, found.previous, found.listing
    for info in found.ignored:
        log.warning("%s: top-level key without an ensemble_map entry, ignored", info.uri)
    changes, removed, new_state = found.diff

    reported: list[dict] = []
    for change in changes:
        info = change.info
        ensemble = ensemble_for(info.key, ensemble_map)
        assert ensemble is not None  # the listing holds only keys with an ensemble
        fields = landed_event(info.uri, info.key, info.size, ensemble)
        event_id = stable_event_id(info.uri, info.size, repr(info.last_modified), info.sha256)
        emit_event(
            event=fields["event"],
            resource=fields["resource"],
            related=fields["related"],
            payload=fields["payload"],
            id=event_id,
        )
        log.info("%s %s (%s, ensemble %s%s)", EVENT_NAME, info.uri, change.kind, ensemble,
                 f"; {', '.join(change.reasons)} differ" if change.reasons else "")
        # the event id goes back to the caller: a re-emission (lost state) carries the same id,
        # which is what lets the server store it once
        reported.append({**fields["payload"], "change": change.kind, "event_id": str(event_id)})

    if reported:
        _flush_events()
    for gone in removed:
        log.info("%s removed since the last scan", gone.record.uri or gone.key)
        reported.append({"uri": gone.record.uri, "key": gone.key, "size": gone.record.size,
                         "ensemble": ensemble_for(gone.key, ensemble_map), "change": "removed"})
    if changes or removed or not previous:
        write_state(state_uri, source_uri, new_state)
    log.info("scanned %s: %d model files, %d events, %d removed", source_uri, len(listing),
             len(changes), len(removed))
    return reported
