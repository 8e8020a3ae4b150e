"""Object store adapter: where packaged model repositories are published.

The endpoint (SageMaker or local multi-model) loads ``.tar.gz`` model
repositories from an object store.  Two backends implement one small
protocol so flows and tests can run against a local directory
(:class:`FileStore`, the embedded default) and production against S3
(:class:`S3Store`) without code changes.

Keys are '/'-separated relative names.  Both backends apply the same key
rules (see :func:`check_key`) so a key that works locally also works on S3.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError
from botocore.exceptions import ConnectionError as BotoConnectionError

from infra.aws import clients as aws
from infra.errors import MMEError, RetriedOut, UserError

CHUNK_SIZE = 1024 * 1024
TMP_PREFIX = ".tmp-"
"""Hidden prefix of every temporary file this module creates."""

_SIDECAR_PREFIX = ".sha256-"
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}

MULTIPART_THRESHOLD = 8 * 1024 * 1024
"""S3 uploads above 8 MiB go multipart, in 8 MiB parts. Why 8 MiB: below it one PUT is one
round trip, while multipart costs at least three (create, part, complete); above it the parts
go in parallel and a failed part is retried alone instead of the whole file. 8 MiB is above
S3's 5 MiB minimum part size and keeps 10,000 parts (S3's limit) good for 78 GiB. It is also
boto3's and the AWS CLI's default; the constant makes the choice explicit and testable."""
S3_MAX_POOL_CONNECTIONS = 64
"""Connection pool of the S3 client a store makes itself: a concurrent sync (16 uploads by
default, :mod:`infra.store.sync`) must never wait for, or discard, a pooled connection
(botocore's default pool is 10)."""


class StoreError(MMEError):
    """Any failure of an object store operation (bad key, backend error...). The plain class is
    a failure that is not the user's (a backend error; the CLI asks the AWS error it wraps,
    if any, whose fault it was); the subclasses below say the user's, or worth a retry."""


class StoreRefused(StoreError, UserError):
    """A key or store URI the store cannot use; the message names it (CLI: exit 2)."""


class StoreUnavailable(StoreError, RetriedOut):
    """The store could not be reached (connection refused, reset or timed out) or kept failing
    (throttled, 5xx) through every attempt botocore's standard mode made
    (:data:`infra.aws.clients.AWS_ATTEMPTS`): the one retry layer for it is spent, so neither the
    sync nor a task retries it again (docs/retries.md); the botocore error stays the ``__cause__``."""


def _retried_out(exc: BaseException) -> bool:
    """A ClientError botocore's standard mode retries (throttling, a 5xx): after its attempts
    it is as unavailable as a refused connection."""
    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return int(status) >= 500 or code in ("SlowDown", "Throttling", "ThrottlingException",
                                          "RequestLimitExceeded", "TooManyRequestsException")


class ObjectNotFound(StoreError, UserError):
    """The object does not exist; the message names its URI."""

    def __init__(self, uri: str) -> None:
        super().__init__(f"object not found: {uri}")
        self.uri = uri


@dataclass(frozen=True)
class ObjectInfo:
    """Metadata of one stored object.

    ``sha256`` is set by ``head()``/``put_*()``; ``list()`` leaves it ``None``
    because neither S3 listings nor a cheap directory walk carry it.
    ``last_modified`` is seconds since the epoch.

    ``etag`` (S3Store ``list``/``head``, quotes stripped) and ``mtime_ns`` (FileStore) identify
    an object's bytes without reading them: a fleet's variants carry them as fingerprints, so a
    rebuild skips unchanged model files without hashing a thousand of them.
    """

    uri: str
    key: str
    size: int
    sha256: str | None
    last_modified: float
    # not part of equality: an object is the same object whichever way it was looked up
    etag: str | None = field(default=None, compare=False)
    mtime_ns: int | None = field(default=None, compare=False)


@runtime_checkable
class ObjectStore(Protocol):
    """What flows need from an object store (implemented by FileStore and S3Store)."""

    def uri_for(self, key: str) -> str: ...

    def put_file(self, key: str, path: str | os.PathLike[str], *, sha256: str | None = None) -> ObjectInfo: ...

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...

    def get_file(self, key: str, dest: str | os.PathLike[str]) -> Path: ...

    def get_bytes(self, key: str) -> bytes: ...

    def head(self, key: str) -> ObjectInfo: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...


# --------------------------------------------------------------------------- helpers


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks so large models never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; publish it there only on success.

    Why: readers (the endpoint, ``list``/``head``, a second flow run) must
    never see a half-written file.  The temp file lives in ``dest``'s own
    directory (so ``os.replace`` is an atomic rename on one filesystem), has
    the hidden prefix ``.tmp-``, is fsynced, made 0o644 and renamed over
    ``dest``.  On any exception it is deleted and ``dest`` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{dest.name}-", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0o600; the endpoint may run as another user
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)


