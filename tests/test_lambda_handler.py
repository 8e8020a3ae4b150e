"""The S3 -> Prefect events Lambda: real notification bodies, a capturing HTTP server on
127.0.0.1, and the real Prefect test server."""

from __future__ import annotations

import copy
import datetime as dt
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import infra.aws.lambda_handler as lh
from infra.aws.lambda_handler import EVENT_NAME, PrefectPostError, handler, stable_event_id

BUCKET = "amzn-s3-demo-bucket"


def s3_time(offset_s: float = -1.0) -> str:
    """An S3 ``eventTime`` (ISO-8601, milliseconds, Z), close to now."""
    t = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def s3_record(key: str, *, event_name: str = "ObjectCreated:Put", size: int = 1024,
              etag: str = "0123456789abcdef0123456789abcdef", bucket: str = BUCKET) -> dict[str, Any]:
    """One record of the documented S3 event notification structure (version 2.1)."""
    obj: dict[str, Any] = {"key": key, "sequencer": "0A1B2C3D4E5F678901"}
    if event_name.startswith("ObjectCreated:"):
        obj.update(size=size, eTag=etag, versionId="096fKKXTRTtl3on89fVO.nfljtsv6qko")
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-west-2",
        "eventTime": s3_time(),
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAINPONIXQXHT3IKHL2"},
        "requestParameters": {"sourceIPAddress": "205.255.255.255"},
        "responseElements": {"x-amz-request-id": "D82B88E5F771F645",
                             "x-amz-id-2": "vlR7PnpV2Ce81l0PRw6jlUpck7Jo5ZsQjryTjKlc5aLWGVHPZLj5NeC6"
                                           "qMa0emYBDXOo6QBU0Wo="},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "mme-model-landed",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3I5XTEXAMAI3E"},
                       "arn": f"arn:aws:s3:::{bucket}"},
            "object": obj,
        },
    }


def eventbridge_event(key: str, *, detail_type: str = "Object Created", size: int = 5,
                      etag: str = "b1946ac92492d2347c6235b4d2611184") -> dict[str, Any]:
    """The documented EventBridge "Object Created" event (keys as they are, not URL-encoded)."""
    obj: dict[str, Any] = {"key": key, "sequencer": "617f08299329d189",
                           "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e"}
    if detail_type == "Object Created":
        obj.update(size=size, etag=etag)
    return {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": detail_type,
        "source": "aws.s3",
        "account": "111122223333",
        "time": s3_time()[:19] + "Z",
        "region": "ca-central-1",
        "resources": [f"arn:aws:s3:::{BUCKET}"],
        "detail": {
            "version": "0",
            "bucket": {"name": BUCKET},
            "object": obj,
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "source-ip-address": "1.2.3.4",
            "reason": "PutObject",
        },
    }


# --------------------------------------------------------------------------- capturing server


class Capture:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 204
        self.url = ""


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[Capture]:
    cap = Capture()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            cap.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers),
                                 "json": json.loads(body)})
            self.send_response(cap.status)
            detail = b'{"detail": "boom"}' if cap.status >= 400 else b""
            self.send_header("Content-Length", str(len(detail)))
            self.end_headers()
            self.wfile.write(detail)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cap.url = f"http://127.0.0.1:{server.server_address[1]}/api"
    for var in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "MME_SUFFIXES", "MME_ENSEMBLE_MAP",
                "MME_SOURCE_PREFIX", "MME_HTTP_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PREFECT_API_URL", cap.url)
    yield cap
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------- against the capture


