"""What a fleet build leaves in Prefect, under keys scoped by fleet and target (two fleets'
runs never overwrite each other's latest artifact): the ``fleet-variants-<fleet>-<target>``
table (every variant, failed ones first: status, sha256, size, how it was checked, cached or
not, the whole reason when it failed), ``fleet-failures-<fleet>-<target>`` (the failed ones
only), the ``fleet-report-<fleet>-<target>`` markdown (counts, failures by variant) and the
``fleet-progress-<fleet>-<target>`` bar. Descriptions carry the counts ("97 ok, 3 failed"), so
the artifact list says how a run went without opening one.

A run with failed variants ends in a ``Failed`` state with a one-line message
(:func:`failure_state`), not a raised exception: "3 variants failed" is an expected outcome,
and a traceback in the UI, the worker's log or the CLI would read like a bug."""

from __future__ import annotations

import logging
import re
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
from prefect.states import Failed, State

from ensembles.spec import Target
from infra.errors import TransientError, UserError
from tasks.fleet.build import VariantOutcome
from tasks.runtime.text import human_bytes, short


class ExpectedFailure(UserError, RuntimeError):
    """A run that ended Failed on purpose, as reported (some variants failed, the others went
    on): what a worker's engine says of it is one line, not a traceback
    (:func:`one_line_expected_failures`)."""


class FleetBuildFailed(ExpectedFailure):
    """Some variants failed; the others were built (and published when asked)."""


