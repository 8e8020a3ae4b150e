"""Fuzz the local endpoint's front end for a long time: the strategies of the suite's fuzz test.

Usage:  python bench/fuzz.py [--seconds 300] [--examples N] [--out fuzz-out] [--seed S]

Starts a throwaway local endpoint (a real tritonserver) serving the two tiny ensembles of
``tests/endpoint_fuzz_cases.py`` (FP32 and BYTES inputs) and sends generated requests until
``--seconds`` pass or ``--examples`` cases are sent, whichever comes first. After every case it
checks the same invariants as ``tests/test_endpoint_fuzz.py`` (``EndpointWatch``): a 2xx
exactly for the requests the endpoint's rules accept, and then the right answer, else a 4xx
with a JSON ``message``; ``/ping``
200; Triton's pid unchanged and no death, restart or stub failure counted; a good request to
the other model answers correctly.

Prints one JSON summary: cases, answers by status code and error type (overall and per
strategy), Triton's state at the end, and every violation. Each violation's request is saved
under ``--out`` (``<n>.body`` and ``<n>.json`` with the headers, status, answer and what
broke), so it can be replayed. Exit code 1 when any invariant broke.

Why not only the suite: the suite runs 150 derandomized cases (reproducible CI); a fresh seed
for minutes explores far more of the space (rare mutations, long bodies, odd combinations).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from endpoint_fuzz_cases import (
    ENDPOINT,
    Case,
    EndpointWatch,
    all_requests,
    publish_models,
)

from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint

BATCH = 200  # cases per hypothesis run (each run a fresh seed)


class Run:
    """Counts what the endpoint answered, and records each broken invariant once."""

    def __init__(self, watch: EndpointWatch, out: Path, stop_at: float, examples: int):
        self.watch, self.out = watch, out
        self.stop_at, self.examples = stop_at, examples
        self.cases = 0
        self.status: Counter[str] = Counter()
        self.kinds: dict[str, Counter[str]] = {}
        self.violations: list[dict[str, Any]] = []

    @property
    def done(self) -> bool:
        return self.cases >= self.examples or time.monotonic() >= self.stop_at

    def one(self, case: Case) -> None:
        if self.done:
            return  # the rest of this hypothesis batch is skipped
        try:
            r = self.watch.send(case)
        except httpx.LocalProtocolError:  # a header value no client can send: not a request
            self.status["not sendable"] += 1
            return
        self.cases += 1
        answer = f"{r.status_code} {r.headers.get('x-amzn-errortype', '')}".strip()
        self.status[answer] += 1
        self.kinds.setdefault(case.kind, Counter())[answer] += 1
        broken = self.watch.violations(case, r)
        if broken:
            self.record(case, r, broken)

    def record(self, case: Case, r: httpx.Response, broken: list[str]) -> None:
        n = len(self.violations)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{n}.body").write_bytes(case.body)
        doc = {**case.describe(), "body_file": f"{n}.body", "status": r.status_code,
               "answer": r.text[:2000], "broken": broken}
        (self.out / f"{n}.json").write_text(json.dumps(doc, indent=1))
        self.violations.append(doc)
        self.wait_until_live()
        self.watch.rebaseline()

    def wait_until_live(self, timeout: float = 120) -> None:
        """After a violation the endpoint may be restarting Triton: wait for /ping 200."""
        deadline = time.monotonic() + timeout
        while self.watch.client.get("/ping").status_code != 200:
            if time.monotonic() > deadline:
                raise SystemExit(f"the endpoint is not live {timeout:.0f} s after a violation")
            time.sleep(0.5)  # polling a restart, not synchronising a test


def run_batches(run: Run, first_seed: int) -> None:
    """Hypothesis batches with fresh seeds until the budget is spent (no shrinking: the
    failing request is saved as it was sent)."""
    batch = 0
    while not run.done:
        @seed(first_seed + batch)
        @settings(max_examples=BATCH, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=all_requests())
        def fuzz(case: Case) -> None:
            run.one(case)

        fuzz()
        batch += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--examples", type=int, default=10**9)
    ap.add_argument("--out", type=Path, default=Path("fuzz-out"))
    ap.add_argument("--seed", type=int, default=None, help="first batch's seed (default: random)")
    args = ap.parse_args()
    first_seed = args.seed if args.seed is not None else random.randrange(2**32)
    with tempfile.TemporaryDirectory(prefix="mme-fuzz-") as tmp:
        root = Path(tmp)
        (root / "store").mkdir()
        contracts = publish_models(root / "store")
        cfg = EndpointConfig(name=ENDPOINT, model_data_url=(root / "store").as_uri(),
                             cache_dir=root / "cache", triton_log=root / "triton.log")
        t0 = time.monotonic()
        with LocalEndpoint(cfg) as ep:
            watch = EndpointWatch(ep.url, root / "cache", contracts)
            run = Run(watch, args.out, t0 + args.seconds, args.examples)
            try:
                run_batches(run, first_seed)
            finally:
                final = watch.triton_state()
                watch.close()
    summary = {"cases": run.cases, "seconds": round(time.monotonic() - t0, 1),
               "first_seed": first_seed, "answers": dict(run.status.most_common()),
               "answers_by_strategy": {k: dict(v) for k, v in sorted(run.kinds.items())},
               "triton": final, "violations": run.violations}
    print(json.dumps(summary, indent=1))
    sys.exit(1 if run.violations else 0)


if __name__ == "__main__":
    main()
