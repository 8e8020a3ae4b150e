"""The ``watch`` flow: poll a model source location and emit ``mme.model.landed`` events.

The polling alternative to S3 notifications -> :mod:`infra.lambda_handler` (Prefect open source
has no webhooks).  Each run lists the source (``file://`` or ``s3://``, through
:func:`infra.store.open_store`), compares the listing with what the previous run reported, and
emits one Prefect event per NEW or CHANGED model file; a deployment with a
``DeploymentEventTrigger(expect={"mme.model.landed"}, ...)`` reacts to them.  Serve it on a
schedule, e.g.::

    watch.serve(name="watch-models", interval=60,
                parameters={"source_uri": "s3://models-bucket/incoming"})

Rules (pure functions, tested without Prefect):

- model file: the key ends with one of ``suffixes`` (:func:`infra.lambda_handler.is_model_key`);
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


import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from prefect import flow, get_run_logger
from prefect.exceptions import MissingContextError

from infra import paths
from infra.lambda_handler import (
    DEFAULT_SUFFIXES,
    EVENT_NAME,
    ensemble_for,
    is_model_key,
    landed_event,
    stable_event_id,
)
from infra.store import ObjectInfo, ObjectNotFound, ObjectStore, atomic_path, open_store

STATE_VERSION = 1

__all__ = ["Change", "change_reasons", "default_state_uri", "diff_listing", "scan", "watch"]


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:  # called outside a run
        return logging.getLogger("mme.watch")


# --------------------------------------------------------------------------- pure logic


@dataclass(frozen=True)
class Change:
    """One new or changed object: ``kind`` is ``"new"`` or ``"changed"``; ``reasons`` say why."""

    info: ObjectInfo
    kind: str
    reasons: tuple[str, ...] = ()


def record_of(info: ObjectInfo) -> dict[str, Any]:
    """What the state remembers of an object."""
    return {"uri": info.uri, "size": info.size, "last_modified": info.last_modified, "sha256": info.sha256}


def change_reasons(old: Mapping[str, Any], info: ObjectInfo) -> tuple[str, ...]:
    """Why ``info`` differs from the remembered record ``old`` (empty: unchanged)."""
    reasons = []
    if old.get("size") != info.size:
        reasons.append("size")
    if old.get("last_modified") != info.last_modified:
        reasons.append("last_modified")
    if old.get("sha256") is not None and info.sha256 is not None and old["sha256"] != info.sha256:
        reasons.append("sha256")
    return tuple(reasons)


def diff_listing(
    previous_state: Mapping[str, Mapping[str, Any]], listing: Iterable[ObjectInfo]
) -> tuple[list[Change], list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Compare a listing with the previously reported objects.

    ``previous_state`` maps key -> record (see :func:`record_of`); ``listing`` holds the
    current (already filtered) objects.  Returns ``(new_or_changed, removed, new_state)``:
    the changes sorted by key, the removed records (each with its ``key``), and the state to
    remember.  An unchanged object keeps its old record, so a known sha256 is not forgotten.
    """
    new_or_changed: list[Change] = []
    new_state: dict[str, dict[str, Any]] = {}
    for info in sorted(listing, key=lambda i: i.key):
        old = previous_state.get(info.key)
        if old is None:
            new_or_changed.append(Change(info, "new"))
            new_state[info.key] = record_of(info)
            continue
        reasons = change_reasons(old, info)
        if reasons:
            new_or_changed.append(Change(info, "changed", reasons))
            new_state[info.key] = record_of(info)
        else:
            new_state[info.key] = dict(old)
    removed = [{"key": key, **dict(old)} for key, old in sorted(previous_state.items()) if key not in new_state]
    return new_or_changed, removed, new_state


def default_state_uri(source_uri: str) -> str:
    """``$MME_HOME/watch/<sha256(source_uri)[:16]>.json`` as a file URI."""
    digest = hashlib.sha256(source_uri.rstrip("/").encode()).hexdigest()[:16]
    return (paths.home() / "watch" / f"{digest}.json").as_uri()


# --------------------------------------------------------------------------- I/O


