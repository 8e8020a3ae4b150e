"""Fleet build at scale: N per-customer classifiers from one template, built, rebuilt, published.

    python bench/fleet_build.py --count 1000            # one size
    python bench/fleet_build.py --scaling 100,300,1000  # per-variant cost at several sizes

For each size it makes the example fleet (``mme fleet example``: SqueezeNet v1.1 cut to each
customer's classes), then measures through the real ``fleet-build`` flow: the first build
(every variant verified: canaries in Triton, the rest against them with ONNX Runtime), a no-op
rebuild, a rebuild with one changed model file; then publishing the built fleet to the
embedded store (``file://``) and to S3 (moto, as a server on a local socket, so requests cross
HTTP as they do to AWS) against sequential ``put_object`` of the same files in the same run,
and a re-publish with nothing changed. Prints and writes JSON (``bench/results/``): seconds,
per-variant seconds, peak RSS (this process and its children, i.e. Triton), disk used.
Timing goals are in the README; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

P = ParamSpec("P")
T = TypeVar("T")


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _peak_rss_mb() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self_mb": round(own, 1), "largest_child_mb": round(children, 1)}


def _timed(fn: Callable[P, T], *args: P.args, **kw: P.kwargs) -> tuple[T, float]:
    """``fn``'s result and the wall seconds it took."""
    t0 = time.perf_counter()
    got = fn(*args, **kw)
    return got, time.perf_counter() - t0


