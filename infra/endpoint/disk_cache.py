"""The endpoint's disk cache: TargetModels downloaded, extracted and namespaced into Triton's
model repository, kept after an unload and trimmed least recently used past its byte bound.

Why its own class: the files outlive a model's place in Triton (a reload after an eviction
needs no download), so their bookkeeping (``on_disk``, ``used``) is not the state machine's.
Blocking work (download, extraction, deletion) runs in worker threads; the records change on
the event loop only.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import OrderedDict
from pathlib import Path

from infra.endpoint.reports import AT_REST
from infra.endpoint.state import EndpointConfig, Metrics, ModelEntry
from infra.store.objects import open_store
from infra.store.tarball import safe_extract
from infra.triton.model_repo import NamespacedModel, namespace_for, namespace_repository


class DiskCache:
    """Store -> local disk -> Triton repository, with an LRU bound on the bytes kept."""

    def __init__(self, cfg: EndpointConfig, metrics: Metrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.store, self.prefix = open_store(cfg.model_data_url)
        self.repo_dir = cfg.cache_dir / "repo"
        self.work_dir = cfg.cache_dir / "work"
        # the models with files in the repository, least recently unloaded first (disk LRU)
        self.on_disk: OrderedDict[str, ModelEntry] = OrderedDict()
        self.used = 0

    def key_for(self, target: str) -> str:
        """The store key of ``target``'s tarball (under the endpoint's model prefix)."""
        return f"{self.prefix}/{target}" if self.prefix else target

    def object_uri(self, target: str) -> str:
        """Where ``target``'s tarball is expected (for the message when it is not there)."""
        return self.store.uri_for(self.key_for(target))

    def archive_for(self, target: str) -> Path:
        """The download's local path (scrubbed from an unsafe archive's message)."""
        return self.work_dir / f"{namespace_for(target)}.tar.gz"

    async def fetch(self, m: ModelEntry) -> None:
        """Download and extract the model unless its files are still in the disk cache."""
        if m.ns is not None and all((self.repo_dir / n).exists() for n in m.ns.models):
            return  # unloaded earlier, its files stayed in the disk cache
        self.forget(m)  # a partial leftover: its folders are replaced below
        ns, size, ms = await asyncio.wait_for(
            asyncio.to_thread(self._download_and_prepare, m.target), self.cfg.load_timeout_s)
        m.ns, m.disk_bytes = ns, size
        self.used += size
        self.on_disk[m.target] = m
        self.on_disk.move_to_end(m.target)
        self.metrics.downloading_ms.append(ms)
        await self.trim(exclude=m)

    def touch(self, m: ModelEntry) -> None:
        """``m`` was just unloaded: most recently unloaded goes last in the disk LRU."""
        if self.on_disk.get(m.target) is m:
            self.on_disk.move_to_end(m.target)

    def forget(self, m: ModelEntry) -> list[Path]:
        """Drop the record of ``m``'s files (on the loop) and return the folders to delete."""
        if self.on_disk.get(m.target) is m:
            del self.on_disk[m.target]
        self.used -= m.disk_bytes
        folders = [self.repo_dir / name for name in m.ns.models] if m.ns else []
        m.ns, m.disk_bytes = None, 0
        return folders

    async def discard(self, m: ModelEntry) -> None:
        """Forget ``m``'s files and delete them (in a worker thread)."""
        await asyncio.to_thread(remove_folders, self.forget(m))

    async def trim(self, exclude: ModelEntry) -> None:
        """Delete the least recently used models that are not in Triton when the cache is full.

        Victims are chosen on the event loop from ``on_disk`` (least recently unloaded first)
        with a running total, so a trim costs the models it skips (those in Triton) plus those
        it deletes, not a sort of every model cached; the folders go in a worker thread.
        """
        if self.used <= self.cfg.disk_cache_bytes:
            return
        used, victims = self.used, []
        for victim in self.on_disk.values():
            if used <= self.cfg.disk_cache_bytes:
                break
            if victim is exclude or victim.state not in AT_REST:
                continue
            used -= victim.disk_bytes
            victims.append(victim)
        folders: list[Path] = []
        for victim in victims:
            folders += self.forget(victim)
            self.metrics.disk_evictions += 1
        if folders:
            await asyncio.to_thread(remove_folders, folders)

    def _download_and_prepare(self, target: str) -> tuple[NamespacedModel, int, float]:
        """Store -> disk cache -> safe extraction -> namespaced folders in the Triton repo.

        Runs in a worker thread, so it touches no shared record: it returns (the namespaced
        models, their size on disk, the download time in ms) for the event loop to record.
        """
        ns = namespace_for(target)
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        archive = self.archive_for(target)
        self.store.get_file(self.key_for(target), archive)
        download_ms = (time.perf_counter() - t0) * 1000
        extracted = self.work_dir / f"{ns}.d"
        shutil.rmtree(extracted, ignore_errors=True)
        try:
            safe_extract(archive, extracted)
        finally:
            archive.unlink(missing_ok=True)
        try:
            named = namespace_repository(extracted, self.repo_dir, target)
        finally:
            shutil.rmtree(extracted, ignore_errors=True)
        size = sum(_dir_bytes(self.repo_dir / name) for name in named.models)
        return named, size, download_ms


def remove_folders(folders: list[Path]) -> None:
    """Delete model folders (in a worker thread); one already gone is no error."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
