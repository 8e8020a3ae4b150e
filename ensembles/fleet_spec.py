"""Fleets: many ensembles from one template, declared once (``ensembles/fleets/<name>.yaml``).

A fleet file names a ``template`` (a catalog ensemble or a folder with an ``ensemble.yaml``)
and where its variants come from, exactly one of:

* ``variants``: an inline list of ``{name, params, labels}``;
* ``table``: a ``.csv`` or ``.jsonl`` file (relative to the fleet file) with a ``variant``
  column, ``<artifact>.<param>`` columns (params) and ``label.<key>`` columns (labels);
* ``prefix``: a listing of a model prefix (``file://`` or ``s3://``) where every object whose
  key matches ``pattern`` (``tenants/{variant}/model.onnx``) is one variant.

Each variant sets artifact parameters of the template (``classifier_onnx.source``...) over the
fleet's ``defaults``. Resolving a fleet is pure: no Prefect, no build. Why a module of its own:
the fleet build, ``mme fleet show`` and the event path all need the same variants with the same
names and errors, and each variant's ``fingerprints`` (the identity of its source files taken
from the listing, never from reading them) is what lets a rebuild skip 999 unchanged variants
without hashing 999 model files.

Errors: a declaration that cannot be right (duplicate or invalid names, params naming no
artifact of the template, none or two variant sources, a table without a ``variant`` column, a
template that does not validate) refuses the whole fleet with :class:`FleetError`, naming the
file and row. Problems of one variant's *data* (a model file without its labels in a prefix, a
local source that does not exist) are returned beside the good variants, so one bad upload
never stops the others.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from ensembles.spec import EnsembleSpec, SpecError, Target, load_spec, read_yaml_model
from infra.aws.clients import S3Client
from infra.errors import UserError
from infra.store.objects import ObjectInfo, ObjectStore, StoreRefused, open_store
from infra.triton.release import DEFAULT_RELEASE, TritonRelease

FLEETS_DIR = Path(__file__).resolve().parent / "fleets"
# the catalog's folder, not its module: tasks/ may import this module but no catalog entry
CATALOG_DIR = Path(__file__).resolve().parent / "catalog"
#: SageMaker's X-Amzn-SageMaker-Target-Model header holds at most 1,024 characters, and a fleet
#: deploy sends ``<name>-<sha256[:12]>.tar.gz`` (:func:`tasks.deploy.publish.versioned_target`):
#: a name of at most 1,004 characters keeps that TargetModel within the limit. (The S3 key adds
#: the endpoint's model prefix: that is checked at deploy time, where the prefix is known.)
MAX_TARGET_MODEL = 1024
VERSION_SUFFIX = len("-") + 12 + len(".tar.gz")  # "-<sha256[:12]>.tar.gz"
MAX_VARIANT_NAME = MAX_TARGET_MODEL - VERSION_SUFFIX
#: A variant name travels as an HTTP header (TargetModel), an S3 key and, from Triton 24.09, part
#: of Triton model names: ASCII letters and digits, then also ``.``, ``_`` and ``-``. Anything
#: else (non-ASCII, ``% + ? # :``, spaces) is sent raw in a header, needs escaping in a URL or
#: is a separator somewhere on the way.
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_FLEET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_SAFE = re.compile(r"[^A-Za-z0-9_-]")
SOURCE_PARAM = ".source"


class FleetError(UserError, ValueError):
    """A fleet that cannot be built as declared; the message names the file and the row."""


class Variant(BaseModel):
    """One member of a fleet: the template built with ``params`` as artifact overrides.

    ``name`` becomes the TargetModel base name (``<name>.tar.gz``); ``origin`` says where it was
    declared, for messages; ``fingerprints`` maps a ``<artifact>.source`` param to the identity
    of that source's bytes known without reading them (``size:<n>:mtime_ns:<t>`` for a local
    file, ``size:<n>:etag:<etag>`` for an S3 object, ``sha256:<hex>`` when one is declared).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    params: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    origin: str = ""
    fingerprints: dict[str, str] = Field(default_factory=dict)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InlineVariant(_Strict):
    """A variant written in the fleet file itself."""

    name: str
    params: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)


