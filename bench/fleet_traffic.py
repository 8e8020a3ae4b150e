"""Fleet traffic on one local endpoint: Zipf requests over many TargetModels, few loaded.

Usage:
    python bench/fleet_traffic.py --dir FLEET_DIR [--budget-fraction 0.05] [--requests 1000]
    python bench/fleet_traffic.py --tiny 200 --requests 300       # makes 200 tiny ensembles

``FLEET_DIR`` holds built ``*.tar.gz`` TargetModels, each with its ``*.manifest.json`` beside
it when there is one (its validation sample checks every answer); ``--tiny N`` writes N tiny
Python-backend ensembles (``pipe -> add``, Y = X + k) instead, whose right answers are known.

It starts an endpoint in this process with a loaded-model budget of ``budget-fraction`` of
the models, then:

1. *quiet*: 10 models touched, then warm requests to one of them (no churn);
2. *run*: ``--requests`` requests, Zipf(``--zipf``) over the models (seeded ranks and draws),
   from ``--clients`` threads; the order in which requests were sent is recorded;
3. *quiet again*: warm requests to the hottest model with every model of the run known to the
   endpoint (does the per-request cost grow with the models present?).

It reports the measured warm-hit ratio beside the exact LRU simulation of the sequence as
sent and the static top-k optimum; warm/cold p50/p99; errors and wrong answers; Triton loads,
unloads and evictions; peak models in Triton; peak memory (Triton's process tree, sampled,
and this process); the endpoint's own admission time (arrival -> forward) for warm requests,
with and without churn. JSON goes to ``bench/results/`` (``--out``). Nothing here is timed by
a test: this is the measurement the README quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tasks.planning.cache_model import lru_hits, top_k_hit_ratio
from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint
from infra.records.manifest import MANIFEST_SUFFIX, load_manifest
from infra.endpoint.app import Admission
from infra.endpoint.state import spare_slots
from infra.processes.procfs import Memory, tree_memory
from infra.aws.runtime_client import decode_response, encode_request

TESTS = Path(__file__).resolve().parents[1] / "tests"  # tests/fixtures: the tests' tiny Triton models
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
from fixtures.tiny_models import publish_pipe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BENCH_ID = b"x-mme-bench-id"

TINY_X = np.array([1.0, 2.0, 3.0], dtype=np.float32)


@dataclass
class Variant:
    """One TargetModel: the request to send and the answer to expect (None: not checked)."""

    target: str
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray] | None = None
    tolerance: float = 1e-4
    target_model: str = ""  # the TargetModel sent, when not ``target`` (a fused shard's tenant)


def make_tiny(prefix: Path, n: int) -> list[Variant]:
    """``n`` tiny ensembles ``tiny-<i>.tar.gz`` (Y = X + i) in ``prefix``: the tests' ``pipe -> add``
    model (tests/fixtures/tiny_models.py), so the bench and the tests load the same thing."""
    out = []
    for i in range(n):
        target = f"tiny-{i:05d}.tar.gz"
        publish_pipe(prefix, target, k=i)
        out.append(Variant(target, {"X": TINY_X}, {"Y": TINY_X + np.float32(i)}))
    return out


def read_fleet(folder: Path) -> list[Variant]:
    """The ``*.tar.gz`` of ``folder``; each manifest's sample gives its request and answer."""
    from tasks.build.verify import Sample

    out = []
    for archive in sorted(folder.glob("*.tar.gz")):
        manifest = archive.with_name(archive.name.removesuffix(".tar.gz") + MANIFEST_SUFFIX)
        if not manifest.exists() or load_manifest(manifest).sample is None:
            raise SystemExit(f"{manifest}: missing, or without a validation sample: the bench "
                             f"needs each variant's request")
        sample = Sample.from_json(load_manifest(manifest).required_sample())
        tol = float(sample.context.get("max_abs_diff_tolerance") or 1e-4)
        out.append(Variant(archive.name, sample.inputs, sample.expected, tol))
    if not out:
        raise SystemExit(f"{folder}: no *.tar.gz TargetModels")
    return out