def test_s3_notification_posts_events(capture: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_secret")
    body = {"Records": [
        s3_record("text_embedding/model+v2.safetensors", size=4096),  # '+' is an encoded space
        s3_record("image_classifier/squeeze%2Bnet.onnx", size=77, etag="ffff"),  # '%2B' is a real '+'
        s3_record("text_embedding/README.md"),
        s3_record("text_embedding/old.onnx", event_name="ObjectRemoved:Delete"),
    ]}
    summary = handler(body, None)

    assert summary["posted"] == 2
    assert summary["endpoint"] == capture.url + "/events"
    assert [s["reason"].split(" (")[0] for s in summary["skipped"]] == ["not a model file",
                                                                       "not an object-created event"]
    (req,) = capture.requests
    assert req["method"] == "POST" and req["path"] == "/api/events"
    assert req["headers"]["Content-Type"] == "application/json"
    assert req["headers"]["Authorization"] == "Bearer pnu_secret"
    events = req["json"]
    assert isinstance(events, list) and len(events) == 2
    first, second = events
    uri = f"s3://{BUCKET}/text_embedding/model v2.safetensors"
    assert first == {
        "id": str(stable_event_id(BUCKET, "text_embedding/model v2.safetensors", "0123456789abcdef0123456789abcdef")),
        "occurred": body["Records"][0]["eventTime"],
        "event": EVENT_NAME,
        "resource": {"prefect.resource.id": uri, "prefect.resource.name": "text_embedding/model v2.safetensors",
                     "mme.ensemble": "text_embedding"},
        "related": [{"prefect.resource.id": "mme.ensemble.text_embedding", "prefect.resource.role": "ensemble"}],
        "payload": {"uri": uri, "key": "text_embedding/model v2.safetensors", "size": 4096,
                    "ensemble": "text_embedding"},
    }
    assert second["payload"]["key"] == "image_classifier/squeeze+net.onnx"
    assert second["resource"]["mme.ensemble"] == "image_classifier"
    assert summary["event_ids"] == [first["id"], second["id"]]

    # at-least-once redelivery: the same notification gives the same ids
    handler(copy.deepcopy(body), None)
    assert [e["id"] for e in capture.requests[1]["json"]] == summary["event_ids"]
    # a new upload of other bytes (other ETag) is a new event
    handler({"Records": [s3_record("text_embedding/model+v2.safetensors", etag="99" * 16)]}, None)
    assert capture.requests[2]["json"][0]["id"] not in summary["event_ids"]


def test_eventbridge_event_posts_same_event(capture: Capture) -> None:
    key = "text_embedding/model v2.safetensors"  # EventBridge: the key as it is
    summary = handler(eventbridge_event(key, size=5, etag="b1946ac92492d2347c6235b4d2611184"), None)
    assert summary["posted"] == 1
    (event,) = capture.requests[0]["json"]
    assert capture.requests[0]["path"] == "/api/events"
    assert event["payload"] == {"uri": f"s3://{BUCKET}/text_embedding/model v2.safetensors",
                                "key": "text_embedding/model v2.safetensors", "size": 5,
                                "ensemble": "text_embedding"}
    assert event["occurred"].endswith("Z")
    # the same upload seen through a direct S3 notification (key URL-encoded) gets the same id
    handler({"Records": [s3_record("text_embedding/model+v2.safetensors",
                                   etag="b1946ac92492d2347c6235b4d2611184")]}, None)
    assert capture.requests[1]["json"][0]["id"] == event["id"]

    skipped = handler(eventbridge_event("text_embedding/model.onnx", detail_type="Object Deleted"), None)
    assert skipped["posted"] == 0 and len(capture.requests) == 2


def test_keys_are_decoded_only_in_s3_notifications(capture: Capture) -> None:
    """S3 notifications URL-encode the key (space -> '+', '+' -> '%2B', '%' -> '%25'); EventBridge
    events carry it as it is, so decoding one would name another object ('+' -> ' ')."""
    from urllib.parse import quote_plus

    real = "text_embedding/a+b%20c d.onnx"
    etag = "c" * 32
    handler({"Records": [s3_record(quote_plus(real, safe="/"), etag=etag)]}, None)
    handler(eventbridge_event(real, etag=etag), None)
    via_s3, via_eventbridge = (r["json"][0] for r in capture.requests)
    assert via_s3["payload"]["key"] == real
    assert via_eventbridge["payload"]["key"] == real
    assert via_eventbridge["payload"]["uri"] == f"s3://{BUCKET}/{real}"
    assert via_s3["id"] == via_eventbridge["id"]  # one object version: one event


def test_nothing_to_post_makes_no_request(capture: Capture) -> None:
    assert handler({"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": s3_time(),
                    "Bucket": BUCKET, "RequestId": "x", "HostId": "y"}, None)["posted"] == 0
    out = handler({"Records": [s3_record("weights.onnx"), s3_record("a/notes.txt")]}, None)
    assert out["posted"] == 0
    assert [s["key"] for s in out["skipped"]] == ["weights.onnx", "a/notes.txt"]
    assert capture.requests == []


def test_env_configuration(capture: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MME_SUFFIXES", ".plan, .onnx")
    monkeypatch.setenv("MME_ENSEMBLE_MAP", json.dumps({"cv/": "image_classifier"}))
    monkeypatch.setenv("MME_SOURCE_PREFIX", "incoming/")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:pass")
    monkeypatch.setenv("PREFECT_API_KEY", "ignored-when-auth-string")
    out = handler({"Records": [
        s3_record("incoming/cv/resnet/model.plan"),
        s3_record("incoming/text_embedding/model.safetensors"),  # suffix not configured
        s3_record("elsewhere/x/model.onnx"),
    ]}, None)
    assert out["posted"] == 1 and len(out["skipped"]) == 2
    req = capture.requests[0]
    assert req["headers"]["Authorization"] == "Basic YWRtaW46cGFzcw=="
    (event,) = req["json"]
    assert event["resource"]["prefect.resource.id"] == f"s3://{BUCKET}/incoming/cv/resnet/model.plan"
    assert event["payload"]["key"] == "cv/resnet/model.plan"
    assert event["payload"]["ensemble"] == "image_classifier"

    monkeypatch.setenv("MME_SUFFIXES", '[".bin"]')
    assert handler({"Records": [s3_record("incoming/a/w.bin")]}, None)["posted"] == 1


def test_sqs_wrapped_notification(capture: Capture) -> None:
    inner = {"Records": [s3_record("text_embedding/model.onnx")]}
    out = handler({"Records": [{"messageId": "1", "eventSource": "aws:sqs", "body": json.dumps(inner)}]}, None)
    assert out["posted"] == 1


def test_server_error_raises_so_lambda_retries(capture: Capture) -> None:
    capture.status = 500
    with pytest.raises(PrefectPostError, match=r"answered 500.*boom"):
        handler({"Records": [s3_record("text_embedding/model.onnx")]}, None)


def test_unreachable_server_and_bad_config_raise(capture: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    monkeypatch.setenv("MME_HTTP_TIMEOUT", "2")
    with pytest.raises(PrefectPostError, match="failed"):
        handler({"Records": [s3_record("text_embedding/model.onnx")]}, None)
    monkeypatch.delenv("PREFECT_API_URL")
    with pytest.raises(ValueError, match="PREFECT_API_URL"):
        handler({"Records": []}, None)
    monkeypatch.setenv("PREFECT_API_URL", capture.url)
    with pytest.raises(ValueError, match="unsupported"):
        handler({"hello": "world"}, None)


def test_handler_needs_only_the_standard_library() -> None:
    """Deployed as one file without a layer: importable with no site-packages at all."""
    folder = Path(lh.__file__).parent
    code = (f"import sys; sys.path.insert(0, {str(folder)!r}); import lambda_handler; "
            "print(lambda_handler.handler.__name__)")
    out = subprocess.run([sys.executable, "-S", "-I", "-c", code], check=False, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "handler"


# --------------------------------------------------------------------------- real Prefect server


def read_events_by_id(ids: list[str], at_least: int, timeout: float = 30.0) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(filter=EventFilter(id=EventIDFilter(id=[uuid.UUID(i) for i in ids])),
                                       limit=50)  # the client default (100) is over the server max (50)
            if len(page.events) >= at_least or time.monotonic() > deadline:
                return page.events
            time.sleep(0.5)


@pytest.mark.prefect
def test_events_reach_the_prefect_server(prefect_harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL

    for var in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "MME_SUFFIXES", "MME_ENSEMBLE_MAP", "MME_SOURCE_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    tag = uuid.uuid4().hex[:8]
    body = {"Records": [s3_record(f"text_embedding/model+{tag}.safetensors", size=4096)]}
    t0 = time.perf_counter()
    s3_summary = handler(body, None)
    assert handler(copy.deepcopy(body), None) == s3_summary  # S3 redelivers: accepted, same id
    eb_summary = handler(eventbridge_event(f"image_classifier/squeezenet-{tag}.onnx", size=5), None)
    ids = s3_summary["event_ids"] + eb_summary["event_ids"]
    assert len(ids) == 2

    events = read_events_by_id(ids, at_least=2)
    print(f"Lambda events readable from the Prefect server after {time.perf_counter() - t0:.1f} s")
    assert sorted(str(e.id) for e in events) == sorted(ids)
    ev = next(e for e in events if str(e.id) == s3_summary["event_ids"][0])
    assert ev.event == EVENT_NAME
    assert ev.resource.id == f"s3://{BUCKET}/text_embedding/model {tag}.safetensors"
    assert ev.resource["mme.ensemble"] == "text_embedding"
    assert [r.id for r in ev.related if r.role == "ensemble"] == ["mme.ensemble.text_embedding"]
    assert ev.payload == {"uri": ev.resource.id, "key": f"text_embedding/model {tag}.safetensors",
                          "size": 4096, "ensemble": "text_embedding"}
    # the redelivered copy (processed before the EventBridge one) is no second event
    same_resource = [e for e in events if e.resource.id == ev.resource.id]
    assert len(same_resource) == 1
