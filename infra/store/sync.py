"""Publish many local files under one store prefix: concurrent, incremental, never half-visible.

A fleet is a thousand tarballs (plus their manifests) under one prefix. Publishing them one
``head`` + ``put`` at a time costs two round trips per object even when nothing changed, and
a sequential upload leaves the network idle between requests. :func:`sync_files` does better:

- **One GET decides what is unchanged.** The prefix holds an index object,
  ``<prefix>/_index.json`` (``schema_version``, ``objects: {key: {sha256, size}}``,
  ``updated_at``). An object whose sha256 and size match its index entry is skipped without a
  request of its own, so a no-op re-publish of 1,000 objects is one GET.
- **Missing or unreadable index: never worse than correct.** One listing of the prefix, then a
  HEAD (which carries the sha256 the store keeps as metadata) only for objects whose listed size
  matches the local file; the index is rebuilt from what was found and logged as rebuilt.
  ``verify_index=True`` adds one listing to drop entries whose object was deleted behind our
  back (they are uploaded again).
- **Concurrent uploads** on a thread pool over the store's one client (boto3 clients are
  thread-safe; the S3 store's own client has a pool of
  :data:`~infra.store.objects.S3_MAX_POOL_CONNECTIONS`, and ``workers`` is capped at the pool size of a
  client that has a smaller one). Large files go multipart inside ``S3Store.put_file``
  (``upload_file`` with :data:`~infra.store.objects.MULTIPART_THRESHOLD`).
- **Nothing half-written visible.** Each object appears whole (an S3 PUT or
  CompleteMultipartUpload is atomic per object; FileStore renames a finished temp file). The
  index is written LAST, after every upload ended, and lists only objects that are there: an
  upload that failed keeps the key's previous entry (the previous object is still there, intact)
  or none, and is reported in :attr:`SyncReport.failed`; the caller decides what a partial
  publish means. A retry then skips everything that did succeed.

Transient store errors are retried in one place: botocore's standard mode, per request
(:data:`infra.aws.clients.AWS_ATTEMPTS` attempts: throttling, 5xx, dropped connections). What
still fails after that (:class:`~infra.store.objects.StoreUnavailable`) is not tried again here:
it is reported in :attr:`SyncReport.failed`, and the next publish skips what did succeed. The
table of which layer retries what is ``docs/retries.md``.

One publisher per prefix at a time: two concurrent syncs of one prefix can each write the index
last with the other's objects missing or stale. Flows serialize publishes of a prefix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

from infra.errors import InvalidInput, MMEError
from infra.store.objects import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StoreRefused,
    check_key,
    sha256_file,
)
from infra.jsontypes import JsonObject
from infra.versioned import VersionedDocument

log = logging.getLogger(__name__)

INDEX_NAME = "_index.json"
INDEX_SCHEMA_VERSION = 1

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LocalObject:
    """A local file to publish: its bytes' sha256 and size, computed once by whoever made it
    (the packer already hashed the tarball; hashing a thousand again would cost minutes)."""

    path: Path
    sha256: str
    size: int

    @classmethod
    def from_path(cls, path: str | Path) -> LocalObject:
        """Hash and stat ``path`` (for callers that did not keep the digest)."""
        p = Path(path)
        return cls(path=p, sha256=sha256_file(p), size=p.stat().st_size)


class SyncedObject(BaseModel):
    """What the index says one object under the prefix holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class SyncIndex(VersionedDocument):
    """The ``_index.json`` object of a prefix."""

    model_config = ConfigDict(extra="forbid")
    current_version: ClassVar[int] = INDEX_SCHEMA_VERSION
    kind: ClassVar[str] = "sync index"
    remedy: ClassVar[str] = "delete it (the next publish rebuilds it from a listing)"
    updated_at: str
    objects: dict[str, SyncedObject]


@dataclass
class SyncReport:
    """What one :func:`sync_files` did. ``requests`` counts the store calls it made (retries
    included; ``calls`` splits them by operation): that a no-op sync is ``{"get_bytes": 1}`` is
    what shows unchanged objects cost no request of their own."""

    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes_uploaded: int = 0
    seconds: float = 0.0
    requests: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    index_rebuilt: bool = False
    workers: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> JsonObject:
        """Counts and failures (not the thousand key names) for reports and benchmarks."""
        return {"uploaded": len(self.uploaded), "skipped": len(self.skipped),
                "deleted": len(self.deleted), "failed": [list(f) for f in self.failed],
                "bytes_uploaded": self.bytes_uploaded, "seconds": round(self.seconds, 3),
                "requests": self.requests, "calls": {**self.calls},
                "index_rebuilt": self.index_rebuilt, "workers": self.workers}


