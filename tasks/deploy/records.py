"""Typed records of the deploy side: a deploy's result, a dry run's plan, the store's ledger.

Each carries ``schema_version``. A file (the ledger) written before the field existed is read
as version 1 (same fields); one from a newer tool, or one that does not parse, is refused with
a message naming the file. The JSON field names are the ones the CLI, ``mme demo --report``
and the tests read (see the README), so ``to_json()`` is what a flow returns.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from infra.records.manifest import OpenRecord
from infra.versioned import VersionedDocument

SCHEMA_VERSION = 1


class DeployedEnsemble(OpenRecord):
    """One line of a deploy result (and of ``mme demo --report``)."""

    name: str
    target: str | None = None
    target_model: str | None = None  # the versioned TargetModel it is invoked by
    artifact: str
    sha256: str
    bytes: int
    uploaded: bool
    validation: dict[str, Any]
    latency_ms: dict[str, Any]
    cold_tries: int = 1
    direct_triton_latency_ms: dict[str, Any] | None = None


class DeployResult(VersionedDocument):
    """What a deploy did: where the ensembles are served and how each validated. SageMaker
    deploys also say the image, the endpoint config, the AWS calls made and the plan."""

    current_version: ClassVar[int] = SCHEMA_VERSION
    endpoint: str
    url: str
    model_data_url: str
    ensembles: list[DeployedEnsemble]
    endpoint_info: dict[str, Any] | None = None
    image: str | None = None
    endpoint_config: str | None = None
    hourly_cost_usd: float | None = None
    calls: list[str] | None = None
    plan: dict[str, Any] | None = None
    pruned: list[str] | None = None  # older versions removed after validation (one line each)

    def to_json(self) -> dict[str, Any]:
        """The JSON document (fields a backend does not set are left out, as before)."""
        doc = self.model_dump(mode="json", exclude_none=True)
        for entry, model in zip(doc["ensembles"], self.ensembles, strict=True):
            entry["validation"] = model.validation  # keep None values the scorer wrote
            entry["target"] = model.target  # read by `mme demo --report`, even when unknown
        return doc


class DeployPlan(VersionedDocument):
    """A dry run: every call a deploy would make, in order, and nothing made."""

    current_version: ClassVar[int] = SCHEMA_VERSION
    endpoint: str
    dry_run: bool = True
    calls: list[str]
    model_data_url: str | None = None
    image: str | None = None
    hourly_cost_usd: float | None = None
    warnings: list[str] = Field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class LedgerEntry(OpenRecord):
    """An object a deploy published: retire deletes it only while it still has ``sha256``."""

    target_model: str
    key: str
    uri: str
    sha256: str
    model_data_url: str | None = None
    deployed_at: str | None = None
    kept_versions: list[dict[str, Any]] | None = None  # older versions kept for rollback, newest first

    def target_models(self) -> set[str]:
        """Every TargetModel of ours this entry references: the current one and the kept ones."""
        return {self.target_model, *(v["target_model"] for v in self.kept_versions or [])}


class Ledger(VersionedDocument):
    """``deployments/<endpoint>.json`` in the store: what we own under the model prefix."""

    current_version: ClassVar[int] = SCHEMA_VERSION
    kind: ClassVar[str] = "deploy ledger"
    endpoint: str
    model_data_url: str | None = None
    backend: str | None = None
    region: str | None = None
    plan: dict[str, Any] | None = None
    ensembles: dict[str, LedgerEntry] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class Rollout(OpenRecord):
    """How a deploy validates and what it keeps: ``warm_invocations`` timed invokes after the
    cold one; ``keep_versions`` previous versions of each ensemble whose objects are kept for a
    rollback (older ones, and unversioned objects of older deploys, are deleted once the new
    version validated)."""

    warm_invocations: int = Field(default=20, ge=0)
    keep_versions: int = Field(default=1, ge=0)


class BuildSource(OpenRecord):
    """Which builds a deploy reads: ``dir`` (a folder of manifests and tarballs), or the
    default folder of ``target`` (the backend's own target when None)."""

    target: str | None = None
    dir: str | None = None