def _touch_one_model(prefix: Path) -> str:
    """Change one tenant's model file (a new doc string: new bytes, same classes)."""
    import onnx

    tenants = sorted((prefix / "tenants").iterdir())
    first = tenants[len(tenants) // 2]
    model = onnx.load(str(first / "model.onnx"))
    model.doc_string = f"retrained {time.time()}"
    onnx.save(model, str(first / "model.onnx"))
    return first.name


def _fleet_objects(out: Path) -> dict[str, Any]:
    """What a publish of the built fleet uploads: every tarball and manifest."""
    from infra.store.sync import LocalObject
    from tasks.fleet.build import FleetIndex

    index = FleetIndex.model_validate_json((out / "fleet-index.json").read_text())
    objects: dict[str, LocalObject] = {}
    for entry in index.variants.values():
        if entry.status != "ok" or not entry.sha256 or not entry.bytes:
            continue
        stem = entry.target_model.removesuffix(".tar.gz")
        objects[entry.target_model] = LocalObject(path=out / entry.file, sha256=entry.sha256,
                                                  size=entry.bytes)
        manifest = out / entry.file.replace(".tar.gz", ".manifest.json")
        objects[f"{stem}.manifest.json"] = LocalObject.from_path(manifest)
    return objects


def _publish_file_store(objects: dict[str, Any], root: Path) -> dict[str, float]:
    from infra.store.objects import open_store
    from infra.store.sync import sync_files

    shutil.rmtree(root, ignore_errors=True)
    store, base = open_store(root.as_uri())
    first, t_first = _timed(sync_files, store, "fleet", objects)
    again, t_again = _timed(sync_files, store, "fleet", objects)
    return {"first_s": round(t_first, 2), "noop_s": round(t_again, 3),
            "noop_ratio": round(t_again / t_first, 4), "uploaded": len(first.uploaded),
            "noop_requests": again.requests}


def _publish_s3(objects: dict[str, Any]) -> dict[str, Any]:
    """Sequential put_object vs the sync, against a moto server in a child process (its own
    interpreter, as S3 is another machine; requests cross a local HTTP socket)."""
    sys.path.insert(0, str(REPO / "bench"))
    from publish_sync import s3_backend  # the publish benchmark's moto server

    from infra.store.objects import open_store
    from infra.store.sync import sync_files

    with s3_backend("server") as client:
        client.create_bucket(Bucket="baseline")
        client.create_bucket(Bucket="fleet")
        t0 = time.perf_counter()
        for key, obj in objects.items():
            with open(obj.path, "rb") as f:
                client.put_object(Bucket="baseline", Key=f"fleet/{key}", Body=f)
        sequential = time.perf_counter() - t0
        store, base = open_store("s3://fleet/models", s3_client=client)
        first, t_first = _timed(sync_files, store, f"{base}/fleet".strip("/"), objects)
        again, t_again = _timed(sync_files, store, f"{base}/fleet".strip("/"), objects)
    return {"sequential_put_object_s": round(sequential, 2), "first_s": round(t_first, 2),
            "speedup_vs_sequential": round(sequential / t_first, 2), "noop_s": round(t_again, 3),
            "noop_ratio": round(t_again / t_first, 4), "uploaded": len(first.uploaded),
            "failed": len(first.failed), "first_requests": first.requests,
            "noop_requests": again.requests}


def run_size(count: int, root: Path, seed: int, publish: bool) -> dict[str, Any]:
    from flows.fleet_build import fleet_build
    from tasks.fleet.example import make_example_fleet

    work = root / f"n{count}"
    shutil.rmtree(work, ignore_errors=True)
    prefix, out = work / "models", work / "out"
    _, t_example = _timed(make_example_fleet, count, prefix.as_uri(), seed=seed,
                          fleet_file=work / "fleet.yaml")
    print(f"[{count}] example fleet written in {t_example:.1f} s", flush=True)
    first, t_first = _timed(fleet_build, str(work / "fleet.yaml"), output_dir=str(out))
    print(f"[{count}] first build {t_first:.1f} s: {first}", flush=True)
    noop, t_noop = _timed(fleet_build, str(work / "fleet.yaml"), output_dir=str(out))
    print(f"[{count}] no-op rebuild {t_noop:.2f} s: {noop}", flush=True)
    changed = _touch_one_model(prefix)
    one, t_one = _timed(fleet_build, str(work / "fleet.yaml"), output_dir=str(out))
    print(f"[{count}] one changed ({changed}) {t_one:.1f} s: {one}", flush=True)
    result: dict[str, Any] = {
        "count": count, "example_s": round(t_example, 1),
        "first_build_s": round(t_first, 1), "per_variant_s": round(t_first / count, 3),
        "first": first, "noop_rebuild_s": round(t_noop, 2),
        "noop_ratio": round(t_noop / t_first, 4), "one_changed_s": round(t_one, 1),
        "one_changed": one, "disk_mb": {"models": round(_du(prefix) / 2**20, 1),
                                        "built": round(_du(out) / 2**20, 1)}}
    if publish:
        objects = _fleet_objects(out)
        result["publish_objects"] = len(objects)
        result["publish_file_store"] = _publish_file_store(objects, work / "store")
        print(f"[{count}] file store publish: {result['publish_file_store']}", flush=True)
        result["publish_s3_moto_server"] = _publish_s3(objects)
        print(f"[{count}] S3 publish: {result['publish_s3_moto_server']}", flush=True)
    result["peak_rss"] = _peak_rss_mb()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--scaling", default="", help="comma-separated sizes, e.g. 100,300,1000")
    ap.add_argument("--root", default="", help="work folder (default: a folder under MME_HOME)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-publish", action="store_true")
    ap.add_argument("--publish-from", default="", help="only publish the fleet already built in "
                                                       "this output folder (no build)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "fleet_build.json"))
    args = ap.parse_args()
    from infra import paths

    root = Path(args.root) if args.root else paths.home() / "bench-fleet"
    if args.publish_from:
        objects = _fleet_objects(Path(args.publish_from))
        doc = {"publish_objects": len(objects),
               "publish_bytes_mb": round(sum(o.size for o in objects.values()) / 2**20, 1),
               "publish_file_store": _publish_file_store(objects, root / "publish-store"),
               "publish_s3_moto_server": _publish_s3(objects), "peak_rss": _peak_rss_mb()}
        Path(args.out).write_text(json.dumps(doc, indent=2))
        print(json.dumps(doc, indent=2))
        return
    sizes = [int(s) for s in args.scaling.split(",") if s] or [args.count]
    runs = []
    for n in sizes:
        runs.append(run_size(n, root, args.seed, publish=not args.no_publish and n == max(sizes)))
        # partial results are worth keeping when a long run is stopped
        Path(args.out).write_text(json.dumps({"runs": runs, "cpus": os.cpu_count()}, indent=2))
    if len(runs) > 1:
        per = {r["count"]: r["per_variant_s"] for r in runs}
        print("per-variant seconds by size:", per)
    doc = {"runs": runs, "cpus": os.cpu_count(),
           "per_variant_s_by_size": {r["count"]: r["per_variant_s"] for r in runs}}
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
