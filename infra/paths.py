"""Where the embedded default keeps its state: ``$MME_HOME`` (default ``~/.mme``).

artifacts/<target>/   built tarballs and manifests
store/                the embedded object store (file://), the endpoints' model prefixes
endpoints/<name>/     a local endpoint's state file, disk cache and logs
work/                 kept intermediate work (the example fleet's exported base model)
run/<pid>-<start>/    one running owner's ledger and scratch (infra.processes.ownership): removed when
                      it exits or dies
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("MME_HOME", Path.home() / ".mme")).expanduser().resolve()


def artifacts_dir(target: str) -> Path:
    return home() / "artifacts" / target


def store_uri() -> str:
    return (home() / "store").as_uri()


def endpoint_dir(name: str) -> Path:
    return home() / "endpoints" / name


def work_dir() -> Path:
    return home() / "work"


def folder_usage(folder: Path) -> tuple[int, int]:
    """(files, bytes) under ``folder`` (0, 0 when absent); links are counted, not followed."""
    files = size = 0
    for root, _, names in os.walk(folder):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(root, name)).st_size
    return files, size
