"""The per-endpoint record: what a deploy made, where ``mme retire`` finds it.

``$MME_HOME/endpoints/<name>/record.json`` says which backend serves the endpoint, the store
and model prefix it reads, the AWS region, every AWS resource the deploys created for it
(model, endpoint config, endpoint, scalable target, scaling policy), and the ensembles
deployed: each one's current TargetModel (object, sha256) and the versions kept for rollback.

Why versions: a deploy publishes ``<ensemble>-<sha256[:12]>.tar.gz``, never over the object
that serves (an instance of a SageMaker MME keeps serving the bytes it loaded under a name
until it unloads them). So "which TargetModel is ``text_embedding`` now" is a question for
this record (:func:`current_target`), and a rollback points the record back to a kept
version (:func:`rollback_version`): nothing is overwritten.

Why a local file beside the store's ledger: ``mme retire --endpoint E`` must find a SageMaker
endpoint without being told the S3 store, the region or the backend, and a deploy that dies
half-way must still leave a trace of what it created. So each resource is written here
*before* its create call (state ``creating``) and marked ``created`` when the call returned;
every write is atomic (temp file, fsync, rename), so a crash leaves the previous or the next
version, never a torn one.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final, Literal, Protocol

from pydantic import Field

from infra import paths
from infra.errors import InvalidInput
from infra.jsontypes import JsonObject
from infra.records.manifest import Manifest, OpenRecord
from infra.versioned import VersionedDocument
from infra.store.objects import atomic_path, file_lock

RECORD_NAME = "record.json"
SCHEMA_VERSION = 1
CREATING: Final = "creating"
CREATED: Final = "created"

# boto3 create/register operations -> (resource kind, the parameter naming the resource)
CREATES: dict[str, tuple[str, str]] = {
    "create_model": ("model", "ModelName"),
    "create_endpoint_config": ("endpoint_config", "EndpointConfigName"),
    "create_endpoint": ("endpoint", "EndpointName"),
    "register_scalable_target": ("scalable_target", "ResourceId"),
    "put_scaling_policy": ("scaling_policy", "PolicyName"),
}
# delete/deregister operations -> the kind they remove
DELETES: dict[str, tuple[str, str]] = {
    "delete_model": ("model", "ModelName"),
    "delete_endpoint_config": ("endpoint_config", "EndpointConfigName"),
    "delete_endpoint": ("endpoint", "EndpointName"),
    "deregister_scalable_target": ("scalable_target", "ResourceId"),
    "delete_scaling_policy": ("scaling_policy", "PolicyName"),
}
# the order resources are deleted in: scaling first, the models an endpoint config uses last
DELETE_ORDER = ("scaling_policy", "scalable_target", "endpoint", "endpoint_config", "model")


def record_path(endpoint: str) -> Path:
    return paths.endpoint_dir(endpoint) / RECORD_NAME


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


ResourceState = Literal["creating", "created"]
EnsembleState = Literal["publishing", "deployed"]


class ResourceLine(OpenRecord):
    """One AWS resource a deploy created (``state``: creating | created)."""

    kind: str
    name: str
    state: ResourceState | None = None
    since: str | None = None
    resource_id: str | None = None


class PublishedObject(OpenRecord):
    """The object one published version is served from: its TargetModel, its key and URI in
    the store, its digest. Every line that names a version (a kept version, an ensemble on the
    endpoint, an entry of the store's ledger) starts with these four fields."""

    target_model: str
    key: str
    uri: str
    sha256: str


class VersionLine(PublishedObject):
    """One version as it is kept for rollback (in the record and in the store's ledger): its
    TargetModel, its object and digest, where it was published and when."""

    model_data_url: str | None = None
    build_target: str | None = None
    deployed_at: str | None = None


class EnsembleLine(PublishedObject):
    """One ensemble deployed to the endpoint (``state``: publishing | deployed); ``previous``
    is what it replaced, kept until the deploy settles; ``kept_versions`` the versions that
    served before it (newest first), whose objects are kept for a rollback; ``abandoned`` the
    objects deploys that died before they settled had uploaded (never served: the next
    validated deploy's prune, or a retire, deletes them)."""

    model_data_url: str
    build_target: str | None = None
    state: EnsembleState | None = None
    since: str | None = None
    deployed_at: str | None = None
    rolled_back_at: str | None = None
    previous: EnsembleLine | None = None
    kept_versions: list[VersionLine] | None = None
    abandoned: list[VersionLine] | None = None


class EndpointRecord(VersionedDocument):
    """The record's typed shape, checked on every read (a hand edit gone wrong, or a file from
    a newer tool, fails naming the file)."""

    current_version: ClassVar[int] = SCHEMA_VERSION
    kind: ClassVar[str] = "endpoint record"
    endpoint: str | None = None
    backend: str | None = None
    store_uri: str | None = None
    region: str | None = None
    model_data_url: str | None = None
    plan: JsonObject | None = None
    resources: list[ResourceLine] = Field(default_factory=list)
    ensembles: dict[str, EnsembleLine] = Field(default_factory=dict)
    updated_at: str | None = None

    def find(self, kind: str, name: str) -> ResourceLine | None:
        """The line of resource ``kind``/``name``, or None."""
        return next((r for r in self.resources if r.kind == kind and r.name == name), None)


RecordDefault = str | JsonObject | None
"""A top-level field a deploy sets on the record (backend, store_uri, region, model_data_url,
plan); None leaves the field as it is."""


def read_record(endpoint: str) -> EndpointRecord | None:
    """The endpoint's record (checked against :class:`EndpointRecord`), or None when no deploy
    of it left one on this machine."""
    path = record_path(endpoint)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return EndpointRecord.read(text, str(path))  # atomic writes: a bad one is a hand edit


def write_record(endpoint: str, rec: EndpointRecord) -> None:
    """Write ``rec`` atomically; an empty record (nothing left to retire) is removed. Fields
    that are None are left out of the file."""
    path = record_path(endpoint)
    if not rec.resources and not rec.ensembles:
        path.unlink(missing_ok=True)
        return
    rec.updated_at = _now()
    rec.schema_version = SCHEMA_VERSION
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rec.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True))


