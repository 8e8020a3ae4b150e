"""What a task body needs from the Prefect run it is in: a logger, its run id, where cached
results go. Each works outside a run too (a task's ``.fn`` called in a test)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TypedDict

from prefect import get_run_logger
from prefect.context import TaskRunContext

from infra import paths
def run_logger(fallback: str = "mme.build") -> logging.Logger | logging.LoggerAdapter:
    """The run's logger (its lines show in the UI), else the ``fallback`` module logger."""
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - called outside a run (task.fn in tests)
        return logging.getLogger(fallback)


def run_id() -> str | None:
    """This task run's id: the nonce a new cache entry gets (see tasks.producers.cache.prefect_cache_key)."""
    ctx = TaskRunContext.get()
    return str(ctx.task_run.id) if ctx and ctx.task_run else None


def result_storage() -> Path:
    """Where the cached steps' Prefect results go: beside the cache entries they point into
    (``$MME_HOME/cache/prefect-results``), so they live and die with that cache."""
    return paths.home() / "cache" / "prefect-results"


class StepLimits(TypedDict, total=False):
    """Prefect task options a build step runs with (a TypedDict: it is spread into
    ``Task.with_options(**limits)``, so its keys are that method's keyword names)."""

    timeout_seconds: int


def step_limits() -> StepLimits:
    """Task options for the build's steps on this thread.

    Prefect enforces task timeouts with a signal on the main thread only; in a worker thread
    (a step inside build-ensemble on the thread pool) a timeout would merely fail a step after
    it finished. There the steps rely on their own limits (compile timeout_s, download
    timeouts, Triton's startup timeout) and Prefect's are left off."""
    return {} if threading.current_thread() is threading.main_thread() else {"timeout_seconds": 0}
