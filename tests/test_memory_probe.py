"""The one memory probe (infra.processes.procfs.memory_of / tree_memory) counts what the kernel counts.

Summed RSS counts a shared library's pages once per process that maps it, so N Python stubs
count libpython, numpy ... N times; PSS splits shared pages among their mappers. The real-Triton
test loads Python models that each hold a known block of memory and checks that the probe's PSS
growth matches the system's own anonymous + shared-memory change (/proc/meminfo AnonPages +
Shmem), while summed RSS is larger.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from infra.processes.procfs import Memory, memory_of, process_memory, process_tree, system_anon_bytes, tree_memory

MIB = 2 ** 20

# A Python model that holds (and touches) ``mib`` MiB from initialize on, so the memory signal
# dominates the host's background churn.
HOLD_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X", data_type: TYPE_FP32, dims: [ -1 ] }} ]
output [ {{ name: "Y", data_type: TYPE_FP32, dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
parameters {{ key: "mib" value: {{ string_value: "{mib}" }} }}
"""

HOLD_MODEL = """\
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        mib = int(json.loads(args["model_config"])["parameters"]["mib"]["string_value"])
        self.block = np.full(mib * 2**20 // 8, 1.5)  # written: every page is resident

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())]) for r in requests]
"""


def write_hold_repo(repo: Path, names: list[str], mib: int) -> Path:
    for name in names:
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(HOLD_CONFIG.format(name=name, mib=mib))
        (repo / name / "1" / "model.py").write_text(HOLD_MODEL)
    return repo


# ---------------------------------------------------------------------------------- unit
def test_probe_of_this_process_orders_uss_pss_rss() -> None:
    me = process_memory(os.getpid())
    assert me is not None and me.processes == 1
    assert 0 < me.uss <= me.pss <= me.rss  # private <= proportional <= everything mapped
    assert me.page_tables > 0


def test_gone_processes_count_nothing_and_sums_add_up() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process (or, reused, one we do not ask about)
    assert tree_memory(None) == Memory() and process_tree(child.pid) in ([], [child.pid])
    a, b = process_memory(os.getpid()), process_memory(os.getppid())
    assert a is not None and b is not None
    both = memory_of([os.getpid(), os.getppid()])
    assert both.processes == 2 and both.rss >= a.rss and both.pss >= a.pss  # (changes while read)


def test_tree_holds_the_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in process_tree(os.getpid())
        assert tree_memory(os.getpid()).processes >= 2
    finally:
        child.kill()
        child.wait()


# ---------------------------------------------------------------------------------- real Triton
@pytest.mark.triton
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pytriton tritonserver is Linux-only")
def test_pss_growth_matches_the_kernels_anonymous_memory(tmp_path: Path) -> None:
    """5 Python models holding 400 MiB each, loaded together: the probe's PSS growth is within
    15% of the system's AnonPages + Shmem change; summed RSS counts more. The system figure
    moves with every other process on the host (hundreds of MiB in seconds on a busy one), so
    the blocks are large, the loads run at once (a short window), and the median of 3 rounds
    (after one that warms the imports) is compared."""
    from infra.triton.server import TritonServer

    names, mib = [f"hold{i}" for i in range(5)], 400
    repo = write_hold_repo(tmp_path / "repo", names, mib)
    rounds: list[tuple[Memory, int]] = []
    with TritonServer(repo, log_path=tmp_path / "triton.log") as server, ThreadPoolExecutor(len(names)) as pool:
        for _ in range(4):
            before, anon0 = tree_memory(server.pid), system_anon_bytes()
            list(pool.map(server.load, names))
            after, anon1 = tree_memory(server.pid), system_anon_bytes()
            rounds.append((after - before, anon1 - anon0))
            assert after.pss < after.rss, (before, after)  # shared pages: once, not per stub
            list(pool.map(server.unload, names))
    for grown, _ in rounds:
        assert grown.processes == len(names)  # one stub per model instance
        assert len(names) * mib * MIB <= grown.pss < grown.rss and grown.uss <= grown.pss, grown
    pss = statistics.median(g.pss for g, _ in rounds[1:])
    anon = statistics.median(a for _, a in rounds[1:])
    assert abs(pss - anon) <= 0.15 * anon, [(g.pss >> 20, a >> 20) for g, a in rounds]
