"""What one loaded example-fleet variant costs, counted four ways, and what each basis admits.

    python bench/memory_basis.py --count 8                # builds the example fleet first
    python bench/memory_basis.py --dir FLEET_BUILD_OUT    # a fleet build's output folder

It starts a local endpoint in this process (no memory limit in the way) and loads the
variants one at a time with one request each (the manifest's validation sample). After each
load it reads Triton's memory with the endpoint's own probe (``infra.processes.procfs.tree_memory``:
summed RSS, PSS, USS, page tables, from ``/proc/<pid>/smaps_rollup``) and the system's
anonymous + shared memory (``/proc/meminfo`` AnonPages + Shmem, which moves with every other
process on the host: the load average is recorded beside it), and, as a cross-check that the
host does not move, the kernel's RssAnon + RssShmem counters summed over Triton's tree. Per added variant it reports the
median of each figure's steps, and how many variants fit under the endpoint's default limit
(70% of this host's memory, and of a 16 GiB instance) on the PSS basis the limit now uses vs
the summed-RSS basis it used before; and what ``mme profile`` records for the first variant.
JSON goes to ``bench/results/memory_basis.json``.

``--footprint STEP`` also records, under ``STEP`` in ``bench/results/variant_footprint.json``
(other steps kept), what one variant costs in that sitting: USS and PSS per added variant,
Triton's threads and processes per added variant, each of the last variant's stubs on its own
(USS, PSS, threads), and every variant's answer (its max abs difference from the manifest's
reference and a hash of the output bytes: two steps whose hashes agree answered bit-identically).
Why: issue 19 changes the stubs step by step, and each step keeps only what it measurably saves.
Nothing here is asserted: tests/test_memory_probe.py checks the probe.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench.fleet_traffic import Sender, Variant, read_fleet  # noqa: E402
from infra.aws.runtime_client import decode_response, encode_request  # noqa: E402
from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint  # noqa: E402
from infra.processes.procfs import (  # noqa: E402
    Memory,
    argv,
    children,
    process_memory,
    process_tree,
    system_anon_bytes,
    tree_memory,
)

RESULTS = REPO / "bench" / "results"
MIB = 2 ** 20
LIMIT_FRACTION = 0.7  # the endpoint's default memory limit: 70% of physical memory
INSTANCE_GIB = 16  # e.g. ml.m5.xlarge / ml.g4dn.xlarge host memory


def build_example_fleet(count: int, work: Path) -> Path:
    """``count`` example-fleet variants built by the real fleet-build flow; its output folder."""
    from flows.fleet_build import fleet_build
    from tasks.fleet.example import make_example_fleet

    make_example_fleet(count, (work / "models").as_uri(), fleet_file=work / "fleet.yaml")
    fleet_build(str(work / "fleet.yaml"), output_dir=str(work / "out"))
    return work / "out"


def tree_anon_counters(pid: int | None) -> int:
    """The kernel's per-process counters RssAnon + RssShmem (``/proc/<pid>/status``) summed
    over Triton's tree: a cross-check of the probe that other processes on the host do not
    move (anonymous pages of exec'd processes are private; only the stubs' small shared-memory
    regions count twice here)."""
    total = 0
    for p in process_tree(pid) if pid is not None else []:
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) * 1024 for line in lines
                     if line.startswith(("RssAnon:", "RssShmem:")))
    return total


def thread_count(pid: int) -> int:
    """The process's threads (``/proc/<pid>/status`` Threads; 0 when gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("Threads:")), 0)


def snapshot(pid: int | None) -> dict[str, int]:
    """Triton's memory by the endpoint's probe, the system's anonymous + shared memory, this
    process's own PSS (the endpoint runs here: its growth is in the system figure, not Triton's),
    and the threads of Triton's tree and of tritonserver itself (the Python backend's per-instance
    thread pool runs there, not in the stubs)."""
    mem: Memory = tree_memory(pid)
    me = process_memory(os.getpid()) or Memory()
    tree = process_tree(pid) if pid is not None else []
    return {**mem.to_dict(), "anon": system_anon_bytes(), "tree_anon_counters": tree_anon_counters(pid),
            "endpoint_process_pss": me.pss, "threads": sum(thread_count(p) for p in tree),
            "triton_threads": thread_count(pid) if pid is not None else 0}


