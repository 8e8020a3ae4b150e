"""Publishing a fleet: concurrent, index-skipping sync vs sequential ``put_object``, same run.

Usage:  python bench/publish_sync.py [--count 1000] [--size-mb 5] [--workers 16]
                                      [--backends inprocess,server,file] [--out FILE]

Makes ``count`` random files of ``size-mb`` MB (1,000 x 5 MB by default: the size of a
SqueezeNet fleet's tarballs), then, per backend:

- ``inprocess``: moto S3 in this process (``mock_aws``): no socket, so it measures our own
  per-object overhead; the GIL is shared by client and "server", so concurrency shows little.
- ``server``: a moto server (``moto.server.ThreadedMotoServer``) in a child process on a local
  port: every request crosses a real HTTP socket, as against S3.
- ``server-latency``: the same, with every answer delayed ``--latency-ms`` (30 by default):
  a simulation of S3's per-request service time, which localhost lacks. On a small machine
  moto's own CPU work per 5 MB PUT bounds ``server`` to about the core count; real S3 is
  latency-bound, and this shows what concurrency does there.
- ``file``: the embedded FileStore (fsynced atomic renames).

and times: the baseline (one sequential ``put_object``/``put_file`` per file, sha256 metadata
included, into a separate prefix: what publishing one tarball at a time costs), the first
``sync_files``, a no-op re-sync, and a re-sync with one file changed. Prints and writes JSON
(default ``bench/results/publish_sync.json``) with seconds, store requests and the ratios
baseline/first (target >= 5) and noop/first (target <= 0.02).

moto keeps object bytes in memory; ``MOTO_S3_DEFAULT_MAX_BUFFER_SIZE`` is set to 1 MiB here
(unless set) so it spools them to temporary files instead and 5 GB fits a small machine; the
baseline's objects are deleted (untimed) before the syncs run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("MOTO_S3_DEFAULT_MAX_BUFFER_SIZE", str(1024 * 1024))
for _var, _value in {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "bench",
                     "AWS_SECRET_ACCESS_KEY": "bench"}.items():
    os.environ.setdefault(_var, _value)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

from infra.store.objects import S3_MAX_POOL_CONNECTIONS, FileStore, ObjectStore, S3Store  # noqa: E402
from infra.store.sync import LocalObject, sync_files  # noqa: E402

BUCKET = "bench"
RESULTS = Path(__file__).resolve().parent / "results" / "publish_sync.json"


T = TypeVar("T")


def make_files(folder: Path, count: int, size: int) -> dict[str, LocalObject]:
    """``count`` files of random bytes (incompressible, all distinct), hashed once here as the
    packer hashes each tarball once."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(count):
        path = folder / f"tenant-{i:04d}.tar.gz"
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        files[path.name] = LocalObject.from_path(path)
    return files


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(port: int, latency_s: float) -> None:  # pragma: no cover - runs in the child process
    import logging

    import moto.moto_server.threaded_moto_server as threaded
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    if latency_s > 0:
        dispatcher = threaded.DomainDispatcherApplication

        class Delayed(dispatcher):  # type: ignore[misc, valid-type]
            """Answers every request ``latency_s`` later: S3's per-request service time, which
            a server on localhost does not have (simulated, and labelled so in the results)."""

            def __call__(self, environ: Any, start_response: Any) -> Any:
                time.sleep(latency_s)
                return super().__call__(environ, start_response)

        threaded.DomainDispatcherApplication = Delayed
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    while True:
        time.sleep(3600)


