"""The fleet a plan is made for: variant names and their footprints, from a directory of build
manifests (``*.manifest.json``), or a synthetic fleet of N copies of one manifest's footprint
(until the fleet build lands: ``--variants N --footprint-from MANIFEST``)."""

from __future__ import annotations

from pathlib import Path

from infra.errors import UserError
from infra.manifest import MANIFEST_SUFFIX, load_manifest
from tasks.planning.footprints import Footprint, from_manifest


class FleetInputError(UserError, ValueError):
    """No manifests where the fleet was said to be."""


def fleet_from_dir(path: Path, gpu: bool | None = None) -> tuple[list[str], list[Footprint]]:
    """One variant per manifest under ``path`` (recursively), named by its TargetModel."""
    files = sorted(Path(path).rglob(f"*{MANIFEST_SUFFIX}")) if Path(path).is_dir() else [Path(path)]
    if not files or not files[0].exists():
        raise FleetInputError(f"{path}: no build manifests (*{MANIFEST_SUFFIX}) there: build the fleet "
                              f"first, or plan a synthetic one with --variants N --footprint-from MANIFEST")
    fps = [from_manifest(load_manifest(f), gpu) for f in files]
    return [fp.target_model.removesuffix(".tar.gz") for fp in fps], fps


def synthetic_fleet(n: int, manifest: Path, gpu: bool | None = None) -> tuple[list[str], list[Footprint]]:
    """``n`` variants with the footprint of ``manifest``'s ensemble (named ``<ensemble>-v00001``...)."""
    if n < 1:
        raise FleetInputError(f"--variants {n}: must be >= 1")
    fp = from_manifest(load_manifest(Path(manifest)), gpu)
    stem = fp.target_model.removesuffix(".tar.gz")
    names = [f"{stem}-v{i:05d}" for i in range(1, n + 1)]
    return names, [fp.model_copy(update={"target_model": name}) for name in names]
