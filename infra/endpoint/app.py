"""The local endpoint's HTTP front end: SageMaker's runtime API as a plain ASGI application.

Why no web framework: the endpoint's job is to add as little as possible to Triton's own
latency, and a framework's routing, dependency injection and response classes cost about a
millisecond per request in this process (measured with FastAPI: ~5 ms of CPU per proxied
request here, against ~0.6 ms for this module with uvloop, httptools and
:class:`~infra.endpoint.triton_http.TritonHTTP`). Five routes need no framework:

* ``GET /ping`` -- 200 only while Triton is live (SageMaker's health check);
* ``POST /endpoints/{name}/invocations`` -- InvokeEndpoint, by ``X-Amzn-SageMaker-Target-Model``;
* ``GET /models``, ``DELETE /models/{target}``, ``GET /metrics`` -- the admin API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from infra.endpoint.errors import (
    Answer,
    EndpointError,
    InternalFailure,
    ModelError,
    NotFound,
    Rejected,
    ValidationError,
    check_body,
    json_answer,
)
from infra.endpoint.models import STUB_DEAD_MARKERS, ModelManager, unprefix
from infra.endpoint.reports import ModelsDoc, ModelState
from infra.endpoint.state import ModelEntry
from infra.endpoint.request_check import MAX_PAYLOAD_BYTES, ModelContract, TritonRequest, oversize
from infra.aws.runtime_client import BINARY_CT
from infra.endpoint.triton_http import UpstreamResponse

if TYPE_CHECKING:
    from infra.endpoint.local_mme import LocalEndpoint

log = logging.getLogger("mme.local")

TARGET_HEADER = b"x-amzn-sagemaker-target-model"
#: Bodies larger than this are checked in a worker thread: a 6 MB body of tiny BYTES elements
#: takes ~0.5 s to walk, which must not stall every other request on the event loop.
INLINE_CHECK_BYTES = 64 * 1024
_VARIANT = (b"x-amzn-invoked-production-variant", b"AllTraffic")


@dataclass(frozen=True, slots=True)
class Admission:
    """One request's admission, as :attr:`LocalEndpoint.on_admission` sees it.

    Why: whether a request found its model loaded is known only inside the endpoint; a bench
    running it in-process tells warm from cold answers (and when each request was admitted)
    by this, under an id its client put in a header, instead of patching the endpoint.
    """

    headers: Mapping[bytes, bytes]  # the request's headers (lower-case names)
    target: str  # the TargetModel
    started: float  # time.perf_counter() as the admission began
    warm: bool | None  # found loaded; None: refused (the request is answered with an error)


#: Called on the serving loop after each admission: keep it short, it must not block.
AdmissionHook = Callable[[Admission], None]


class EndpointApp:
    """The ASGI application; ``endpoint`` owns the model manager and the Triton connection."""

    def __init__(self, endpoint: LocalEndpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            status, headers, body = await self._route(scope, receive)
        except EndpointError as e:
            status, headers, body = self.endpoint.answer(e)
        except Exception as e:  # noqa: BLE001 - still SageMaker-shaped, and scrubbed
            log.exception("unexpected error")
            status, headers, body = self.endpoint.answer(
                InternalFailure(f"Internal error: {type(e).__name__}: {e}"))
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.endpoint.startup()
                except Exception as e:  # noqa: BLE001 - reported to the server, which stops
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.endpoint.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: dict[str, Any], receive: Any) -> Answer:
        method, path = scope["method"], scope["path"]
        if path.startswith("/endpoints/") and path.endswith("/invocations") and method == "POST":
            name = path[len("/endpoints/"):-len("/invocations")]
            body = await _read_body(receive, MAX_PAYLOAD_BYTES)
            return await self.invoke(unquote(name), dict(scope["headers"]), body)
        if path == "/ping" and method == "GET":
            return await self.ping()
        mgr = self.endpoint.manager
        if path == "/models" and method == "GET":
            doc = ModelsDoc(endpoint=self.endpoint.cfg.name, triton=mgr.triton_status(),
                            models=mgr.describe())
            return json_answer(200, doc.model_dump())
        if path.startswith("/models/") and method == "DELETE":
            target = unquote(path[len("/models/"):])
            ok = await mgr.unload(target, delete_files=True)
            mgr.forget(target)
            return json_answer(200, {"target_model": target, "unloaded": ok})
        if path == "/metrics" and method == "GET":
            await mgr.refresh_memory()
            return json_answer(200, mgr.report().model_dump())
        if path == "/triton/metrics" and method == "GET":
            status, text = await self.endpoint.triton_metrics()
            return status, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")], text
        raise NotFound(f"No route for {method} {path}")

    async def ping(self) -> Answer:
        """200 only while Triton is live (SageMaker's health check), else the 5xx of the moment."""
        sup = self.endpoint.manager.sup
        if sup.live and not await sup.probe():
            sup.mark_down(sup.generation, "tritonserver failed its liveness check (/ping)")
        if not sup.live:
            return self.endpoint.answer(sup.down_error())
        return 200, [], b""

    async def invoke(self, name: str, headers: dict[bytes, bytes], body: bytes | None) -> Answer:
        """One InvokeEndpoint: validate, acquire (load) the model, forward to Triton, answer.

        A warm request's time from here to the forward (checks, admission) is the endpoint's
        own overhead: recorded as AdmissionTime (p50/p99 in /metrics). Errors count per model.
        """
        arrived = time.perf_counter()
        if name != self.endpoint.cfg.name:
            raise ValidationError(f"Endpoint {name} not found.")
        raw_target = headers.get(TARGET_HEADER)
        if not raw_target:
            raise ValidationError("This is a multi-model endpoint: the request needs a "
                                  "TargetModel (header X-Amzn-SageMaker-Target-Model)")
        target = raw_target.decode("utf-8", "replace")
        ct = headers.get(b"content-type", b"").decode("latin-1")
        if body is None:  # over the limit: refused unread, as SageMaker's front door does
            raise Rejected(oversize())
        mgr = self.endpoint.manager
        known = mgr.models.get(target)
        # refused before the model is looked up: with its contract if it is loaded, else
        # structurally (shapes capped by the payload limit), then again with the contract
        contract = known.contract if known is not None and known.state == ModelState.LOADED else None
        req = await _check(ct, body, contract)
        mgr.metrics.invocations += 1
        generation = mgr.sup.check()
        hook, started = self.endpoint.on_admission, time.perf_counter()
        try:
            m, warm = await mgr.admit(target)
        except EndpointError:
            mgr.count_error(target)
            if hook is not None:
                hook(Admission(headers, target, started, None))
            raise
        if hook is not None:
            hook(Admission(headers, target, started, warm))
        try:
            if m.contract is not contract:
                req = await _check(ct, body, m.contract)
            loads_seen = m.loads
            if warm:
                mgr.metrics.admission_ms.append((time.perf_counter() - arrived) * 1000)
            r = await self.endpoint.forward(m, body, req.headers, generation)
        except EndpointError:
            m.errors += 1
            raise
        finally:
            mgr.release(m)
        if r.status != 200:
            m.errors += 1
            raise _model_error(mgr, m, r, loads_seen)
        size = r.headers.get("inference-header-content-length")
        content, new_size = rename_model(r.body, None if size is None else int(size),
                                         m.repo.entry, m.repo.original_entry)
        out_ct = (f"{BINARY_CT};json-header-size={new_size}" if new_size is not None
                  else "application/json")
        return 200, [(b"content-type", out_ct.encode()), _VARIANT], content


async def _read_body(receive: Any, limit: int) -> bytes | None:
    """The request body, or None once it grows past ``limit`` (the rest is not kept)."""
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        return None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _check(ct: str, body: bytes, contract: ModelContract | None) -> TritonRequest:
    """The request checked (in a worker thread when large: see INLINE_CHECK_BYTES)."""
    if len(body) > INLINE_CHECK_BYTES:
        return await asyncio.to_thread(check_body, ct, body, contract)
    return check_body(ct, body, contract)


def _triton_error(r: UpstreamResponse) -> str:
    try:
        doc = orjson.loads(r.body)
    except orjson.JSONDecodeError:
        return r.body.decode("utf-8", "replace")
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)


