"""What a build leaves in Prefect for people to read: the ``build-summary`` table, the
``build-report`` markdown (hashes, sizes, URIs, validation, which steps were cached, timings),
a link per built tarball and the ``build-progress`` bar. Text only; no build logic here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import cast
from uuid import UUID

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from ensembles.spec import Target
from infra.records.manifest import Manifest, StepRecord
from tasks.runtime.text import human_bytes, short

# one ensemble's outcome: its name, its manifest when it was built, else the error it failed with
Outcome = tuple[str, Manifest | None, BaseException | None]


def slug(text: str) -> str:
    """``text`` as lower-case letters, digits and dashes (for asset and artifact keys)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def link_artifact_key(ensemble: str, target: str) -> str:
    """The key of a tarball's link artifact: one per ensemble and target, so it keeps history.
    ``target`` is a ``str``: it is what a manifest records (empty for version-1 files)."""
    return f"artifact-{slug(ensemble)}-{slug(target)}"


def cached_text(steps: Mapping[str, StepRecord]) -> str:
    """``all 5 cached``, ``2/5 cached (reference, verify)`` or ``-`` (nothing cacheable)."""
    cacheable = {k: v for k, v in steps.items() if v.cached is not None and not v.deferred}
    hits = [k for k, v in cacheable.items() if v.cached]
    if not cacheable:
        return "-"
    if len(hits) == len(cacheable):
        return f"all {len(hits)} cached"
    return f"{len(hits)}/{len(cacheable)} cached" + (f" ({', '.join(hits)})" if hits else "")


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _steps_section(name: str, m: Manifest) -> list[str]:
    lines = ["", f"## {name}", "", f"- sha256: `{m.sha256}`", f"- URI: {m.artifact}",
             "", "| step | cached | seconds |", "|---|---|---|"]
    for step, info in m.steps.items():
        cached = ("deferred" if info.deferred else
                  "yes" if info.cached else "no" if info.cached is not None else "")
        lines.append(f"| {step} | {cached} | {info.seconds:.2f} |")
    return lines


def build_report(outcomes: Sequence[Outcome], target: Target) -> str:
    """The ``build-report`` markdown: one row per ensemble, then each one's steps."""
    lines = [f"# Build for `{target}`", "",
             "| ensemble | sha256 | size | artifact | validation | cached | seconds |",
             "|---|---|---|---|---|---|---|"]
    for name, m, err in outcomes:
        if m is None:
            lines.append(f"| {name} | - | - | - | **FAILED**: {type(err).__name__}: "
                         f"{_md(str(err))[:300]} | - | - |")
            continue
        lines.append(f"| {m.ensemble} | `{short(m.sha256)}` | {human_bytes(m.bytes)} | "
                     f"[{m.target_model}]({m.artifact}) | "
                     f"{m.validation.summary()} | {cached_text(m.steps)} | "
                     f"{m.build_seconds} |")
    for name, m, _ in outcomes:
        if m is not None:
            lines += _steps_section(name, m)
    return "\n".join(lines) + "\n"


def summary_rows(manifests: Sequence[Manifest]) -> list[dict[str, object]]:
    """The ``build-summary`` table's rows."""
    return [{"ensemble": m.ensemble, "target": m.target, "sha256": short(m.sha256),
             "size": human_bytes(m.bytes), "uri": m.artifact,
             "validation": m.validation.summary(),
             "cached": cached_text(m.steps), "seconds": m.build_seconds}
            for m in manifests]


def report_build(outcomes: Sequence[Outcome], ensembles: Sequence[str], target: Target) -> None:
    """The run's ``build-summary`` table (when something was built) and ``build-report``."""
    manifests = [m for _, m, _ in outcomes if m is not None]
    if manifests:
        create_table_artifact(key="build-summary", table=summary_rows(manifests),
                              description=f"Ensembles built for {target}")
    create_markdown_artifact(key="build-report", markdown=build_report(outcomes, target),
                             description=f"Build of {', '.join(ensembles)} for {target}")


def link_tarball(m: Manifest) -> None:
    """A link artifact to the published tarball, keyed by ensemble and target."""
    create_link_artifact(
        key=link_artifact_key(m.ensemble, m.target or ""), link=m.artifact,
        link_text=f"{m.target_model} ({short(m.sha256)})",
        description=f"{m.ensemble} for {m.target}: {human_bytes(m.bytes)}, "
                    f"{m.validation.summary()}")


def start_progress(ensembles: Sequence[str], target: Target) -> UUID:
    """The ``build-progress`` bar at 0 %; :func:`advance_progress` moves it."""
    return cast(UUID, create_progress_artifact(  # sync here (called in a sync flow)
        progress=0.0, key="build-progress",
        description=f"Ensembles built of {len(ensembles)} for {target}: {', '.join(ensembles)}"))


def advance_progress(progress: UUID, done: int, total: int) -> None:
    update_progress_artifact(progress, 100.0 * done / total)
