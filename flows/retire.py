"""The ``retire`` flow: remove ensembles from an endpoint, or the endpoint itself.

Where the endpoint lives comes from the endpoint record that deploy wrote
(``$MME_HOME/endpoints/<name>/record.json``: backend, store, region, AWS resources,
ensembles), then from the store's ledger; ``backend``/``store_uri``/``region`` say it
explicitly. Only what we published is deleted, and only if the object still has the digest
we published (someone else's upload under the same name is left alone); on SageMaker only
resources tagged as ours (see :mod:`infra.aws.sagemaker_cleanup`).

The flow fails (:class:`RetireIncomplete`, the CLI exits 1) when it could not delete
something it was asked to, or could not find it, or deleted nothing at all; ``missing_ok``
accepts "not found" and "nothing to delete" (a retire run twice), never a failed delete.
"""

# (no ``from __future__ import annotations``: Prefect builds the parameter model of a flow
# started by a deployment from these annotations, and must find ``Literal`` as an object)
import os
from dataclasses import dataclass
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from infra.records import endpoint as record
from infra.records.endpoint import EndpointRecord, EnsembleLine
from infra import paths
from infra.errors import MMEError
from tasks.deploy.backends import Backend, as_backend, backend_for
from tasks.deploy.backends.base import DELETED, LEFT, MISSING, Step
from tasks.deploy.steps import retire_endpoint_task, retire_ensemble_task
from tasks.deploy.publish import model_data_url, read_ledger, write_ledger
from tasks.deploy.records import Ledger


class RetireIncomplete(MMEError, RuntimeError):
    """Retire could not find or delete what it was asked to (``lines`` say what was done)."""

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.lines = lines or []

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.lines))


@dataclass
class Where:
    """Where an endpoint lives: its backend, store, region, record and ledger."""

    backend: Backend
    store_uri: str
    region: str
    record: EndpointRecord
    ledger: Ledger

    def entries(self) -> dict[str, EnsembleLine]:
        """Ensembles we deployed: the ledger's, and the record's (which also holds a deploy
        that died before its ledger was written)."""
        out = dict(self.record.ensembles)
        for name, e in self.ledger.ensembles.items():
            before = out.get(name)
            out[name] = EnsembleLine.model_validate({
                **e.model_dump(), "previous": None if before is None else before.previous,
                "model_data_url": (e.model_data_url or self.ledger.model_data_url
                                   or model_data_url(self.store_uri, self.ledger.endpoint))})
        return out


def locate(endpoint: str, backend: Backend | None, store_uri: str | None, region: str | None) -> Where:
    """Explicit arguments first, then the endpoint record, then the ledger in the store, then
    the defaults (local, the embedded store)."""
    rec = record.read_record(endpoint) or record.EndpointRecord(endpoint=endpoint)
    store_uri = store_uri or rec.store_uri or paths.store_uri()
    ledger = read_ledger(store_uri, endpoint)
    return Where(backend=as_backend(backend or rec.backend or ledger.backend or "local"),
                 store_uri=store_uri, record=rec, ledger=ledger,
                 region=(region or rec.region or ledger.region
                         or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"))


@flow(name="retire", log_prints=True)
def retire(ensembles: list[str] | None = None, endpoint: str = "local-mme",
           stop_endpoint: bool = False, store_uri: str | None = None,
           backend: Literal["local", "sagemaker"] | None = None, region: str | None = None,
           missing_ok: bool = False, aws: Any = None) -> list[str]:
    """Retire ``ensembles`` from ``endpoint``; with ``stop_endpoint`` (or no ensembles given)
    also remove the endpoint: stop a local one and delete its cache, or delete a SageMaker
    one with its configs, models and autoscaling. ``aws``: an :data:`infra.aws.clients.ClientFactory`
    (tests); None uses boto3's default chain."""
    where = locate(endpoint, backend, store_uri, region)
    be = backend_for(where.backend, endpoint=endpoint, store_uri=where.store_uri,
                     region=where.region, aws=aws)
    entries = where.entries()
    steps = []
    for name in list(ensembles) if ensembles else list(entries):
        step = retire_ensemble_task(be, name, entries.get(name))
        steps.append(step)
        if step.status in (DELETED, MISSING):
            where.ledger.ensembles.pop(name, None)
            record.forget_ensemble(endpoint, name)
    write_ledger(where.store_uri, endpoint, where.ledger)
    if stop_endpoint or not ensembles:
        steps += retire_endpoint_task(be, where.ledger.plan or where.record.plan)
        if not any(s.status == LEFT for s in steps) and where.ledger.plan:
            where.ledger.plan = None
            write_ledger(where.store_uri, endpoint, where.ledger)
    return _report(steps, endpoint, where.backend, missing_ok)


def _report(steps: list[Step], endpoint: str, kind: str, missing_ok: bool) -> list[str]:
    """Log and show what was done; raise :class:`RetireIncomplete` when it is not enough."""
    lines = [s.line for s in steps]
    log = get_run_logger()
    for line in lines:
        log.info(line)
    create_markdown_artifact(key="retire-summary", markdown="\n".join(f"- {line}" for line in lines),
                             description=f"Retired from {endpoint} ({kind})")
    problem = _verdict(steps, endpoint, missing_ok)
    if problem:
        raise RetireIncomplete(f"retire of {endpoint} ({kind}) incomplete: {problem}", lines)
    return lines


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
