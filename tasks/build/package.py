"""Package a rendered model repository as a deterministic .tar.gz and record its manifest.

Same inputs -> same bytes -> same sha256, so an unchanged ensemble is recognised (and not
uploaded again) by its digest. Artifacts are first written to a staging folder and moved into
the output folder only after verification passed, together with their manifest: a failed
build never leaves a half-written or unverified artifact where deploy would pick it up.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.errors import MissingInput
from infra.records.manifest import MANIFEST_SUFFIX, Manifest, load_manifest
from infra.store.objects import atomic_path
from infra.store.tarball import pack_deterministic
from tasks.runtime.text import human_bytes, short
from tasks.runtime.run_context import run_logger

__all__ = ["MANIFEST_SUFFIX", "Manifest", "Packed", "artifact_name", "manifest_path", "package_repository",
           "package_task", "publish_build", "read_manifest"]


def artifact_name(ensemble: str) -> str:
    """The TargetModel string the ensemble is invoked by."""
    return f"{ensemble}.tar.gz"


@dataclass(frozen=True)
class Packed:
    """A packed tarball: where it is, its sha256 (what verification is cached on and the
    manifest records), its size and how long packing took."""

    path: Path
    sha256: str
    bytes: int
    seconds: float


def package_repository(repo_dir: Path, staging_dir: Path, ensemble: str) -> Packed:
    """Pack ``repo_dir`` deterministically into ``staging_dir`` (same inputs, same bytes)."""
    staging_dir.mkdir(parents=True, exist_ok=True)
    dest = staging_dir / artifact_name(ensemble)
    t0 = time.perf_counter()
    sha, size = pack_deterministic(repo_dir, dest)
    return Packed(path=dest, sha256=sha, bytes=size, seconds=round(time.perf_counter() - t0, 3))


@task(name="package", cache_policy=NO_CACHE, timeout_seconds=900)
def package_task(repo: Path, staging: Path, ensemble: str) -> Packed:
    """:func:`package_repository` as a task (never cached: packing is fast and its sha256 is
    what the verification cache is keyed on)."""
    info = package_repository(repo, staging, ensemble)
    run_logger().info("%s: packed %s (%s) in %.1f s, sha256 %s", ensemble, info.path.name,
                      human_bytes(info.bytes), info.seconds, short(info.sha256))
    return info


def manifest_path(output_dir: Path, ensemble: str) -> Path:
    return Path(output_dir) / f"{ensemble}{MANIFEST_SUFFIX}"


def publish_build(archive: Path, manifest: Manifest, output_dir: Path) -> Path:
    """Move a verified archive into ``output_dir`` and write its manifest, both atomically.

    The manifest is written last: a reader that finds a manifest finds its archive.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / archive.name
    os.replace(archive, final)
    path = manifest_path(output_dir, archive.name.removesuffix(".tar.gz"))
    with atomic_path(path) as tmp:
        tmp.write_text(manifest.to_json())
    return path


def read_manifest(output_dir: Path, ensemble: str) -> Manifest:
    """The manifest of ``ensemble``'s build in ``output_dir`` (an old version-1 file is
    upgraded in memory; an unreadable one is refused naming the file)."""
    path = manifest_path(output_dir, ensemble)
    if not path.exists():
        raise MissingInput(f"{path}: no build of {ensemble!r} here (run `mme build {ensemble}`)")
    return load_manifest(path)
