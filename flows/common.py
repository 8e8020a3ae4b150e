"""Shared Prefect plumbing: which failures are retried, the endpoint locks, and how a fleet's
runs are named and tagged (so the UI's run list says which fleet and target each one is)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

# The retry policy lives beside the tasks that declare their retries (tasks/ imports nothing
# from flows/); re-exported here for the flows and the CLI.
from tasks.runtime.retry import TRANSIENT, is_transient, retry_transient  # noqa: F401


def endpoint_lock_name(endpoint: str) -> str:
    return f"endpoint-{endpoint}"


def ensure_endpoint_limit(endpoint: str) -> str:
    """Create (once) the global concurrency limit of 1 that serializes deploys of an endpoint.

    Prefect's ``concurrency()`` does not limit anything when the named limit does not exist,
    so it is created here before use.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = endpoint_lock_name(endpoint)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1, active=True))
            except ObjectAlreadyExists:  # another deploy created it first
                pass
    return name


#: Seconds a Prefect concurrency lease lives without renewal (the holder renews it while it
#: runs): how long a real Prefect server keeps the slot of a deploy that was killed.
ENDPOINT_LEASE_S = 60.0


@contextlib.contextmanager
def endpoint_lock(endpoint: str) -> Iterator[None]:
    """``with endpoint_lock(name):`` - at most one deploy or retire touches an endpoint at once;
    a second one waits for the first to finish.

    Two locks, because a killed holder must never block the next run forever:

    * an ``flock`` on ``$MME_HOME/locks/endpoint-<name>.lock``: the kernel drops it the moment
      its holder dies (``kill -9`` included). Serializes runs on this machine.
    * with a real Prefect server (``PREFECT_API_URL``), also the server's global concurrency
      limit, so that workers on other machines wait too. Its slot is held under a lease of
      ``ENDPOINT_LEASE_S`` that the holder renews; the server's repossessor frees a dead
      holder's slot when the lease runs out. Not in ephemeral mode: each command's temporary
      server keeps leases in memory, so a killed run's slot would stay taken in the database
      for good (measured: every later deploy of that endpoint waited forever).
    """
    from prefect.concurrency.sync import concurrency
    from prefect.settings import PREFECT_API_URL

    from infra import paths
    from infra.store.objects import file_lock

    with file_lock(paths.home() / "locks" / f"{endpoint_lock_name(endpoint)}.lock"):
        if not PREFECT_API_URL.value():
            yield
            return
        with concurrency(ensure_endpoint_limit(endpoint), occupy=1, strict=True,
                         lease_duration=ENDPOINT_LEASE_S):
            yield


@contextlib.contextmanager
def endpoint_locks(endpoints: Sequence[str]) -> Iterator[None]:
    """Hold every endpoint's deploy lock (in sorted order: no two runs wait on each other)."""
    with contextlib.ExitStack() as locks:
        for endpoint in sorted(set(endpoints)):
            locks.enter_context(endpoint_lock(endpoint))
        yield


def fleet_identity(fleet: str) -> tuple[str, str | None]:
    """(the fleet's name, its target) from its fleet file, read only for naming the run: a
    fleet that does not load is named as given (the run itself then says what is wrong)."""
    from ensembles.fleet_spec import load_fleet

    try:
        spec = load_fleet(fleet)
    except Exception:  # noqa: BLE001 - naming must not fail a run; resolve-fleet reports it
        return fleet, None
    return spec.name, spec.target


def fleet_run_name() -> str:
    """A ``flow_run_name`` callable: ``<flow>: <fleet> for <target>`` from the run's
    ``fleet`` parameter (a random two-word name says nothing in a list of nightly runs)."""
    from prefect.runtime import flow_run

    name, target = fleet_identity(str(flow_run.parameters.get("fleet", "?")))
    return f"{flow_run.flow_name}: {name}" + (f" for {target}" if target else "")


def fleet_tags(fleet: str) -> list[str]:
    """``fleet:<name>`` and ``target:<target>``: what the UI's tag filter finds a fleet's runs by."""
    name, target = fleet_identity(fleet)
    return [f"fleet:{name}", *([f"target:{target}"] if target else [])]


@contextlib.contextmanager
def tagged_run(labels: Sequence[str]) -> Iterator[None]:
    """Add ``labels`` to the current flow run's tags (a flow's tags are fixed at decoration, so
    the run is updated through the API) and to every task run started inside."""
    from prefect import get_client, tags
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is not None and ctx.flow_run is not None:
        run = ctx.flow_run
        with get_client(sync_client=True) as client:
            client.update_flow_run(run.id, tags=sorted({*run.tags, *labels}))
    with tags(*labels):
        yield
