"""AWS Lambda: turn S3 "object created" notifications into Prefect ``mme.model.landed`` events.

Prefect open source has no webhooks (they are a Prefect Cloud feature), so an upload to the
model bucket reaches a Prefect server through this small function:

    S3 event notification ──> Lambda ``infra.aws.lambda_handler.handler``
    S3 ──> EventBridge rule (source aws.s3, detail-type "Object Created") ──> same Lambda

It posts the event to ``POST {PREFECT_API_URL}/events``: the Prefect server's
``create_events`` route (``prefect/server/api/events.py``: ``router = PrefectRouter(prefix=
"/events")``, ``@router.post("")``, body = a JSON *list* of events, answer 204), i.e.
``http://host:4200/api/events`` for a self-hosted server.  A deployment with a
``DeploymentEventTrigger(expect={"mme.model.landed"}, match={"prefect.resource.id":
"s3://bucket/*"}, parameters={"key": "{{ event.payload.key }}"})`` then runs.

The event has the same shape as the one :mod:`flows.watch` emits (the polling alternative)::

    event    "mme.model.landed"
    resource {"prefect.resource.id": "s3://bucket/full/key", "prefect.resource.name": key,
              "mme.ensemble": ensemble}
    related  [{"prefect.resource.id": "mme.ensemble.<ensemble>", "prefect.resource.role": "ensemble"}]
    payload  {"uri": ..., "key": key, "size": ..., "ensemble": ...}

``key`` is relative to the watched source location (``MME_SOURCE_PREFIX`` here); the ensemble
is given by ``MME_ENSEMBLE_MAP`` (JSON ``{"key/prefix": "ensemble"}``, longest prefix wins) or
is the key's first path segment (``text_embedding/model.onnx`` -> ``text_embedding``).

Delivery: S3 notifications are at-least-once, so the event ``id`` is ``uuid5(bucket/key/etag)``:
a redelivered notification posts the same id, and the Prefect server stores an event id once
(``INSERT .. ON CONFLICT DO NOTHING``) and its trigger service skips ids it has already seen.
(Consequence: re-uploading byte-identical content, same ETag, does not fire again.)  Any
failure to post (connection error, timeout, non-2xx answer) raises, so Lambda retries.

Standard library only (``urllib.request``, ``json``): the function needs no layer.  Deploy
this one file as the function's code, handler ``lambda_handler.handler``.

Environment:
    PREFECT_API_URL          required, e.g. ``https://prefect.internal:4200/api``
    PREFECT_API_KEY          optional, sent as ``Authorization: Bearer <key>``
    PREFECT_API_AUTH_STRING  optional, ``user:password`` for a server with basic auth
                             (``Authorization: Basic ...``; wins over the key, as in Prefect)
    MME_SUFFIXES             model-file suffixes, comma-separated or a JSON list
                             (default ``.safetensors,.onnx,.bin,.pt,.tar.gz,.pb,.yaml``)
    MME_ENSEMBLE_MAP         JSON object ``{"key prefix": "ensemble name"}``
    MME_SOURCE_PREFIX        key prefix of the model source inside the bucket (default: none);
                             objects outside it are skipped, keys are made relative to it
    MME_HTTP_TIMEOUT         seconds per request (default 10)
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict, Union
from urllib.parse import unquote_plus

EVENT_NAME = "mme.model.landed"
DEFAULT_SUFFIXES: tuple[str, ...] = (".safetensors", ".onnx", ".bin", ".pt", ".tar.gz", ".pb", ".yaml")
EVENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:mme:event:" + EVENT_NAME)
"""uuid5 namespace of the stable event ids (shared with flows.watch)."""

DEFAULT_TIMEOUT_S = 10.0
USER_AGENT = "mme-s3-landed-lambda/1"


# This file is the Lambda's whole code (stdlib only), so it spells a JSON document itself
# rather than importing infra.jsontypes (the same shape).
JsonValue = Union[str, int, float, bool, None, "list[JsonValue]", "dict[str, JsonValue]"]
JsonObject = dict[str, JsonValue]
LambdaEvent = Mapping[str, Any]
"""An event as Lambda hands it: parsed JSON of one of several shapes, read defensively with
``.get`` (``Any``: its shape is what :func:`s3_objects` checks)."""


class LandedEvent(TypedDict):
    """``event``, ``resource``, ``related`` and ``payload`` of one ``mme.model.landed`` event
    (what ``prefect.events.emit_event`` takes, and the body the Lambda posts)."""

    event: str
    resource: dict[str, str]
    related: list[dict[str, str]]
    payload: JsonObject


class S3Object(TypedDict):
    """One S3 object notification, normalised from whichever format carried it."""

    created: bool
    kind: str
    bucket: str | None
    key: str
    size: int | None
    etag: str | None
    sequencer: str | None
    occurred: str


class PrefectPostError(RuntimeError):
    """The Prefect API did not accept the events (raised so that Lambda retries)."""


# --------------------------------------------------------------------------- shared rules


def is_model_key(key: str, suffixes: Iterable[str] = DEFAULT_SUFFIXES) -> bool:
    """Does ``key`` name a model file?  Case-insensitive suffix match (``.tar.gz`` works)."""
    lower = key.lower()
    return any(lower.endswith(s.lower()) for s in suffixes if s)


def ensemble_for(key: str, ensemble_map: Mapping[str, str] | None = None) -> str | None:
    """The ensemble an object belongs to, or None when it cannot be told.

    ``ensemble_map`` maps key prefixes to ensemble names; the longest matching prefix wins.
    Otherwise the first path segment of the key: ``text_embedding/model.safetensors`` ->
    ``text_embedding``.  A top-level key (no ``/``) matched by no prefix has no ensemble.
    """
    if ensemble_map:
        matches = [p for p in ensemble_map if key.startswith(p)]
        if matches:
            return ensemble_map[max(matches, key=len)]
    first, sep, _ = key.partition("/")
    return first if sep and first else None


def landed_event(uri: str, key: str, size: int | None, ensemble: str) -> LandedEvent:
    """``event``, ``resource``, ``related`` and ``payload`` of one ``mme.model.landed`` event."""
    return {
        "event": EVENT_NAME,
        "resource": {"prefect.resource.id": uri, "prefect.resource.name": key, "mme.ensemble": ensemble},
        "related": [{"prefect.resource.id": f"mme.ensemble.{ensemble}", "prefect.resource.role": "ensemble"}],
        "payload": {"uri": uri, "key": key, "size": size, "ensemble": ensemble},
    }


def stable_event_id(*parts: object) -> uuid.UUID:
    """A uuid5 over ``parts``: the same object version always gets the same event id."""
    return uuid.uuid5(EVENT_NAMESPACE, "\n".join("" if p is None else str(p) for p in parts))


# --------------------------------------------------------------------------- configuration


def _suffixes_from_env() -> tuple[str, ...]:
    raw = os.environ.get("MME_SUFFIXES", "").strip()
    if not raw:
        return DEFAULT_SUFFIXES
    if raw.startswith("["):
        values = json.loads(raw)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"MME_SUFFIXES must be a JSON list of strings, got {raw!r}")
    else:
        values = raw.split(",")
    return tuple(v.strip() for v in values if v.strip())


def _ensemble_map_from_env() -> dict[str, str] | None:
    raw = os.environ.get("MME_ENSEMBLE_MAP", "").strip()
    if not raw:
        return None
    value = json.loads(raw)
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"MME_ENSEMBLE_MAP must be a JSON object of strings, got {raw!r}")
    return value


def _api_url() -> str:
    url = os.environ.get("PREFECT_API_URL", "").strip().rstrip("/")
    if not url:
        raise ValueError("PREFECT_API_URL is not set: it must name the Prefect API, e.g. http://host:4200/api")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"PREFECT_API_URL must be an http(s) URL, got {url!r}")
    return url


def _headers() -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": USER_AGENT}
    auth_string = os.environ.get("PREFECT_API_AUTH_STRING")
    api_key = os.environ.get("PREFECT_API_KEY")
    if auth_string:
        headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
    elif api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


# --------------------------------------------------------------------------- parsing


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()  # noqa: UP017 - dt.UTC is 3.11+, Lambda may run 3.9+


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def s3_objects(event: LambdaEvent) -> list[S3Object]:
    """Every S3 object notification in a Lambda event, normalised.

    Understands the S3 notification format (``{"Records": [{"eventSource": "aws:s3", ...}]}``,
    keys URL-encoded: ``red flower.jpg`` arrives as ``red+flower.jpg``, a real ``+`` as ``%2B``),
    the EventBridge format (``{"source": "aws.s3", "detail-type": "Object Created", "detail":
    {...}}``, keys as they are: decoding one would turn a real ``+`` into a space and ``%20``
    into one too, naming an object that does not exist), and either of them wrapped in SQS
    or SNS records.  S3's ``s3:TestEvent`` yields nothing.  Each item: ``created`` (bool),
    ``bucket``, ``key`` (decoded), ``size``, ``etag``, ``sequencer``, ``occurred``, ``kind``.
    """
    if not isinstance(event, Mapping):
        raise TypeError(f"unsupported Lambda event: expected a JSON object, got {type(event).__name__}")
    if event.get("Event") == "s3:TestEvent":
        return []
    if event.get("source") == "aws.s3" and "detail" in event:
        detail = event["detail"] or {}
        obj = detail.get("object") or {}
        return [{
            "created": event.get("detail-type") == "Object Created",
            "kind": str(event.get("detail-type")),
            "bucket": (detail.get("bucket") or {}).get("name"),
            "key": obj.get("key", ""),  # not URL-encoded in EventBridge events
            "size": _int_or_none(obj.get("size")),
            "etag": obj.get("etag"),
            "sequencer": obj.get("sequencer"),
            "occurred": event.get("time") or _now_iso(),
        }]
    if isinstance(event.get("Records"), list):
        found: list[S3Object] = []
        for record in event["Records"]:
            source = record.get("eventSource") or record.get("EventSource")
            if source == "aws:s3":
                s3 = record.get("s3") or {}
                obj = s3.get("object") or {}
                name = str(record.get("eventName", ""))
                found.append({
                    "created": name.startswith("ObjectCreated:"),
                    "kind": name,
                    "bucket": (s3.get("bucket") or {}).get("name"),
                    "key": unquote_plus(obj.get("key", "")),
                    "size": _int_or_none(obj.get("size")),
                    "etag": obj.get("eTag"),
                    "sequencer": obj.get("sequencer"),
                    "occurred": record.get("eventTime") or _now_iso(),
                })
            elif source == "aws:sqs":
                found.extend(s3_objects(json.loads(record["body"])))
            elif source == "aws:sns":
                found.extend(s3_objects(json.loads(record["Sns"]["Message"])))
            else:
                raise ValueError(f"unsupported record source {source!r} in Lambda event")
        return found
    raise ValueError(f"unsupported Lambda event (neither an S3 notification nor an EventBridge "
                     f"aws.s3 event): keys {sorted(event)[:10]}")


# --------------------------------------------------------------------------- posting


def post_events(api_url: str, events: list[JsonObject], *, timeout: float = DEFAULT_TIMEOUT_S,
                headers: Mapping[str, str] | None = None) -> int:
    """``POST {api_url}/events`` with a JSON list of events; the HTTP status, or raise."""
    url = f"{api_url.rstrip('/')}/events"
    body = json.dumps(events).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers=dict(headers if headers is not None else _headers()))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        detail = exc.read(500).decode("utf-8", "replace")
        raise PrefectPostError(f"POST {url} answered {exc.code} {exc.reason}: {detail}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PrefectPostError(f"POST {url} failed: {reason}") from exc
    if not 200 <= status < 300:
        raise PrefectPostError(f"POST {url} answered {status}")
    return status


def handler(event: LambdaEvent, context: object = None) -> JsonObject:
    """Lambda entry point: post one ``mme.model.landed`` event per created model object.

    Returns ``{"posted": n, "event_ids": [...], "uris": [...], "skipped": [{"key", "reason"}],
    "endpoint": url}``.  Raises on a malformed event or when the Prefect API refuses.
    """
    api_url = _api_url()  # a misconfigured function fails on every invocation, not only on uploads
    suffixes = _suffixes_from_env()
    ensemble_map = _ensemble_map_from_env()
    source_prefix = os.environ.get("MME_SOURCE_PREFIX", "").strip("/")
    timeout = float(os.environ.get("MME_HTTP_TIMEOUT") or DEFAULT_TIMEOUT_S)

    events: list[JsonObject] = []
    uris: list[JsonValue] = []
    skipped: list[JsonValue] = []
    for obj in s3_objects(event):
        full_key = obj["key"]
        if not obj["created"]:
            skipped.append({"key": full_key, "reason": f"not an object-created event ({obj['kind']})"})
            continue
        if not obj["bucket"] or not full_key:
            raise ValueError(f"S3 notification without bucket or key: {obj}")
        key = full_key
        if source_prefix:
            if not full_key.startswith(source_prefix + "/"):
                skipped.append({"key": full_key, "reason": f"outside source prefix {source_prefix!r}"})
                continue
            key = full_key[len(source_prefix) + 1:]
        if not is_model_key(key, suffixes):
            skipped.append({"key": full_key, "reason": "not a model file (suffix)"})
            continue
        ensemble = ensemble_for(key, ensemble_map)
        if ensemble is None:
            skipped.append({"key": full_key, "reason": "no ensemble (top-level key, no MME_ENSEMBLE_MAP match)"})
            continue
        uri = f"s3://{obj['bucket']}/{full_key}"
        etag = (obj["etag"] or "").strip('"') or None
        version = etag if etag is not None else obj["sequencer"]
        landed = landed_event(uri, key, obj["size"], ensemble)
        events.append({
            "id": str(stable_event_id(obj["bucket"], full_key, version)),
            "occurred": obj["occurred"],
            "event": landed["event"], "resource": {**landed["resource"]},
            "related": [{**r} for r in landed["related"]], "payload": landed["payload"],
        })
        uris.append(uri)

    if events:
        post_events(api_url, events, timeout=timeout)
    return {
        "posted": len(events),
        "event_ids": [e["id"] for e in events],
        "uris": uris,
        "skipped": skipped,
        "endpoint": f"{api_url}/events",
    }
