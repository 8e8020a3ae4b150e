"""The local endpoint's error answers, shaped as SageMaker's runtime API answers them.

Each error knows its HTTP status and SageMaker error type (``x-amzn-ErrorType``, which boto3
turns into the ``ClientError`` code) and renders itself as a JSON body with a ``message``.
"""

from __future__ import annotations

import orjson

from infra.endpoint.request_check import ModelContract, RequestRejected, TritonRequest, check_request

#: (status, headers, body) as the ASGI front end sends it.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


def json_answer(status: int, doc: object, headers: list[tuple[bytes, bytes]] | None = None) -> Answer:
    return status, [(b"content-type", b"application/json"), *(headers or [])], orjson.dumps(doc)


class EndpointError(Exception):
    """An error answered to the client the way SageMaker answers it."""

    status = 400
    code = "ValidationError"

    def __init__(self, message: str, **extra: object):
        super().__init__(message)
        self.message = message
        self.extra = extra

    def answer(self) -> Answer:
        body = {"message": self.message, "__type": self.code, **self.extra}
        return json_answer(self.status, body, [(b"x-amzn-errortype", self.code.encode())])


class ValidationError(EndpointError):
    pass


class ModelNotReady(EndpointError):
    status = 429
    code = "ModelNotReadyException"


class InsufficientMemory(EndpointError):
    status = 507
    code = "ModelError"


class ModelError(EndpointError):
    """The model answered with an error: SageMaker wraps it as a 424 ModelError."""

    status = 424
    code = "ModelError"


class Rejected(EndpointError):
    """A request refused by :mod:`infra.endpoint.request_check`, with the status and type it chose."""

    def __init__(self, e: RequestRejected):
        super().__init__(e.message)
        self.status, self.code = e.status, e.code

    def answer(self) -> Answer:
        if self.code.isdigit():  # SageMaker's 413 carries no error type (boto3's code: "413")
            return json_answer(self.status, {"message": self.message})
        return super().answer()


def check_body(content_type: str, body: bytes, contract: ModelContract | None) -> TritonRequest:
    """:func:`infra.endpoint.request_check.check_request`, its refusal as the endpoint's answer."""
    try:
        return check_request(content_type, body, contract)
    except RequestRejected as e:
        raise Rejected(e) from None


class ServiceUnavailable(EndpointError):
    """Triton is down and being restarted: retry later (boto3 retries 503 by itself)."""

    status = 503
    code = "ServiceUnavailable"


class InternalFailure(EndpointError):
    """The endpoint itself failed (Triton gave up restarting, or an unexpected error)."""

    status = 500
    code = "InternalFailure"


class NotFound(EndpointError):
    status = 404
    code = "UnknownOperationException"
