"""A scripted ``sagemaker-runtime`` InvokeEndpoint on 127.0.0.1, for retry and routing tests.

Real boto3 clients (``infra.aws.runtime_client.runtime_client_for(stub.url)``) talk to it, so what
is counted is what botocore really sent: its own retries (there must be none) included. Each
request pops the next scripted answer (``(status, error type, message)``, or ``None`` for a
success); an empty script answers success. A TargetModel in ``missing`` is answered 400
``ValidationError`` "Failed to download model data", as SageMaker answers for an object that
is gone. A success is ``{"Y": [[2, 3, 4]]}`` (KServe v2 JSON): the sample ``X + 1``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

Answer = tuple[int, str, str] | None

X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
OK_BODY = json.dumps({"outputs": [{"name": "Y", "datatype": "FP32", "shape": [1, 3],
                                   "data": [2.0, 3.0, 4.0]}]}).encode()

MODEL_NOT_READY: Answer = (429, "ModelNotReadyException", "Model is still loading; retry later")
THROTTLED: Answer = (429, "ThrottlingException", "Rate exceeded")
UNAVAILABLE: Answer = (503, "ServiceUnavailable", "Service is unavailable; try again later")
INTERNAL: Answer = (500, "InternalFailure", "An internal failure occurred")
INVALID: Answer = (400, "ValidationError", "Invalid input shape")
MODEL_ERROR: Answer = (424, "ModelError", "Received server error (500) from model")


class RuntimeStub:
    """The stub server; ``requests`` lists the TargetModel of every request it answered."""

    def __init__(self, script: list[Answer] | None = None, *, missing: set[str] | None = None,
                 on_answer: Callable[[Answer], None] | None = None) -> None:
        self.script = list(script or [])
        self.missing = set(missing or ())
        self.on_answer = on_answer  # e.g. a fake clock advanced by the time SageMaker holds a 429
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RuntimeStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, target: str) -> Answer:
        with self._lock:
            self.requests.append(target)
            if target in self.missing:
                return (400, "ValidationError", f"Failed to download model data (model: {target}, "
                                                 f"url: s3://bucket/{target}). Please ensure...")
            answer = self.script.pop(0) if self.script else None
        if self.on_answer is not None:
            self.on_answer(answer)
        return answer

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = stub.answer(self.headers.get("X-Amzn-SageMaker-Target-Model", ""))
                status, body = (200, OK_BODY) if answer is None else (
                    answer[0], json.dumps({"message": answer[2]}).encode())
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if answer is not None:
                    self.send_header("x-amzn-ErrorType", answer[1])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


class FakeTime:
    """A clock that moves only when told to (a sleep, or the stub holding an invoke)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
