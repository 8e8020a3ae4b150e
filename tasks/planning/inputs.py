"""The fleet a plan is made for: variant names and their footprints, from a directory of build
manifests (``*.manifest.json``), or a synthetic fleet of N copies of one manifest's footprint
(until the fleet build lands: ``--variants N --footprint-from MANIFEST``)."""

from __future__ import annotations

from pathlib import Path

from infra.errors import UserError
from infra.records.manifest import MANIFEST_SUFFIX, Manifest, load_manifest
from tasks.fleet.build import INDEX_FILE, FleetIndex
from tasks.build.footprints import Footprint, from_manifest


class FleetInputError(UserError, ValueError):
    """No manifests where the fleet was said to be."""


def fleet_from_dir(path: Path, gpu: bool | None = None) -> tuple[list[str], list[Footprint], int]:
    """One variant per manifest under ``path`` (recursively), named by its TargetModel, and
    how many manifests were skipped as stale: in a fleet build's folder (one with a
    ``fleet-index.json``) only the variants its index lists are the fleet; the manifests of
    variants removed from the fleet stay on disk until gc and are not counted."""
    files = sorted(Path(path).rglob(f"*{MANIFEST_SUFFIX}")) if Path(path).is_dir() else [Path(path)]
    if not files or not files[0].exists():
        raise FleetInputError(f"{path}: no build manifests (*{MANIFEST_SUFFIX}) there: build the fleet "
                              f"first, or plan a synthetic one with --variants N --footprint-from MANIFEST")
    current = files if Path(path).is_file() else _current(files)
    if not current:
        raise FleetInputError(f"{path}: none of its {len(files)} build manifests is of a variant its fleet "
                              f"index ({INDEX_FILE}) lists: build the fleet again (`mme fleet build`)")
    fps = [_tagged(load_manifest(f), gpu) for f in current]
    return [fp.target_model.removesuffix(".tar.gz") for fp in fps], fps, len(files) - len(current)


def _tagged(manifest: Manifest, gpu: bool | None) -> Footprint:
    """The manifest's footprint tagged with its template (a fleet variant's, else its ensemble),
    so the report can set one variant's measurement against its siblings' estimates."""
    template = (manifest.fleet or {}).get("template") or manifest.ensemble
    return from_manifest(manifest, gpu).model_copy(update={"template": str(template)})


def _current(files: list[Path]) -> list[Path]:
    """The manifests of current variants: all of them outside a fleet build's folder; in one,
    those whose tarball the folder's fleet index lists."""
    stems: dict[Path, frozenset[str] | None] = {}
    out = []
    for f in files:
        if f.parent not in stems:
            stems[f.parent] = _indexed_stems(f.parent)
        listed = stems[f.parent]
        if listed is None or f.name.removesuffix(MANIFEST_SUFFIX) in listed:
            out.append(f)
    return out


def _indexed_stems(folder: Path) -> frozenset[str] | None:
    """The file stems of the variants ``folder``'s fleet index lists; None where there is no
    index (single builds: every manifest counts). An unreadable index is refused naming it."""
    index_path = folder / INDEX_FILE
    try:
        index = FleetIndex.read(index_path.read_text(), str(index_path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise FleetInputError(f"{index_path}: not a readable fleet index ({str(e).splitlines()[0]}): "
                              f"build the fleet again (`mme fleet build`)") from None
    return frozenset(e.file.removesuffix(".tar.gz") for e in index.variants.values())


def synthetic_fleet(n: int, manifest: Path, gpu: bool | None = None) -> tuple[list[str], list[Footprint], int]:
    """``n`` variants with the footprint of ``manifest``'s ensemble (named ``<ensemble>-v00001``...)."""
    if n < 1:
        raise FleetInputError(f"--variants {n}: must be >= 1")
    fp = _tagged(load_manifest(Path(manifest)), gpu)
    stem = fp.target_model.removesuffix(".tar.gz")
    names = [f"{stem}-v{i:05d}" for i in range(1, n + 1)]
    return names, [fp.model_copy(update={"target_model": name}) for name in names], 0
