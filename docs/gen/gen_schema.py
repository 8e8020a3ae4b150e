"""The ensemble and fleet file references, rendered from their pydantic models at build time.

Why generated: the models (``ensembles.spec.EnsembleSpec``, ``ensembles.fleet_spec.FleetSpec``)
are what reads the files, so their JSON schema is the one true list of fields, types and
defaults. Where a field has no ``description`` in the model, the meaning comes from
:data:`MEANINGS` (hand-written; the docs test fails on a field of the fleet file without one).
"""

from __future__ import annotations

import json
from typing import Any

from gen_cli import prose
from pydantic import BaseModel

from ensembles.fleet_spec import FleetSpec
from ensembles.spec import EnsembleSpec

# what pydantic's model_json_schema() returns (its own annotation)
JsonSchema = dict[str, Any]

# model title -> field -> meaning, for fields whose model gives no description
MEANINGS: dict[str, dict[str, str]] = {
    "FleetSpec": {
        "name": "The fleet's name: letters, digits, `_` and `-`.",
        "template": "A catalog ensemble, or a folder with an `ensemble.yaml` (relative to this file).",
        "target": "What every variant is built for.",
        "description": "Free text.",
        "layout": "`separate` (one tarball per variant), `fused` (variants sharing a trunk stacked into "
                  "shards) or `auto`.",
        "shard_size": "Tenants per fused shard.",
        "defaults": "`<artifact>.<param>` values every variant starts from.",
        "variants": "Variant source (a): the variants inline.",
        "table": "Variant source (b): a `.csv` or `.jsonl` beside this file (column `variant`, "
                 "`<artifact>.<param>` columns, `label.<key>` columns).",
        "prefix": "Variant source (c): one listing of a model prefix (`file://` or `s3://`).",
    },
    "InlineVariant": {
        "name": "The variant's name; its TargetModel is `<name>.tar.gz`.",
        "params": "`<artifact>.<param>` overrides of the template's artifacts.",
        "labels": "Free key/value labels (routing, reports).",
    },
    "PrefixSource": {
        "uri": "The prefix listed once (`file://` or `s3://`).",
        "pattern": "Key pattern relative to `uri`; `{variant}` is the variant's name.",
        "params": "Params per match: `{match}` is the matched object's URI, `{variant}` the name.",
        "labels": "Labels per match (`{variant}` allowed).",
    },
}


def _type(prop: JsonSchema) -> str:
    """A field's type in one short line (``string``, ``list of InlineVariant``, ``a | b``)."""
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "anyOf" in prop:
        return " \\| ".join(_type(p) for p in prop["anyOf"])
    kind = str(prop.get("type", "any"))
    if kind == "array":
        return f"list of {_type(prop.get('items', {}))}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"map of {_type(prop['additionalProperties'])}"
    return kind


def _constraints(prop: JsonSchema) -> str:
    keys = ("minimum", "maximum", "minLength", "maxLength", "pattern", "exclusiveMinimum")
    return ", ".join(f"{k} `{prop[k]}`" for k in keys if k in prop)


def _table(title: str, schema: JsonSchema, meanings: dict[str, str]) -> list[str]:
    """One model's fields as a Markdown table."""
    required = set(schema.get("required", []))
    rows = ["| field | type | default | constraints | meaning |", "|---|---|---|---|---|"]
    props: dict[str, JsonSchema] = schema.get("properties", {})
    for name, prop in props.items():
        default = "required" if name in required else f"`{json.dumps(prop.get('default'))}`" \
            if "default" in prop else "(empty)"
        meaning = str(prop.get("description") or meanings.get(name, ""))
        rows.append(f"| `{name}` | {_type(prop)} | {default} | {_constraints(prop)} | "
                    f"{prose(meaning).replace(chr(10), ' ')} |")
    return [f"### `{title}`", "", prose(str(schema.get("description", ""))), ""] + rows + [""]


def fields(model: type[BaseModel]) -> dict[str, list[str]]:
    """Model title -> its field names, for the model and every model it nests."""
    schema = model.model_json_schema()
    out = {str(schema["title"]): list(schema.get("properties", {}))}
    for name, sub in schema.get("$defs", {}).items():
        out[name] = list(sub.get("properties", {}))
    return out


def render(model: type[BaseModel], title: str, intro: str) -> str:
    """The page for one file format: the top model's table, then each nested model's."""
    schema = model.model_json_schema()
    lines = [f"# {title}", "", intro, "",
             f"Generated from `{model.__module__}.{model.__name__}` when the site is built. Unknown "
             "fields are refused.", ""]
    top_title = str(schema["title"])
    lines += _table(top_title, schema, MEANINGS.get(top_title, {}))
    for name, sub in sorted(schema.get("$defs", {}).items()):
        lines += _table(name, sub, MEANINGS.get(name, {}))
    return "\n".join(lines)


def ensemble_page() -> str:
    return render(EnsembleSpec, "Ensemble file (`ensemble.yaml`)",
                  "An ensemble's spec: its steps, artifacts, validation. See [Ensembles](../ensembles.md).")


def fleet_page() -> str:
    return render(FleetSpec, "Fleet file (`fleet.yaml`)",
                  "Many ensembles from one template. Exactly one of `variants`, `table`, `prefix`. "
                  "See [Fleets](../fleets.md).")