def discard_path(path: str | os.PathLike[str]) -> None:
    """Remove a file or folder so no reader sees it half-deleted: a folder is first renamed
    into a hidden ``.tmp-trash-*`` sibling, then deleted there."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        trash = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}trash-", dir=path.parent))
        os.rename(path, trash / path.name)
        shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def atomic_dir(dest: str | os.PathLike[str], *,
               if_exists: Literal["error", "replace", "keep"] = "error") -> Iterator[Path]:
    """Yield a fresh, empty staging folder next to ``dest``; rename it to ``dest`` on success.

    Why: readers (a cache lookup, Triton, a second build) must never see a half-made folder,
    and a crash must leave none where they look. The staging folder is hidden
    (``.tmp-<name>-*``, so a cache can sweep what a crashed writer left) in ``dest``'s own
    directory (one filesystem: the rename is atomic), made 0o755 and renamed to ``dest``.
    On any exception it is deleted and ``dest`` is untouched.

    ``if_exists`` says what happens when ``dest`` exists at that moment: ``"error"`` raises
    FileExistsError; ``"replace"`` renames the old one aside (:func:`discard_path`) first;
    ``"keep"`` keeps it and discards the staged one (another writer of the same content won
    the race, e.g. two processes preparing one content-addressed folder).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{dest.name}-", dir=dest.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it 0o700; the endpoint may run as another user
        _publish_dir(staging, dest, if_exists)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _publish_dir(staging: Path, dest: Path, if_exists: str) -> None:
    if dest.exists() or dest.is_symlink():
        if if_exists == "keep":
            return
        if if_exists != "replace":
            raise FileExistsError(f"{dest} already exists")
        discard_path(dest)
    try:
        os.rename(staging, dest)
    except OSError:
        if if_exists == "keep" and dest.exists():
            return  # lost a race to a writer of the same folder
        raise
    _fsync_dir(dest.parent)


def check_key(key: str) -> str:
    """Validate an object key and return it; raise StoreError naming the key otherwise.

    Refused: empty keys, absolute keys, backslashes, NUL, empty / ``.`` /
    ``..`` segments, and segments starting with ``.`` (reserved for the
    FileStore's temp files and sha256 sidecars, so they can never collide
    with or be mistaken for objects).  The same rules apply to S3 so both
    backends accept exactly the same keys.
    """
    if not isinstance(key, str) or not key:
        raise StoreRefused(f"invalid object key {key!r}: empty")
    if "\\" in key or "\0" in key:
        raise StoreRefused(f"invalid object key {key!r}: backslash or NUL character")
    if key.startswith("/"):
        raise StoreRefused(f"invalid object key {key!r}: absolute")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise StoreRefused(f"invalid object key {key!r}: empty, '.' or '..' segment")
        if segment.startswith("."):
            raise StoreRefused(f"invalid object key {key!r}: segments starting with '.' are reserved")
    return key


def _check_prefix(prefix: str) -> str:
    """A list() prefix is a key prefix: may be empty or end with '/', otherwise key rules."""
    if prefix == "":
        return prefix
    check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


# --------------------------------------------------------------------------- FileStore


def _copy_and_hash(src: BinaryIO, dst: BinaryIO) -> str:
    """Copy in 1 MiB chunks, hashing on the way (the copy reads the data anyway)."""
    digest = hashlib.sha256()
    while chunk := src.read(CHUNK_SIZE):
        digest.update(chunk)
        dst.write(chunk)
    return digest.hexdigest()


