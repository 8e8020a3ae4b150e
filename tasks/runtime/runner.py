"""Which Prefect task runner a flow's tasks run on, chosen by a setting, not a code change.

``MME_TASK_RUNNER`` names it when the flow run starts: ``threads`` (default; at most
``MME_MAX_WORKERS`` tasks at once, default 2) or ``dask`` (``pip install prefect-dask``;
``MME_DASK_ADDRESS`` connects to an existing scheduler, else a local cluster of
``MME_MAX_WORKERS`` workers is started).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from types import CoroutineType
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeAlias, TypeVar

from prefect.futures import PrefectFuture, PrefectFutureList
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

if TYPE_CHECKING:  # annotations only, as prefect.task_runners itself does (prefect.tasks imports it)
    from prefect.client.schemas.objects import RunInput
    from prefect.tasks import Task

from infra.errors import UserError

P = ParamSpec("P")
R = TypeVar("R")

InnerRunner: TypeAlias = "TaskRunner[Any]"
"""The runner :func:`task_runner_from_env` picks: threads or Dask, whose future types differ
(Prefect's ``TaskRunner`` is invariant in them), so its future parameter is left open."""


class TaskRunnerConfigError(UserError, ValueError):
    """``MME_TASK_RUNNER`` / ``MME_MAX_WORKERS`` name something that cannot be used."""


TASK_RUNNERS = ("threads", "dask")


def max_workers_from_env(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get("MME_MAX_WORKERS", "").strip() or "2"
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise TaskRunnerConfigError(f"MME_MAX_WORKERS={raw!r}: expected a whole number >= 1")
    return n


def task_runner_from_env(env: Mapping[str, str] | None = None) -> InnerRunner:
    """The task runner ``MME_TASK_RUNNER`` names (``threads``, the default, or ``dask``)."""
    env = os.environ if env is None else env
    kind = (env.get("MME_TASK_RUNNER", "").strip() or "threads").lower()
    workers = max_workers_from_env(env)
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as e:
            raise TaskRunnerConfigError(
                f"MME_TASK_RUNNER=dask needs prefect-dask, which cannot be imported ({e}): "
                f"pip install prefect-dask (or unset MME_TASK_RUNNER to use threads)") from e
        address = env.get("MME_DASK_ADDRESS", "").strip()
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1})
    raise TaskRunnerConfigError(
        f"MME_TASK_RUNNER={env.get('MME_TASK_RUNNER')!r} is not a task runner: use one of "
        f"{', '.join(TASK_RUNNERS)} (threads is the default)")


class ConfiguredTaskRunner(TaskRunner[PrefectFuture[Any]]):
    """The flow's task runner: the one :func:`task_runner_from_env` names, chosen each time a
    flow run starts it, so a setting (not a code change) switches threads <-> Dask for the
    CLI, deployments and tests alike. ``build.with_options(task_runner=...)`` still overrides.
    """

    def __init__(self) -> None:
        self._inner: InnerRunner | None = None
        super().__init__()

    @property
    def name(self) -> str:
        return f"mme({self._inner.name})" if self._inner is not None else "mme"

    def duplicate(self) -> ConfiguredTaskRunner:
        return type(self)()

    def __enter__(self) -> Self:
        inner = task_runner_from_env()
        inner.__enter__()
        self._inner = inner
        try:
            super().__enter__()
        except BaseException:
            inner.__exit__(None, None, None)
            self._inner = None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._inner is not None:
                self._inner.__exit__(*exc)
        finally:
            self._inner = None
            super().__exit__(*exc)

    def _started_inner(self) -> InnerRunner:
        if self._inner is None:
            raise RuntimeError("The task runner must be started before submitting work.")
        return self._inner

    def submit(
        self,
        task: Task[P, R],
        parameters: dict[str, object],
        wait_for: Iterable[PrefectFuture[object]] | None = None,
        dependencies: dict[str, set[RunInput]] | None = None,
    ) -> PrefectFuture[R]:
        return self._started_inner().submit(task, parameters, wait_for, dependencies)

    def map(
        self,
        task: Task[P, R | CoroutineType[object, object, R]],
        parameters: dict[str, object],
        wait_for: Iterable[PrefectFuture[R]] | None = None,
    ) -> PrefectFutureList[PrefectFuture[R]]:
        return self._started_inner().map(task, parameters, wait_for)

    def cancel_all(self) -> None:
        if self._inner is not None and hasattr(self._inner, "cancel_all"):
            self._inner.cancel_all()

    def __getstate__(self) -> dict[str, object]:  # shipped to Dask workers inside the flow context
        return {k: v for k, v in self.__dict__.items() if k != "_inner"} | {"_inner": None}
