"""Typed records of the deploy side: a deploy's result, a dry run's plan, the store's ledger.

Each carries ``schema_version``. A file (the ledger) written before the field existed is read
as version 1 (same fields); one from a newer tool, or one that does not parse, is refused with
a message naming the file. The JSON field names are the ones the CLI, ``mme demo --report``
and the tests read (see the README), so ``to_json()`` is what a flow returns.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from ensembles.spec import Target
from infra.jsontypes import JsonObject, JsonValue

from infra.records.endpoint import PublishedObject, VersionLine
from infra.records.manifest import OpenRecord
from infra.versioned import VersionedDocument
from tasks.build.verify import Verification

SCHEMA_VERSION = 1


class LatencyMs(OpenRecord):
    """Invoke latencies in ms: ``cold`` the first (load included; None for a measure without
    one), ``p50``/``p99`` of the ``n`` warm ones."""

    cold: float | None = None
    p50: float
    p99: float
    n: int


class EndpointHandle(BaseModel):
    """How the steps after ``ensure-endpoint`` reach the endpoint: ``url`` (``http://...`` for
    the local endpoint, ``sagemaker://<region>/<name>``), the local endpoint's Triton URL, and
    what the backend reports about it for the deploy result (``info``: the local endpoint's
    process; None on SageMaker)."""

    model_config = ConfigDict(frozen=True)

    url: str
    triton_url: str | None = None
    info: JsonObject | None = None


class ValidationReport(BaseModel):
    """One ensemble invoked on the endpoint and scored: the scored answer, its latencies, how
    many tries the cold invoke took, and (local endpoint, informative only) the same request
    straight to Triton, or why that was not measured."""

    validation: Verification
    latency_ms: LatencyMs
    cold_tries: int = 1
    direct_triton_latency_ms: LatencyMs | None = None
    direct_triton_error: str | None = None

    def validation_json(self) -> JsonObject:
        """The scored answer as the deploy result documents it (per-item values left out)."""
        return self.validation.model_dump(mode="json", exclude_none=True, exclude={"per_item"})


class DeployedEnsemble(OpenRecord):
    """One line of a deploy result (and of ``mme demo --report``)."""

    name: str
    target: str | None = None
    target_model: str | None = None  # the versioned TargetModel it is invoked by
    artifact: str
    sha256: str
    bytes: int
    uploaded: bool
    validation: JsonObject
    latency_ms: LatencyMs
    cold_tries: int = 1
    direct_triton_latency_ms: LatencyMs | None = None


class DeployResult(VersionedDocument):
    """What a deploy did: where the ensembles are served and how each validated. SageMaker
    deploys also say the image, the endpoint config, the AWS calls made and the plan."""

    current_version: ClassVar[int] = SCHEMA_VERSION
    endpoint: str
    url: str
    model_data_url: str
    ensembles: list[DeployedEnsemble]
    endpoint_info: JsonObject | None = None
    image: str | None = None
    endpoint_config: str | None = None
    hourly_cost_usd: float | None = None
    calls: list[str] | None = None
    plan: JsonObject | None = None
    pruned: list[str] | None = None  # older versions removed after validation (one line each)

    def to_json(self) -> JsonObject:
        """The JSON document (fields a backend does not set are left out, as before)."""
        doc = self.model_dump(mode="json", exclude_none=True)
        entries: list[JsonValue] = []
        for model in self.ensembles:
            entry = model.model_dump(mode="json", exclude_none=True)
            entry["validation"] = model.validation  # keep None values the scorer wrote
            entry["target"] = model.target  # read by `mme demo --report`, even when unknown
            entries.append(entry)
        doc["ensembles"] = entries
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

    def to_json(self) -> JsonObject:
        return self.model_dump(mode="json", exclude_none=True)


class LedgerEntry(PublishedObject):
    """An object a deploy published: retire deletes it only while it still has ``sha256``."""

    model_data_url: str | None = None
    deployed_at: str | None = None
    kept_versions: list[VersionLine] | None = None  # older versions kept for rollback, newest first

    def target_models(self) -> set[str]:
        """Every TargetModel of ours this entry references: the current one and the kept ones."""
        return {self.target_model, *(v.target_model for v in self.kept_versions or [])}


class Ledger(VersionedDocument):
    """``deployments/<endpoint>.json`` in the store: what we own under the model prefix."""

    current_version: ClassVar[int] = SCHEMA_VERSION
    kind: ClassVar[str] = "deploy ledger"
    endpoint: str
    model_data_url: str | None = None
    backend: str | None = None
    region: str | None = None
    plan: JsonObject | None = None
    ensembles: dict[str, LedgerEntry] = Field(default_factory=dict)

    def to_json(self) -> JsonObject:
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

    target: Target | None = None
    dir: str | None = None
