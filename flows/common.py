"""Shared Prefect plumbing: which failures are retried, and run artifacts."""

from __future__ import annotations

from typing import Any

# Only failures that a second try can fix are retried; a wrong spec, a failed export check
# or a failed verification fails at once (retrying would hide nothing and cost minutes).
TRANSIENT: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
try:
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import EndpointConnectionError

    TRANSIENT += (BotoConnectionError, EndpointConnectionError)
except ImportError:  # pragma: no cover
    pass


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised ``from`` (cycle-safe)."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not seen for seen in chain):
        chain.append(cur)
        cur = cur.__cause__
    return chain


def is_transient(exc: BaseException | None) -> bool:
    """True when a second try may succeed. The explicit cause chain counts: our wrappers
    (``StoreError`` around a botocore ``EndpointConnectionError``, for one) keep the transient
    cause as ``__cause__``, and a wrapped connection failure is as worth retrying as a bare one."""
    if exc is None:
        return False
    from infra.triton_server import TritonStartError
    from tasks.compile import CompileTimeout

    chain = _causes(exc)
    if any(isinstance(e, CompileTimeout) for e in chain):  # a compile that timed out will again
        return False
    return any(isinstance(e, TRANSIENT + (TritonStartError,)) for e in chain)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the failure looks transient."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we classify, not handle
        return is_transient(exc)
    return False


def short(sha: str) -> str:
    return sha[:12]


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


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