class PrefixSource(_Strict):
    """Variants from a listing: one per object under ``uri`` whose key (relative to ``uri``)
    matches ``pattern``. In ``params``, ``{match}`` is the matched object's URI and
    ``{variant}`` the variant name; a ``<artifact>.source`` value is a key relative to ``uri``
    (it must exist: a missing one is a problem of that variant); other values are literals."""

    uri: str
    pattern: str
    params: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_placeholder(self) -> PrefixSource:
        if self.pattern.count("{variant}") != 1:
            raise ValueError(f"pattern {self.pattern!r} must contain '{{variant}}' exactly once")
        if self.pattern.startswith("/"):
            raise ValueError(f"pattern {self.pattern!r} must be relative to the prefix uri")
        return self


#: How a fleet's variants are packed: ``separate`` (one tarball per variant), ``fused`` (the
#: variants that share a trunk served by shards of one model each, :mod:`tasks.fleet.fusion`;
#: the others built separately), ``auto`` (for now: ``fused``; the planner will pick by cost).
Layout = Literal["fused", "separate", "auto"]
#: Tenants per fused shard at most (one shard is one TargetModel, one model in memory).
DEFAULT_SHARD_SIZE = 1000


class FleetSpec(_Strict):
    """A fleet file: the template, the target, the defaults and one source of variants, and
    how they are packed (``layout``, ``shard_size``)."""

    name: str = Field(pattern=_FLEET_NAME.pattern, min_length=1, max_length=100)
    template: str
    target: Target = "local-cpu"
    description: str = ""
    layout: Layout = "separate"
    shard_size: int = Field(default=DEFAULT_SHARD_SIZE, ge=1, le=100_000)
    defaults: dict[str, str] = Field(default_factory=dict)
    variants: list[InlineVariant] | None = None
    table: str | None = None
    prefix: PrefixSource | None = None
    _file: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_source(self) -> FleetSpec:
        given = [k for k in ("variants", "table", "prefix") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one variant source of variants, table, prefix "
                             f"(got {', '.join(given) if given else 'none'})")
        return self

    @property
    def fused(self) -> bool:
        """Whether the build fuses the variants that can be (``fused``, or ``auto`` for now)."""
        return self.layout != "separate"

    @property
    def file(self) -> Path | None:
        """The fleet file it was loaded from (None when made in code)."""
        return self._file

    @property
    def base_dir(self) -> Path:
        """Relative paths (table, template folder, table sources) resolve against this."""
        return self._file.parent if self._file is not None else Path.cwd()

    @property
    def where(self) -> str:
        """How messages name the fleet: its file, or its name when made in code."""
        return str(self._file) if self._file is not None else f"fleet {self.name!r}"


@dataclass
class Resolved:
    """A fleet's variants, and the variants that could not be resolved with the reason."""

    variants: list[Variant] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


# ------------------------------------------------------------------------------ names