class FileStore:
    """Object store in a local directory (the embedded default; URIs ``file:///root/key``).

    Atomicity: every write goes through :func:`atomic_path`, so objects appear
    whole or not at all; temp files (``.tmp-*``) are never listed.

    sha256 design: each object ``dir/name`` has a hidden sidecar
    ``dir/.sha256-name`` holding ``"<sha256> <inode> <size> <mtime_ns>"``.  On
    put, the data is copied (and hashed) into the temp file, the temp file's
    fingerprint (inode, size, mtime_ns; all preserved by ``os.replace``) is
    written to the sidecar atomically, and only then is the object renamed
    into place.  ``head()`` trusts the sidecar only if its fingerprint matches
    the object it opened; otherwise (crash between the two renames, a file
    copied in by hand, a missing sidecar) it recomputes the sha256 from the
    object and rewrites the sidecar.  So ``head()`` always returns the sha256
    of the bytes actually stored, and the common case costs one small read.
    Sidecars start with '.', and ``list()`` skips every dot entry.

    ``delete()`` leaves empty directories behind: pruning them would race
    with a concurrent writer that just created the directory.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(_SIDECAR_PREFIX + path.name)

    def _write_sidecar(self, path: Path, sha256: str, st: os.stat_result) -> None:
        with atomic_path(self._sidecar(path)) as tmp:
            tmp.write_text(f"{sha256} {st.st_ino} {st.st_size} {st.st_mtime_ns}\n")

    def _read_sidecar(self, path: Path, st: os.stat_result) -> str | None:
        """The recorded sha256, or None when missing or not for this exact file."""
        try:
            fields = self._sidecar(path).read_text().split()
        except OSError:
            return None
        if len(fields) != 4 or fields[1:] != [str(st.st_ino), str(st.st_size), str(st.st_mtime_ns)]:
            return None
        return fields[0]

    def _info(self, key: str, st: os.stat_result, sha256: str | None) -> ObjectInfo:
        return ObjectInfo(self.uri_for(key), key, st.st_size, sha256, st.st_mtime,
                          mtime_ns=st.st_mtime_ns)

    def _open(self, key: str) -> BinaryIO:
        """Open an object for reading; a missing object (or a 'directory' key) is ObjectNotFound."""
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(self.uri_for(key)) from None

    def _put(self, key: str, src: BinaryIO, expected_sha256: str | None) -> ObjectInfo:
        path = self._path(key)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as dst:
                digest = _copy_and_hash(src, dst)
            if expected_sha256 is not None and expected_sha256.lower() != digest:
                raise StoreError(
                    f"sha256 mismatch for {self.uri_for(key)}: given {expected_sha256}, data has {digest}"
                )
            st = tmp.stat()
            self._write_sidecar(path, digest, st)
        return self._info(key, st, digest)

    def uri_for(self, key: str) -> str:
        return self._path(key).as_uri()

    def put_file(self, key: str, path: str | os.PathLike[str], *, sha256: str | None = None) -> ObjectInfo:
        """Copy a local file in.  A given ``sha256`` is verified (hashing is free during the copy)."""
        with open(path, "rb") as src:
            return self._put(key, src, sha256)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self._put(key, io.BytesIO(data), None)

    def get_file(self, key: str, dest: str | os.PathLike[str]) -> Path:
        dest = Path(dest)
        with self._open(key) as src, atomic_path(dest) as tmp, open(tmp, "wb") as dst:
            _copy_and_hash(src, dst)
        return dest

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as f:
            return f.read()

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        with self._open(key) as f:
            st = os.fstat(f.fileno())
            sha256 = self._read_sidecar(path, st)
            if sha256 is None:
                digest = hashlib.sha256()
                while chunk := f.read(CHUNK_SIZE):
                    digest.update(chunk)
                sha256 = digest.hexdigest()
                with suppress(OSError):  # best effort: a read-only store still answers head()
                    self._write_sidecar(path, sha256, st)
        return self._info(key, st, sha256)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """All objects whose key starts with ``prefix`` (plain string prefix, as on S3), sorted by key."""
        _check_prefix(prefix)
        directory, _, _ = prefix.rpartition("/")
        base = self.root.joinpath(*directory.split("/")) if directory else self.root
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue  # temp files and sidecars
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # deleted while walking
                found.append(self._info(key, st, None))
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        """Remove the object and its sidecar; a missing object is not an error."""
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._sidecar(path).unlink(missing_ok=True)


# --------------------------------------------------------------------------- S3Store


def _etag(value: str | None) -> str | None:
    """S3's ETag without the quotes it is sent in (None when absent)."""
    return value.strip('"') if value else None


