"""Fused vs separate under the same traffic, in one run; then one changed head, republished.

    python bench/fused_traffic.py                    # 1,000 tenants, 1,000 requests, 4 clients
    python bench/fused_traffic.py --count 100 --requests 200

Why one script: the two layouts are only comparable when measured on the same host, at the
same time, with the same requests. It makes the example fleet once (``mme fleet example``),
builds it twice through the real ``fleet-build`` flow: *separate* (one tarball per tenant) and
*fused* (``shard_size = count``: one shard, published to a ``file://`` store), then serves each
on a local endpoint in this process with ``bench/fleet_traffic.py``'s ``measure`` (its phases,
its warm/cold capture, its counters), one after the other, with the same Zipf(``--zipf``)
sequence (same seed, same tenant order): separate with a loaded-model budget of
``--budget-fraction`` of the variants, fused with the one shard. A separate variant's answer is
checked against its manifest's sample; a fused tenant's against its own ONNX on the same DALI
output (1e-4). Then one tenant's head (its ``model.onnx``) changes and ``fleet-build`` runs again
with ``publish_to`` the store: its seconds are the build, the checks and the publish of the one
rebuilt shard. Writes ``bench/results/fused_traffic.json`` with the host's load average at
start and end (the host may be shared: these are this run's figures). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import fleet_traffic  # noqa: E402
from bench.fused_fleet import build_timed, fused_fleet_file, head_change, own_answers, shard_request  # noqa: E402


def _linked(folder: Path, names: list[str], prefix: Path) -> Path:
    """``prefix`` holding links to ``names`` of ``folder``: the endpoint's model prefix."""
    prefix.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (prefix / name).exists():
            (prefix / name).symlink_to((folder / name).resolve())
    return prefix


def _fused_variants(root: Path, out: Path, args: argparse.Namespace) -> list[fleet_traffic.Variant]:
    """One Variant per tenant, keyed by tenant, sent to the shard with the tenant's ``TENANT``;
    expected: the tenant's own ONNX, for the tenants the sequence (and the warm-up) asks."""
    shard, names, image, tensor = shard_request(root, out)
    sequence, _ = fleet_traffic.zipf_sequence(names, args.requests, args.zipf, args.seed)
    asked = sorted(set(sequence) | set(names[:10]))
    own = own_answers(root, asked, tensor)
    return [fleet_traffic.Variant(name, {"INPUT": image, "TENANT": np.array([[k]], np.int32)},
                                  {"OUTPUT": own[name]} if name in own else None, 1e-4,
                                  target_model=shard.name)
            for k, name in enumerate(names)]


def _layout(run: dict[str, Any]) -> dict[str, Any]:
    """The figures the comparison reads, from one ``measure`` document."""
    return {"requests_per_s": run["requests_per_s"], "run_seconds": run["run_seconds"],
            "p50_ms": run["all_ms"]["p50"], "p99_ms": run["all_ms"]["p99"],
            "warm_p50_ms": run["warm_ms"]["p50"], "warm_p99_ms": run["warm_ms"]["p99"],
            "cold_p50_ms": run["cold_ms"]["p50"], "cold_loads": run["loads"],
            "errors": run["errors"], "wrong_answers": run["wrong_answers"],
            "warm_requests": run["warm_ms"]["n"], "peak_pss_triton_mb": run["peak_pss_triton_mb"],
            # warm, one request at a time, after the run (every asked model known): no queueing
            "quiet_warm_p50_ms": run["quiet_all_models_known"]["e2e_ms"]["p50"]}


def _measure(args: argparse.Namespace, variants: list[fleet_traffic.Variant], prefix: Path,
             cache: Path) -> dict[str, Any]:
    """``fleet_traffic.measure`` from a clean slate of warm/cold notes (request ids repeat)."""
    fleet_traffic.HITS.clear()
    return fleet_traffic.measure(args, variants, prefix, cache)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-fraction", type=float, default=0.05)
    ap.add_argument("--quiet-requests", type=int, default=50)
    ap.add_argument("--max-concurrent-loads", type=int, default=2)
    ap.add_argument("--spare-slots", type=int, default=None)
    ap.add_argument("--root", default="", help="work folder (default: a folder under MME_HOME)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "fused_traffic.json"))
    args = ap.parse_args()
    from infra.paths import work_dir
    from tasks.fleet.example import make_example_fleet

    root = Path(args.root) if args.root else work_dir() / f"bench-fused-traffic-{args.count}"
    root.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    make_example_fleet(args.count, (root / "models").as_uri(), seed=0, fleet_file=root / "fleet.yaml")
    sep_build, sep_s = build_timed(root / "fleet.yaml", root / "separate")
    store = (root / "store").as_uri()
    fused_file = fused_fleet_file(root, args.count)
    fused_build, fused_s = build_timed(fused_file, root / "fused", store)
    separate = fleet_traffic.read_fleet(root / "separate")
    sep = _measure(args, separate, _linked(root / "separate", [v.target for v in separate],
                                           root / "prefix-separate"), root / "cache-separate")
    variants = _fused_variants(root, root / "fused", args)
    fused = _measure(args, variants, _linked(root / "fused", [variants[0].target_model],
                                             root / "prefix-fused"), root / "cache-fused")
    head = head_change(root, fused_file, root / "fused", store, variants[len(variants) // 2].target)
    a, b = _layout(sep), _layout(fused)
    doc = {"count": args.count, "requests": args.requests, "clients": args.clients, "zipf": args.zipf,
           "seed": args.seed, "separate": {**a, "budget": sep["budget"], "build_s": sep_s,
                                           "build": sep_build},
           "fused": {**b, "build_s": fused_s, "build": fused_build},
           "fused_over_separate_throughput": round(b["requests_per_s"] / a["requests_per_s"], 1),
           "fused_over_separate_warm_p50": round(b["warm_p50_ms"] / a["warm_p50_ms"], 2),
           "fused_over_separate_quiet_warm_p50": round(b["quiet_warm_p50_ms"] / a["quiet_warm_p50_ms"], 2),
           "one_changed_head": head,
           "runs": {"separate": sep, "fused": fused}, "cpus": os.cpu_count(),
           "load_average_start": [round(x, 2) for x in load_start],
           "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "runs"}, indent=1, default=str))


if __name__ == "__main__":
    main()
