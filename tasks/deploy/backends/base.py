"""What both backends share: retire's step lines, the build-target check, the store side of
publishing, rolling back and retiring (objects under the endpoint's model prefix), the ledger,
and the versions: each deploy publishes ``<ensemble>-<sha256[:12]>.tar.gz`` (never over the
object that serves), keeps the versions before it for rollback, and deletes those past the
keep count once the new one validated."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ensembles.spec import Target
from infra.records import endpoint as record
from infra.errors import InvalidInput, UserError
from infra.jsontypes import JsonObject
from infra.records.endpoint import EnsembleLine, VersionLine
from infra.records.manifest import Manifest
from infra.store.objects import ObjectNotFound, open_store, sha256_at
from tasks.deploy.publish import versioned_target
from tasks.deploy.publish import Published, model_data_url, read_ledger, rollback_object, write_ledger
from tasks.deploy.records import Ledger, LedgerEntry

DELETED, MISSING, LEFT, INFO = "deleted", "missing", "left", "info"


@dataclass
class Step:
    """One thing retire looked at: ``status`` deleted | missing | left (could not delete) | info."""

    status: str
    line: str


class TargetMismatch(UserError, ValueError):
    """A build made for one target sent to a backend that cannot run it."""


Backend = Literal["local", "sagemaker"]
"""A backend's name, as the flows and the CLI spell it."""

# Which build targets each backend runs. A local-cpu build's Python models import packages
# from the build host's virtualenv, which SageMaker's Triton container does not have.
BACKEND_TARGETS: dict[Backend, tuple[Target, ...]] = {"sagemaker": ("sagemaker-gpu",)}


def check_targets(manifests: list[Manifest], backend: Backend, *, allow_mismatch: bool) -> list[str]:
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
    return [f"{pub.ensemble}: deploy failed ({error}); object {rollback_object(pub, models_url)}"
            for pub in published]


def delete_object(ensemble: str, version: VersionLine, unloaded: str = "", *,
                  replaced_sha256: str | None = None) -> Step:
    """Delete the object of ``version`` if it still has the digest we published (or
    ``replaced_sha256``, the one it replaced while a deploy was in flight); someone else's
    upload under the name is left."""
    store, _ = open_store(_models_url(version))
    current = sha256_at(store, version.key)
    if current is None:
        return Step(MISSING, f"{ensemble}: {unloaded}object {version.uri} already gone")
    if current not in {version.sha256, replaced_sha256}:
        return Step(LEFT, f"{ensemble}: object {version.uri} was replaced by someone else; left in place")
    store.delete(version.key)
    return Step(DELETED, f"{ensemble}: {unloaded}deleted {version.uri}")


def _models_url(version: VersionLine) -> str:
    """Where ``version`` was published (every line a deploy wrote says so)."""
    if version.model_data_url is None:
        raise InvalidInput(f"version {version.target_model} names no model_data_url: its record "
                           f"or ledger line was edited by hand")
    return version.model_data_url


def missing_entry(endpoint: str, ensemble: str) -> Step:
    return Step(MISSING, f"{ensemble}: not deployed to {endpoint} by us (not in its record or "
                         f"ledger); nothing removed")


def write_deploy_ledger(store_uri: str, endpoint: str, models_url: str,
                        published: list[Published], *, backend: Backend | None = None,
                        region: str | None = None, plan: JsonObject | None = None) -> None:
    """Add what this deploy published to the store's ledger (and, when given, the backend,
    region and endpoint plan); what served before joins the entry's kept versions, as in the
    endpoint record (a retire or gc from another machine reads the ledger, and must know every
    object that is ours)."""
    ledger = read_ledger(store_uri, endpoint)
    ledger.model_data_url = models_url
    ledger.backend = backend or ledger.backend
    ledger.region = region or ledger.region
    ledger.plan = plan or ledger.plan
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for pub in published:
        before = ledger.ensembles.get(pub.ensemble)
        kept = record.kept_after(None if before is None else _ledger_line(before, ledger), pub.key)
        ledger.ensembles[pub.ensemble] = LedgerEntry(
            target_model=pub.target_model, key=pub.key, uri=pub.uri, sha256=pub.sha256,
            model_data_url=models_url, deployed_at=now, kept_versions=kept or None)
    write_ledger(store_uri, endpoint, ledger)


def _ledger_line(entry: LedgerEntry, ledger: Ledger) -> LedgerEntry:
    """A ledger entry with its prefix (an old entry without its own: the ledger's)."""
    return entry.model_copy(update={"model_data_url": entry.model_data_url or ledger.model_data_url})


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


# ---------------------------------------------------------------------------------- versions
def versioned_manifest(manifest: Manifest) -> Manifest:
    """The build's manifest with the TargetModel a deploy publishes it as:
    ``<ensemble>-<sha256[:12]>.tar.gz``, the fleets' scheme (:func:`tasks.deploy.publish.
    versioned_target`). A new name per version is what switches every instance of a real MME
    at once: an object overwritten in place keeps serving its old bytes on instances that
    loaded it, and validation could score those."""
    if is_versioned(manifest.target_model, manifest.sha256):
        return manifest
    return manifest.model_copy(update={"target_model": versioned_target(manifest.target_model,
                                                                        manifest.sha256)})


def is_versioned(target_model: str, sha256: str) -> bool:
    return target_model.endswith(f"-{sha256[:12]}.tar.gz")


def past_keep(kept: list[VersionLine], keep: int) -> list[VersionLine]:
    """The kept versions to delete: every unversioned one (an older deploy's
    ``<ensemble>.tar.gz``, whose name may still serve stale bytes) and the versioned ones past
    the newest ``keep``."""
    versioned = [v for v in kept if is_versioned(v.target_model, v.sha256)]
    return [v for v in kept if v not in versioned] + versioned[keep:]


