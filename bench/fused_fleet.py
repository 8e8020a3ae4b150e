"""A fused fleet at scale: 1,000 example tenants in one shard, built, loaded, under traffic.

    python bench/fused_fleet.py                      # 1,000 tenants, shard_size 1000
    python bench/fused_fleet.py --count 100 --requests 200
    python bench/fused_fleet.py --head-change --shard-size 100   # one changed head, republished

Makes the example fleet (``mme fleet example``), sets ``layout: fused`` and builds it through
the real ``fleet-build`` flow (every tenant checked against its own ONNX in ONNX Runtime, the
shard verified in Triton); then loads the one shard on a local endpoint (in this process):
Triton's memory (PSS of its process tree, ``infra.processes.procfs.tree_memory``) before and
after, and the first request's seconds (the load); then a short traffic run: Zipf(``--zipf``)
over the tenants, ``--clients`` threads, ``--requests`` requests through boto3's
``sagemaker-runtime`` client with each tenant's ``TENANT``; every answer is compared with that
tenant's own ONNX on the same DALI output (same top-5, max abs diff <= 1e-4): wrong answers.
Writes ``bench/results/fused_fleet.json``, with the host's load average (the machine may be
shared: the figures are this run's, on this host). Nothing is asserted.

``--head-change`` measures instead what a customer's new head costs: the fused build published
to a ``file://`` store, then one tenant's head changed and ``fleet-build`` run again with
``publish_to``: ``bench/results/fused_fleet_head_change.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # tests/fixtures: the tests' changed head


def fused_fleet_file(root: Path, shard_size: int) -> Path:
    """``root/fleet-fused.yaml``: the example fleet file of ``root`` with ``layout: fused``."""
    import yaml

    doc = yaml.safe_load((root / "fleet.yaml").read_text())
    path = root / "fleet-fused.yaml"
    path.write_text(yaml.safe_dump({**doc, "layout": "fused", "shard_size": shard_size}))
    return path


def _build(count: int, shard_size: int, root: Path) -> tuple[Path, dict[str, Any], float, float]:
    """Make the example fleet, fuse it; returns (build folder, flow result, make s, build s)."""
    from flows.fleet_build import fleet_build
    from tasks.fleet.example import make_example_fleet

    t0 = time.perf_counter()
    make_example_fleet(count, (root / "models").as_uri(), seed=0, fleet_file=root / "fleet.yaml")
    made = time.perf_counter() - t0
    out = root / "build"
    t0 = time.perf_counter()
    result = fleet_build(str(fused_fleet_file(root, shard_size)), output_dir=str(out), triton_sample=1)
    return out, result, made, time.perf_counter() - t0


def own_answers(root: Path, tenants: list[str], tensor: np.ndarray) -> dict[str, np.ndarray]:
    """Each tenant's own ONNX (``root/models/tenants/<name>``) on the DALI output ``tensor``."""
    import onnxruntime as ort

    out = {}
    for name in tenants:
        sess = ort.InferenceSession(str(root / "models" / "tenants" / name / "model.onnx"),
                                    providers=["CPUExecutionProvider"])
        out[name] = np.asarray(sess.run(None, {sess.get_inputs()[0].name: tensor})[0])
    return out


def change_head(root: Path, tenant: str) -> str:
    """Change ``tenant``'s head (its ``model.onnx`` under ``root/models``; the tests' fixture
    ``fixtures.fused_heads``): it still fuses, into a shard whose content changed."""
    from fixtures.fused_heads import change_head as change

    change(root / "models" / "tenants" / tenant / "model.onnx")
    return tenant


def build_timed(fleet_file: Path, out: Path, publish_to: str | None = None) -> tuple[dict[str, Any], float]:
    """``fleet-build`` of ``fleet_file`` into ``out`` (publishing to ``publish_to`` when given):
    (its result without the folder, seconds)."""
    from flows.fleet_build import fleet_build

    t0 = time.perf_counter()
    result = fleet_build(str(fleet_file), output_dir=str(out), triton_sample=1, publish_to=publish_to)
    return {k: v for k, v in result.items() if k != "output_dir"}, round(time.perf_counter() - t0, 1)


