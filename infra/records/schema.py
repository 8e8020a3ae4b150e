"""``schema_version`` of the records this project writes (endpoint record, ledger, results).

A file without the field was written before it existed and is version 1; one with a higher
version than the reader knows comes from a newer tool and is refused, naming the file, rather
than half-read.
"""

from __future__ import annotations

from typing import Any

from infra.errors import InvalidInput


class RecordError(InvalidInput):
    """A record file that cannot be read as any known version."""


def check_version(doc: dict[str, Any], where: str, current: int) -> None:
    """Refuse ``doc`` (read from ``where``) when it is newer than ``current`` or malformed."""
    version = doc.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1 or version > current:
        raise RecordError(f"{where}: schema_version {version!r} is not one this tool reads "
                          f"(1..{current}): upgrade triton-mme, or delete the file")


def field_errors(error: Any) -> str:
    """A pydantic ``ValidationError`` as one line: ``field.path: message; ...``."""
    try:
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}"
                         for e in error.errors())
    except AttributeError:
        return str(error)