def _model_error(mgr: ModelManager, m: ModelEntry, r: UpstreamResponse, loads_seen: int) -> ModelError:
    """Triton's refusal as SageMaker wraps it (424), in the user's model names.

    A dead Python stub is special: Triton keeps answering that error for good, so the model is
    marked for a reload on its next request, and the answer says so.
    """
    text = unprefix(mgr.public(_triton_error(r)), m)
    if all(k in text.lower() for k in STUB_DEAD_MARKERS):
        mgr.stub_died(m, loads_seen)
        return ModelError(
            f"Model {m.target} failed: a process of its Python backend died ({text}). The model "
            f"is reloaded on its next request; retry the request.",
            OriginalStatusCode=r.status, OriginalMessage=text)
    kind = "client" if r.status < 500 else "server"
    return ModelError(
        f"Received {kind} error ({r.status}) from primary with message \"{text}\".",
        OriginalStatusCode=r.status, OriginalMessage=text)


def rename_model(content: bytes, header_size: int | None, internal: str,
                 public: str) -> tuple[bytes, int | None]:
    """Answer with the tarball's own entry-model name where Triton wrote the namespaced one.

    Only the JSON (header) changes; for binary+json the binary tail is kept as is and the new
    header length is returned, for the content type's json-header-size. Triton writes
    ``"model_name":"<name>"`` first, so a bounded byte search finds it without parsing (which
    would cost a full JSON round trip on large JSON outputs).
    """
    end = len(content) if header_size is None else header_size
    old = b'"model_name":' + json.dumps(internal).encode()
    at = content.find(old, 0, min(end, 4096))
    if at >= 0:
        new = b'"model_name":' + json.dumps(public).encode()
        header = content[:at] + new + content[at + len(old):end]
    else:  # another layout: parse the header
        try:
            doc = json.loads(content[:end])
        except (UnicodeDecodeError, json.JSONDecodeError):
            return content, header_size
        if not isinstance(doc, dict) or doc.get("model_name") != internal:
            return content, header_size
        doc["model_name"] = public
        header = json.dumps(doc, separators=(",", ":")).encode()
    if header_size is None:
        return header, None
    return header + content[end:], len(header)
