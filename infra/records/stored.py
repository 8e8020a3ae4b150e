"""Reading a versioned document kept as one object in a store (a deploy's ledger, a fleet's
routing table): one GET, the empty document when none was written yet, a refusal naming the
object's URI when it does not parse or is from a newer tool."""

from __future__ import annotations

from typing import TypeVar

from infra.store.objects import ObjectNotFound, ObjectStore
from infra.versioned import VersionedDocument

_Doc = TypeVar("_Doc", bound=VersionedDocument)


def read_stored(store: ObjectStore, key: str, empty: _Doc) -> _Doc:
    """The document at ``key``, read as ``empty``'s class (:meth:`VersionedDocument.read`, which
    names ``store.uri_for(key)`` in every refusal); ``empty`` when no object is there."""
    try:
        data = store.get_bytes(key)
    except ObjectNotFound:
        return empty
    return type(empty).read(data, store.uri_for(key))