class FleetPublishFailed(TransientError, RuntimeError):
    """Some objects could not be uploaded (after retries); a new run uploads only those."""


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key from ``parts``: Prefect accepts lowercase letters, digits and
    dashes only, so anything else (``_``, ``.``, capitals) becomes a dash."""
    key = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower())
    return re.sub(r"-{2,}", "-", key).strip("-")


def _failed_first(o: VariantOutcome) -> tuple[bool, str]:
    return o.status != "failed", o.name


def variant_rows(outcomes: Sequence[VariantOutcome]) -> list[dict[str, object]]:
    """Every variant, the failed ones first (a person looks for them), each reason whole."""
    return [{"variant": o.name, "status": o.status, "reason": o.reason or "",
             "sha256": short(o.sha256 or ""), "size": human_bytes(o.bytes) if o.bytes else "",
             "checked_by": o.checked_by or "", "validation": o.validation or "",
             "cached": o.status == "unchanged", **{f"label.{k}": v for k, v in o.labels.items()}}
            for o in sorted(outcomes, key=_failed_first)]


def failure_rows(outcomes: Sequence[VariantOutcome]) -> list[dict[str, object]]:
    """The failed variants only: name, reason, labels."""
    return [{"variant": o.name, "reason": o.reason or "",
             **{f"label.{k}": v for k, v in o.labels.items()}}
            for o in sorted(outcomes, key=lambda o: o.name) if o.status == "failed"]


def counts(outcomes: Sequence[VariantOutcome]) -> dict[str, int]:
    c = Counter(o.status for o in outcomes)
    return {s: c.get(s, 0) for s in ("built", "unchanged", "failed", "skipped")}


def counts_line(outcomes: Sequence[VariantOutcome]) -> str:
    """``"97 ok, 3 failed"`` (ok: built or unchanged), plus the skipped ones when any."""
    n = counts(outcomes)
    line = f"{n['built'] + n['unchanged']} ok, {n['failed']} failed"
    return line + (f", {n['skipped']} not asked for" if n["skipped"] else "")


def fleet_markdown(fleet: str, target: Target, outcomes: Sequence[VariantOutcome],
                   extra: Sequence[str] = ()) -> str:
    """The report: the counts, the failed variants (first: a person looks for them, a fused
    fleet's tenants as a separate fleet's variants), then the rest; one paragraph per fact
    (blank lines between them: a single newline renders as one run-on paragraph in one UI and
    as separate lines in another)."""
    n = counts(outcomes)
    blocks = [f"# Fleet `{fleet}` for {target}",
              f"{len(outcomes)} variants: {n['built']} built, {n['unchanged']} unchanged, "
              f"{n['failed']} failed, {n['skipped']} not asked for in this run."]
    failed = sorted((o for o in outcomes if o.status == "failed"), key=lambda o: o.name)
    if failed:
        blocks += ["## Failed", "\n".join(f"- `{o.name}`: {o.reason}" for o in failed), "## Details"]
    blocks += extra
    checked = Counter(o.checked_by for o in outcomes if o.status == "built")
    if checked:
        blocks.append("Built variants checked by: " +
                      ", ".join(f"{k} {v}" for k, v in sorted(checked.items(), key=str)) + ".")
    return "\n\n".join(blocks) + "\n"


def report_fleet(fleet: str, target: Target, outcomes: Sequence[VariantOutcome],
                 extra: Sequence[str] = ()) -> None:
    said = counts_line(outcomes)
    create_table_artifact(key=artifact_key("fleet-variants", fleet, target), table=variant_rows(outcomes),
                          description=f"Fleet {fleet} for {target}, every variant: {said}")
    failures = failure_rows(outcomes)
    if failures:
        create_table_artifact(key=artifact_key("fleet-failures", fleet, target), table=failures,
                              description=f"Fleet {fleet} for {target}, failed variants: {said}")
    create_markdown_artifact(key=artifact_key("fleet-report", fleet, target),
                             markdown=fleet_markdown(fleet, target, outcomes, extra),
                             description=f"Fleet {fleet} build for {target}: {said}")


def start_fleet_progress(fleet: str, target: Target, total: int) -> UUID:
    return cast(UUID, create_progress_artifact(
        progress=0.0, key=artifact_key("fleet-progress", fleet, target),
        description=f"Variants of {fleet} for {target} to build: {total}"))


def advance(progress: UUID, done: int, total: int) -> None:
    update_progress_artifact(progress, 100.0 * done / max(1, total))


def failure_message(fleet: str, outcomes: Sequence[VariantOutcome]) -> str | None:
    """One line naming the failed variants (the first five), or None when none failed."""
    failed = [o for o in outcomes if o.status == "failed"]
    if not failed:
        return None
    shown = "; ".join(f"{o.name}: {o.reason}" for o in failed[:5])
    more = f" (and {len(failed) - 5} more, see the fleet-report artifact)" if len(failed) > 5 else ""
    return (f"fleet {fleet!r}: {len(failed)} of {len(outcomes)} variants failed: "
            f"{shown}{more}").replace("\n", " ")


def failure_state(fleet: str, outcomes: Sequence[VariantOutcome]) -> State | None:
    """The run's end when variants failed: ``Failed`` with the one-line message, its data the
    :class:`FleetBuildFailed` that calling the flow raises (the CLI prints it as one line);
    None when none failed. Prefect's engine, run by a worker, then logs that exception with its
    traceback (:func:`one_line_expected_failures` makes it one line)."""
    message = failure_message(fleet, outcomes)
    if message is None:
        return None
    one_line_expected_failures()
    return Failed(message=message, data=FleetBuildFailed(message))


class _ExpectedFailureLine(logging.Filter):
    """Says an :class:`ExpectedFailure` a record carries as one line, without its traceback.

    Why: a flow run started by a worker (``python -m prefect.engine``) asks the engine for the
    run's result, which raises what a Failed end holds; the engine then logs it with its
    traceback twice ("Engine execution exited with unexpected exception" in the run's logs,
    "Execution of flow run ... exited with unexpected exception" in the worker's). For "3
    variants failed" -- an expected outcome, already the state's one-line message -- a
    traceback reads like a bug. Every other exception keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ExpectedFailure):
            record.msg, record.args = "%s (the run ended Failed, as reported; not a crash): %s", (
                record.getMessage(), str(exc))
            record.exc_info, record.exc_text = None, None
        return True


_ONE_LINE = _ExpectedFailureLine()
#: The loggers the engine says a run's raised end on: the run's own, and the engine's.
ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.engine")


def one_line_expected_failures() -> None:
    """Install :class:`_ExpectedFailureLine` on the engine's loggers (once per process)."""
    for name in ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if _ONE_LINE not in logger.filters:
            logger.addFilter(_ONE_LINE)