class _Counted:
    """The store, with every call counted (thread-safe). Not retried here: the store's client
    already retried what a retry can fix (one layer, docs/retries.md)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, op: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls[op] += 1
        return getattr(self.store, op)(*args, **kwargs)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


def _check_inputs(prefix: str, files: Mapping[str, LocalObject], workers: int) -> str:
    """The normalized prefix; a bad prefix, key or worker count is refused, naming it."""
    prefix = prefix.strip("/")
    if prefix:
        check_key(prefix)
    for key in files:
        check_key(key)
        if key == INDEX_NAME:
            raise StoreRefused(f"object key {key!r} under {prefix or '<root>'!r} is reserved "
                               f"for the sync index")
    if workers < 1:
        raise InvalidInput(f"sync workers must be at least 1, got {workers}")
    return prefix


def _pool_workers(store: ObjectStore, workers: int) -> int:
    """``workers``, capped at the connection pool of the store's boto3 client (if it has one):
    more threads than pooled connections would open and discard connections per request."""
    config = getattr(getattr(getattr(store, "client", None), "meta", None), "config", None)
    pool = getattr(config, "max_pool_connections", None)
    if isinstance(pool, int) and 0 < pool < workers:
        log.warning("sync to %r: %d workers capped at the S3 client's pool of %d connections",
                    store, workers, pool)
        return pool
    return workers


def _read_index(call: _Counted, prefix: str) -> dict[str, SyncedObject] | None:
    """The index's entries, or None when it is missing or unreadable (logged)."""
    key = _join(prefix, INDEX_NAME)
    try:
        raw = call("get_bytes", key)
    except ObjectNotFound:
        return None
    try:
        return dict(SyncIndex.read(raw, key).objects)
    except ValueError as exc:
        log.warning("index %s is unreadable, rebuilding it from a listing: %s",
                    call.store.uri_for(key), str(exc).splitlines()[0])
        return None


def _listing(call: _Counted, prefix: str) -> dict[str, ObjectInfo]:
    """One listing of the prefix: relative key -> info (the index itself left out)."""
    base = f"{prefix}/" if prefix else ""
    infos = call("list", base)
    return {i.key[len(base):]: i for i in infos if i.key[len(base):] != INDEX_NAME}


def _rebuild_index(call: _Counted, prefix: str, files: Mapping[str, LocalObject],
                   pool: ThreadPoolExecutor) -> dict[str, SyncedObject]:
    """Entries for the objects that are there and could be unchanged: a listing, then a HEAD
    (for the stored sha256) only where the listed size equals the local file's."""
    listed = _listing(call, prefix)
    candidates = [k for k, obj in files.items() if k in listed and listed[k].size == obj.size]
    heads = {k: pool.submit(call, "head", _join(prefix, k)) for k in candidates}
    entries: dict[str, SyncedObject] = {}
    for key, fut in heads.items():
        try:
            info = fut.result()
        except ObjectNotFound:
            continue  # deleted since the listing
        if info.sha256:
            entries[key] = SyncedObject(sha256=info.sha256, size=info.size)
    log.info("index of %s rebuilt from a listing: %d objects listed, %d headed, %d indexed",
             call.store.uri_for(_join(prefix, INDEX_NAME)), len(listed), len(heads), len(entries))
    return entries


def _verified(call: _Counted, prefix: str, entries: dict[str, SyncedObject]) -> dict[str, SyncedObject]:
    """Entries whose object one listing still shows with the indexed size."""
    listed = _listing(call, prefix)
    kept = {k: e for k, e in entries.items() if k in listed and listed[k].size == e.size}
    if len(kept) != len(entries):
        log.warning("index of prefix %r lists %d objects that are gone or changed; they are "
                    "uploaded again", prefix, len(entries) - len(kept))
    return kept


def _upload(call: _Counted, key: str, obj: LocalObject) -> SyncedObject:
    info = call("put_file", key, obj.path, sha256=obj.sha256)
    return SyncedObject(sha256=info.sha256 or obj.sha256, size=info.size)


Outcome: TypeAlias = "SyncedObject | BaseException | None"
"""One key's outcome in a sync: its new entry (uploaded), the exception it failed with, or
None (deleted)."""


def _delete(call: _Counted, key: str) -> None:
    call("delete", key)


def _run_changes(call: _Counted, prefix: str, changes: tuple[Mapping[str, LocalObject], list[str]],
                 pool: ThreadPoolExecutor, tick: Callable[[], None]) -> dict[str, Outcome]:
    """Upload ``changes[0]`` and delete ``changes[1]`` concurrently; each outcome by key: the
    new SyncedObject of an upload, None for a delete, or the exception it failed with."""
    uploads, deletes = changes
    futures: dict[Future[Any], str] = {
        pool.submit(_upload, call, _join(prefix, k), obj): k for k, obj in uploads.items()}
    futures.update({pool.submit(_delete, call, _join(prefix, k)): k for k in deletes})
    outcomes: dict[str, Outcome] = {}
    for fut in as_completed(futures):
        key = futures[fut]
        try:
            outcomes[key] = fut.result()
        except (MMEError, OSError) as exc:  # one object's failure: reported, the rest go on
            outcomes[key] = exc
        tick()
    return outcomes


