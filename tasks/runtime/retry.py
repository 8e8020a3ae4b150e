"""Which failures a task retries: only those a second try can fix.

A wrong spec, a failed export check or a failed verification fails at once (retrying would
hide nothing and cost minutes); a dropped connection or a Triton that did not come up is tried
again. It decides on the project's error tree only: foreign errors are translated where they
enter ``infra/`` (botocore's into :mod:`infra.aws.errors` and the S3 store's errors), and an
AWS failure botocore already retried arrives as :class:`~infra.errors.RetriedOut`, which is
not retried again (one layer per kind of failure: ``docs/retries.md``). Every ``@task`` with
``retries`` in ``tasks/`` names :func:`retry_transient` as its ``retry_condition_fn``
(tests/test_retries.py checks that). It lives in ``tasks/`` because the
tasks declare their retries here, and ``tasks/`` imports nothing from ``flows/``.
"""

from __future__ import annotations

from typing import Any

from infra.errors import MMEError, RetriedOut, TransientError

# The standard library's own transport errors (a socket to the local endpoint or to Triton):
# no client library under them retries, so the task retry is their one layer. The project's
# own transient errors derive from infra.errors.TransientError.
TRANSIENT: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised ``from`` (cycle-safe)."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not seen for seen in chain):
        chain.append(cur)
        cur = cur.__cause__
    return chain


def is_transient(exc: BaseException | None) -> bool:
    """True when a second try may succeed: ``exc``, or an exception it was raised ``from``, is a
    :class:`~infra.errors.TransientError` (the project's own: Triton's port race, a dropped
    download) or one of the standard library's connection errors (:data:`TRANSIENT`).
    The cause chain counts because wrappers keep the transient cause as ``__cause__``, and a
    wrapped connection failure is as worth retrying as a bare one.

    A project error that is *not* a ``TransientError`` but keeps a transient-looking built-in
    base for its callers (``CompileTimeout`` is a ``TimeoutError``) has said it is permanent:
    anywhere in the chain it vetoes the retry (a compile that timed out will time out again);
    so does a :class:`~infra.errors.RetriedOut` (its retries were made by its own layer).
    """
    if exc is None:
        return False
    chain = _causes(exc)
    if any(isinstance(e, RetriedOut) or (isinstance(e, MMEError) and not isinstance(e, TransientError)
                                         and isinstance(e, TRANSIENT)) for e in chain):
        return False
    return any(isinstance(e, (TransientError, *TRANSIENT)) for e in chain)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the failure looks transient."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we classify, not handle
        return is_transient(exc)
    return False
