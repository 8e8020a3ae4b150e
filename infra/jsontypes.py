"""The one spelling of "a JSON document" for values that really are wire documents (an IAM
policy, an AWS API request, a Lambda event, a serializer's output). Results of our own
functions are typed models, not these."""

from __future__ import annotations

from typing import TypeAlias

from pydantic import JsonValue

JsonScalar: TypeAlias = str | int | float | bool | None
#: pydantic's own recursive JSON type: the same shape to mypy, and one pydantic can build a
#: schema for, so a model field may be a ``JsonObject`` too (one spelling, not two).
JsonObject: TypeAlias = dict[str, JsonValue]

__all__ = ["JsonObject", "JsonScalar", "JsonValue"]