def _apply(report: SyncReport, entries: dict[str, SyncedObject], outcomes: dict[str, Outcome],
           files: Mapping[str, LocalObject]) -> None:
    """Fold the outcomes into the report and the entries: a failed key keeps its old entry
    (the old object is still there, whole), a deleted key loses its entry."""
    for key in sorted(outcomes):
        outcome = outcomes[key]
        if isinstance(outcome, BaseException):
            reason = f"{type(outcome).__name__}: {outcome}"
            log.warning("sync of %s failed: %s", key, reason)
            report.failed.append((key, reason))
        elif outcome is None:
            report.deleted.append(key)
            entries.pop(key, None)
        else:
            report.uploaded.append(key)
            report.bytes_uploaded += files[key].size
            entries[key] = outcome


def _write_index(call: _Counted, prefix: str, entries: Mapping[str, SyncedObject]) -> None:
    index = SyncIndex(updated_at=datetime.now(UTC).isoformat(),
                  objects=dict(sorted(entries.items())))
    call("put_bytes", _join(prefix, INDEX_NAME), index.model_dump_json().encode())


def _progress_ticker(progress: Progress | None, done: int, total: int) -> Callable[[], None]:
    """Calls ``progress(done, total)`` now and once more per finished change (from the calling
    thread only, so a progress callback need not be thread-safe)."""
    state = {"done": done}
    if progress is not None:
        progress(done, total)

    def tick() -> None:
        state["done"] += 1
        if progress is not None:
            progress(state["done"], total)

    return tick


def _plan(files: Mapping[str, LocalObject], entries: Mapping[str, SyncedObject],
          delete_missing: bool) -> tuple[dict[str, LocalObject], list[str], list[str]]:
    """(uploads, skipped keys, deletes): an object is skipped when its entry has its sha256 and
    size; with ``delete_missing`` every indexed key not in ``files`` is deleted."""
    uploads: dict[str, LocalObject] = {}
    skipped: list[str] = []
    for key, obj in files.items():
        entry = entries.get(key)
        if entry is not None and entry.sha256 == obj.sha256.lower() and entry.size == obj.size:
            skipped.append(key)
        else:
            uploads[key] = obj
    deletes = sorted(set(entries) - set(files)) if delete_missing else []
    return uploads, sorted(skipped), deletes


def _index_entries(call: _Counted, prefix: str, files: Mapping[str, LocalObject],
                   pool: ThreadPoolExecutor, verify_index: bool) -> tuple[dict[str, SyncedObject] | None,
                                                                     dict[str, SyncedObject]]:
    """(the index as read, or None; the entries to plan with)."""
    read = _read_index(call, prefix)
    if read is None:
        return None, _rebuild_index(call, prefix, files, pool)
    return read, (_verified(call, prefix, read) if verify_index else dict(read))


def sync_files(store: ObjectStore, prefix: str, files: Mapping[str, LocalObject], *,
               workers: int = 16, delete_missing: bool = False, verify_index: bool = False,
               progress: Progress | None = None) -> SyncReport:
    """Make ``prefix`` hold ``files`` (relative key -> local file): upload what is new or changed,
    concurrently, skip what the prefix's index says is there, then write the index.

    ``delete_missing`` also deletes the indexed objects not in ``files`` (only ever objects the
    index lists: objects this sync never indexed are not touched). ``progress(done, total)`` is
    called as objects finish (total: files plus deletions). Per-object failures are in the
    report's ``failed``; a store that stays unavailable for the index read or the listing
    raises :class:`~infra.store.objects.StoreUnavailable` before anything is written.
    """
    t0 = time.perf_counter()
    prefix = _check_inputs(prefix, files, workers)
    call = _Counted(store)
    report = SyncReport(workers=_pool_workers(store, workers))
    with ThreadPoolExecutor(max_workers=report.workers, thread_name_prefix="store-sync") as pool:
        read, entries = _index_entries(call, prefix, files, pool, verify_index)
        report.index_rebuilt = read is None
        uploads, report.skipped, deletes = _plan(files, entries, delete_missing)
        tick = _progress_ticker(progress, len(report.skipped), len(files) + len(deletes))
        outcomes = _run_changes(call, prefix, (uploads, deletes), pool, tick)
    _apply(report, entries, outcomes, files)
    if read != entries:
        try:
            _write_index(call, prefix, entries)
        except MMEError as exc:  # every upload stands; the next sync rebuilds the index
            report.failed.append((INDEX_NAME, f"{type(exc).__name__}: {exc}"))
    report.calls = dict(call.calls)
    report.requests = sum(call.calls.values())
    report.seconds = time.perf_counter() - t0
    return report


def local_objects(paths: Iterable[str | Path]) -> dict[str, LocalObject]:
    """``{file name: LocalObject}`` for files that carry their key as their name (hashes each)."""
    return {Path(p).name: LocalObject.from_path(p) for p in paths}
