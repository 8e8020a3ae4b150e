"""The ensemble catalog: one folder per ensemble with ``ensemble.yaml`` and its model code."""

from __future__ import annotations

from pathlib import Path

from ensembles.spec import EnsembleSpec, SpecError, load_spec

CATALOG_DIR = Path(__file__).resolve().parent


def list_ensembles(catalog_dir: Path = CATALOG_DIR) -> list[str]:
    return sorted(p.parent.name for p in catalog_dir.glob("*/ensemble.yaml"))


def ensemble_dir(name: str, catalog_dir: Path = CATALOG_DIR) -> Path:
    """The folder of a catalog ensemble, or of a user's folder given as a path."""
    as_path = Path(name)
    if (as_path / "ensemble.yaml").exists():
        return as_path.resolve()
    folder = catalog_dir / name
    if not (folder / "ensemble.yaml").exists():
        raise SpecError(f"unknown ensemble {name!r}: not in the catalog "
                        f"({', '.join(list_ensembles(catalog_dir))}) and not a folder with "
                        f"an ensemble.yaml")
    return folder


def load_ensemble(name: str, catalog_dir: Path = CATALOG_DIR) -> tuple[EnsembleSpec, Path]:
    folder = ensemble_dir(name, catalog_dir)
    return load_spec(folder / "ensemble.yaml"), folder
