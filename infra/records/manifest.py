"""The build manifest: what a build wrote beside its tarball, as one typed record.

Every reader (deploy, validate, the SageMaker plan, the CLI, bench/) gets a :class:`Manifest`
from :func:`load_manifest`, never a bare dict, so a field renamed or missing fails in one place
with the file named instead of as a ``KeyError`` deep inside a deploy. It lives in ``infra/``
(not ``tasks/``) because ``infra/`` reads manifests too (the endpoint record, the GPU plan
checks) and may import nothing above it.

Versions: ``schema_version`` 2 is what the build writes now. Files written before the field
existed have none and are version 1: same fields, the ``sample`` sometimes absent; they are
upgraded in memory when read. A file from a newer tool (a higher version) or one missing a
required field is refused with a message naming the file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, JsonValue

from infra.errors import UserError
from infra.versioned import RecordError, VersionedDocument

SCHEMA_VERSION = 2
MANIFEST_SUFFIX = ".manifest.json"


class ManifestError(RecordError):
    """A manifest file that cannot be read as any known version."""




class OpenRecord(BaseModel):
    """Base of the records inside persisted documents: unknown fields are kept (a newer minor
    field, or a producer's extra validation numbers) and round-trip to disk unchanged."""

    model_config = ConfigDict(extra="allow")


class ArrayRecord(OpenRecord):
    """One array of the validation sample: dtype (``bytes`` for strings), shape, flat data."""

    dtype: str
    shape: list[int]
    data: list[JsonValue]


class SampleRecord(OpenRecord):
    """The validation sample: request inputs, the framework's expected outputs, and what
    scoring needs (labels, tolerances) in ``context``. ``tasks.build.verify.Sample`` is its array form."""

    inputs: dict[str, ArrayRecord]
    expected: dict[str, ArrayRecord]
    context: dict[str, Any] = {}


class Validation(OpenRecord):
    """The verification's outcome; ``passed`` is None when it is deferred to the endpoint
    (``deferred`` says why). Metric-specific numbers (``top5``, ``load_seconds``) are extras."""

    passed: bool | None = None
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    deferred: str | None = None

    def summary(self) -> str:
        """One line for tables: ``min_cosine=0.999998 (passed)`` or why it is deferred."""
        if self.passed is None:
            return "deferred to the endpoint"
        return f"{self.metric}={self.value:.6f} ({'passed' if self.passed else 'FAILED'})"


class StepRecord(OpenRecord):
    """One build step's wall time; ``cached`` only for steps that can be cached."""

    seconds: float
    cached: bool | None = None
    key: str | None = None
    deferred: bool | None = None


class Manifest(VersionedDocument):
    """One built ensemble: where its tarball is, its digest, how it was verified, and the
    sample the endpoint is validated with at deploy time (``sample`` is left out of what the
    build flow returns, to keep run results small; it is always in the file)."""

    current_version: ClassVar[int] = SCHEMA_VERSION
    kind: ClassVar[str] = "build manifest"
    remedy: ClassVar[str] = "rebuild it (`mme build`), or use the tool that wrote it"
    error: ClassVar[type[UserError]] = ManifestError

    ensemble: str
    target: str | None = None  # version-1 files from before targets lack it
    target_model: str
    artifact: str
    sha256: str
    bytes: int
    built_at: str | None = None
    build_seconds: float | None = None
    spec_sha256: str | None = None
    tool_version: str | None = None
    sources: dict[str, dict[str, Any]] = {}
    validation: Validation = Validation()
    steps: dict[str, StepRecord] = {}
    sample: SampleRecord | None = None
    #: For a fleet variant: the fleet, its template, the variant's name and labels.
    fleet: dict[str, Any] | None = None
    #: The footprint record (tasks/build/footprints.py: bytes, memory, load and service times,
    #: each measured or estimated); written by `mme profile --write`, read by the capacity planner.
    footprint: dict[str, Any] | None = None

    def to_json(self) -> str:
        """The file's text: the same field names as ever (values never given are left out,
        as the dict the build wrote before left them out), plus ``schema_version``."""
        doc = self.model_dump(mode="json", exclude_unset=True) | {"schema_version": self.schema_version}
        return json.dumps(doc, indent=2, sort_keys=True)

    def without_sample(self) -> Manifest:
        return self.model_copy(update={"sample": None})

    def required_sample(self) -> SampleRecord:
        """The validation sample, for the readers that invoke with it (validate, bench/)."""
        if self.sample is None:
            raise ManifestError(f"the manifest of {self.ensemble!r} has no validation sample (a "
                                f"build flow's return value leaves it out; the manifest file "
                                f"has it): read the file, or rebuild (`mme build {self.ensemble}`)")
        return self.sample


def parse_manifest(doc: object, where: str) -> Manifest:
    """``doc`` (a parsed manifest file) as a :class:`Manifest`, version 1 upgraded.
    ``where`` names the file in the error."""
    return Manifest.parse(doc, where)


def load_manifest(path: Path) -> Manifest:
    """The manifest file at ``path``. A missing file raises FileNotFoundError (the caller
    says which build is missing); an unreadable one :class:`ManifestError` naming it."""
    return Manifest.read(Path(path).read_text(), str(path))