#: Why an abandoned object is deleted (see :func:`infra.records.endpoint.note_ensembles_publishing`).
ABANDONED = "uploaded by a deploy that died before it settled; never served"


def _why(version: VersionLine, keep: int) -> str:
    if not is_versioned(version.target_model, version.sha256):
        return "unversioned, from an older deploy"
    return f"older than the {keep} kept version{'s' if keep != 1 else ''}"


def prune_actions(endpoint: str, store_uri: str, manifests: list[Manifest], keep: int) -> list[str]:
    """What pruning would delete after validation (for --dry-run), per the endpoint record."""
    entries = _entries(endpoint)
    _, prefix = open_store(model_data_url(store_uri, endpoint))
    lines = []
    for m in manifests:
        before = entries.get(m.ensemble)
        if before is not None and before.state == "publishing":
            before = before.previous
        key = f"{prefix}/{m.target_model}" if prefix else m.target_model
        kept = record.kept_after(before, key)
        pruned = past_keep(kept, keep)
        for v in pruned:
            lines.append(f"s3.DeleteObject {v.uri} (after validation: {_why(v, keep)})")
        named = {key, *(v.key for v in kept)}
        lines += [f"s3.DeleteObject {v.uri} (after validation: {ABANDONED})"
                  for v in _abandoned_by(entries.get(m.ensemble)) if v.key not in named]
    return lines


def _abandoned_by(entry: EnsembleLine | None) -> list[VersionLine]:
    """The objects that dead deploys of ``entry``'s ensemble left: its ``abandoned``, and its
    own when it is still ``publishing`` (a dry run holds no lock: that deploy may be running;
    the real run decides under the lock)."""
    if entry is None:
        return []
    dead = [record.version_line(entry)] if entry.state == "publishing" else []
    return [*(entry.abandoned or []), *dead]


def prune_versions(endpoint: str, store_uri: str, names: list[str], keep: int,
                   unload: Callable[[str], None] | None = None) -> list[Step]:
    """After validation: delete each ensemble's kept versions past ``keep`` (and unversioned
    objects of older deploys), only while an object still has our digest, then forget them in
    the record and the ledger. The current version of the record or the ledger is never
    touched. A delete that raises leaves the version listed: the next deploy or a retire tries
    again. ``unload``: called with each deleted TargetModel (the local endpoint frees it)."""
    entries = _entries(endpoint)
    ledger = read_ledger(store_uri, endpoint)
    steps: list[Step] = []
    for name in names:
        rec, led = entries.get(name), ledger.ensembles.get(name)
        current = {None if rec is None else rec.key, None if led is None else led.key}
        kept = _union([] if rec is None else rec.kept_versions or [], [] if led is None else [
            _with_models_url(v, led.model_data_url or ledger.model_data_url)
            for v in led.kept_versions or []])
        gone = set()
        pruned = past_keep([v for v in kept if v.key not in current], keep)
        named = {*current, *(v.key for v in kept if v not in pruned)}
        abandoned = [] if rec is None else [_with_models_url(v, rec.model_data_url)
                                            for v in rec.abandoned or [] if v.key not in named]
        for v, why in [*((v, _why(v, keep)) for v in pruned), *((v, ABANDONED) for v in abandoned)]:
            if v.key in gone:
                continue
            step = delete_object(name, v)
            if unload is not None:
                unload(v.target_model)
            steps.append(Step(step.status, f"{step.line} ({why})"))
            gone.add(v.key)
        if gone:
            record.forget_versions(endpoint, name, gone)
        if rec is not None and rec.abandoned:
            record.forget_abandoned(endpoint, name)
        if gone and led is not None and led.kept_versions:
            led.kept_versions = [v for v in led.kept_versions if v.key not in gone] or None
    if steps:
        write_ledger(store_uri, endpoint, ledger)
    return steps


def _entries(endpoint: str) -> dict[str, EnsembleLine]:
    rec = record.read_record(endpoint)
    return {} if rec is None else rec.ensembles


def _with_models_url(version: VersionLine, models_url: str | None) -> VersionLine:
    """``version`` with where it was published (its own, else ``models_url``)."""
    if version.model_data_url is not None:
        return version
    return version.model_copy(update={"model_data_url": models_url})


def _union(first: list[VersionLine], second: list[VersionLine]) -> list[VersionLine]:
    """``first``, then the lines of ``second`` whose object it does not list."""
    keys = {v.key for v in first}
    return [*first, *(v for v in second if v.key not in keys)]


def other_versions(entry: EnsembleLine) -> list[VersionLine]:
    """Every version of ``entry`` besides its current one: the kept ones, (a deploy that died
    before it settled) the one it was replacing and that one's kept versions, and the objects
    earlier dead deploys left (``abandoned``)."""
    return _union(_union(entry.kept_versions or [], record.kept_after(entry.previous, entry.key)),
                  [_with_models_url(v, entry.model_data_url) for v in entry.abandoned or []
                   if v.key != entry.key])


def delete_versions(ensemble: str, entry: EnsembleLine, unloaded: str = "") -> Step:
    """Retire one ensemble: delete its current object and every other version's (each only
    while it has our digest). One step: ``left`` if any object was left, else ``deleted`` if
    any was deleted, else ``missing``."""
    replaced = None if entry.previous is None else entry.previous.sha256
    steps = [delete_object(ensemble, record.version_line(entry), unloaded, replaced_sha256=replaced)] + [
        delete_object(ensemble, _with_models_url(v, entry.model_data_url))
        for v in other_versions(entry) if v.key != entry.key]
    status = next((s for s in (LEFT, DELETED) if any(x.status == s for x in steps)), MISSING)
    return Step(status, "; ".join(s.line for s in steps))
