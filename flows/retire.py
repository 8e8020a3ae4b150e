"""The ``retire`` flow: remove ensembles from an endpoint, or the endpoint itself.

Where the endpoint lives comes from the endpoint record that deploy wrote
(``$MME_HOME/endpoints/<name>/record.json``: backend, store, region, AWS resources,
ensembles), then from the store's ledger; ``backend``/``store_uri``/``region`` say it
explicitly. Only what we published is deleted, and only if the object still has the digest
we published (someone else's upload under the same name is left alone); on SageMaker only
resources tagged as ours (see :mod:`infra.sagemaker_cleanup`).

The flow fails (:class:`RetireIncomplete`, the CLI exits 1) when it could not delete
something it was asked to, or could not find it, or deleted nothing at all; ``missing_ok``
accepts "not found" and "nothing to delete" (a retire run twice), never a failed delete.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from infra import endpoint_record as record
from infra import paths
from infra.endpoint_process import find_running, stop
from infra.store import ObjectNotFound, open_store
from tasks.publish import read_ledger, write_ledger

DELETED, MISSING, LEFT, INFO = "deleted", "missing", "left", "info"


@dataclass
class Step:
    """One thing retire looked at: ``status`` deleted | missing | left (could not delete) | info."""

    status: str
    line: str


class RetireIncomplete(RuntimeError):
    """Retire could not find or delete what it was asked to (``lines`` say what was done)."""

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.lines = lines or []

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.lines))


@task(name="retire-ensemble", cache_policy=NO_CACHE)
def retire_ensemble_task(endpoint: str, ensemble: str, entry: dict[str, Any] | None,
                         backend: str) -> Step:
    if entry is None:
        return Step(MISSING, f"{ensemble}: not deployed to {endpoint} by us (not in its record or "
                             f"ledger); nothing removed")
    running = find_running(endpoint) if backend == "local" else None
    if running:
        httpx.delete(f"{running.url}/models/{entry['target_model']}", timeout=120).raise_for_status()
    # (on SageMaker a deleted object stays loaded on instances that have it until SageMaker
    # unloads it; requests for it fail once it is unloaded)
    store, _ = open_store(entry["model_data_url"])
    try:
        current = store.head(entry["key"])
    except ObjectNotFound:
        current = None
    ours = {entry["sha256"], (entry.get("previous") or {}).get("sha256")}
    unloaded = "unloaded; " if running else ""
    if current is None:
        return Step(MISSING, f"{ensemble}: {unloaded}object {entry['uri']} already gone")
    if current.sha256 not in ours:
        return Step(LEFT, f"{ensemble}: object {entry['uri']} was replaced by someone else; left in place")
    store.delete(entry["key"])
    return Step(DELETED, f"{ensemble}: {unloaded}deleted {entry['uri']}")


def _where(endpoint: str, backend: str | None, store_uri: str | None,
           region: str | None) -> tuple[str, str, str, dict[str, Any], dict[str, Any]]:
    """(backend, store, region, record, ledger): explicit arguments first, then the endpoint
    record, then the ledger in the store, then the defaults (local, the embedded store)."""
    rec = record.read_record(endpoint) or {"resources": [], "ensembles": {}}
    store_uri = store_uri or rec.get("store_uri") or paths.store_uri()
    ledger = read_ledger(store_uri, endpoint)
    backend = backend or rec.get("backend") or ledger.get("backend") or "local"
    region = (region or rec.get("region") or ledger.get("region")
              or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    return backend, store_uri, region, rec, ledger


def _entries(rec: dict[str, Any], ledger: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Ensembles we deployed: the ledger's, and the record's (which also holds a deploy that
    died before its ledger was written)."""
    entries = {name: dict(e) for name, e in rec.get("ensembles", {}).items()}
    for name, e in ledger.get("ensembles", {}).items():
        entries[name] = {**e, "model_data_url": e.get("model_data_url") or ledger["model_data_url"],
                         "previous": entries.get(name, {}).get("previous")}
    return entries