def stubs(pids: list[int]) -> list[dict[str, Any]]:
    """Each of these Python stubs on its own: its model (the step's name, from the stub's
    ``<repository>/<model>/<version>/model.py`` argument), USS, PSS (MiB) and threads."""
    out: list[dict[str, Any]] = []
    for pid in pids:
        args = argv(pid)
        mem = process_memory(pid) or Memory()
        model = Path(args[1]).parent.parent.name.rsplit("__", 1)[-1] if len(args) > 1 else "?"
        out.append({"model": model, "uss_mib": round(mem.uss / MIB, 1), "pss_mib": round(mem.pss / MIB, 1),
                    "threads": thread_count(pid)})
    return sorted(out, key=lambda st: str(st["model"]))


def answers(url: str, endpoint: str, variants: list[Variant]) -> list[dict[str, Any]]:
    """Each variant's answer once more: its max abs difference from the manifest's reference and
    the sha256 of its output bytes (equal hashes across steps: bit-identical answers)."""
    out = []
    with httpx.Client(timeout=600) as client:
        for v in variants:
            body, ct = encode_request(v.inputs, binary=True)
            r = client.post(f"{url}/endpoints/{endpoint}/invocations", content=body,
                            headers={"Content-Type": ct, "X-Amzn-SageMaker-Target-Model": v.target})
            r.raise_for_status()
            got = decode_response(r.content, r.headers["content-type"])
            h = hashlib.sha256()
            diff = 0.0
            for k in sorted(got):
                arr = np.ascontiguousarray(np.asarray(got[k], dtype=np.float32))
                h.update(arr.tobytes())
                if v.expected is not None and k in v.expected:
                    diff = max(diff, float(np.max(np.abs(arr - np.asarray(v.expected[k], dtype=np.float32)))))
            out.append({"target": v.target, "max_abs_diff": diff, "sha256": h.hexdigest()[:16]})
    return out


@dataclass(frozen=True)
class LoadRun:
    """What loading the variants one by one measured: a snapshot before any load and after each
    variant's first request; the last variant's own stubs; every variant's answer at the end."""

    snaps: list[dict[str, int]]
    last_stubs: list[dict[str, Any]]
    answers: list[dict[str, Any]]


def load_one_by_one(variants: list[Variant], prefix: Path, cache: Path) -> LoadRun:
    """Load the variants one at a time, each by one request (answered 200, right)."""
    cfg = EndpointConfig(name="memory-basis", model_data_url=prefix.as_uri(), cache_dir=cache,
                         memory_limit_bytes=2 ** 50, max_concurrent_loads=1)
    with LocalEndpoint(cfg) as ep:
        pid = ep.triton.pid
        sender = Sender(ep.url, cfg.name, {v.target: v for v in variants})
        sender.send("warm-up", variants[0].target)  # imports, first-load caches: not a variant's cost
        snaps = [snapshot(pid)]
        new: list[int] = []
        for v in variants[1:]:
            before = {c.pid for c in children(pid)} if pid is not None else set()
            r = sender.send(v.target, v.target)
            if r.status != 200 or r.wrong:
                raise SystemExit(f"{v.target}: {r.status} {r.error or 'wrong answer'}")
            time.sleep(0.5)  # let the stub's first-request allocations settle
            snaps.append(snapshot(pid))
            new = [c.pid for c in children(pid) if c.pid not in before] if pid is not None else []
        return LoadRun(snaps, stubs(new), answers(ep.url, cfg.name, variants))


def profile_first(folder: Path, variant: Variant) -> dict[str, Any]:
    """What ``mme profile`` records for one variant (a fresh Triton, this one model): its host
    memory figures, each with its basis."""
    from infra.records.manifest import MANIFEST_SUFFIX, load_manifest
    from tasks.build.footprints import measure_footprint

    manifest = load_manifest(folder / (variant.target.removesuffix(".tar.gz") + MANIFEST_SUFFIX))
    fp = measure_footprint(folder / variant.target, manifest.ensemble, variant.inputs, max_batch=1, repeats=3)
    figs = [fp.host_memory_bytes] + ([fp.host_memory_uss_bytes] if fp.host_memory_uss_bytes else [])
    return {str(f.basis): round(f.value / MIB, 1) for f in figs}


def per_variant(snaps: list[dict[str, int]]) -> dict[str, Any]:
    """Each figure's step per added variant: median, min, max, and the mean over the whole run
    (last - first over the steps: the system figure's noise from other processes averages out
    there, not in one step) (MiB)."""
    out: dict[str, Any] = {}
    counts = ("processes", "threads", "triton_threads")
    for key in ("rss", "pss", "uss", "page_tables", "anon", "tree_anon_counters", "endpoint_process_pss",
                *counts):
        steps = [b[key] - a[key] for a, b in zip(snaps, snaps[1:], strict=False)]
        scale = 1 if key in counts else MIB
        out[key] = {"median": round(statistics.median(steps) / scale, 1),
                    "mean": round((snaps[-1][key] - snaps[0][key]) / len(steps) / scale, 1),
                    "min": round(min(steps) / scale, 1), "max": round(max(steps) / scale, 1)}
    return out


