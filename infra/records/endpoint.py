"""The per-endpoint record: what a deploy made, where ``mme retire`` finds it.

``$MME_HOME/endpoints/<name>/record.json`` says which backend serves the endpoint, the store
and model prefix it reads, the AWS region, every AWS resource the deploys created for it
(model, endpoint config, endpoint, scalable target, scaling policy), and the ensembles
deployed: each one's current TargetModel (object, sha256) and the versions kept for rollback.

Why versions: a deploy publishes ``<ensemble>-<sha256[:12]>.tar.gz``, never over the object
that serves (an instance of a SageMaker MME keeps serving the bytes it loaded under a name
until it unloads them). So "which TargetModel is ``text_embedding`` now" is a question for
this record (:func:`current_target`), and a rollback points the record back to a kept
version (:func:`point_back`): nothing is overwritten.

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
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from infra import paths
from infra.errors import InvalidInput
from infra.records.manifest import Manifest, OpenRecord
from infra.versioned import VersionedDocument
from infra.store.objects import atomic_path, file_lock

RECORD_NAME = "record.json"
SCHEMA_VERSION = 1
CREATING, CREATED = "creating", "created"

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


class ResourceLine(OpenRecord):
    """One AWS resource a deploy created (``state``: creating | created)."""

    kind: str
    name: str
    state: str | None = None
    since: str | None = None
    resource_id: str | None = None


class EnsembleLine(OpenRecord):
    """One ensemble deployed to the endpoint (``state``: publishing | deployed); ``previous``
    is what it replaced, kept until the deploy settles; ``kept_versions`` the versions that
    served before it (newest first), whose objects are kept for a rollback."""

    target_model: str
    key: str
    uri: str
    sha256: str
    model_data_url: str
    state: str | None = None
    previous: dict[str, Any] | None = None
    kept_versions: list[dict[str, Any]] | None = None


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
    plan: dict[str, Any] | None = None
    resources: list[ResourceLine] = Field(default_factory=list)
    ensembles: dict[str, EnsembleLine] = Field(default_factory=dict)
    updated_at: str | None = None


def read_record(endpoint: str) -> dict[str, Any] | None:
    """The endpoint's record (checked against :class:`EndpointRecord`, as its JSON dict), or
    None when no deploy of it left one on this machine."""
    path = record_path(endpoint)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    typed = EndpointRecord.read(text, str(path))  # atomic writes: a bad one is a hand edit
    return typed.model_dump(mode="json", exclude_none=True)


def write_record(endpoint: str, doc: dict[str, Any]) -> None:
    """Write ``doc`` atomically; an empty record (nothing left to retire) is removed."""
    path = record_path(endpoint)
    if not doc.get("resources") and not doc.get("ensembles"):
        path.unlink(missing_ok=True)
        return
    doc["updated_at"] = _now()
    doc["schema_version"] = SCHEMA_VERSION
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))


@contextmanager
def updating(endpoint: str, **defaults: Any) -> Iterator[dict[str, Any]]:
    """``with updating(name) as rec:`` read-modify-write under a file lock (a deploy and a
    retire of one endpoint, or two threads of one deploy, never lose each other's lines)."""
    path = record_path(endpoint)
    with file_lock(path.with_name(RECORD_NAME + ".lock")):
        doc = read_record(endpoint) or {"endpoint": endpoint, "resources": [], "ensembles": {}}
        for key, value in defaults.items():
            if value is not None:
                doc[key] = value
        yield doc
        write_record(endpoint, doc)


def _find(doc: dict[str, Any], kind: str, name: str) -> dict[str, Any] | None:
    return next((r for r in doc["resources"] if r["kind"] == kind and r["name"] == name), None)


def note_resource(doc: dict[str, Any], kind: str, name: str, state: str, **extra: Any) -> None:
    """Add or update one resource line (``state``: creating | created)."""
    line = _find(doc, kind, name)
    if line is None:
        line = {"kind": kind, "name": name, "since": _now()}
        doc["resources"].append(line)
    if line.get("state") == CREATED:  # a re-create of what exists stays "created"
        state = CREATED
    line.update(state=state, **{k: v for k, v in extra.items() if v is not None})


def drop_resource(doc: dict[str, Any], kind: str, name: str) -> None:
    doc["resources"] = [r for r in doc["resources"] if not (r["kind"] == kind and r["name"] == name)]
    if kind == "scalable_target":  # deregistering a target deletes its policies with it
        doc["resources"] = [r for r in doc["resources"]
                            if not (r["kind"] == "scaling_policy" and r.get("resource_id") == name)]


def resource_of(operation: str, params: dict[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
    """(kind, name, extra) of the resource a create/register or delete call is about."""
    spec = CREATES.get(operation) or DELETES.get(operation)
    if spec is None or spec[1] not in params:
        return None
    extra = {"resource_id": params["ResourceId"]} if operation.endswith("scaling_policy") else {}
    return spec[0], str(params[spec[1]]), extra


def note_call(endpoint: str, operation: str, params: dict[str, Any], state: str,
              **defaults: Any) -> None:
    """Record a create (``state`` creating before the call, created after), a create AWS
    refused (``state`` "refused": a line still ``creating`` goes) or a completed delete
    (``state`` "deleted") of the resource ``operation`` is about."""
    found = resource_of(operation, params)
    if found is None:
        return
    kind, name, extra = found
    with updating(endpoint, **defaults) as doc:
        if state == "deleted":
            drop_resource(doc, kind, name)
        elif state == "refused":
            line = _find(doc, kind, name)
            if line is not None and line.get("state") == CREATING:
                drop_resource(doc, kind, name)
        elif operation in CREATES:
            note_resource(doc, kind, name, state, **extra)


# ---------------------------------------------------------------------------------- ensembles
def _ensemble_entry(manifest: Manifest, models_url: str) -> dict[str, Any]:
    from infra.store.objects import open_store

    store, prefix = open_store(models_url)
    key = f"{prefix}/{manifest.target_model}" if prefix else manifest.target_model
    return {"target_model": manifest.target_model, "key": key, "uri": store.uri_for(key),
            "sha256": manifest.sha256, "model_data_url": models_url,
            "build_target": manifest.target}


def note_ensembles_publishing(endpoint: str, manifests: list[Manifest], models_url: str,
                              **defaults: Any) -> None:
    """Before uploading: each ensemble's object, digest and TargetModel (state ``publishing``);
    what the endpoint served before is kept as ``previous`` until the deploy settles."""
    with updating(endpoint, **defaults) as doc:
        for m in manifests:
            before = doc["ensembles"].get(m.ensemble)
            entry = {**_ensemble_entry(m, models_url), "state": "publishing", "since": _now()}
            if before is not None:
                entry["previous"] = before.get("previous") if before.get("state") == "publishing" \
                    else {k: v for k, v in before.items() if k != "previous"}
            doc["ensembles"][m.ensemble] = entry


def settle_ensembles(endpoint: str, names: list[str], *, deployed: bool) -> None:
    """After the deploy: ``deployed`` marks the new objects served, and what served before
    joins the versions kept for rollback (all of them: pruning to the keep count deletes
    objects, so it is the backend's step, :func:`forget_versions` after each delete);
    otherwise (rolled back) each entry goes back to what was served before, or away when
    nothing was."""
    with updating(endpoint) as doc:
        for name in names:
            entry = doc["ensembles"].get(name)
            if entry is None:
                continue
            previous = entry.pop("previous", None)
            if deployed:
                entry.update(state="deployed", deployed_at=_now())
                _set_kept(entry, kept_after(previous, entry["key"]))
            elif previous is not None:
                doc["ensembles"][name] = previous
            else:
                del doc["ensembles"][name]


def forget_ensemble(endpoint: str, name: str) -> None:
    with updating(endpoint) as doc:
        doc["ensembles"].pop(name, None)


# ---------------------------------------------------------------------------------- versions
VERSION_FIELDS = ("target_model", "key", "uri", "sha256", "model_data_url", "build_target", "deployed_at")


def version_line(entry: dict[str, Any]) -> dict[str, Any]:
    """One version as it is kept for rollback: its TargetModel, its object and digest."""
    return {k: entry[k] for k in VERSION_FIELDS if entry.get(k) is not None}


def kept_after(before: dict[str, Any] | None, current_key: str) -> list[dict[str, Any]]:
    """The versions kept once the object ``current_key`` serves: what served before (newest
    first), then what that one kept; each object once, never the one now serving (a redeploy
    of a kept version makes it current again instead of keeping it twice)."""
    if before is None:
        return []
    seen, out = {current_key}, []
    for line in [version_line(before), *(before.get("kept_versions") or [])]:
        if line["key"] not in seen:
            seen.add(line["key"])
            out.append(line)
    return out


def _set_kept(entry: dict[str, Any], kept: list[dict[str, Any]]) -> None:
    if kept:
        entry["kept_versions"] = kept
    else:
        entry.pop("kept_versions", None)


def forget_versions(endpoint: str, name: str, keys: set[str]) -> None:
    """Drop kept versions whose objects were deleted (pruned past the keep count)."""
    with updating(endpoint) as doc:
        entry = doc["ensembles"].get(name)
        if entry is not None:
            _set_kept(entry, [v for v in entry.get("kept_versions") or [] if v["key"] not in keys])


def current_target(endpoint: str, ensemble: str) -> str | None:
    """The TargetModel ``ensemble`` is served by on ``endpoint`` per this record, or None when
    no deploy from this machine recorded it. While a deploy is in flight (not validated yet)
    that is still the version it is replacing."""
    entry = ((read_record(endpoint) or {}).get("ensembles") or {}).get(ensemble)
    if entry is not None and entry.get("state") == "publishing":
        entry = entry.get("previous")
    return None if entry is None else str(entry["target_model"])


def target_model_for(endpoint: str, ensemble: str) -> str:
    """What to invoke ``ensemble`` by on ``endpoint``: its current TargetModel per this record,
    else the unversioned ``<ensemble>.tar.gz`` (an endpoint started by hand over copied
    objects, or one deployed before versions)."""
    return current_target(endpoint, ensemble) or f"{ensemble}.tar.gz"


def point_back(endpoint: str, ensemble: str) -> dict[str, Any]:
    """Roll ``ensemble`` back: its newest kept version becomes current again, and the current
    one is kept in its place. Only the record changes (both objects are still in the store:
    nothing is overwritten or uploaded). Returns the new current entry; refuses (InvalidInput)
    an ensemble with no kept version, or one whose deploy is in flight."""
    with updating(endpoint) as doc:
        entry = doc["ensembles"].get(ensemble)
        if entry is None or entry.get("state") == "publishing" or not entry.get("kept_versions"):
            why = ("not deployed" if entry is None else "a deploy of it is in flight"
                   if entry.get("state") == "publishing" else "no previous version is kept")
            raise InvalidInput(f"cannot roll {ensemble} on {endpoint} back: {why}")
        back, *older = entry["kept_versions"]
        new = {**{k: v for k, v in entry.items() if k not in VERSION_FIELDS and k != "kept_versions"},
               **back, "state": "deployed", "rolled_back_at": _now()}
        _set_kept(new, [version_line(entry), *older])
        doc["ensembles"][ensemble] = new
        return dict(new)