def _stop_sagemaker(endpoint: str, region: str, rec: dict[str, Any], ledger: dict[str, Any],
                    log: Any) -> list[Step]:
    from flows.sagemaker_backend import retire_sagemaker_endpoint
    from infra import sagemaker_cleanup as cleanup

    status = {cleanup.DELETED: DELETED, cleanup.MISSING: MISSING}
    outcomes = retire_sagemaker_endpoint(endpoint, region, plan_doc=ledger.get("plan") or rec.get("plan"),
                                         log=log.info)
    steps = [Step(status.get(o.status, LEFT), f"endpoint {endpoint}: {o.line()}") for o in outcomes]
    if not outcomes:
        steps.append(Step(INFO, f"endpoint {endpoint}: nothing of ours found on SageMaker in {region}"))
    return steps


def _stop_local(endpoint: str) -> list[Step]:
    was_running = stop(endpoint)
    cache = paths.endpoint_dir(endpoint) / "cache"
    had_cache = cache.exists()
    shutil.rmtree(cache, ignore_errors=True)
    what = "stopped" if was_running else "was not running"
    return [Step(DELETED if was_running or had_cache else INFO,
                 f"endpoint {endpoint}: {what}; {'cache removed' if had_cache else 'no cache'}")]


def _verdict(steps: list[Step], endpoint: str, missing_ok: bool) -> str | None:
    """Why the retire failed, or None."""
    left = [s.line for s in steps if s.status == LEFT]
    missing = [s.line for s in steps if s.status == MISSING]
    if left:
        return f"could not delete: {'; '.join(left)}"
    if missing and not missing_ok:
        return f"not found: {'; '.join(missing)} (--missing-ok accepts this)"
    if not any(s.status == DELETED for s in steps) and not missing_ok:
        return f"nothing deleted for endpoint {endpoint} (--missing-ok accepts this)"
    return None


@flow(name="retire", log_prints=True)
def retire(ensembles: list[str] | None = None, endpoint: str = "local-mme",
           stop_endpoint: bool = False, store_uri: str | None = None,
           backend: Literal["local", "sagemaker"] | None = None, region: str | None = None,
           missing_ok: bool = False) -> list[str]:
    """Retire ``ensembles`` from ``endpoint``; with ``stop_endpoint`` (or no ensembles given)
    also remove the endpoint: stop a local one and delete its cache, or delete a SageMaker
    one with its configs, models and autoscaling."""
    log = get_run_logger()
    kind, store_uri, aws_region, rec, ledger = _where(endpoint, backend, store_uri, region)
    entries = _entries(rec, ledger)
    names = list(ensembles) if ensembles else list(entries)
    steps = []
    for name in names:
        step = retire_ensemble_task(endpoint, name, entries.get(name), kind)
        steps.append(step)
        if step.status in (DELETED, MISSING):
            ledger["ensembles"].pop(name, None)
            record.forget_ensemble(endpoint, name)
    write_ledger(store_uri, endpoint, ledger)
    if stop_endpoint or not ensembles:
        if kind == "sagemaker":
            steps += _stop_sagemaker(endpoint, aws_region, rec, ledger, log)
            if not any(s.status == LEFT for s in steps):
                ledger.pop("plan", None)
                write_ledger(store_uri, endpoint, ledger)
        else:
            steps += _stop_local(endpoint)
    lines = [s.line for s in steps]
    for line in lines:
        log.info(line)
    create_markdown_artifact(key="retire-summary", markdown="\n".join(f"- {l}" for l in lines),
                             description=f"Retired from {endpoint} ({kind})")
    problem = _verdict(steps, endpoint, missing_ok)
    if problem:
        raise RetireIncomplete(f"retire of {endpoint} ({kind}) incomplete: {problem}", lines)
    return lines
