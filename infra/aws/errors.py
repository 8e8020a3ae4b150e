"""AWS errors as one line: the call, the resource it was about, and AWS's message.

Why: a botocore ``ClientError`` that escapes a flow reaches the user as Prefect's logged
traceback plus Python's, and when AWS (or a proxy in front of it) answered with an HTML page,
the message is a screenful of markup. What the user needs is which call failed, on what
(endpoint, ensemble, TargetModel, S3 object), and AWS's own words.

Exit codes (the CLI): :func:`exit_code` is 2 when the error is the caller's to fix (denied
access, bad credentials, a request AWS calls invalid, an account quota), 1 otherwise (AWS
failed, throttled, or was unreachable).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from infra.errors import MMEError, RetriedOut, UserError

# Error codes that mean "fix your request, role or account", not "AWS had a problem".
USER_ERROR_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthFailure",
    "UnrecognizedClientException", "InvalidClientTokenId", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException", "InvalidToken",
    "ValidationException", "ValidationError", "InvalidParameterValue", "InvalidParameterException",
    "MissingParameter", "ResourceLimitExceeded", "ResourceInUse", "NoSuchBucket",
    "InvalidBucketName", "AllAccessDisabled",
})

_TAG = re.compile(r"<[^>]+>")
_SCRIPT = re.compile(r"<(script|style)\b.*?</\1>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")


def strip_html(text: str) -> str:
    """Text without tags (and without script/style bodies), entities decoded, one line."""
    if "<" in text and ">" in text:
        text = _TAG.sub(" ", _SCRIPT.sub(" ", text))
    return _SPACE.sub(" ", html.unescape(text)).strip()


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or
                   exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "Unknown")
    return type(exc).__name__


def aws_message(exc: BaseException) -> str:
    """AWS's own message (HTML stripped), or the raw body when AWS gave no message."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        message = str(err.get("Message") or "")
        if not message:  # botocore puts a non-XML/JSON body (e.g. an HTML page) nowhere else
            body = exc.response.get("Body") or exc.response.get("body") or ""
            message = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
        return strip_html(message) or "(no message)"
    return strip_html(str(exc))


def operation_of(exc: BaseException) -> str | None:
    name = getattr(exc, "operation_name", None)
    return str(name) if name else None


