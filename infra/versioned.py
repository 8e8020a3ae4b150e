"""The one base of every document this project persists, and its one version policy.

Endpoint record, build manifest, deploy ledger, sync index, routing table, fleet index, plan
file: each is a :class:`VersionedDocument` with a class-level :attr:`~VersionedDocument.current_version`,
read through :meth:`~VersionedDocument.parse` (a parsed document) or
:meth:`~VersionedDocument.read` (its text), which apply one rule:

- no ``schema_version`` field: written before the field existed, version 1;
- newer than the reader: refused, naming the file, rather than half-read;
- older (1 .. current): accepted, through :meth:`~VersionedDocument.migrate` (a subclass
  upgrades in memory whatever changed), and carried as the current version from then on;
- malformed (not a JSON object, a field missing or of the wrong type): refused on one line
  naming the file and the field paths, in the one format of :func:`infra.errors.validation_problems`.

Why a top-level module and not ``infra/records/``: the sync index belongs to ``infra/store``,
which lies below ``infra/records`` in the layers, and must use the same base. This module imports
only pydantic and :mod:`infra.errors`, so every layer may use it. The ownership ledger
(``infra/processes/leftovers.py``) runs without site-packages and applies the same rule in
stdlib code.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from infra.errors import InvalidInput, UserError, validation_problems
from infra.jsontypes import JsonObject


class RecordError(InvalidInput):
    """A persisted document that cannot be read as any known version (the message names it)."""


class VersionedDocument(BaseModel):
    """Base of a persisted document. Subclasses set :attr:`current_version`, :attr:`kind` (what
    the file is, for messages), :attr:`remedy` (what the user does about a bad one) and, where
    callers catch their own class, :attr:`error`. Unknown fields are kept (a newer minor field
    round-trips unchanged) unless a subclass forbids them."""

    model_config = ConfigDict(extra="allow")

    current_version: ClassVar[int] = 1
    kind: ClassVar[str] = "record"
    remedy: ClassVar[str] = "fix or delete it"
    error: ClassVar[type[UserError]] = RecordError

    schema_version: int = 1

    @model_validator(mode="before")
    @classmethod
    def _stamp_version(cls, data: Any) -> Any:
        """A document made in memory without a version is the current one."""
        if isinstance(data, dict) and "schema_version" not in data:
            return {**data, "schema_version": cls.current_version}
        return data

    @classmethod
    def migrate(cls, doc: JsonObject, version: int) -> JsonObject:
        """``doc`` (read as ``version``, older than current) upgraded in memory; the default is
        unchanged (every older version of the subclass has the same fields)."""
        return doc

    @classmethod
    def version_of(cls, doc: dict[str, Any], where: str) -> int:
        """The document's version by the one rule (missing = 1), refused naming ``where`` when it
        is newer than this reader or not a version at all."""
        version = doc.get("schema_version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise cls.error(f"{where}: {cls.kind} schema_version {version!r} is not a version "
                            f"(1..{cls.current_version}): {cls.remedy}")
        if version > cls.current_version:
            raise cls.error(f"{where}: {cls.kind} schema_version {version} is newer than this "
                            f"tool reads (1..{cls.current_version}): upgrade triton-mme, or "
                            f"use the tool that wrote it")
        return version

    @classmethod
    def parse(cls, doc: object, where: str) -> Self:
        """``doc`` (a parsed file) as this document, an older version migrated; ``where`` names
        the file in every refusal."""
        if not isinstance(doc, dict):
            raise cls.error(f"{where}: not a {cls.kind} (a JSON object is expected): {cls.remedy}")
        version = cls.version_of(doc, where)
        try:
            return cls.model_validate({**cls.migrate(dict(doc), version),
                                       "schema_version": cls.current_version})
        except ValidationError as e:
            raise cls.error(f"{where}: not a readable version-{version} {cls.kind} "
                            f"({validation_problems(e, 5)}): {cls.remedy}") from None

    @classmethod
    def read(cls, text: str | bytes, where: str) -> Self:
        """The document in ``text`` (JSON), as :meth:`parse` reads it."""
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise cls.error(f"{where}: not JSON ({e}): {cls.remedy}") from None
        return cls.parse(doc, where)