# ---------------------------------------------------------------------------------- hit capture
# Which requests were warm is known only inside the endpoint: the bench runs it in-process and
# notes each request's hit flag (the endpoint's on_admission hook) under the id the client
# sent in a header.
HITS: dict[str, bool] = {}


def request_id(admission: Admission) -> str:
    """The bench's id of the admitted request (its BENCH_ID header)."""
    return admission.headers.get(BENCH_ID, b"").decode()


def note_hit(admission: Admission) -> None:
    """``LocalEndpoint(on_admission=...)``: note whether each admitted request was warm."""
    if admission.warm is not None:
        HITS[request_id(admission)] = admission.warm


# ---------------------------------------------------------------------------------- requests
@dataclass
class Result:
    rid: str
    target: str
    status: int
    ms: float
    wrong: bool = False
    error: str = ""


@dataclass
class Sender:
    """Sends requests from several threads, recording the order they were sent in."""

    url: str
    endpoint: str
    variants: dict[str, Variant]
    sent: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    local: threading.local = field(default_factory=threading.local)

    def send(self, rid: str, target: str) -> Result:
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = httpx.Client(timeout=600)
        v = self.variants[target]
        body, ct = encode_request(v.inputs, binary=True)
        headers = {"Content-Type": ct, "X-Amzn-SageMaker-Target-Model": v.target_model or target,
                   BENCH_ID.decode(): rid}
        with self.lock:
            self.sent.append(target)
        t0 = time.perf_counter()
        r = client.post(f"{self.url}/endpoints/{self.endpoint}/invocations", content=body,
                        headers=headers)
        ms = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            return Result(rid, target, r.status_code, ms, error=r.text[:300])
        out = decode_response(r.content, r.headers["content-type"])
        wrong = v.expected is not None and not all(
            np.allclose(np.asarray(out[k], dtype=np.float64), np.asarray(e, dtype=np.float64),
                        atol=v.tolerance, rtol=0) for k, e in v.expected.items())
        return Result(rid, target, 200, ms, wrong=wrong)


def pct(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0, "p50": 0.0, "p99": 0.0}
    a = np.array(xs)
    return {"n": len(xs), "p50": round(float(np.percentile(a, 50)), 3),
            "p99": round(float(np.percentile(a, 99)), 3)}


def admission_since(ep: LocalEndpoint, before: int) -> dict[str, float]:
    """The endpoint's own admission times (ms) of the warm requests since ``before``."""
    res = ep.manager.metrics.admission_ms
    new = min(res.count - before, len(res.samples))
    return pct(list(res.samples)[len(res.samples) - new:] if new > 0 else [])


def quiet_phase(ep: LocalEndpoint, sender: Sender, target: str, n: int) -> dict[str, Any]:
    """``n`` warm requests, one at a time, to one loaded model: no churn."""
    sender.send("warmup", target)
    before = ep.manager.metrics.admission_ms.count
    results = [sender.send(f"quiet-{i}", target) for i in range(n)]
    return {"models_known": len(ep.manager.models), "e2e_ms": pct([r.ms for r in results]),
            "admission_ms": admission_since(ep, before),
            "errors": sum(r.status != 200 for r in results)}


def run_phase(ep: LocalEndpoint, sender: Sender, sequence: list[str], clients: int) -> list[Result]:
    queue = iter(enumerate(sequence))
    qlock = threading.Lock()
    results: list[Result] = []

    def worker() -> None:
        while True:
            with qlock:
                nxt = next(queue, None)
            if nxt is None:
                return
            i, target = nxt
            try:
                results.append(sender.send(f"run-{i}", target))
            except httpx.HTTPError as e:
                results.append(Result(f"run-{i}", target, 0, 0.0, error=repr(e)))

    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    return results