def variant_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a variant (TargetModel) name, or None when it can: 1 to
    :data:`MAX_VARIANT_NAME` characters of :data:`VARIANT_NAME` (a letter or digit first), not
    ending in ``.tar.gz`` (the name gets that suffix). Each refused character is named (with its
    Unicode name: an invisible one must be findable in the file)."""
    if not isinstance(name, str) or not name:
        return "a variant name must not be empty"
    if len(name) > MAX_VARIANT_NAME:
        return (f"a variant name has at most {MAX_VARIANT_NAME} characters (got {len(name)}): its "
                f"versioned TargetModel '<name>-<sha12>.tar.gz' must fit in {MAX_TARGET_MODEL}")
    bad = sorted({c for c in name if c not in _NAME_CHARS})
    if bad:
        named = ", ".join(f"{c!r} ({unicodedata.name(c, f'U+{ord(c):04X}')})" for c in bad)
        return (f"variant name {name!r} has characters not allowed in a TargetModel: {named} "
                f"(allowed: {VARIANT_NAME.pattern[1:-1]})")
    if not VARIANT_NAME.match(name):
        return f"variant name {name!r} must start with a letter or digit, not {name[0]!r}"
    if name.endswith(".tar.gz"):
        return f"variant name {name!r} must not end in '.tar.gz' (the build appends it)"
    return None


def variant_ensemble_name(variant_name: str) -> str:
    """An identifier-safe form of a variant name (file names, folders): ``[A-Za-z0-9_-]`` kept,
    anything else ``_``; when something was replaced or the name is over 100 characters, it is
    cut to 100 and ``-`` plus 8 hex digits of the name's sha256 are appended, so two different
    variant names do not map to one. The exceptions (a 32-bit hash collision, or a kept name
    that spells another name's mapped form) are refused when a fleet resolves
    (:func:`_check_safe_names`)."""
    safe = _SAFE.sub("_", variant_name)
    if safe == variant_name and len(safe) <= 100:
        return safe
    return f"{safe[:100]}-{hashlib.sha256(variant_name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


# ------------------------------------------------------------------------------ serving release

#: Every variant keeps its template's model names (``preprocess``, ``classifier``, ...): on one
#: endpoint they are kept apart only by Triton's ``--model-namespacing``, which SageMaker's
#: Triton container (its ``serve`` script) passes from this release on
#: (triton-inference-server/server PR 5540). On an older release a second variant's load fails
#: ("... is not unique across all model repositories").
FIRST_NAMESPACING_RELEASE = TritonRelease(23, 4)


def namespacing_problem(release: str | TritonRelease, where: str) -> str | None:
    """Why a fleet cannot be served by Triton ``release`` (one line naming ``where``), or None."""
    got = TritonRelease.parse(release)
    if got >= FIRST_NAMESPACING_RELEASE:
        return None
    return (f"{where}: Triton {got} cannot serve a fleet: its variants share the template's model "
            f"names, which only Triton's --model-namespacing keeps apart, and SageMaker's Triton "
            f"container passes that flag from {FIRST_NAMESPACING_RELEASE} on (server PR 5540); on "
            f"{got} the second variant's load fails ('not unique across all model repositories'): "
            f"use Triton {FIRST_NAMESPACING_RELEASE} or later")


def check_fleet_release(fleet: FleetSpec, spec: EnsembleSpec, variants: Iterable[Variant]) -> None:
    """For target ``sagemaker-gpu``, refuse (FleetError) a fleet whose TensorRT plans are compiled
    for a release before :data:`FIRST_NAMESPACING_RELEASE` (the release they must be served with:
    the template's ``triton_release`` of each ``compile_tensorrt`` artifact, or a variant's
    ``<artifact>.triton_release``). A template without a plan says nothing of its release: the
    deploy checks the endpoint's own image then."""
    if fleet.target != "sagemaker-gpu":
        return
    plans = {name: str(a.params.get("triton_release", DEFAULT_RELEASE))
             for name, a in spec.artifacts.items()
             if a.producer == "compile_tensorrt" and fleet.target in a.targets}
    seen: set[tuple[str, str]] = set()
    members: list[Variant | None] = [*variants] or [None]
    for v in members:
        for name, default in plans.items():
            release = str(v.params.get(f"{name}.triton_release", default)) if v else default
            if (name, release) in seen:
                continue
            seen.add((name, release))
            origin = (v.origin or f"variant {v.name!r}") if v else f"{fleet.where}: template {spec.name!r}"
            problem = namespacing_problem(release, f"{origin} ({name}.triton_release)")
            if problem:
                raise FleetError(problem)


# ------------------------------------------------------------------------------ loading


def fleet_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A bare name is ``ensembles/fleets/<name>.yaml``; anything else is a path."""
    text = os.fspath(name_or_path)
    as_path = Path(text).expanduser()
    if as_path.is_file() or "/" in text or text.endswith((".yaml", ".yml")):
        return as_path.resolve()
    return FLEETS_DIR / f"{text}.yaml"


def load_fleet(name_or_path: str | os.PathLike[str]) -> FleetSpec:
    """Load and check a fleet file's shape; errors name the file and the field."""
    path = fleet_path(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in FLEETS_DIR.glob("*.yaml"))
        raise FleetError(f"fleet {os.fspath(name_or_path)!r}: no file {path} (fleets in the "
                         f"catalog: {', '.join(known) or 'none'})")
    fleet = read_yaml_model(path, FleetSpec, FleetError, "fleet file", "fleet")
    fleet._file = path
    return fleet


def load_template(fleet: FleetSpec) -> tuple[EnsembleSpec, Path]:
    """The fleet's template spec and folder: a folder relative to the fleet file, else a
    catalog ensemble. A template that does not validate refuses the fleet, naming it."""
    folder = fleet.base_dir / fleet.template
    if not (folder / "ensemble.yaml").is_file():
        folder = CATALOG_DIR / fleet.template
    if "/" not in fleet.template and not (folder / "ensemble.yaml").is_file():
        known = sorted(p.parent.name for p in CATALOG_DIR.glob("*/ensemble.yaml"))
        raise FleetError(f"{fleet.where}: template {fleet.template!r} is neither a folder with an "
                         f"ensemble.yaml nor a catalog ensemble ({', '.join(known)})")
    try:
        return load_spec(folder / "ensemble.yaml"), folder.resolve()
    except SpecError as e:
        raise FleetError(f"{fleet.where}: template {fleet.template!r} is not a valid ensemble: "
                         f"{e}") from e


def check_fleet(fleet: FleetSpec, template_spec: EnsembleSpec, variants: Iterable[Variant] = ()) -> None:
    """Refuse params that name no artifact of the template: in the defaults, the inline
    variants or the prefix's params, and in ``variants`` (resolved ones: a table's columns).
    Each distinct key is checked once, so 10,000 variants cost one dict lookup each. Then the
    serving release (:func:`check_fleet_release`)."""
    arts = template_spec.artifacts
    where: dict[str, str] = {}
    for key in fleet.defaults:
        where.setdefault(key, f"{fleet.where} defaults")
    if fleet.prefix is not None:
        for key in fleet.prefix.params:
            where.setdefault(key, f"{fleet.where} prefix.params")
    for i, v in enumerate(fleet.variants or []):
        for key in v.params:
            where.setdefault(key, f"{fleet.where} variants[{i}] ({v.name!r})")
    for var in variants:
        for key in var.params:
            where.setdefault(key, var.origin or f"variant {var.name!r}")
    for key, origin in where.items():
        art, dot, param = key.partition(".")
        if not dot or not param or art not in arts:
            raise FleetError(f"{origin}: param {key!r} names no artifact of template "
                             f"{template_spec.name!r} (use <artifact>.<param>; artifacts: "
                             f"{', '.join(sorted(arts))})")
    check_fleet_layout(fleet, template_spec)
    check_fleet_release(fleet, template_spec, variants)


def check_fleet_layout(fleet: FleetSpec, template_spec: EnsembleSpec) -> None:
    """A fused (or auto) layout needs a template that names what fuses (``fusion``)."""
    if fleet.fused and template_spec.fusion is None:
        raise FleetError(f"{fleet.where}: layout {fleet.layout!r} needs a template that says what "
                         f"fuses (a 'fusion: {{step, artifact}}' section); template "
                         f"{template_spec.name!r} has none: use layout 'separate'")


# ------------------------------------------------------------------------------ resolving


def resolve_variants(fleet: FleetSpec, *, s3_client: S3Client = None) -> Resolved:
    """The fleet's variants (defaults merged under each variant's own params) and the
    problems of the ones that could not be resolved. Refuses the whole fleet (FleetError) on
    duplicate or invalid declared names and on an unreadable table."""
    if fleet.prefix is not None:
        return _check_safe_names(_from_prefix(fleet, fleet.prefix, s3_client))
    if fleet.table is not None:
        rows = _read_table(fleet)
    else:
        rows = [(v.name, dict(v.params), dict(v.labels), f"{fleet.where} variants[{i}]")
                for i, v in enumerate(fleet.variants or [])]
    _check_declared_names((name, origin) for name, _, _, origin in rows)
    resolved = Resolved()
    for name, params, labels, origin in rows:
        merged = _local_sources(fleet, {**fleet.defaults, **params})
        fingerprints, problem = _declared_fingerprints(merged)
        if problem:
            resolved.problems.append((name, f"{origin}: {problem}"))
            continue
        resolved.variants.append(Variant(name=name, params=merged, labels=labels, origin=origin,
                                         fingerprints=fingerprints))
    return _check_safe_names(resolved)


def _check_safe_names(resolved: Resolved) -> Resolved:
    """Refuse two variants whose :func:`variant_ensemble_name` is one (a 32-bit hash collision,
    or a name that spells another's safe form, e.g. ``a_b-<hash of "a b">``): their files would
    overwrite each other."""
    seen: dict[str, Variant] = {}
    for v in resolved.variants:
        other = seen.setdefault(variant_ensemble_name(v.name), v)
        if other is not v:
            raise FleetError(f"{v.origin}: variant {v.name!r} has the same file-safe name "
                             f"{variant_ensemble_name(v.name)!r} as {other.name!r} ({other.origin}); "
                             f"rename one")
    return resolved


def _check_declared_names(names: Iterable[tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for name, origin in names:
        problem = variant_name_problem(name)
        if problem:
            raise FleetError(f"{origin}: {problem}")
        if name in seen:
            raise FleetError(f"{origin}: duplicate variant name {name!r} (first declared at "
                             f"{seen[name]})")
        seen[name] = origin


def _local_sources(fleet: FleetSpec, params: Mapping[str, str]) -> dict[str, str]:
    """A relative local path in a ``.source`` param is relative to the fleet file: made a
    ``file://`` URI, so the build finds it wherever it runs from."""
    out = dict(params)
    for key, value in params.items():
        if key.endswith(SOURCE_PARAM) and not urlsplit(value).scheme and not Path(value).is_absolute():
            out[key] = (fleet.base_dir / value).resolve().as_uri()
    return out


def _local_file(value: str) -> Path | None:
    parts = urlsplit(value)
    if parts.scheme == "file":
        return Path(url2pathname(parts.path))
    if not parts.scheme and Path(value).is_absolute():
        return Path(value)
    return None


def _declared_fingerprints(params: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """Fingerprints of a declared variant's sources: a declared ``<artifact>.sha256``, else a
    local file's size and mtime (one stat); remote sources without a sha256 stay unknown. A
    local source that does not exist is the variant's problem."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if not key.endswith(SOURCE_PARAM):
            continue
        art = key[: -len(SOURCE_PARAM)]
        sha = params.get(f"{art}.sha256")
        if sha:
            out[key] = f"sha256:{sha.strip().lower().removeprefix('sha256:')}"
            continue
        local = _local_file(value)
        if local is None:
            continue
        try:
            st = local.stat()
        except OSError:
            return {}, f"{key}: {local} does not exist"
        out[key] = f"size:{st.st_size}:mtime_ns:{st.st_mtime_ns}"
    return out, None


def fingerprint(info: ObjectInfo) -> str:
    """The identity of a listed object's bytes: S3's ETag or the file's mtime, with the size."""
    if info.etag:
        return f"size:{info.size}:etag:{info.etag}"
    if info.mtime_ns is not None:
        return f"size:{info.size}:mtime_ns:{info.mtime_ns}"
    return f"size:{info.size}:mtime:{info.last_modified!r}"


# ------------------------------------------------------------------------------ tables

_Row = tuple[str, dict[str, str], dict[str, str], str]  # name, params, labels, origin
VARIANT_COLUMN = "variant"
LABEL_PREFIX = "label."


def _read_table(fleet: FleetSpec) -> list[_Row]:
    """A ``.csv`` (header row) or ``.jsonl`` (one flat object per line) table; each row's
    origin is ``<table> line <n>``."""
    assert fleet.table is not None
    path = fleet.base_dir / fleet.table
    shown = fleet.table
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FleetError(f"{fleet.where}: table {shown!r}: cannot read {path}: {e}") from e
    if path.suffix == ".csv":
        records = _csv_records(text, shown)
    elif path.suffix == ".jsonl":
        records = _jsonl_records(text, shown)
    else:
        raise FleetError(f"{fleet.where}: table {shown!r} must be a .csv or .jsonl file")
    return [_table_row(record, origin) for record, origin in records]


def _csv_records(text: str, shown: str) -> list[tuple[dict[str, str], str]]:
    reader = csv.DictReader(text.splitlines(keepends=True))
    columns = reader.fieldnames or []
    _check_columns(columns, f"{shown} line 1")
    out = []
    for row in reader:
        origin = f"{shown} line {reader.line_num}"
        if None in row:  # more cells than the header has columns
            raise FleetError(f"{origin}: more cells than the {len(columns)} columns of the header")
        out.append(({k: v for k, v in row.items() if v not in (None, "")}, origin))
    return out


def _jsonl_records(text: str, shown: str) -> list[tuple[dict[str, str], str]]:
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        origin = f"{shown} line {n}"
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise FleetError(f"{origin}: not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise FleetError(f"{origin}: each line must be a JSON object, got {type(doc).__name__}")
        _check_columns(list(doc), origin)
        bad = sorted(k for k, v in doc.items() if isinstance(v, (dict, list)))
        if bad:
            raise FleetError(f"{origin}: fields {bad} must be strings or numbers")
        out.append(({k: str(v) for k, v in doc.items() if v is not None and v != ""}, origin))
    return out


def _check_columns(columns: Sequence[str], origin: str) -> None:
    if VARIANT_COLUMN not in columns:
        raise FleetError(f"{origin}: no {VARIANT_COLUMN!r} column (columns: {list(columns)})")
    for col in columns:
        if col == VARIANT_COLUMN or col.startswith(LABEL_PREFIX) and len(col) > len(LABEL_PREFIX):
            continue
        art, dot, param = col.partition(".")
        if not (art and dot and param):
            raise FleetError(f"{origin}: column {col!r} is neither {VARIANT_COLUMN!r}, "
                             f"<artifact>.<param> nor {LABEL_PREFIX}<key>")


def _table_row(record: Mapping[str, str], origin: str) -> _Row:
    name = record.get(VARIANT_COLUMN, "")
    params = {k: v for k, v in record.items() if k != VARIANT_COLUMN and not k.startswith(LABEL_PREFIX)}
    labels = {k[len(LABEL_PREFIX):]: v for k, v in record.items() if k.startswith(LABEL_PREFIX)}
    return name, params, labels, origin


# ------------------------------------------------------------------------------ prefixes


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    before, _, after = pattern.partition("{variant}")
    return re.compile(f"^{re.escape(before)}(?P<variant>[^/]+){re.escape(after)}$")


def _list_prefix(source: PrefixSource, where: str,
                 s3_client: S3Client) -> tuple[ObjectStore, str, dict[str, ObjectInfo]]:
    """One listing of the whole prefix: (store, key prefix, {key relative to it: info})."""
    try:
        store, base = open_store(source.uri, s3_client=s3_client)
        base = f"{base}/" if base else ""
        listed = store.list(base)
    except StoreRefused as e:  # a URI no store takes: the fleet file's fault
        raise FleetError(f"{where}: prefix.uri {source.uri!r}: {e}") from e
    return store, base, {info.key[len(base):]: info for info in listed}


def _from_prefix(fleet: FleetSpec, source: PrefixSource, s3_client: S3Client) -> Resolved:
    """A variant per listed object matching the pattern; its ``.source`` params are other
    objects of the same listing, looked up in a dict (no per-variant scan of the listing)."""
    store, base, objects = _list_prefix(source, fleet.where, s3_client)
    regex = _pattern_regex(source.pattern)
    resolved = Resolved()
    for rel, info in objects.items():
        m = regex.match(rel)
        if m is None:
            continue
        name = m.group("variant")
        origin = info.uri
        problem = variant_name_problem(name)
        if problem:
            resolved.problems.append((name, f"{origin}: {problem}"))
            continue
        params, fingerprints = dict(fleet.defaults), {}
        for key, template in source.params.items():
            value = template.replace("{variant}", name)
            if template.strip() == "{match}":
                params[key], fingerprints[key] = info.uri, fingerprint(info)
            elif key.endswith(SOURCE_PARAM) and "{match}" not in template:
                sibling = objects.get(value)
                if sibling is None:
                    problem = f"{key}: {store.uri_for(base + value)} is missing (beside {origin})"
                    break
                params[key], fingerprints[key] = sibling.uri, fingerprint(sibling)
            else:
                params[key] = value.replace("{match}", info.uri)
        if problem:
            resolved.problems.append((name, problem))
            continue
        labels = {k: v.replace("{variant}", name) for k, v in source.labels.items()}
        resolved.variants.append(Variant(name=name, params=params, labels=labels, origin=origin,
                                         fingerprints=fingerprints))
    if not resolved.variants and not resolved.problems:
        _refuse_empty_prefix(fleet, source, objects)
    return resolved


def _refuse_empty_prefix(fleet: FleetSpec, source: PrefixSource, objects: Mapping[str, ObjectInfo]) -> None:
    """A prefix with no variant is a typo (in the URI or the pattern), never a fleet of none:
    building it would empty the fleet's index, deploying it would retire every variant."""
    if not objects:
        raise FleetError(f"{fleet.where}: prefix.uri {source.uri!r}: no objects there (the prefix does "
                         f"not exist or is empty): no variants")
    example = min(objects)
    raise FleetError(f"{fleet.where}: no object under prefix.uri {source.uri!r} matches pattern "
                     f"{source.pattern!r} ({len(objects)} listed, e.g. {example!r}): no variants")