def scan(source_uri: str, suffixes: Iterable[str], *, exclude_uris: Iterable[str] = ()) -> list[ObjectInfo]:
    """The model files under ``source_uri``, with keys made relative to it."""
    store, prefix = open_store(source_uri)
    excluded = set(exclude_uris)
    base = f"{prefix}/" if prefix else ""
    found = []
    for info in store.list(base):
        rel = info.key[len(base):]
        if info.uri in excluded or not is_model_key(rel, suffixes):
            continue
        found.append(dataclasses.replace(info, key=rel))
    return found


@dataclass(frozen=True)
class _StateLocation:
    uri: str  # canonical URI of the state object
    path: Path | None = None  # local state file
    store: ObjectStore | None = None  # or an object in a store...
    key: str = ""  # ...under this key


def _state_location(state_uri: str) -> _StateLocation:
    parts = urlsplit(state_uri)
    if parts.scheme in ("", "file"):
        path = Path(unquote(parts.path) if parts.scheme == "file" else state_uri).expanduser().absolute()
        return _StateLocation(path.as_uri(), path=path)
    store, key = open_store(state_uri)
    if not key:
        raise ValueError(f"state_uri {state_uri!r} names a bucket, not an object")
    return _StateLocation(store.uri_for(key), store=store, key=key)


def read_state(state_uri: str, source_uri: str) -> dict[str, dict[str, Any]]:
    """The remembered objects (key -> record); empty when there is no state yet."""
    loc = _state_location(state_uri)
    try:
        raw = loc.path.read_bytes() if loc.path is not None else loc.store.get_bytes(loc.key)
    except (FileNotFoundError, ObjectNotFound):
        return {}
    try:
        doc = json.loads(raw)
        objects = doc["objects"]
        if not isinstance(objects, dict):
            raise TypeError("objects is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        # Written atomically, so only a hand edit gets here.  Starting over re-emits every
        # object, which the stable event ids make harmless.
        _logger().warning("watch state %s unreadable (%s): starting from an empty state", loc.uri, exc)
        return {}
    if doc.get("source_uri") not in (None, source_uri):
        raise ValueError(f"watch state {loc.uri} belongs to {doc.get('source_uri')!r}, not {source_uri!r}")
    return objects


def write_state(state_uri: str, source_uri: str, objects: Mapping[str, Mapping[str, Any]]) -> None:
    """Replace the state object atomically (temp file + rename locally; one PUT on S3)."""
    body = json.dumps({"version": STATE_VERSION, "source_uri": source_uri, "objects": objects},
                      indent=1, sort_keys=True).encode()
    loc = _state_location(state_uri)
    if loc.path is not None:
        with atomic_path(loc.path) as tmp:
            tmp.write_bytes(body)
    else:
        loc.store.put_bytes(loc.key, body)


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
        _logger().warning("could not flush emitted events: %s", exc)
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

    log = _logger()
    if urlsplit(source_uri).path.strip("/"):
        source_uri = source_uri.rstrip("/")
    state_uri = state_uri or default_state_uri(source_uri)

    previous = read_state(state_uri, source_uri)
    listing = []
    for info in scan(source_uri, suffixes, exclude_uris=[_state_location(state_uri).uri]):
        if ensemble_for(info.key, ensemble_map) is None:
            log.warning("%s: top-level key without an ensemble_map entry, ignored", info.uri)
        else:
            listing.append(info)
    changes, removed, new_state = diff_listing(previous, listing)

    reported: list[dict] = []
    for change in changes:
        info = change.info
        ensemble = ensemble_for(info.key, ensemble_map)
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
        log.info("%s removed since the last scan", gone.get("uri") or gone["key"])
        reported.append({"uri": gone.get("uri"), "key": gone["key"], "size": gone.get("size"),
                         "ensemble": ensemble_for(gone["key"], ensemble_map), "change": "removed"})
    if changes or removed or not previous:
        write_state(state_uri, source_uri, new_state)
    log.info("scanned %s: %d model files, %d events, %d removed", source_uri, len(listing),
             len(changes), len(removed))
    return reported
