"""Package a rendered model repository as a deterministic .tar.gz and record its manifest.

Same inputs -> same bytes -> same sha256, so an unchanged ensemble is recognised (and not
uploaded again) by its digest. Artifacts are first written to a staging folder and moved into
the output folder only after verification passed, together with their manifest: a failed
build never leaves a half-written or unverified artifact where deploy would pick it up.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from infra.store import atomic_path
from infra.tarball import pack_deterministic

MANIFEST_SUFFIX = ".manifest.json"


def artifact_name(ensemble: str) -> str:
    """The TargetModel string the ensemble is invoked by."""
    return f"{ensemble}.tar.gz"


def package_repository(repo_dir: Path, staging_dir: Path, ensemble: str) -> dict[str, Any]:
    staging_dir.mkdir(parents=True, exist_ok=True)
    dest = staging_dir / artifact_name(ensemble)
    t0 = time.perf_counter()
    sha, size = pack_deterministic(repo_dir, dest)
    return {"path": str(dest), "sha256": sha, "bytes": size,
            "seconds": round(time.perf_counter() - t0, 3)}


def publish_build(archive: Path, manifest: dict[str, Any], output_dir: Path) -> Path:
    """Move a verified archive into ``output_dir`` and write its manifest, both atomically.

    The manifest is written last: a reader that finds a manifest finds its archive.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / archive.name
    os.replace(archive, final)
    manifest_path = output_dir / (archive.name.removesuffix(".tar.gz") + MANIFEST_SUFFIX)
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest_path


def read_manifest(output_dir: Path, ensemble: str) -> dict[str, Any]:
    path = Path(output_dir) / f"{ensemble}{MANIFEST_SUFFIX}"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no build of {ensemble!r} here (run `mme build {ensemble}`)")
    return json.loads(path.read_text())