def head_change(root: Path, fleet_file: Path, out: Path, store: str, tenant: str) -> dict[str, Any]:
    """Change ``tenant``'s head and run ``fleet-build`` again, publishing to ``store``: the
    seconds a customer's new head takes to be rebuilt, verified and published."""
    change_head(root, tenant)
    result, seconds = build_timed(fleet_file, out, store)
    return {"tenant": tenant, "seconds": seconds, "build": result,
            "note": "fleet-build with publish_to a file:// store: the unchanged tenants taken "
                    "from the fleet index (not fetched, not parsed), the changed one fetched and "
                    "checked against the recorded trunk, its shard's tenants fetched, fused and "
                    "every one checked in ONNX Runtime, 3 in Triton, pack, publish that one shard "
                    "(the other shards' keys unchanged)"}


def _head_change_run(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``--head-change``: make and fuse the fleet (published), then one changed head."""
    from tasks.fleet.example import make_example_fleet, tenant_name

    make_example_fleet(args.count, (root / "models").as_uri(), seed=0, fleet_file=root / "fleet.yaml")
    fleet_file, store = fused_fleet_file(root, args.shard_size), (root / "store").as_uri()
    first, first_s = build_timed(fleet_file, root / "build", store)
    return {"first_build": {"seconds": first_s, "result": first},
            "one_changed_head": head_change(root, fleet_file, root / "build", store,
                                            tenant_name(args.count // 2))}


def shard_request(root: Path, out: Path) -> tuple[Path, list[str], np.ndarray, np.ndarray]:
    """The first shard of the build ``out``: (its tarball, its tenants in index order, the
    validation image, that image through the shard's DALI pipeline on the CPU)."""
    from infra.records.manifest import load_manifest
    from tasks.build.verify import Sample, run_dali_cpu
    from tasks.fleet.fused import TenantsSidecar
    from tasks.fleet.variant import read_members

    shard = sorted(out.glob("*-shard-000.tar.gz"))[0]
    sidecar = TenantsSidecar.model_validate_json(shard.with_name(
        shard.name.replace(".tar.gz", ".tenants.json")).read_text())
    image = Sample.from_json(load_manifest(shard.with_name(shard.name.replace(".tar.gz", ".manifest.json")))
                             .required_sample()).inputs["INPUT"]
    dali = next(d for n, d in read_members(shard).items() if n.endswith("model.dali"))
    (root / "model.dali").write_bytes(dali)
    tensor = run_dali_cpu(root / "model.dali", [image.tobytes()], "INPUT")
    return shard, [t.name for t in sidecar.tenants], image, tensor


def _zipf(count: int, n: int, s: float, seed: int) -> list[int]:
    ranks = np.arange(1, count + 1, dtype=np.float64)
    p = ranks ** -s
    p /= p.sum()
    return np.random.default_rng(seed).choice(count, size=n, p=p).tolist()


def _traffic(url: str, endpoint: str, target: str, image: np.ndarray, picks: list[int],
             names: list[str], own: dict[str, np.ndarray], clients: int) -> dict[str, Any]:
    from infra.aws.runtime_client import invoke, runtime_client_for

    lat: list[float] = []
    errors, wrong = [0], [0]
    lock = threading.Lock()
    chunks = [picks[i::clients] for i in range(clients)]

    def run(chunk: list[int]) -> None:
        client = runtime_client_for(url)
        for k in chunk:
            t0 = time.perf_counter()
            try:
                got = invoke(client, endpoint, target, {"INPUT": image,
                                                        "TENANT": np.array([[k]], np.int32)})["OUTPUT"]
            except Exception:  # noqa: BLE001 - counted
                with lock:
                    errors[0] += 1
                continue
            took = time.perf_counter() - t0
            want = own[names[k]]
            bad = got.shape != want.shape or float(np.abs(got - want).max()) > 1e-4 or not np.array_equal(
                np.argsort(-got[0])[:5], np.argsort(-want[0])[:5])
            with lock:
                lat.append(took)
                wrong[0] += int(bad)

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"requests": len(picks), "clients": clients, "distinct_tenants": len(set(picks)),
            "wall_s": round(wall, 2), "requests_per_s": round(len(picks) / wall, 1),
            "p50_ms": round(1e3 * statistics.median(lat), 1) if lat else None,
            "p99_ms": round(1e3 * lat[int(0.99 * (len(lat) - 1))], 1) if lat else None,
            "errors": errors[0], "wrong_answers": wrong[0]}


def _serve(root: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Load the shard on a local endpoint; its memory and load seconds; then the traffic."""
    from infra.aws.runtime_client import invoke, runtime_client_for
    from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint
    from infra.processes.procfs import tree_memory

    shard, names, image, tensor = shard_request(root, out)
    picks = _zipf(len(names), args.requests, args.zipf, args.seed)
    own = own_answers(root, sorted({names[k] for k in picks} | {names[0]}), tensor)
    prefix = root / "prefix"
    prefix.mkdir(exist_ok=True)
    shutil.copyfile(shard, prefix / shard.name)
    cfg = EndpointConfig(name="fused-bench", model_data_url=prefix.as_uri(), cache_dir=root / "cache")
    with LocalEndpoint(cfg) as ep:
        pid = ep.triton.pid
        before = tree_memory(pid)
        client = runtime_client_for(ep.url)
        t0 = time.perf_counter()
        invoke(client, cfg.name, shard.name, {"INPUT": image, "TENANT": np.array([[0]], np.int32)})
        load_s = time.perf_counter() - t0
        loaded = tree_memory(pid)
        traffic = _traffic(ep.url, cfg.name, shard.name, image, picks, names, own, args.clients)
    return {"shard": shard.name, "tenants": len(names), "tarball_bytes": shard.stat().st_size,
            "first_request_s_incl_load": round(load_s, 2),
            "triton_pss_before_bytes": before.pss, "triton_pss_loaded_bytes": loaded.pss,
            "shard_pss_bytes": loaded.pss - before.pss, "traffic": traffic}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default="", help="work folder (default: a folder under MME_HOME)")
    ap.add_argument("--head-change", action="store_true",
                    help="instead of serving: publish the build, change one tenant's head, time "
                         "the rebuild and publish (default --out: fused_fleet_head_change.json)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    results = REPO / "bench" / "results"
    args.out = args.out or str(results / ("fused_fleet_head_change.json" if args.head_change
                                          else "fused_fleet.json"))
    from infra.paths import work_dir

    root = Path(args.root) if args.root else work_dir() / f"bench-fused-{args.count}"
    shutil.rmtree(root / "build", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    if args.head_change:
        _write(args.out, {"count": args.count, "shard_size": args.shard_size,
                          **_head_change_run(root, args), "cpus": os.cpu_count(),
                          "load_average_before": [round(x, 2) for x in load_before],
                          "load_average_after": [round(x, 2) for x in os.getloadavg()]})
        return
    out, result, made_s, build_s = _build(args.count, args.shard_size, root)
    serve = _serve(root, out, args)
    doc = {"count": args.count, "shard_size": args.shard_size, "make_example_s": round(made_s, 1),
           "build": {"seconds": round(build_s, 1),
                     "result": {k: v for k, v in result.items() if k != "output_dir"},
                     "note": "every tenant checked against its own ONNX in ONNX Runtime; 3 "
                             "tenants per shard through the whole ensemble in Triton"},
           "serve": serve, "cpus": os.cpu_count(),
           "load_average_before": [round(x, 2) for x in load_before],
           "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    _write(args.out, doc)


def _write(path: str, doc: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    main()