@contextmanager
def updating(endpoint: str, **defaults: RecordDefault) -> Iterator[EndpointRecord]:
    """``with updating(name) as rec:`` read-modify-write under a file lock (a deploy and a
    retire of one endpoint, or two threads of one deploy, never lose each other's lines)."""
    path = record_path(endpoint)
    with file_lock(path.with_name(RECORD_NAME + ".lock")):
        rec = read_record(endpoint) or EndpointRecord(endpoint=endpoint)
        for key, value in defaults.items():
            if value is not None:
                setattr(rec, key, value)
        yield rec
        write_record(endpoint, rec)


def note_resource(rec: EndpointRecord, kind: str, name: str, state: ResourceState,
                  resource_id: str | None = None) -> None:
    """Add or update one resource line (``state``: creating | created)."""
    line = rec.find(kind, name)
    if line is None:
        line = ResourceLine(kind=kind, name=name, since=_now())
        rec.resources.append(line)
    line.state = CREATED if line.state == CREATED else state  # a re-create of what exists stays "created"
    if resource_id is not None:
        line.resource_id = resource_id


def drop_resource(rec: EndpointRecord, kind: str, name: str) -> None:
    rec.resources = [r for r in rec.resources if not (r.kind == kind and r.name == name)]
    if kind == "scalable_target":  # deregistering a target deletes its policies with it
        rec.resources = [r for r in rec.resources
                         if not (r.kind == "scaling_policy" and r.resource_id == name)]


@dataclass(frozen=True)
class ResourceRef:
    """The resource an AWS create/register or delete call is about (``resource_id``: the
    scalable target a scaling policy belongs to)."""

    kind: str
    name: str
    resource_id: str | None = None


