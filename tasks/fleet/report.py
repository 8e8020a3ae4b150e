"""What a fleet build leaves in Prefect: the ``fleet-variants`` table (every variant: status,
sha256, size, how it was checked, cached or not, the reason when it failed), the
``fleet-report`` markdown (counts, failures by variant) and the ``fleet-progress`` bar."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import cast
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from ensembles.spec import Target
from infra.errors import TransientError, UserError
from tasks.fleet.build import VariantOutcome
from tasks.runtime.text import human_bytes, short


class FleetBuildFailed(UserError, RuntimeError):
    """Some variants failed; the others were built (and published when asked)."""


class FleetPublishFailed(TransientError, RuntimeError):
    """Some objects could not be uploaded (after retries); a new run uploads only those."""


def variant_rows(outcomes: Sequence[VariantOutcome]) -> list[dict[str, object]]:
    return [{"variant": o.name, "status": o.status, "sha256": short(o.sha256 or ""),
             "size": human_bytes(o.bytes) if o.bytes else "", "checked_by": o.checked_by or "",
             "validation": o.validation or "", "cached": o.status == "unchanged",
             "reason": (o.reason or "")[:300], **{f"label.{k}": v for k, v in o.labels.items()}}
            for o in sorted(outcomes, key=lambda o: o.name)]


def counts(outcomes: Sequence[VariantOutcome]) -> dict[str, int]:
    c = Counter(o.status for o in outcomes)
    return {s: c.get(s, 0) for s in ("built", "unchanged", "failed", "skipped")}


def fleet_markdown(fleet: str, target: Target, outcomes: Sequence[VariantOutcome],
                   extra: Sequence[str] = ()) -> str:
    n = counts(outcomes)
    lines = [f"# Fleet `{fleet}` for {target}", "",
             f"{len(outcomes)} variants: {n['built']} built, {n['unchanged']} unchanged, "
             f"{n['failed']} failed, {n['skipped']} not asked for in this run.", "", *extra]
    checked = Counter(o.checked_by for o in outcomes if o.status == "built")
    if checked:
        lines += ["", "Built variants checked by: " +
                  ", ".join(f"{k} {v}" for k, v in sorted(checked.items(), key=str))]
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        lines += ["", "## Failed", ""] + [f"- `{o.name}`: {o.reason}" for o in failed]
    return "\n".join(lines) + "\n"


def report_fleet(fleet: str, target: Target, outcomes: Sequence[VariantOutcome],
                 extra: Sequence[str] = ()) -> None:
    create_table_artifact(key="fleet-variants", table=variant_rows(outcomes),
                          description=f"Fleet {fleet}: every variant")
    create_markdown_artifact(key="fleet-report", markdown=fleet_markdown(fleet, target, outcomes, extra),
                             description=f"Fleet {fleet} build for {target}")


def start_fleet_progress(fleet: str, total: int) -> UUID:
    return cast(UUID, create_progress_artifact(
        progress=0.0, key="fleet-progress", description=f"Variants of {fleet} to build: {total}"))


def advance(progress: UUID, done: int, total: int) -> None:
    update_progress_artifact(progress, 100.0 * done / max(1, total))


def raise_failures(fleet: str, outcomes: Sequence[VariantOutcome]) -> None:
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        shown = "; ".join(f"{o.name}: {o.reason}" for o in failed[:5])
        more = f" (and {len(failed) - 5} more, see the fleet-report artifact)" if len(failed) > 5 else ""
        raise FleetBuildFailed(f"fleet {fleet!r}: {len(failed)} of {len(outcomes)} variants "
                               f"failed: {shown}{more}")
