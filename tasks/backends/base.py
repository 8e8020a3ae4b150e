"""What both backends share: retire's step lines, the build-target check, the store side of
publishing, rolling back and retiring (objects under the endpoint's model prefix), the ledger."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from infra import endpoint_record as record
from infra.errors import UserError
from infra.manifest import Manifest
from infra.store import ObjectNotFound, open_store
from tasks.publish import Published, read_ledger, restore_previous, write_ledger
from tasks.records import LedgerEntry

DELETED, MISSING, LEFT, INFO = "deleted", "missing", "left", "info"


@dataclass
class Step:
    """One thing retire looked at: ``status`` deleted | missing | left (could not delete) | info."""

    status: str
    line: str


class TargetMismatch(UserError, ValueError):
    """A build made for one target sent to a backend that cannot run it."""


# Which build targets each backend runs. A local-cpu build's Python models import packages
# from the build host's virtualenv, which SageMaker's Triton container does not have.
BACKEND_TARGETS: dict[str, tuple[str, ...]] = {"sagemaker": ("sagemaker-gpu",)}


def check_targets(manifests: list[Manifest], backend: str, *, allow_mismatch: bool) -> list[str]:
    """Refuse (TargetMismatch naming ensemble, target and backend) a build the backend cannot
    run, before anything is uploaded or created; with ``allow_mismatch`` return the warnings.

    A manifest without a ``target`` (written before manifests recorded it) counts as a
    mismatch: what it was built for is unknown, so it is refused with "rebuild it"."""
    wanted = BACKEND_TARGETS.get(backend)
    if wanted is None:
        return []
    problems = []
    for m in manifests:
        target = m.target
        if target in wanted:
            continue
        if target is None:
            problems.append(f"{m.ensemble}: its manifest records no build target (an old "
                            f"build): rebuild it with `mme build {m.ensemble} --target {wanted[0]}`")
        else:
            problems.append(f"{m.ensemble}: built for target {target!r}, which the {backend} "
                            f"backend cannot run (it runs {', '.join(wanted)}): its Python models "
                            f"need packages from the build host, not in the {backend} Triton "
                            f"container; build it with --target {wanted[0]}")
    if problems and not allow_mismatch:
        raise TargetMismatch("; ".join(problems) + " (or pass --allow-target-mismatch if you "
                             "know the container has what they need)")
    return [f"WARNING (--allow-target-mismatch): {p}" for p in problems]


def restore_objects(published: list[Published], models_url: str, error: BaseException) -> list[str]:
    """Put back what each publish replaced (or delete what was new): the rollback's store part."""
    return [f"{pub.ensemble}: deploy failed ({error}); object {restore_previous(pub, models_url)}"
            for pub in published]


def delete_object(ensemble: str, entry: dict[str, Any], unloaded: str = "") -> Step:
    """Delete the object of ``entry`` if it still has the digest we published (or the one it
    replaced, while a deploy was in flight); someone else's upload under the name is left."""
    store, _ = open_store(entry["model_data_url"])
    try:
        current = store.head(entry["key"])
    except ObjectNotFound:
        current = None
    ours = {entry["sha256"], (entry.get("previous") or {}).get("sha256")}
    if current is None:
        return Step(MISSING, f"{ensemble}: {unloaded}object {entry['uri']} already gone")
    if current.sha256 not in ours:
        return Step(LEFT, f"{ensemble}: object {entry['uri']} was replaced by someone else; left in place")
    store.delete(entry["key"])
    return Step(DELETED, f"{ensemble}: {unloaded}deleted {entry['uri']}")


def missing_entry(endpoint: str, ensemble: str) -> Step:
    return Step(MISSING, f"{ensemble}: not deployed to {endpoint} by us (not in its record or "
                         f"ledger); nothing removed")


def write_deploy_ledger(store_uri: str, endpoint: str, models_url: str,
                        published: list[Published], **extra: Any) -> None:
    """Add what this deploy published to the store's ledger (``extra``: backend, region, plan)."""
    ledger = read_ledger(store_uri, endpoint)
    ledger.model_data_url = models_url
    for key, value in extra.items():
        setattr(ledger, key, value)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for pub in published:
        ledger.ensembles[pub.ensemble] = LedgerEntry(
            target_model=pub.target_model, key=pub.key, uri=pub.uri, sha256=pub.sha256,
            model_data_url=models_url, deployed_at=now)
    write_ledger(store_uri, endpoint, ledger)


def settle(endpoint: str, manifests: list[Manifest], *, deployed: bool) -> None:
    record.settle_ensembles(endpoint, [m.ensemble for m in manifests], deployed=deployed)


def publish_actions(manifests: list[Manifest], models_url: str) -> list[str]:
    """What publishing would do, object by object (for --dry-run)."""
    store, prefix = open_store(models_url)
    lines = []
    for m in manifests:
        key = f"{prefix}/{m.target_model}" if prefix else m.target_model
        try:
            same = store.head(key).sha256 == m.sha256
        except ObjectNotFound:
            same = False
        except Exception as e:
            if "Credentials" not in type(e).__name__ and "credentials" not in str(e):
                raise
            same = False
        lines.append(f"s3.{'(unchanged, skipped) ' if same else ''}PutObject "
                     f"{store.uri_for(key)} ({m.bytes} bytes, sha256 {m.sha256[:12]})")
    return lines
