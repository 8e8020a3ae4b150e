"""The one spelling of "a JSON document" for values that really are wire documents (an IAM
policy, an AWS API request, a Lambda event, a serializer's output). Results of our own
functions are typed models, not these."""

from __future__ import annotations

from typing import TypeAlias

JsonScalar: TypeAlias = str | int | float | bool | None
JsonValue: TypeAlias = "JsonScalar | list[JsonValue] | dict[str, JsonValue]"
JsonObject: TypeAlias = dict[str, JsonValue]
