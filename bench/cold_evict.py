"""What a cold call costs when the endpoint is full: one that must first evict a model vs one
that finds room, with the spare room off and on, in one sitting.

    python bench/cold_evict.py --dir BUILT_FLEET [--budget 10] [--calls 12] [--gap 2.5]

Why: a Python model's unload takes >= 1.2 s (its stub's health check sleeps 1 s), so a miss
that must evict first waits for it; the spare room (``spare_slots``) unloads the least recently
used idle model in the background so that the next miss finds its place free. For each
setting (``spare_slots=0``, the old behaviour, then derived) a fresh in-process endpoint with a
loaded-model budget of ``--budget`` is filled with ``--budget`` distinct variants, one cold call
at a time (*room*: each finds a free place), then ``--calls`` more distinct variants are called
cold one at a time, ``--gap`` seconds apart (a user's misses, not a flood) (*full*: the budget
is full, so each must evict unless a spare place was freed meanwhile). Reports each phase's
median cold latency and the ratio full/room per setting, how each load got its place
(``LoadAdmission``), errors and wrong answers, and the load average. JSON goes to
``bench/results/cold_evict.json``. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet_traffic import Sender, Variant, read_fleet  # noqa: E402

from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint  # noqa: E402
from infra.endpoint.state import spare_slots  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def one_setting(variants: list[Variant], prefix: Path, cache: Path, budget: int, calls: int,
                gap_s: float, spare: int | None) -> dict[str, Any]:
    """A fresh endpoint with ``spare_slots=spare``: the room phase, then the full phase."""
    cfg = EndpointConfig(name="cold-evict", model_data_url=prefix.as_uri(), cache_dir=cache,
                         max_loaded_models=budget, spare_slots=spare)
    room, full = variants[:budget], variants[budget:budget + calls]
    with LocalEndpoint(cfg) as ep:
        sender = Sender(ep.url, cfg.name, {v.target: v for v in variants})
        room_results = []
        for i, v in enumerate(room):
            room_results.append(sender.send(f"room-{i}", v.target))
            time.sleep(gap_s)
        full_results = []
        for i, v in enumerate(full):
            full_results.append(sender.send(f"full-{i}", v.target))
            time.sleep(gap_s)
        m = ep.manager.report().model_dump()
        resolved = spare_slots(cfg, *ep.manager.metrics.load_unload_s())
    results = room_results + full_results
    room_p50 = statistics.median(r.ms for r in room_results)
    full_p50 = statistics.median(r.ms for r in full_results)
    return {"spare_slots_setting": spare, "spare_slots_at_end": resolved,
            "room_cold_ms": {"n": len(room_results), "p50": round(room_p50, 1)},
            "full_cold_ms": {"n": len(full_results), "p50": round(full_p50, 1),
                             "each": [round(r.ms, 1) for r in full_results]},
            "full_over_room": round(full_p50 / room_p50, 2),
            "load_admission": m.get("LoadAdmission"), "background_evictions": m.get("BackgroundEvictions"),
            "unloading_ms": m.get("ModelUnloadingTime"), "loading_ms": m.get("ModelLoadingTime"),
            "errors": sum(r.status != 200 for r in results), "wrong_answers": sum(r.wrong for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, required=True, help="built *.tar.gz TargetModels with manifests")
    ap.add_argument("--budget", type=int, default=10)
    ap.add_argument("--calls", type=int, default=12)
    ap.add_argument("--gap", type=float, default=2.5, help="seconds between two calls")
    ap.add_argument("--out", type=Path, default=RESULTS / "cold_evict.json")
    args = ap.parse_args()
    variants = read_fleet(args.dir)
    if len(variants) < 2 * (args.budget + args.calls):
        raise SystemExit(f"{args.dir}: needs {2 * (args.budget + args.calls)} variants")
    doc: dict[str, Any] = {"budget": args.budget, "calls": args.calls, "gap_s": args.gap,
                           "load_average_before": os.getloadavg(), "settings": []}
    with tempfile.TemporaryDirectory(prefix="cold-evict-") as tmp:
        prefix = Path(tmp) / "models"
        prefix.mkdir()
        for v in variants:
            (prefix / v.target).symlink_to((args.dir / v.target).resolve())
        # each setting gets variants of its own: no disk cache or page cache favours the second
        n = args.budget + args.calls
        for i, spare in enumerate((0, None)):
            doc["settings"].append(one_setting(variants[i * n:(i + 1) * n], prefix, Path(tmp) / f"cache-{i}",
                                               args.budget, args.calls, args.gap, spare))
    doc["load_average_after"] = os.getloadavg()
    doc["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(doc, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