class AwsCallError(MMEError, RuntimeError):
    """One AWS call failed: ``str()`` is the one line the user sees.

    ``operation`` is ``service.operation`` (``sagemaker.create_endpoint``), ``resource`` what
    the call was about (``endpoint my-mme``, ``ensemble x (TargetModel x.tar.gz)``).
    """

    def __init__(self, operation: str, resource: str | None, code: str, message: str) -> None:
        self.operation, self.resource, self.code, self.message = operation, resource, code, message
        about = f" for {resource}" if resource else ""
        super().__init__(f"{operation} failed{about}: {code}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:  # Prefect may pickle a failed run's exception
        return (type(self), (self.operation, self.resource, self.code, self.message))

    @property
    def is_user_error(self) -> bool:
        return is_user_code(self.code)


class AwsRefused(AwsCallError, UserError):
    """An AWS call refused for the caller's reason (access, credentials, an invalid request, a
    quota): the user's to fix, never retried (CLI: exit 2)."""


class AwsUnavailable(AwsCallError, RetriedOut):
    """An AWS call that failed for AWS's reason (throttled, a 5xx, unreachable) after botocore's
    standard mode retried it (:data:`infra.aws.clients.AWS_ATTEMPTS` attempts): the one retry
    layer for it is spent, so no task retries it again (docs/retries.md)."""


def describe(exc: BaseException, *, operation: str | None = None, resource: str | None = None,
             service: str | None = None) -> AwsCallError:
    """``exc`` (a ClientError or other botocore error) translated into the project's tree: an
    :class:`AwsRefused` when it is the caller's to fix, an :class:`AwsUnavailable` when botocore
    retried it (throttling, 5xx, connection), else a plain :class:`AwsCallError`."""
    if isinstance(exc, AwsCallError):
        return exc
    op = operation or operation_of(exc) or "AWS call"
    if service and "." not in op:
        op = f"{service}.{op}"
    code = error_code(exc)
    kind = AwsRefused if is_user_code(code) else AwsUnavailable if _retried(exc, code) else AwsCallError
    return kind(op, resource, code, aws_message(exc))


_RETRIED_CODES = frozenset({"Throttling", "ThrottlingException", "ThrottledException",
                            "RequestThrottled", "TooManyRequestsException", "SlowDown",
                            "RequestLimitExceeded", "ServiceUnavailable", "InternalFailure",
                            "InternalError", "InternalServerError", "429"})


def _retried(exc: BaseException, code: str) -> bool:
    """What botocore's standard mode retries: throttling, 5xx, dropped connections."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import ReadTimeoutError

    if isinstance(exc, (BotoConnectionError, ReadTimeoutError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return int(status) >= 500 or code in _RETRIED_CODES
    return False


def is_aws_error(exc: BaseException) -> bool:
    return isinstance(exc, (ClientError, BotoCoreError, AwsCallError))


def find_aws_error(exc: BaseException | None) -> BaseException | None:
    """The AWS error ``exc`` is or was raised from (``raise ... from``: ``__cause__`` only; an
    error merely raised while handling an AWS error is not one)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if is_aws_error(exc):
            return exc
        exc = exc.__cause__
    return None


def one_line(exc: BaseException) -> str:
    """The line the CLI prints for ``exc`` (an AWS error, or one raised from an AWS error)."""
    if isinstance(exc, AwsCallError):
        return str(exc)
    aws = find_aws_error(exc)
    if aws is None:
        return strip_html(f"{type(exc).__name__}: {exc}")
    if aws is exc:
        return str(describe(exc))
    # a wrapper that names the resource (StoreError "put s3://... failed: <raw ClientError>"):
    # keep its words up to the raw error, then AWS's message without markup
    own = str(exc).split("An error occurred (")[0].rstrip(": ")
    return f"{own}: {error_code(aws)}: {aws_message(aws)}" if own else str(describe(aws))


def exit_code(exc: BaseException) -> int:
    """2 for the caller's errors (access, credentials, invalid request, quota), else 1."""
    aws = exc if isinstance(exc, AwsCallError) else find_aws_error(exc)
    if aws is None:
        return 1
    if isinstance(aws, (NoCredentialsError, PartialCredentialsError)):
        return 2
    code = aws.code if isinstance(aws, AwsCallError) else error_code(aws)
    return 2 if is_user_code(code) else 1


def is_user_code(code: str) -> bool:
    """AWS error codes (or bare HTTP statuses, when AWS sent no code) that are the caller's
    to fix: access, credentials, invalid requests, quotas; a 4xx other than 429."""
    if code.isdigit():
        return 400 <= int(code) < 500 and code != "429"
    return code in USER_ERROR_CODES or code in ("NoCredentialsError", "PartialCredentialsError")


def client_error(code: str, message: str, operation: str, status: int = 400,
                 body: Any = None) -> ClientError:
    """A ClientError shaped as botocore builds it (for tests and for wrapping fakes)."""
    response: dict[str, Any] = {"Error": {"Code": code, "Message": message},
                                "ResponseMetadata": {"HTTPStatusCode": status}}
    if body is not None:
        response["Body"] = body
    return ClientError(response, operation)


class _OneLineFilter:
    """A logging filter: a record carrying an AWS error (or one of ``also``) loses its
    traceback and says the one line instead; HTML in any message is reduced to its text."""

    def __init__(self, also: tuple[type[BaseException], ...] = ()) -> None:
        self.also = also

    def filter(self, record: Any) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and (find_aws_error(exc) is not None or isinstance(exc, self.also)):
            head = record.getMessage().split(": ", 1)[0]
            record.msg, record.args = f"{head}: {one_line(exc)}", None
            record.exc_info, record.exc_text = None, None
            record.mme_error = exc  # what the record was about (the CLI says it once: flows/cli/common.py)
        elif "<" in str(record.msg) and re.search(r"</?(html|body|head|title|h1|p|pre)\b", str(record.msg), re.I):
            record.msg, record.args = strip_html(record.getMessage()), None
        return True


@contextmanager
def quiet_tracebacks(also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """While a CLI command runs a flow, AWS errors (and ``also``: errors the CLI reports as a
    clear line) are one line in Prefect's logs too; the CLI prints the error once, afterwards."""
    import logging

    flt = _OneLineFilter(also)
    names = [""] + [n for n in logging.root.manager.loggerDict if n.startswith("prefect")]
    handlers = {h for n in names for h in logging.getLogger(n).handlers}
    for h in handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(flt)
