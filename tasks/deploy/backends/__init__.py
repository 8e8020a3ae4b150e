"""Where a deploy goes: one :class:`DeployBackend` protocol, two implementations.

The ``deploy`` and ``retire`` flows call a backend's steps, each as its own Prefect task (see
:mod:`tasks.deploy.steps`), so both backends tell the same story in the UI: plan (dry run),
check, publish, ensure the endpoint, activate, validate, and on failure roll back; after a
validated deploy, prune the versions past the keep count; retire removes ensembles and the
endpoint. The backend is chosen once, by :func:`backend_for`.

A new backend: a class with these methods in ``tasks/deploy/backends/<name>.py``, one line in
:func:`backend_for`, and its build targets in :data:`BACKEND_TARGETS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, get_args

from infra.aws.clients import ClientFactory
from infra.errors import InvalidInput
from ensembles.spec import Target
from infra.jsontypes import JsonObject
from infra.records.endpoint import EnsembleLine
from infra.records.manifest import Manifest
from tasks.deploy.backends.base import Backend, Step, TargetMismatch, check_targets  # noqa: F401 (re-exported)
from tasks.deploy.publish import Published
from tasks.deploy.records import DeployedEnsemble, DeployPlan, DeployResult, EndpointHandle, ValidationReport

if TYPE_CHECKING:  # imported when the backend is made: retire never loads the SageMaker options
    from tasks.deploy.backends.sagemaker import SageMakerOptions


class DeployBackend(Protocol):
    """The steps of a deploy and a retire on one kind of endpoint. One instance serves one
    flow run of one endpoint: it may keep what it learned (the state before the deploy, the
    calls it attempted) between steps, for the rollback."""

    name: Backend
    endpoint: str
    store_uri: str
    default_target: Target
    log: Callable[[str], None]  # where a step says what it does (the task binds its logger)

    def check(self, manifests: list[Manifest]) -> list[str]:
        """Refuse (raise) what this backend cannot serve, before anything is made; warnings."""

    def plan(self, manifests: list[Manifest]) -> DeployPlan:
        """Every call the deploy would make, in order, making none (the dry run)."""

    def begin(self, manifests: list[Manifest]) -> None:
        """Note in the endpoint record what is about to be published (before any upload)."""

    def publish(self, manifest: Manifest, backup_dir: Path) -> Published:
        """Upload one tarball under the endpoint's model prefix as the manifest's TargetModel
        (versioned: :func:`~tasks.deploy.backends.base.versioned_manifest`), skipped when unchanged."""

    def ensure_endpoint(self) -> EndpointHandle:
        """Create, update or reuse the endpoint; returns how to reach it (the handle)."""

    def activate(self, handle: EndpointHandle, published: list[Published]) -> None:
        """Make a replaced object serve its new bytes (local: unload; SageMaker: warn). With
        versioned TargetModels that is only a corrupt object of the same version re-published."""

    def validate(self, handle: EndpointHandle, manifest: Manifest, warm: int) -> ValidationReport:
        """Invoke by TargetModel and score the answer (validation, latency_ms, cold_tries)."""

    def rollback(self, handle: EndpointHandle | None, published: list[Published],
                 error: BaseException) -> list[str]:
        """Undo a failed deploy (never raises); the lines say what was done."""

    def finish(self, handle: EndpointHandle, manifests: list[Manifest],
               published: list[Published], entries: list[DeployedEnsemble]) -> DeployResult:
        """Settle the endpoint record, write the ledger, and say what was deployed."""

    def prune(self, handle: EndpointHandle, manifests: list[Manifest], keep: int) -> list[Step]:
        """After the deploy validated and the record points to the new versions: delete each
        ensemble's kept versions past ``keep`` (and unversioned objects of older deploys)."""

    def retire_ensemble(self, ensemble: str, entry: EnsembleLine | None) -> Step:
        """Remove one ensemble we deployed: its current object and the kept versions' (only
        objects that still have our digest)."""

    def retire_endpoint(self, plan_doc: JsonObject | None) -> list[Step]:
        """Stop or delete the endpoint and everything of ours around it."""


BACKENDS: tuple[Backend, ...] = get_args(Backend)


def as_backend(name: str) -> Backend:
    """``name`` as a :data:`Backend`, refused on one line when it is none (the CLI's boundary)."""
    for backend in BACKENDS:
        if name == backend:
            return backend
    raise InvalidInput(f"backend {name!r}: expected one of {', '.join(BACKENDS)}")


def backend_for(name: Backend, *, endpoint: str, store_uri: str | None = None,
                sagemaker: SageMakerOptions | None = None, region: str | None = None,
                aws: ClientFactory | None = None) -> DeployBackend:
    """The backend called ``name`` for ``endpoint``: the one place a backend name is read.

    ``sagemaker``: a :class:`~tasks.deploy.backends.sagemaker.SageMakerOptions` (deploy) or None
    (retire: ``region`` says where); ``aws``: how its AWS clients are made (tests pass
    moto-bound ones; default :func:`infra.aws.clients.aws_clients`)."""
    if name == "local":
        from tasks.deploy.backends.local import LocalBackend

        return LocalBackend(endpoint, store_uri)
    if name == "sagemaker":
        from tasks.deploy.backends.sagemaker import SageMakerBackend, SageMakerOptions

        if sagemaker is None:
            sagemaker = SageMakerOptions(region=region or "us-east-1", role_arn="(retire)")
        if not store_uri:
            raise InvalidInput("backend 'sagemaker' needs store_uri (s3://bucket/prefix) and "
                               "sagemaker options (role_arn, region, instance type...)")
        return SageMakerBackend(endpoint, store_uri, sagemaker, aws=aws)
    raise InvalidInput(f"backend {name!r}: expected one of {', '.join(BACKENDS)}")