def fits(base: dict[str, int], per: dict[str, Any], memory_bytes: int) -> dict[str, Any]:
    """Variants admitted under the default limit (70% of ``memory_bytes``) per basis: (limit -
    Triton with one variant loaded) / per-variant median, plus that one."""
    limit = memory_bytes * LIMIT_FRACTION
    out: dict[str, Any] = {"limit_mib": round(limit / MIB)}
    for basis in ("pss", "rss"):
        out[basis] = 1 + int((limit - base[basis]) / (per[basis]["median"] * MIB))
    out["pss_over_rss"] = round(out["pss"] / out["rss"], 2)
    return out


def host_figures(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """The host the figures were taken on, with its load average before and after the run."""
    phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpus": os.cpu_count(), "memory_gib": round(phys / 2**30, 1),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def footprint_entry(run: LoadRun, host: dict[str, Any], note: str) -> dict[str, Any]:
    """One step of ``variant_footprint.json``: per added variant (median of the steps) USS, PSS,
    Triton's processes and threads; the last variant's own stubs; the answers."""
    per = per_variant(run.snaps)
    return {"note": note, "variants_loaded": len(run.answers),
            "per_variant": {"uss_mib": per["uss"]["median"], "pss_mib": per["pss"]["median"],
                            "uss_mib_min_max": [per["uss"]["min"], per["uss"]["max"]],
                            "pss_mib_min_max": [per["pss"]["min"], per["pss"]["max"]],
                            "processes": per["processes"]["median"], "threads": per["threads"]["median"],
                            "tritonserver_threads": per["triton_threads"]["median"]},
            "last_variant_stubs": run.last_stubs, "answers": run.answers, "host": host}


def record_footprint(path: Path, step: str, entry: dict[str, Any]) -> None:
    """Write ``entry`` under ``step`` in ``path``, keeping the other steps' entries."""
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc[step] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def basis_document(run: LoadRun, profiled: dict[str, Any], host: dict[str, Any]) -> dict[str, Any]:
    """``memory_basis.json``: per-variant figures on every basis and what each basis admits."""
    snaps = run.snaps
    per = per_variant(snaps)
    phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"variants_loaded": len(run.answers), "per_variant_mib": per, "mme_profile_first_variant_mib": profiled,
            "triton_with_first_variant_mib": {k: round(v / MIB, 1) for k, v in snaps[0].items()
                                              if k in ("pss", "uss", "rss", "page_tables")},
            "fit_this_host": fits(snaps[0], per, phys), "fit_16gib_instance": fits(snaps[0], per, INSTANCE_GIB * 2**30),
            "host": host,
            "snapshots_mib": [{k: v if k in ("processes", "threads", "triton_threads") else round(v / MIB, 1)
                               for k, v in s.items()} for s in snaps]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--dir", type=Path, help="a fleet build's output (*.tar.gz with manifests)")
    src.add_argument("--count", type=int, help="build this many example-fleet variants first")
    ap.add_argument("--out", type=Path, default=None,
                    help="default bench/results/memory_basis.json (variant_footprint.json with --footprint)")
    ap.add_argument("--footprint", metavar="STEP", help="record this step in variant_footprint.json instead")
    ap.add_argument("--note", default="", help="what the step changed (kept with --footprint)")
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="memory-basis-") as tmp:
        folder = args.dir or build_example_fleet(args.count, Path(tmp) / "fleet")
        variants = read_fleet(folder)
        prefix = Path(tmp) / "prefix"
        prefix.mkdir()
        for v in variants:
            (prefix / v.target).symlink_to((folder / v.target).resolve())
        run = load_one_by_one(variants, prefix, Path(tmp) / "cache")
        if args.footprint:
            entry = footprint_entry(run, host_figures(load_before), args.note)
            print(json.dumps(entry, indent=2))
            record_footprint(args.out or RESULTS / "variant_footprint.json", args.footprint, entry)
            return
        profiled = profile_first(folder, variants[0])
    doc = basis_document(run, profiled, host_figures(load_before))
    print(json.dumps(doc, indent=2))
    out = args.out or RESULTS / "memory_basis.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