class MemorySampler:
    """Peak memory of Triton's process tree (PSS, what the endpoint's limit counts; summed RSS
    for comparison), sampled every ``period`` s in a thread by the endpoint's own probe. Every
    2 s, not faster: one read costs ~2 ms of CPU per loaded stub (~100 ms with 50 loaded), and
    at 0.5 s the sampler alone took a fifth of a core from the run it measures."""

    def __init__(self, pid: Callable[[], int | None], period: float = 2.0) -> None:
        self.pid, self.period, self.peak_pss, self.peak_rss = pid, period, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            m: Memory = tree_memory(self.pid())
            self.peak_pss, self.peak_rss = max(self.peak_pss, m.pss), max(self.peak_rss, m.rss)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def zipf_sequence(targets: list[str], n: int, s: float, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` draws of Zipf(s) over ``targets`` (ranks are a seeded shuffle) and the law."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(targets) + 1, dtype=float) ** s
    probs = (weights / weights.sum())[rng.permutation(len(targets))]
    return [targets[i] for i in rng.choice(len(targets), size=n, p=probs)], probs


def summarize(ep: LocalEndpoint, sender: Sender, results: list[Result], before: dict,
              run: dict[str, Any]) -> dict[str, Any]:
    """The run's numbers; Triton counters are deltas over the run (``before`` is the metrics
    document at its start). The LRU simulation replays every request as sent, the warm-up
    included (the endpoint did not start the run empty either), and counts the run's hits."""
    budget = ep.cfg.max_loaded_models or 0
    m = ep.manager.report().model_dump()
    sent_before, n = run.pop("sent_before"), len(results)
    sim_hits = lru_hits(sender.sent, budget) - lru_hits(sender.sent[:sent_before], budget)
    warm = [r.ms for r in results if r.status == 200 and HITS.get(r.rid)]
    cold = [r.ms for r in results if r.status == 200 and not HITS.get(r.rid)]
    measured = sum(bool(HITS.get(r.rid)) for r in results if r.status == 200)
    return {
        "models": len(sender.variants), "budget": budget, "requests": n,
        "measured_warm_hit_ratio": round(measured / max(n, 1), 4),
        "lru_simulation_hit_ratio": round(sim_hits / max(n, 1), 4),
        # LRU's misses are loads: a request that joins a load another one started is a miss
        # for the endpoint (it waited) and a hit for LRU; this ratio counts it as LRU does
        "measured_no_load_ratio": round(
            1 - (m["TritonLoadCalls"] - before["TritonLoadCalls"]) / max(n, 1), 4),
        "static_top_k_hit_ratio": round(top_k_hit_ratio(run.pop("probs"), budget), 4),
        # what LRU gives with fewer places: a place held by a load or an unload in flight
        # holds no usable model, so under concurrency the usable cache is smaller than budget
        "lru_simulation_hit_ratio_by_capacity": {
            c: round((lru_hits(sender.sent, c) - lru_hits(sender.sent[:sent_before], c)) / max(n, 1), 4)
            for c in range(max(1, budget - 4), budget + 1)},
        "misses_by_reason": {k: v - before["Misses"][k] for k, v in m["Misses"].items()},
        "load_admission": {k: v - before["LoadAdmission"][k] for k, v in m["LoadAdmission"].items()},
        "background_evictions": m["BackgroundEvictions"] - before["BackgroundEvictions"],
        "warm_ms": pct(warm), "cold_ms": pct(cold),
        "all_ms": pct([r.ms for r in results if r.status == 200]),
        "errors": sum(r.status != 200 for r in results),
        "error_samples": sorted({f"{r.status} {r.error[:120]}" for r in results if r.status != 200})[:5],
        "wrong_answers": sum(r.wrong for r in results),
        "loads": m["TritonLoadCalls"] - before["TritonLoadCalls"],
        "unloads": m["TritonUnloadCalls"] - before["TritonUnloadCalls"],
        "evictions": m["MemoryEvictions"] - before["MemoryEvictions"],
        "peak_loaded": m["PeakLoadedModelCount"],
        "thrash": m["Thrash"], "unloading_ms": m["ModelUnloadingTime"],
        "loading_ms": m["ModelLoadingTime"], "downloading_ms": m["ModelDownloadingTime"],
        "loading_wait_ms": m["ModelLoadingWaitTime"], **run,
        "peak_rss_bench_process_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--dir", type=Path, help="built *.tar.gz TargetModels with manifests")
    src.add_argument("--tiny", type=int, help="make this many tiny Python ensembles instead")
    ap.add_argument("--budget-fraction", type=float, default=0.05)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--quiet-requests", type=int, default=200)
    ap.add_argument("--max-concurrent-loads", type=int, default=2)
    ap.add_argument("--spare-slots", type=int, default=None,
                    help="places kept free by background unloads (default: derived; 0: none)")
    ap.add_argument("--recency", choices=("request", "served"), default="request",
                    help="what least recently used ranks by: a model's last request (default) or its last "
                         "service (a miss: its load's end; the behaviour before)")
    ap.add_argument("--unload-nice", type=int, default=19,
                    help="CPU niceness of background unloads' stubs (default 19; 0: the same priority "
                         "as loads, the behaviour before)")
    ap.add_argument("--out", type=Path, default=RESULTS / "fleet_traffic.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-traffic-") as tmp:
        prefix = Path(tmp) / "models"
        prefix.mkdir()
        if args.tiny:
            variants = make_tiny(prefix, args.tiny)
        else:
            variants = read_fleet(args.dir)
            for v in variants:
                (prefix / v.target).symlink_to((args.dir / v.target).resolve())
        doc = measure(args, variants, prefix, Path(tmp) / "cache")
    print(json.dumps(doc, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


def measure(args: argparse.Namespace, variants: list[Variant], prefix: Path, cache: Path) -> dict:
    budget = max(1, round(args.budget_fraction * len(variants)))
    cfg = EndpointConfig(name="fleet-bench", model_data_url=prefix.as_uri(), cache_dir=cache,
                         max_loaded_models=budget, max_concurrent_loads=args.max_concurrent_loads,
                         spare_slots=args.spare_slots, recency=args.recency,
                         background_unload_nice=args.unload_nice)
    targets = [v.target for v in variants]
    sequence, probs = zipf_sequence(targets, args.requests, args.zipf, args.seed)
    with LocalEndpoint(cfg, on_admission=note_hit) as ep, MemorySampler(lambda: ep.triton.pid) as mem:
        sender = Sender(ep.url, cfg.name, {v.target: v for v in variants})
        for t in targets[:10]:  # 10 models known to the endpoint
            sender.send("touch", t)
        quiet_10 = quiet_phase(ep, sender, targets[min(9, len(targets) - 1)], args.quiet_requests)
        before, sent_before = ep.manager.report().model_dump(), len(sender.sent)
        admission_before = ep.manager.metrics.admission_ms.count
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        results = run_phase(ep, sender, sequence, args.clients)
        seconds = time.perf_counter() - t0
        run = {"probs": probs, "sent_before": sent_before, "clients": args.clients,
               "zipf": args.zipf, "seed": args.seed, "max_concurrent_loads": cfg.max_concurrent_loads,
               # the spare room at the run's end (derived: sized by the timed loads/unloads)
               "spare_slots": spare_slots(cfg, *ep.manager.metrics.load_unload_s()),
               "recency": cfg.recency,
               "background_unload_nice": cfg.background_unload_nice,
               "load_average_1_5_15": {
                   "before_run": load_before, "after_run": os.getloadavg()},
               "run_seconds": round(seconds, 1), "requests_per_s": round(len(results) / seconds, 2),
               "endpoint_admission_ms_under_churn": admission_since(ep, admission_before)}
        doc = summarize(ep, sender, results, before, run)
        hottest = max(set(sequence), key=sequence.count)
        doc["quiet_10_models_known"] = quiet_10
        doc["quiet_all_models_known"] = quiet_phase(ep, sender, hottest, args.quiet_requests)
    doc["peak_pss_triton_mb"] = round(mem.peak_pss / 2**20, 1)
    doc["peak_rss_triton_mb"] = round(mem.peak_rss / 2**20, 1)  # summed RSS, for comparison
    return doc


if __name__ == "__main__":
    main()