class S3Store:
    """Object store in an S3 bucket (optionally under a key prefix); URIs ``s3://bucket/key``.

    ``put_file`` uses boto3's managed transfer (``upload_file``), which
    switches to parallel multipart uploads above the transfer config's
    threshold: model tarballs are hundreds of MB.  The sha256 travels as user
    metadata (``x-amz-meta-sha256``) because S3's ETag is not a content hash
    for multipart uploads.  A given ``sha256`` is trusted (re-hashing would
    read the file a second time); callers such as ``pack_deterministic``
    already computed it.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: Any = None,
        *,
        transfer_config: TransferConfig | None = None,
    ) -> None:
        if not bucket:
            raise StoreRefused("S3Store needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        if client is None:
            client = aws.client("s3", config=aws.control_config(max_pool_connections=S3_MAX_POOL_CONNECTIONS))
        self.client = client
        self.transfer_config = (transfer_config if transfer_config is not None else TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD))

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, exc: Exception, key: str, action: str) -> StoreError:
        """Translate boto errors: 404s become ObjectNotFound, the rest StoreError."""
        uri = self.uri_for(key)
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, Exception):
            exc = exc.__context__  # boto3's transfer manager raises it while handling the ClientError
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND_CODES:
                return ObjectNotFound(uri)
        if isinstance(exc, (BotoConnectionError, ReadTimeoutError)) or _retried_out(exc):
            return StoreUnavailable(f"{action} {uri} failed: {exc}")
        return StoreError(f"{action} {uri} failed: {exc}")

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def put_file(self, key: str, path: str | os.PathLike[str], *, sha256: str | None = None) -> ObjectInfo:
        full = self._full(key)
        digest = sha256.lower() if sha256 is not None else sha256_file(path)
        try:
            self.client.upload_file(
                os.fspath(path),
                self.bucket,
                full,
                ExtraArgs={"Metadata": {"sha256": digest}},
                Config=self.transfer_config,
            )
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            raise self._error(exc, key, "upload to") from exc
        # no HEAD to read back what we just wrote (S3 is read-after-write consistent, and the
        # upload checked each part): one request per object less for a fleet publish
        return ObjectInfo(uri=self.uri_for(key), key=key, size=os.path.getsize(path), sha256=digest,
                          last_modified=time.time())

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        full = self._full(key)
        digest = hashlib.sha256(data).hexdigest()
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data, Metadata={"sha256": digest})
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, "put") from exc
        return self.head(key)

    def get_file(self, key: str, dest: str | os.PathLike[str]) -> Path:
        dest = Path(dest)
        full = self._full(key)
        try:
            with atomic_path(dest) as tmp:
                self.client.download_file(self.bucket, full, os.fspath(tmp), Config=self.transfer_config)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, "download of") from exc
        return dest

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
            return response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, "get") from exc

    def head(self, key: str) -> ObjectInfo:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, "head") from exc
        return ObjectInfo(
            uri=self.uri_for(key),
            key=key,
            size=int(response["ContentLength"]),
            sha256=response.get("Metadata", {}).get("sha256"),
            last_modified=response["LastModified"].timestamp(),
            etag=_etag(response.get("ETag")),
        )

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """All objects whose key starts with ``prefix``, sorted by key (paginated, recursive)."""
        _check_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        found: list[ObjectInfo] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(base) :]
                    found.append(
                        ObjectInfo(
                            uri=f"s3://{self.bucket}/{obj['Key']}",
                            key=key,
                            size=int(obj["Size"]),
                            sha256=None,
                            last_modified=obj["LastModified"].timestamp(),
                            etag=_etag(obj.get("ETag")),
                        )
                    )
        except (ClientError, BotoCoreError) as exc:
            unreachable = isinstance(exc, (BotoConnectionError, ReadTimeoutError)) or _retried_out(exc)
            raise (StoreUnavailable if unreachable else StoreError)(
                f"list of s3://{self.bucket}/{base + prefix} failed: {exc}") from exc
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        """Delete the object; S3 already treats a missing key as success."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, "delete of") from exc


def sha256_at(store: ObjectStore, key: str) -> str | None:
    """The sha256 of the object at ``key``, or None when there is none: the one question a
    delete, a publish and a rollback ask before they act on an object of ours."""
    try:
        return store.head(key).sha256
    except ObjectNotFound:
        return None


# --------------------------------------------------------------------------- open_store


def open_store(uri: str, *, s3_client: Any = None) -> tuple[ObjectStore, str]:
    """Turn a configured location into ``(store, key_prefix)``.

    - ``file:///abs/dir`` or a plain local path: ``FileStore(dir)`` and prefix ``""``
      (the directory is the root).
    - ``s3://bucket/some/prefix``: ``S3Store(bucket)`` (store prefix ``""``) and
      prefix ``"some/prefix"`` (no leading/trailing slash), so callers build
      keys as ``f"{prefix}/{name}"`` and the same code works for both.
    Anything else raises StoreError naming the URI.
    """
    parts = urlsplit(uri)
    if parts.scheme == "":
        if not uri:
            raise StoreRefused("empty store URI")
        return FileStore(Path(uri).expanduser()), ""
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreRefused(f"unsupported store URI {uri!r}: file URIs must be local (file:///abs/path)")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise StoreRefused(f"unsupported store URI {uri!r}: file URIs need an absolute path")
        return FileStore(Path(path)), ""
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StoreRefused(f"invalid store URI {uri!r}: no bucket")
        prefix = parts.path.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except StoreError as exc:
                raise StoreRefused(f"invalid store URI {uri!r}: {exc}") from None
        return S3Store(parts.netloc, client=s3_client), prefix
    raise StoreRefused(f"unsupported store URI {uri!r}: expected file://, s3:// or a local path")


@contextmanager
def file_lock(lock_path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path``: one builder per cache key, across threads and
    processes (build caches, packed envs)."""
    import fcntl

    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
