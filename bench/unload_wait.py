"""How an unload's wait scales with the models cached (unloaded) in Triton's repository.

Usage:
    python bench/unload_wait.py [--cached 10 --cached 10000] [--rounds 5]

For each count it starts a tritonserver (explicit model control, gRPC for repository calls,
as the local endpoint runs it) on a repository holding one tiny ``pipe -> add`` ensemble and
``N`` other model folders that are never loaded (what the endpoint's disk cache keeps), then
loads and unloads the ensemble ``--rounds`` times. It reports per unload: the wall time of
:meth:`TritonServer.unload` (which waits per model: the ensemble and its composing model not
ready, their Python stubs exited), the CPU Triton spent meanwhile, and, for comparison, one
call of Triton's repository index (what the old wait polled every 50 ms until nothing in the
whole repository was UNLOADING). JSON to ``bench/results/unload_wait.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from infra.triton.measure import LoadRun
from infra.triton.server import TritonPorts, TritonServer

RESULTS = Path(__file__).resolve().parent / "results"
ADD = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() + np.float32(1))])
            for r in requests]
"""
IO = ('input [ { name: "X", data_type: TYPE_FP32, dims: [ -1 ] } ]\n'
      'output [ { name: "Y", data_type: TYPE_FP32, dims: [ -1 ] } ]\n')


def write_repo(repo: Path, cached: int) -> None:
    (repo / "add" / "1").mkdir(parents=True)
    (repo / "add" / "config.pbtxt").write_text(
        f'name: "add"\nbackend: "python"\nmax_batch_size: 0\n{IO}'
        'instance_group [ { kind: KIND_CPU, count: 1 } ]\n')
    (repo / "add" / "1" / "model.py").write_text(ADD)
    (repo / "pipe" / "1").mkdir(parents=True)
    (repo / "pipe" / "config.pbtxt").write_text(
        f'name: "pipe"\nplatform: "ensemble"\nmax_batch_size: 0\n{IO}'
        'ensemble_scheduling { step [ { model_name: "add" model_version: -1 '
        'input_map { key: "X" value: "X" } output_map { key: "Y" value: "Y" } } ] }\n')
    for i in range(cached):  # never loaded: only listed by the repository index
        folder = repo / f"cached-{i:05d}"
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(f'name: "cached-{i:05d}"\nbackend: "python"\n')


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(cached: int, rounds: int) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory(prefix="unload-wait-") as tmp:
        repo = Path(tmp) / "repo"
        write_repo(repo, cached)
        with TritonServer(repo, ports=TritonPorts(grpc=0)) as srv:
            walls: list[float] = []
            cpus: list[float] = []
            index_ms: list[float] = []
            for _ in range(rounds):
                with LoadRun(srv, "pipe") as run:  # the one harness: timed load, timed unload
                    cpu0 = cpu_seconds(srv.pid)
                walls.append(run.unload_s or 0.0)
                cpus.append(cpu_seconds(srv.pid) - cpu0)
                t1 = time.perf_counter()
                listed = len(srv.repository_index())
                index_ms.append((time.perf_counter() - t1) * 1000)
    return {"cached_folders": cached, "index_lists": listed, "rounds": rounds,
            "unload_wait_s_median": round(statistics.median(walls), 3),
            "unload_wait_s_max": round(max(walls), 3),
            "triton_cpu_s_during_unload_median": round(statistics.median(cpus), 3),
            "one_index_call_ms_median": round(statistics.median(index_ms), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cached", type=int, action="append", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "unload_wait.json")
    args = ap.parse_args()
    rows = []
    for n in args.cached or [10, 10_000]:
        rows.append(measure(n, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
