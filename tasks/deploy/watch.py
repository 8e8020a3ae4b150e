"""What the ``watch`` flow (:mod:`flows.watch`) does besides emitting: list the model source,
compare the listing with what the previous run reported, and keep that state.

Rules (pure functions, tested without Prefect):

- model file: the key ends with one of ``suffixes`` (:func:`infra.aws.lambda_handler.is_model_key`);
- changed (:func:`change_reasons`): a different ``size``, a different ``last_modified``, or a
  different ``sha256`` when both the old and the new record know it (store listings do not
  carry content hashes, S3 ETags included, so in practice size and mtime decide);
- keys are relative to the source location.

State: a small JSON object (``$MME_HOME/watch/<sha256(source_uri)[:16]>.json`` by default,
or ``state_uri``: a local path, ``file://`` or ``s3://`` object) written atomically; a hand-edited
state that cannot be read is started over (re-emitting is harmless: event ids are stable).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict

from infra import paths
from infra.errors import InvalidInput
from infra.aws.lambda_handler import ensemble_for, is_model_key
from infra.store.objects import ObjectInfo, ObjectNotFound, ObjectStore, atomic_path, open_store
from tasks.runtime.run_context import run_logger

STATE_VERSION = 1

__all__ = ["Change", "Diff", "Remembered", "Removed", "Scan", "change_reasons", "default_state_uri",
           "diff_listing", "read_state", "record_of", "scan", "scan_source", "state_object_uri",
           "write_state"]


class Remembered(BaseModel):
    """What the state remembers of one object (see :func:`record_of`); fields a hand edit or a
    newer tool added are kept as they are."""

    model_config = ConfigDict(extra="allow")

    uri: str | None = None
    size: int | None = None
    last_modified: int | float | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Removed:
    """An object reported before and gone from the listing now: its key and what was remembered."""

    key: str
    record: Remembered


@dataclass(frozen=True)
class Change:
    """One new or changed object: ``kind`` is ``"new"`` or ``"changed"``; ``reasons`` say why."""

    info: ObjectInfo
    kind: str
    reasons: tuple[str, ...] = ()


def record_of(info: ObjectInfo) -> Remembered:
    """What the state remembers of an object."""
    return Remembered(uri=info.uri, size=info.size, last_modified=info.last_modified, sha256=info.sha256)


def change_reasons(old: Remembered, info: ObjectInfo) -> tuple[str, ...]:
    """Why ``info`` differs from the remembered record ``old`` (empty: unchanged)."""
    reasons = []
    if old.size != info.size:
        reasons.append("size")
    if old.last_modified != info.last_modified:
        reasons.append("last_modified")
    if old.sha256 is not None and info.sha256 is not None and old.sha256 != info.sha256:
        reasons.append("sha256")
    return tuple(reasons)


class Diff(NamedTuple):
    """A listing compared with the state: the new or changed objects (sorted by key), the ones
    gone, and the state to remember."""

    changes: list[Change]
    removed: list[Removed]
    state: dict[str, Remembered]


def diff_listing(previous_state: Mapping[str, Remembered], listing: Iterable[ObjectInfo]) -> Diff:
    """Compare a listing with the previously reported objects.

    ``previous_state`` maps key -> record (see :func:`record_of`); ``listing`` holds the
    current (already filtered) objects.  An unchanged object keeps its old record, so a known
    sha256 is not forgotten.
    """
    new_or_changed: list[Change] = []
    new_state: dict[str, Remembered] = {}
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
            new_state[info.key] = old
    removed = [Removed(key, old) for key, old in sorted(previous_state.items()) if key not in new_state]
    return Diff(new_or_changed, removed, new_state)


@dataclass(frozen=True)
class Scan:
    """One scan of a source, compared with its state: the source and state URIs as used, the
    state read, the model files that map to an ensemble, the ones that do not (ignored), and
    the comparison (:func:`diff_listing`)."""

    source_uri: str
    state_uri: str
    previous: dict[str, Remembered]
    listing: list[ObjectInfo]
    ignored: list[ObjectInfo]
    diff: Diff


def scan_source(source_uri: str, state_uri: str | None, suffixes: Iterable[str],
                ensemble_map: Mapping[str, str] | None) -> Scan:
    """What one run of the ``watch`` flow reads and compares, writing nothing: its run and its
    dry run (``mme watch --dry-run``) share it, so both see the same changes."""
    if urlsplit(source_uri).path.strip("/"):
        source_uri = source_uri.rstrip("/")
    state_uri = state_uri or default_state_uri(source_uri)
    previous = read_state(state_uri, source_uri)
    listing: list[ObjectInfo] = []
    ignored: list[ObjectInfo] = []
    for info in scan(source_uri, suffixes, exclude_uris=[state_object_uri(state_uri)]):
        (ignored if ensemble_for(info.key, ensemble_map) is None else listing).append(info)
    return Scan(source_uri, state_uri, previous, listing, ignored, diff_listing(previous, listing))


def default_state_uri(source_uri: str) -> str:
    """``$MME_HOME/watch/<sha256(source_uri)[:16]>.json`` as a file URI."""
    digest = hashlib.sha256(source_uri.rstrip("/").encode()).hexdigest()[:16]
    return (paths.home() / "watch" / f"{digest}.json").as_uri()


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
        raise InvalidInput(f"state_uri {state_uri!r} names a bucket, not an object")
    return _StateLocation(store.uri_for(key), store=store, key=key)


def _store(loc: _StateLocation) -> ObjectStore:
    assert loc.store is not None, "a state location is a local path or a store object"
    return loc.store


def read_state(state_uri: str, source_uri: str) -> dict[str, Remembered]:
    """The remembered objects (key -> record); empty when there is no state yet."""
    loc = _state_location(state_uri)
    try:
        raw = loc.path.read_bytes() if loc.path is not None else _store(loc).get_bytes(loc.key)
    except (FileNotFoundError, ObjectNotFound):
        return {}
    try:
        doc = json.loads(raw)
        objects = doc["objects"]
        if not isinstance(objects, dict):
            raise TypeError("objects is not a mapping")
        remembered = {key: Remembered.model_validate(record) for key, record in objects.items()}
    except (ValueError, KeyError, TypeError) as exc:  # (pydantic's ValidationError is a ValueError)
        # Written atomically, so only a hand edit gets here.  Starting over re-emits every
        # object, which the stable event ids make harmless.
        run_logger("mme.watch").warning("watch state %s unreadable (%s): starting from an empty state", loc.uri, exc)
        return {}
    if doc.get("source_uri") not in (None, source_uri):
        raise InvalidInput(f"watch state {loc.uri} belongs to {doc.get('source_uri')!r}, not {source_uri!r}")
    return remembered


def write_state(state_uri: str, source_uri: str, objects: Mapping[str, Remembered]) -> None:
    """Replace the state object atomically (temp file + rename locally; one PUT on S3)."""
    records = {key: record.model_dump(mode="json") for key, record in objects.items()}
    body = json.dumps({"version": STATE_VERSION, "source_uri": source_uri, "objects": records},
                      indent=1, sort_keys=True).encode()
    loc = _state_location(state_uri)
    if loc.path is not None:
        with atomic_path(loc.path) as tmp:
            tmp.write_bytes(body)
    else:
        _store(loc).put_bytes(loc.key, body)


def state_object_uri(state_uri: str) -> str:
    """The canonical URI of the state object (the scan leaves it out of the listing)."""
    return _state_location(state_uri).uri