def _wait_for_port(port: int, proc: multiprocessing.process.BaseProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.is_alive():
            raise RuntimeError("the moto server process exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the moto server did not listen on port {port} within {timeout} s")


def _client(endpoint_url: str | None = None) -> Any:
    return boto3.client("s3", region_name="us-east-1", endpoint_url=endpoint_url,
                        config=Config(max_pool_connections=S3_MAX_POOL_CONNECTIONS))


@contextmanager
def s3_backend(kind: str, latency_s: float = 0.0) -> Iterator[Any]:
    """A boto3 S3 client on moto in-process or on a moto server in a child process (whose
    every answer comes ``latency_s`` late)."""
    if kind == "inprocess":
        from moto import mock_aws

        with mock_aws():
            yield _client()
        return
    port = _free_port()
    proc = multiprocessing.get_context("spawn").Process(target=_serve, args=(port, latency_s),
                                                       daemon=True)
    proc.start()
    try:
        _wait_for_port(port, proc)
        yield _client(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.join(10)


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    """The wall seconds ``fn`` took, and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _s3_baseline(client: Any, files: dict[str, LocalObject]) -> float:
    """Sequential put_object of every file (with its sha256 metadata), then (untimed) delete."""
    def put_all() -> None:
        for key, obj in files.items():
            with open(obj.path, "rb") as body:
                client.put_object(Bucket=BUCKET, Key=f"baseline/{key}", Body=body,
                                  Metadata={"sha256": obj.sha256})

    seconds, _ = _timed(put_all)
    keys = [{"Key": f"baseline/{k}"} for k in files]
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys[i:i + 1000], "Quiet": True})
    return seconds


def _file_baseline(store: FileStore, files: dict[str, LocalObject]) -> float:
    def put_all() -> None:
        for key, obj in files.items():
            store.put_file(f"baseline/{key}", obj.path, sha256=obj.sha256)

    seconds, _ = _timed(put_all)
    for key in files:
        store.delete(f"baseline/{key}")
    return seconds


def sync_cycle(store: ObjectStore, files: dict[str, LocalObject], workers: int) -> dict[str, Any]:
    """First sync, a no-op re-sync, a re-sync with one file rewritten (same size)."""
    first = sync_files(store, "fleet", files, workers=workers)
    noop = sync_files(store, "fleet", files, workers=workers)
    key = next(iter(files))
    changed = dict(files)
    changed[key] = LocalObject.from_path(_rewrite(files[key].path))
    one = sync_files(store, "fleet", changed, workers=workers)
    files[key] = changed[key]
    assert first.ok and noop.ok and one.ok, (first.failed, noop.failed, one.failed)
    assert len(first.uploaded) == len(files) and not noop.uploaded and one.uploaded == [key]
    return {"first": first.to_json(), "noop": noop.to_json(), "one_changed": one.to_json()}


def _rewrite(path: Path) -> Path:
    size = path.stat().st_size
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return path


def _ratios(baseline: float, cycle: dict[str, Any]) -> dict[str, Any]:
    first = cycle["first"]["seconds"]
    return {"baseline_over_first": round(baseline / first, 2) if first else None,
            "noop_over_first": round(cycle["noop"]["seconds"] / first, 4) if first else None,
            "one_changed_over_first": round(cycle["one_changed"]["seconds"] / first, 4) if first else None}


def run_backend(kind: str, files: dict[str, LocalObject], workers: int, tmp: Path,
                latency_s: float) -> dict[str, Any]:
    if kind == "file":
        store = FileStore(tmp / "file-store")
        baseline = _file_baseline(store, files)
        cycle = sync_cycle(store, files, workers)
    else:
        with s3_backend(kind, latency_s if kind == "server-latency" else 0.0) as client:
            client.create_bucket(Bucket=BUCKET)
            baseline = _s3_baseline(client, files)
            cycle = sync_cycle(S3Store(BUCKET, client=client), files, workers)
    result = {"baseline_sequential_put": {"seconds": round(baseline, 3), "requests": len(files)},
              **cycle, **_ratios(baseline, cycle)}
    print(json.dumps({kind: result}), flush=True)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--size-mb", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--backends", default="inprocess,server,server-latency,file")
    p.add_argument("--latency-ms", type=float, default=30.0,
                   help="per-request delay of the server-latency backend (simulated S3 latency)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    size = int(args.size_mb * 1024 * 1024)
    with tempfile.TemporaryDirectory(prefix="publish-sync-") as tmp:
        t0 = time.perf_counter()
        files = make_files(Path(tmp) / "files", args.count, size)
        out: dict[str, Any] = {"count": args.count, "size_bytes": size, "workers": args.workers,
                               "cpus": os.cpu_count(), "server_latency_ms": args.latency_ms,
                               "make_files_seconds": round(time.perf_counter() - t0, 1),
                               "targets": {"baseline_over_first": ">= 5", "noop_over_first": "<= 0.02"}}
        for kind in args.backends.split(","):
            out[kind] = run_backend(kind, files, args.workers, Path(tmp), args.latency_ms / 1000)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
