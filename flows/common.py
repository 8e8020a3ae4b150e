"""Shared Prefect plumbing: which failures are retried, and run artifacts."""

from __future__ import annotations

# The retry policy lives beside the tasks that declare their retries (tasks/ imports nothing
# from flows/); re-exported here for the flows and the CLI.
from tasks.report import human_bytes, short  # noqa: F401 - formatting shared with tasks/
from tasks.retry import TRANSIENT, is_transient, retry_transient  # noqa: F401


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


def endpoint_lock(endpoint: str):
    """``with endpoint_lock(name):`` - at most one deploy or retire touches an endpoint at once;
    a second one waits for the first to finish."""
    from prefect.concurrency.sync import concurrency

    return concurrency(ensure_endpoint_limit(endpoint), occupy=1, strict=True)
