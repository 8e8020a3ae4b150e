"""Which SageMaker runtime answers an invoke retries, and for how long: one policy, one place.

Why here: the fleet :class:`~tasks.fleet.router.Router` and deploy validation (``tasks/deploy/validate.py``,
which ``mme deploy`` and ``mme fleet deploy`` both use) must agree on what is worth a second
invoke, and ``infra/`` is the layer both may import (``infra/aws/clients.py`` makes the client whose own
retries this replaces).

Retried (a second invoke can succeed): 429 ``ModelNotReadyException`` (a cold load past
SageMaker's 60 s wait; SageMaker goes on loading up to 360 s and says to retry), throttling
(``ThrottlingException`` and botocore's other throttle codes, any other 429), and the transient
5xx: 500 ``InternalFailure``, 502, 503 ``ServiceUnavailable``, 504. Not retried: a 4xx such as
``ValidationError`` (a bad request, or a TargetModel with no object behind it), 424
``ModelError`` (the model itself failed: it will fail again), 507 (no memory to load it), 530
``InternalDependencyException`` (AWS says to contact support), and anything that is not an
answer (a read timeout, a refused connection: the caller decides).

Why not botocore's ``standard`` retry mode (``infra/aws/clients.py`` keeps botocore at one attempt per
call): it does not retry ``ModelNotReadyException`` (a modeled error of ``InvokeEndpoint`` with
no retryable trait, so its 429 check skips it), it has no total time budget (only a count, with
at most 20 s between tries), its retry quota can stop retrying under load, and it would also
resend an invoke after a read timeout. ``tests/test_invoke_retry.py`` checks the first point
against a stub endpoint.

Backoff: ``first_s``, doubling, at most ``max_s`` between attempts, each wait shortened by a
random share up to ``jitter`` (so many clients that failed together do not retry together),
never sleeping past ``limit_s`` from the first attempt (SageMaker's 360 s model-load limit by
default: a model still loading after that will not load) and never more than ``max_attempts``
attempts. ``sleep``, ``clock`` and ``random`` are injectable: tests count attempts and waits.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from infra.aws.errors import AwsCallError, aws_message, error_code
from infra.errors import InvalidInput

T = TypeVar("T")

SAGEMAKER_LOAD_LIMIT_S = 360.0
"""How long SageMaker keeps loading a model on an MME before it gives up (its documented limit):
the default total budget of :class:`InvokeRetry`."""

THROTTLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "RequestThrottled", "SlowDown"})
"""Throttle error codes (botocore's list, less those no runtime API sends)."""

RETRIED_CODES = frozenset({"ModelNotReadyException", "InternalFailure", "ServiceUnavailable",
                           *THROTTLE_CODES})
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
NEVER_RETRIED_CODES = frozenset({"ValidationError", "ModelError", "InternalDependencyException"})
"""A model's own failure or a bad request, whatever status it came with: never retried."""


def is_model_not_ready(exc: BaseException) -> bool:
    """A 429 ``ModelNotReadyException``: the model is still loading."""
    return isinstance(exc, ClientError) and error_code(exc) == "ModelNotReadyException"


def is_retryable(exc: BaseException) -> bool:
    """True for the answers a second invoke can fix (see the module docstring)."""
    if not isinstance(exc, ClientError):
        return False
    code = error_code(exc)
    if code in NEVER_RETRIED_CODES:
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in RETRIED_CODES or status in RETRIED_STATUSES


@dataclass(frozen=True)
class InvokeRetry:
    """How an invoke is retried: at most ``max_attempts`` attempts, no wait past ``limit_s``
    from the first attempt (the total budget), backoff ``first_s`` doubling up to ``max_s``,
    each wait cut by up to ``jitter`` of itself at random."""

    limit_s: float = SAGEMAKER_LOAD_LIMIT_S
    first_s: float = 2.0
    max_s: float = 30.0
    max_attempts: int = 10
    jitter: float = 0.5
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)
    random: Callable[[], float] = field(default=_random.random, compare=False)

    def __post_init__(self) -> None:
        """Refuse a policy that could not retry as said (the message names the setting)."""
        if self.max_attempts < 1:
            raise InvalidInput(f"invoke retry: max_attempts {self.max_attempts} must be >= 1")
        if not (self.limit_s > 0 and 0 < self.first_s <= self.max_s):
            raise InvalidInput(f"invoke retry: need limit_s > 0 and 0 < first_s <= max_s "
                               f"(got {self.limit_s}, {self.first_s}, {self.max_s})")
        if not 0 <= self.jitter <= 1:
            raise InvalidInput(f"invoke retry: jitter {self.jitter} must be within 0..1")

    def delay(self, attempt: int, elapsed_s: float) -> float:
        """The wait after failed attempt ``attempt`` (1-based), ``elapsed_s`` into the budget."""
        base = min(self.first_s * 2 ** (attempt - 1), self.max_s)
        return max(0.0, min(base * (1 - self.jitter * self.random()), self.limit_s - elapsed_s))


DEFAULT_RETRY = InvokeRetry()
"""The policy the Router and deploy validation use unless given another (immutable)."""


class RetriesExhausted(AwsCallError):
    """Every attempt was answered with a retryable error: the last one, and how many were made.

    Not a ``TransientError``: the budget is the retry bound, a task retry on top would multiply
    it. The CLI exits 1 (AWS failed, throttled or the model did not load; not the user's)."""

    def __init__(self, operation: str, resource: str | None, code: str, message: str,
                 attempts: int, elapsed_s: float) -> None:
        self.attempts, self.elapsed_s = attempts, elapsed_s
        super().__init__(operation, resource, code, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.operation, self.resource, self.code, self.message,
                             self.attempts, self.elapsed_s))


def call_with_retries(call: Callable[[], T], policy: InvokeRetry, *, operation: str,
                      resource: str | None = None) -> tuple[T, int]:
    """``(call(), attempts)``, retrying what :func:`is_retryable` says per ``policy``.

    An error that is not retryable is raised as it came (a note says after how many attempts);
    running out of attempts or budget raises :class:`RetriesExhausted` naming ``operation`` and
    ``resource``, the number of attempts, the time spent and the last answer."""
    start, attempt = policy.clock(), 0
    while True:
        attempt += 1
        try:
            return call(), attempt
        except ClientError as exc:
            if not is_retryable(exc):
                if attempt > 1:
                    exc.add_note(f"after {attempt} attempts")
                raise
            elapsed = policy.clock() - start
            if attempt >= policy.max_attempts or elapsed >= policy.limit_s:
                raise RetriesExhausted(
                    operation, resource, error_code(exc),
                    f"{aws_message(exc)} (gave up after {attempt} attempts / {elapsed:.0f} s; "
                    f"retry limit {policy.max_attempts} attempts / {policy.limit_s:.0f} s)",
                    attempt, elapsed) from exc
        policy.sleep(policy.delay(attempt, elapsed))