def resource_of(operation: str, params: JsonObject) -> ResourceRef | None:
    """The resource a create/register or delete call is about, or None for any other call."""
    spec = CREATES.get(operation) or DELETES.get(operation)
    if spec is None or spec[1] not in params:
        return None
    resource_id = str(params["ResourceId"]) if operation.endswith("scaling_policy") else None
    return ResourceRef(spec[0], str(params[spec[1]]), resource_id)


CallState = Literal["creating", "created", "refused", "deleted"]


def note_call(endpoint: str, operation: str, params: JsonObject, state: CallState,
              **defaults: RecordDefault) -> None:
    """Record a create (``state`` creating before the call, created after), a create AWS
    refused (``state`` "refused": a line still ``creating`` goes) or a completed delete
    (``state`` "deleted") of the resource ``operation`` is about."""
    found = resource_of(operation, params)
    if found is None:
        return
    with updating(endpoint, **defaults) as rec:
        if state == "deleted":
            drop_resource(rec, found.kind, found.name)
        elif state == "refused":
            line = rec.find(found.kind, found.name)
            if line is not None and line.state == CREATING:
                drop_resource(rec, found.kind, found.name)
        elif operation in CREATES:
            note_resource(rec, found.kind, found.name, state, found.resource_id)


# ---------------------------------------------------------------------------------- ensembles
def _ensemble_entry(manifest: Manifest, models_url: str) -> EnsembleLine:
    from infra.store.objects import open_store

    store, prefix = open_store(models_url)
    key = f"{prefix}/{manifest.target_model}" if prefix else manifest.target_model
    return EnsembleLine(target_model=manifest.target_model, key=key, uri=store.uri_for(key),
                        sha256=manifest.sha256, model_data_url=models_url,
                        build_target=manifest.target)


def note_ensembles_publishing(endpoint: str, manifests: list[Manifest], models_url: str,
                              **defaults: RecordDefault) -> None:
    """Before uploading: each ensemble's object, digest and TargetModel (state ``publishing``);
    what the endpoint served before is kept as ``previous`` until the deploy settles.

    Called under the endpoint lock (no other deploy of the endpoint runs), so an entry still
    ``publishing`` is a dead deploy's: its object joins ``abandoned`` (unless this deploy
    publishes the same object again), or nothing would name it any more."""
    with updating(endpoint, **defaults) as rec:
        for m in manifests:
            before = rec.ensembles.get(m.ensemble)
            entry = _ensemble_entry(m, models_url)
            entry.state, entry.since = "publishing", _now()
            if before is not None:
                dead = before.state == "publishing"
                entry.previous = before.previous if dead \
                    else before.model_copy(update={"previous": None, "abandoned": None})
                left = [*(before.abandoned or []), *([version_line(before)] if dead else [])]
                entry.abandoned = [v for v in left if v.key != entry.key] or None
            rec.ensembles[m.ensemble] = entry


def settle_ensembles(endpoint: str, names: list[str], *, deployed: bool) -> None:
    """After the deploy: ``deployed`` marks the new objects served, and what served before
    joins the versions kept for rollback (all of them: pruning to the keep count deletes
    objects, so it is the backend's step, :func:`forget_versions` after each delete);
    otherwise (rolled back) each entry goes back to what was served before, or away when
    nothing was."""
    with updating(endpoint) as rec:
        for name in names:
            entry = rec.ensembles.get(name)
            if entry is None:
                continue
            previous, entry.previous = entry.previous, None
            if deployed:
                entry.state, entry.deployed_at = "deployed", _now()
                entry.kept_versions = kept_after(previous, entry.key) or None
            elif previous is not None:
                previous.abandoned = entry.abandoned  # still to delete, by a later deploy or retire
                rec.ensembles[name] = previous
            else:
                del rec.ensembles[name]


def forget_ensemble(endpoint: str, name: str) -> None:
    with updating(endpoint) as rec:
        rec.ensembles.pop(name, None)


# ---------------------------------------------------------------------------------- versions
VERSION_FIELDS = ("target_model", "key", "uri", "sha256", "model_data_url", "build_target", "deployed_at")


