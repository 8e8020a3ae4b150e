"""The README's fleet quick start, run as pasted on a small fleet: the same commands, with only
the fleet's size (and the tenants it names) made small and ``$OUT`` and ``MME_HOME`` in this
test's folder. A newcomer's first ten minutes must not break without a test saying so.

Each line runs in bash through the installed ``mme`` (a subprocess, as typed), against one
Prefect server for the test (what the README advises) instead of a temporary one per command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SMALL = {"--count 100": "--count 4", "tenant-0100": "tenant-0004", "tenant-0007": "tenant-0002"}



def quickstart_lines(readme: str) -> list[str]:
    """The commands of the README's "Fleet quick start" block (comments dropped), in order."""
    section = readme.split("## Fleet quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README: no bash block under '## Fleet quick start'"
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def test_the_block_is_the_lifecycle_the_issue_names() -> None:
    """example -> show -> build -> endpoint start -> deploy -> invoke -> plan -> retire -> gc."""
    lines = quickstart_lines(README.read_text())
    order = ["mme fleet example", "mme fleet show", "mme fleet build", "mme endpoint start",
             "mme fleet deploy", "mme invoke --fleet", "mme plan", "mme fleet retire", "mme fleet gc"]
    starts = [next(i for i, line in enumerate(lines) if line.startswith(o)) for o in order]
    assert starts == sorted(starts), lines
    for old in SMALL:
        assert any(old in line for line in lines), f"the test shrinks {old!r}: keep it in the README"


@pytest.mark.triton
@pytest.mark.prefect
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pytriton tritonserver is Linux-only")
def test_the_fleet_quick_start_runs_as_pasted_on_a_small_fleet(tmp_path: Path, prefect_harness: None) -> None:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "MME_HOME": str(tmp_path / "home"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PREFECT_API_URL": str(PREFECT_API_URL.value()), "COLUMNS": "200"}
    out: dict[str, str] = {}
    script = [f"OUT={tmp_path / 'out'}" if line.startswith("OUT=") else line
              for line in quickstart_lines(README.read_text())]
    for old, new in SMALL.items():
        script = [line.replace(old, new) for line in script]
    try:
        prelude = script[0]
        for line in script[1:]:
            got = subprocess.run(["bash", "-c", f"set -euo pipefail; {prelude}; {line}"], env=env,
                                 capture_output=True, text=True, timeout=600)
            assert got.returncode == 0, f"{line}\nexit {got.returncode}\n{got.stdout[-3000:]}\n{got.stderr[-3000:]}"
            out[line.split(" --", 1)[0]] = got.stdout
    finally:
        subprocess.run(["bash", "-c", "mme endpoint stop"], env=env, capture_output=True, timeout=120)
    labels = (tmp_path / "out" / "tenants" / "tenant-0002" / "labels.txt").read_text().splitlines()
    answer = next(v for k, v in out.items() if k.startswith("mme invoke"))
    assert re.search(r"tenant-0002-[0-9a-f]{12}\.tar\.gz", answer), answer  # the TargetModel it hit
    assert sum(label in answer for label in labels) >= min(3, len(labels)), answer  # its own top-3
    assert (tmp_path / "out" / "plan.yaml").is_file()
    assert (tmp_path / "out" / "plan-cost-vs-p99.png").is_file()
