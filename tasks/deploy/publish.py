"""Publish built tarballs to an endpoint's model prefix, and keep the ledger of what we own.

An object whose sha256 already matches is not uploaded again. When an object is replaced,
the previous bytes are kept aside until the deploy validated, so a failed deploy can put
them back. The ledger (``deployments/<endpoint>.json`` in the same store) records what each
deploy published; retire deletes only objects the ledger says we own, with the same digest.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from infra.errors import InvalidInput
from infra.jsontypes import JsonObject
from infra.records.manifest import Manifest
from infra.records.stored import read_stored
from infra.store.objects import ObjectStore, open_store, sha256_at
from tasks.deploy.records import Ledger


@dataclass
class Published:
    ensemble: str
    target_model: str
    uri: str
    key: str
    sha256: str
    bytes: int
    uploaded: bool
    previous_backup: str | None  # local path of the replaced object's bytes, if any
    seconds: float


def model_data_url(store_uri: str, endpoint: str) -> str:
    return f"{store_uri.rstrip('/')}/models/{endpoint}"


def _key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def local_archive(manifest: Manifest) -> Path:
    uri = urlparse(manifest.artifact)
    if uri.scheme != "file":
        raise InvalidInput(f"build artifact {manifest.artifact} is not a local file")
    return Path(uri.path)


def publish_artifact(manifest: Manifest, models_url: str, backup_dir: Path) -> Published:
    store, prefix = open_store(models_url)
    key = _key(prefix, manifest.target_model)
    archive = local_archive(manifest)
    t0 = time.perf_counter()
    backup = None
    current = sha256_at(store, key)
    if current == manifest.sha256:
        uploaded = False
    else:
        if current is not None:
            backup_dir.mkdir(parents=True, exist_ok=True)
            backup = str(store.get_file(key, backup_dir / f"{manifest.target_model}.previous"))
        store.put_file(key, archive, sha256=manifest.sha256)
        uploaded = True
    return Published(ensemble=manifest.ensemble, target_model=manifest.target_model,
                     uri=store.uri_for(key), key=key, sha256=manifest.sha256,
                     bytes=manifest.bytes, uploaded=uploaded, previous_backup=backup,
                     seconds=round(time.perf_counter() - t0, 3))


def rollback_object(pub: Published, models_url: str) -> str:
    """Roll one publish back: put back the replaced bytes, or delete an object that was new."""
    store, _ = open_store(models_url)
    if not pub.uploaded:
        return "unchanged"
    if pub.previous_backup:
        store.put_file(pub.key, pub.previous_backup)
        return "restored previous"
    store.delete(pub.key)
    return "deleted"


# ---------------------------------------------------------------------------------- ledger
def _ledger_location(store_uri: str, endpoint: str) -> tuple[ObjectStore, str]:
    store, prefix = open_store(store_uri)
    return store, _key(prefix, f"deployments/{endpoint}.json")


def read_ledger(store_uri: str, endpoint: str) -> Ledger:
    """The endpoint's ledger (an empty one when none was written); a ledger file that does not
    parse, or one from a newer tool, is refused naming its URI."""
    store, key = _ledger_location(store_uri, endpoint)
    return read_stored(store, key, Ledger(endpoint=endpoint))


def write_ledger(store_uri: str, endpoint: str, ledger: Ledger | JsonObject) -> None:
    """Write the ledger; one that owns nothing (no ensemble, no plan) is deleted instead."""
    store, key = _ledger_location(store_uri, endpoint)
    if isinstance(ledger, dict):
        ledger = Ledger.model_validate(ledger)
    if ledger.ensembles or ledger.plan:
        store.put_bytes(key, json.dumps(ledger.to_json(), indent=2, sort_keys=True).encode())
    else:
        store.delete(key)


def versioned_target(target_model: str, sha256: str) -> str:
    """``<variant>-<sha256[:12]>.tar.gz``: a new name per version, so every instance of a real
    MME switches at once (an overwritten object keeps serving its old bytes until unloaded)."""
    return f"{target_model.removesuffix('.tar.gz')}-{sha256[:12]}.tar.gz"