class KeepsVersions(Protocol):
    """What versions are cut from: a record's :class:`EnsembleLine`, a ledger's entry."""

    @property
    def key(self) -> str: ...

    @property
    def kept_versions(self) -> list[VersionLine] | None: ...


def version_line(entry: KeepsVersions | VersionLine) -> VersionLine:
    """One version as it is kept for rollback: its TargetModel, its object and digest."""
    return VersionLine.model_validate(
        {k: getattr(entry, k, None) for k in VERSION_FIELDS if getattr(entry, k, None) is not None})


def kept_after(before: KeepsVersions | None, current_key: str) -> list[VersionLine]:
    """The versions kept once the object ``current_key`` serves: what served before (newest
    first), then what that one kept; each object once, never the one now serving (a redeploy
    of a kept version makes it current again instead of keeping it twice)."""
    if before is None:
        return []
    seen, out = {current_key}, []
    for line in [version_line(before), *(before.kept_versions or [])]:
        if line.key not in seen:
            seen.add(line.key)
            out.append(line)
    return out


def forget_versions(endpoint: str, name: str, keys: set[str]) -> None:
    """Drop kept versions whose objects were deleted (pruned past the keep count)."""
    with updating(endpoint) as rec:
        entry = rec.ensembles.get(name)
        if entry is not None:
            entry.kept_versions = [v for v in entry.kept_versions or [] if v.key not in keys] or None


def forget_abandoned(endpoint: str, name: str) -> None:
    """Drop the abandoned objects of ``name``: each was deleted, or is named again."""
    with updating(endpoint) as rec:
        entry = rec.ensembles.get(name)
        if entry is not None:
            entry.abandoned = None


def current_target(endpoint: str, ensemble: str) -> str | None:
    """The TargetModel ``ensemble`` is served by on ``endpoint`` per this record, or None when
    no deploy from this machine recorded it. While a deploy is in flight (not validated yet)
    that is still the version it is replacing."""
    rec = read_record(endpoint)
    entry = None if rec is None else rec.ensembles.get(ensemble)
    if entry is not None and entry.state == "publishing":
        entry = entry.previous
    return None if entry is None else entry.target_model


def target_model_for(endpoint: str, ensemble: str) -> str:
    """What to invoke ``ensemble`` by on ``endpoint``: its current TargetModel per this record,
    else the unversioned ``<ensemble>.tar.gz`` (an endpoint started by hand over copied
    objects, or one deployed before versions)."""
    return current_target(endpoint, ensemble) or f"{ensemble}.tar.gz"


def check_rollback(endpoint: str, ensemble: str, entry: EnsembleLine | None) -> None:
    """Refuse (InvalidInput, naming why) a rollback of ``entry``: not deployed, a deploy of it
    in flight, or no previous version kept."""
    if entry is None or entry.state == "publishing" or not entry.kept_versions:
        why = ("not deployed" if entry is None else "a deploy of it is in flight"
               if entry.state == "publishing" else "no previous version is kept")
        raise InvalidInput(f"cannot roll {ensemble} on {endpoint} back: {why}")


def rollback_version(endpoint: str, ensemble: str) -> EnsembleLine:
    """Roll ``ensemble`` back: its newest kept version becomes current again, and the current
    one is kept in its place. Only the record changes (both objects are still in the store:
    nothing is overwritten or uploaded). Returns the new current entry; refuses (InvalidInput)
    an ensemble with no kept version, or one whose deploy is in flight."""
    with updating(endpoint) as rec:
        entry = rec.ensembles.get(ensemble)
        check_rollback(endpoint, ensemble, entry)
        assert entry is not None and entry.kept_versions  # check_rollback refused otherwise
        back, *older = entry.kept_versions
        rest = entry.model_dump(exclude_none=True, exclude={*VERSION_FIELDS, "kept_versions"})
        new = EnsembleLine.model_validate({**rest, **back.model_dump(exclude_none=True),
                                           "state": "deployed", "rolled_back_at": _now()})
        new.kept_versions = [version_line(entry), *older]
        rec.ensembles[ensemble] = new
        return new.model_copy(deep=True)
