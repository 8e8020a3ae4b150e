"""A fleet's first local deploy as a new user runs it: example fleet, build, then ``mme fleet
deploy`` to a fresh local endpoint, timed from the outside.

    python bench/fleet_first_deploy.py --count 100

Why from the outside: the figure the issue names is what the user waits for (the CLI, Prefect's
start included) and how often the terminal says something while it works. In a fresh
``MME_HOME`` it makes the example fleet (``mme fleet example``) and builds it (``mme fleet
build``), starts a local endpoint with its default settings (``mme endpoint start``), then runs
``mme fleet deploy`` as a subprocess, stamping every line it writes to stderr/stdout. Reports:
the deploy's wall seconds, the progress lines (``validated n/N``) and the longest silence
between any two lines, how many variants the endpoint held loaded afterwards (``GET
/metrics``), the host's available memory before and after, and the load average. JSON goes
to ``bench/results/fleet_first_deploy.json``. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MME = str(Path(sys.executable).with_name("mme"))


def _mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _run(args: list[str], env: dict[str, str]) -> float:
    """Run ``mme args`` to the end (output discarded); its wall seconds. A failure raises."""
    t0 = time.perf_counter()
    got = subprocess.run([MME, *args], env=env, check=False, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    if got.returncode:
        raise SystemExit(f"mme {' '.join(args)} exited {got.returncode}:\n{got.stderr[-2000:]}")
    return time.perf_counter() - t0


def _stamped(args: list[str], env: dict[str, str]) -> tuple[int, list[tuple[float, str]], float]:
    """Run ``mme args``; (exit code, [(seconds since start, line)] of stdout and stderr, wall s)."""
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen([MME, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def pump(stream: Any) -> None:
        for line in stream:
            lines.append((time.perf_counter() - t0, line.rstrip()))

    pumps = [threading.Thread(target=pump, args=(s,)) for s in (proc.stdout, proc.stderr)]
    for p in pumps:
        p.start()
    rc = proc.wait()
    for p in pumps:
        p.join()
    return rc, sorted(lines), time.perf_counter() - t0


def _loaded(env: dict[str, str]) -> dict[str, Any]:
    """The endpoint's loaded count and settings, from ``mme endpoint status --json``."""
    out = subprocess.run([MME, "endpoint", "status", "--json"], env=env, capture_output=True,
                         text=True, check=False)
    try:
        doc = json.loads(out.stdout)
    except json.JSONDecodeError:
        return {"unreadable": out.stdout[-500:] + out.stderr[-500:]}
    metrics = doc.get("metrics") or doc
    return {k: metrics.get(k) for k in ("LoadedModelCount", "PeakLoadedModelCount",
                                        "MaxLoadedModels", "MemoryLimitBytes", "TritonMemoryPss")
            if k in metrics}


def measure(count: int, home: Path) -> dict[str, Any]:
    env = {**os.environ, "MME_HOME": str(home)}
    models = (home / "models").as_uri()
    fleet_file = home / "fleet.yaml"
    example_s = _run(["fleet", "example", "--count", str(count), "--out", models,
                      "--fleet-file", str(fleet_file)], env)
    build_s = _run(["fleet", "build", str(fleet_file)], env)
    _run(["endpoint", "start"], env)
    try:
        mem_before, load_before = _mem_available_mib(), os.getloadavg()
        rc, lines, deploy_s = _stamped(["fleet", "deploy", str(fleet_file), "--endpoint", "local-mme"], env)
        mem_after = _mem_available_mib()
        loaded = _loaded(env)
    finally:
        subprocess.run([MME, "endpoint", "stop"], env=env, check=False, capture_output=True)
    stamps = [0.0, *(t for t, _ in lines), deploy_s]
    progress = [(round(t, 1), text) for t, text in lines if "validated" in text]
    return {"count": count, "example_s": round(example_s, 1), "build_s": round(build_s, 1),
            "deploy_rc": rc, "deploy_s": round(deploy_s, 1),
            "lines": len(lines), "progress_lines": len(progress),
            "longest_silence_s": round(max(b - a for a, b in zip(stamps, stamps[1:], strict=False)), 1),
            "progress": progress[:40], "last_lines": [text for _, text in lines[-5:]],
            "endpoint_after": loaded,
            "mem_available_mib": {"before": round(mem_before), "after": round(mem_after)},
            "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fleet_first_deploy.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="first-deploy-") as tmp:
        doc = measure(args.count, Path(tmp))
    doc["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(doc, indent=2))
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
