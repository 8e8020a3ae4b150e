"""Benchmark pages, one per ``bench/results/*.json``, rendered at build time.

Why generated: the JSON files are what the benches wrote; a page copied from them by hand
goes stale the next time a bench runs. Each page says which script measured it (its
docstring's first paragraph), every number in the file, and the run's date, commit and
hardware where the file records them ("not recorded" where it does not).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gen_cli import prose

ROOT = Path(__file__).resolve().parents[2]
MAX_ROWS = 400
PROVENANCE = {"date": re.compile(r"(^|_)(date|timestamp|when|measured_at)($|_)"),
              "commit": re.compile(r"(^|_)(commit|git|revision)($|_)"),
              "hardware": re.compile(r"^(hardware|host|cpus|cpu_count|gpu|gpus|machine|platform)$|load_?av")}


@dataclass(frozen=True)
class BenchPage:
    """One results file as a page: its slug, the script that wrote it and the Markdown."""

    slug: str
    source: str
    script: str | None
    markdown: str


def flatten(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every leaf of a JSON document as (dotted path, value); a list of scalars stays one leaf."""
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in flatten(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return [row for i, v in enumerate(value) for row in flatten(v, f"{path}[{i}]")]
    return [(path, value)]


def script_for(stem: str, keys: list[str], root: Path = ROOT) -> Path | None:
    """The bench script that wrote ``stem.json``: the longest script name it starts with, else the
    script that names most of its top-level keys (at least half), else None."""
    scripts = sorted((root / "bench").glob("*.py"))
    prefixed = [s for s in scripts if stem == s.stem or stem.startswith(s.stem + "_")]
    if prefixed:
        return max(prefixed, key=lambda s: len(s.stem))
    scored = [(sum(f'"{k}"' in s.read_text() for k in keys), s) for s in scripts]
    best = max(scored, default=(0, None), key=lambda t: t[0])
    return best[1] if keys and best[0] * 2 >= len(keys) else None


def _purpose(script: Path | None) -> str:
    if script is None:
        return "The script that wrote this file is not recorded."
    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    first = doc.split("\n\n")[0]
    return f"Measured by `bench/{script.name}`: {prose(' '.join(first.split()))}"


def _provenance(rows: list[tuple[str, Any]]) -> list[str]:
    lines = []
    for what, pattern in PROVENANCE.items():
        found = [(p, v) for p, v in rows if pattern.search(p.rsplit(".", 1)[-1].split("[")[0].lower())]
        shown = "; ".join(f"`{p}` = {_value(v)}" for p, v in found[:6]) or "not recorded"
        more = f" (and {len(found) - 6} more)" if len(found) > 6 else ""
        lines.append(f"- **{what}**: {shown}{more}")
    return lines


def _value(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return prose(text).replace("|", "\\|").replace("\n", " ")


def load(path: Path) -> Any:
    """A results file: one JSON document, or JSON Lines (one record per line) as a list."""
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def render(path: Path, root: Path = ROOT) -> BenchPage:
    """One results file's page."""
    data = load(path)
    keys = list(data) if isinstance(data, dict) else []
    script = script_for(path.stem, keys, root)
    rows = flatten(data)
    lines = [f"# {path.stem}", "", f"Source: `bench/results/{path.name}`.", "", _purpose(script), "",
             "## Run", "", *_provenance(rows), "", "## Numbers", "", "| key | value |", "|---|---|"]
    lines += [f"| `{p or '(value)'}` | {_value(v)} |" for p, v in rows[:MAX_ROWS]]
    if len(rows) > MAX_ROWS:
        lines += ["", f"({len(rows) - MAX_ROWS} more values in the file.)"]
    return BenchPage(slug=path.stem, source=path.name, script=script.name if script else None,
                     markdown="\n".join(lines))


def pages(root: Path = ROOT) -> list[BenchPage]:
    return [render(p, root) for p in sorted((root / "bench" / "results").glob("*.json"))]


def index(found: list[BenchPage]) -> str:
    """The benchmarks index: one line per results file."""
    lines = ["# Benchmark results", "",
             "One page per `bench/results/*.json`, rendered from the file when the site is built. "
             "The write-up with context is [Measured on this machine](../measurements.md).", "",
             "| results | measured by |", "|---|---|"]
    lines += [f"| [{p.slug}]({p.slug}.md) | {f'`bench/{p.script}`' if p.script else 'not recorded'} |"
              for p in found]
    return "\n".join(lines)
