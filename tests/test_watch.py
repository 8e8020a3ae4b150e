"""The ``watch`` flow: pure diff rules, then real runs against the Prefect test server.

The file:// runs emit through Prefect's real events client and read the events back from the
server (``POST /api/events/filter``); the s3:// run (moto) only checks the scan and what would
be emitted (``emit_event`` captured), to stay fast.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

import flows.watch as watch_mod
from flows.watch import watch
from tasks.deploy.watch import (
    Change,
    Remembered,
    Removed,
    change_reasons,
    default_state_uri,
    diff_listing,
    read_state,
    record_of,
)
from infra.aws.lambda_handler import EVENT_NAME, ensemble_for, is_model_key
from infra.store.objects import ObjectInfo


def info(key: str, size: int = 10, mtime: float = 1000.0, sha256: str | None = None) -> ObjectInfo:
    return ObjectInfo(uri=f"s3://b/{key}", key=key, size=size, sha256=sha256, last_modified=mtime)


# --------------------------------------------------------------------------- pure rules


def test_diff_new_objects() -> None:
    changes, removed, state = diff_listing({}, [info("b/x.onnx"), info("a/m.safetensors")])
    assert [(c.info.key, c.kind) for c in changes] == [("a/m.safetensors", "new"), ("b/x.onnx", "new")]
    assert removed == []
    assert state == {"a/m.safetensors": record_of(info("a/m.safetensors")), "b/x.onnx": record_of(info("b/x.onnx"))}


def test_diff_unchanged_reports_nothing_and_keeps_known_sha() -> None:
    prev = {"a/m.onnx": record_of(info("a/m.onnx")).model_copy(update={"sha256": "abc"})}
    changes, removed, state = diff_listing(prev, [info("a/m.onnx")])  # listings carry no sha256
    assert changes == [] and removed == []
    assert state == prev


def test_diff_changed_size() -> None:
    prev = {"a/m.onnx": record_of(info("a/m.onnx"))}
    changes, _, state = diff_listing(prev, [info("a/m.onnx", size=11)])
    assert changes == [Change(info("a/m.onnx", size=11), "changed", ("size",))]
    assert state["a/m.onnx"].size == 11


def test_diff_changed_mtime() -> None:
    prev = {"a/m.onnx": record_of(info("a/m.onnx"))}
    changes, _, state = diff_listing(prev, [info("a/m.onnx", mtime=1000.5)])
    assert [(c.kind, c.reasons) for c in changes] == [("changed", ("last_modified",))]
    assert state["a/m.onnx"].last_modified == 1000.5


def test_diff_sha256_only_when_both_known() -> None:
    old = record_of(info("a/m.onnx")).model_copy(update={"sha256": "aaa"})
    assert change_reasons(old, info("a/m.onnx", sha256="bbb")) == ("sha256",)
    assert change_reasons(old, info("a/m.onnx", sha256=None)) == ()
    assert change_reasons(record_of(info("a/m.onnx")), info("a/m.onnx", sha256="bbb")) == ()


def test_diff_removed() -> None:
    prev = {"a/m.onnx": record_of(info("a/m.onnx")), "b/gone.onnx": record_of(info("b/gone.onnx"))}
    changes, removed, state = diff_listing(prev, [info("a/m.onnx")])
    assert changes == []
    assert removed == [Removed("b/gone.onnx", record_of(info("b/gone.onnx")))]
    assert list(state) == ["a/m.onnx"]


def test_state_round_trips_through_json() -> None:
    """A re-read state (floats through JSON) compares equal: a re-run reports nothing."""
    listing = [info("a/m.onnx", mtime=1712345678.123456789)]
    _, _, state = diff_listing({}, listing)
    read_back = json.loads(json.dumps({k: v.model_dump() for k, v in state.items()}))
    changes, _, _ = diff_listing({k: Remembered.model_validate(v) for k, v in read_back.items()}, listing)
    assert changes == []


def test_model_key_and_ensemble_rules() -> None:
    assert is_model_key("text_embedding/model.safetensors")
    assert is_model_key("x/model.TAR.GZ")
    assert not is_model_key("text_embedding/README.md")
    assert ensemble_for("text_embedding/model.safetensors") == "text_embedding"
    assert ensemble_for("model.onnx") is None
    mapping = {"vision/": "image_classifier", "vision/squeeze/": "squeezenet", "loose.onnx": "loose"}
    assert ensemble_for("vision/squeeze/model.onnx", mapping) == "squeezenet"  # longest prefix
    assert ensemble_for("vision/other.onnx", mapping) == "image_classifier"
    assert ensemble_for("loose.onnx", mapping) == "loose"
    assert ensemble_for("text/model.onnx", mapping) == "text"


def test_default_state_uri_is_under_mme_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    uri = default_state_uri("s3://bucket/models/")
    assert uri == default_state_uri("s3://bucket/models")
    assert uri.startswith((tmp_path / "home" / "watch").as_uri() + "/") and uri.endswith(".json")
    assert uri != default_state_uri("s3://bucket/other")


# --------------------------------------------------------------------------- Prefect server


def read_landed(resource_prefix: str, at_least: int, timeout: float = 30.0) -> list[Any]:
    """The mme.model.landed events stored by the server for resources under the prefix."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(
                filter=EventFilter(event=EventNameFilter(name=[EVENT_NAME]),
                                   resource=EventResourceFilter(id_prefix=[resource_prefix])),
                limit=50,
            )
            if len(page.events) >= at_least or time.monotonic() > deadline:
                return page.events
            time.sleep(0.5)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.prefect
def test_watch_file_source_emits_to_prefect(prefect_harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    src = tmp_path / "src"
    model = write(src / "text_embedding" / "model.safetensors", b"w" * 100)
    write(src / "image_classifier" / "squeezenet.onnx", b"o" * 50)
    write(src / "text_embedding" / "README.md", b"not a model")
    write(src / "stray.onnx", b"top-level: no ensemble")
    source = src.as_uri()

    t0 = time.perf_counter()
    first = watch(source_uri=source)
    assert sorted((r["key"], r["ensemble"], r["size"], r["change"]) for r in first) == [
        ("image_classifier/squeezenet.onnx", "image_classifier", 50, "new"),
        ("text_embedding/model.safetensors", "text_embedding", 100, "new"),
    ]
    assert {r["uri"] for r in first} == {model.as_uri(), (src / "image_classifier" / "squeezenet.onnx").as_uri()}

    state_file = Path(default_state_uri(source).removeprefix("file://"))
    assert set(read_state(state_file.as_uri(), source)) == {"image_classifier/squeezenet.onnx",
                                                             "text_embedding/model.safetensors"}

    assert watch(source_uri=source) == []  # nothing new: nothing emitted

    os.utime(model, (time.time() + 60, time.time() + 60))  # touched: same size, new mtime
    third = watch(source_uri=source)
    assert [(r["key"], r["change"]) for r in third] == [("text_embedding/model.safetensors", "changed")]

    events = read_landed(src.as_uri() + "/", at_least=3)
    print(f"3 runs + events readable from the server in {time.perf_counter() - t0:.1f} s")
    assert len(events) == 3, [e.resource.id for e in events]
    by_key = sorted((e.payload["key"], e.payload["size"]) for e in events)
    assert by_key == [("image_classifier/squeezenet.onnx", 50), ("text_embedding/model.safetensors", 100),
                      ("text_embedding/model.safetensors", 100)]
    ev = next(e for e in events if e.payload["key"] == "image_classifier/squeezenet.onnx")
    assert ev.event == EVENT_NAME
    assert str(ev.id) == next(r["event_id"] for r in first if r["key"] == ev.payload["key"])
    assert len({str(e.id) for e in events}) == 3  # the touched file is a new version: a new id
    assert ev.resource.id == (src / "image_classifier" / "squeezenet.onnx").as_uri()
    assert ev.resource["prefect.resource.name"] == "image_classifier/squeezenet.onnx"
    assert ev.resource["mme.ensemble"] == "image_classifier"
    ensemble_rel = [r for r in ev.related if r.role == "ensemble"]
    assert [r.id for r in ensemble_rel] == ["mme.ensemble.image_classifier"]
    assert ev.payload == {"uri": ev.resource.id, "key": "image_classifier/squeezenet.onnx", "size": 50,
                          "ensemble": "image_classifier"}

    # a deleted object is dropped from the state and reported, but is no event
    (src / "image_classifier" / "squeezenet.onnx").unlink()
    gone = watch(source_uri=source)
    assert [(r["key"], r["change"]) for r in gone] == [("image_classifier/squeezenet.onnx", "removed")]
    assert set(read_state(state_file.as_uri(), source)) == {"text_embedding/model.safetensors"}


@pytest.mark.prefect
def test_watch_reemission_after_lost_state_is_deduplicated(prefect_harness, tmp_path: Path) -> None:
    """State lost after emitting (crash): the re-run re-emits the same id; the server keeps one.

    No sleep: the tokenizer event, emitted after the duplicate on the same events stream, is
    the barrier (once it is stored the duplicate was delivered before it), and the server
    stores events by id, so a late duplicate could only ever hit the same row.
    """
    src = tmp_path / "src"
    write(src / "text_embedding" / "model.onnx", b"x" * 10)
    state = tmp_path / "state" / "watch.json"
    (first,) = watch(source_uri=src.as_uri(), state_uri=str(state))
    state.unlink()
    (again,) = watch(source_uri=src.as_uri(), state_uri=state.as_uri())
    assert again["key"] == first["key"] == "text_embedding/model.onnx"
    assert again["event_id"] == first["event_id"], "a re-emission must carry the same event id"
    write(src / "text_embedding" / "tokenizer.bin", b"t")  # a later event: the barrier
    (later,) = watch(source_uri=src.as_uri(), state_uri=state.as_uri())
    assert later["event_id"] != first["event_id"]

    deadline = time.monotonic() + 60
    while True:
        events = read_landed(src.as_uri() + "/", at_least=0, timeout=0)
        if any(str(e.id) == later["event_id"] for e in events):
            break
        assert time.monotonic() < deadline, f"the barrier event never reached the server: {events}"
        time.sleep(0.2)  # polling interval of the wait above, not a synchronisation delay
    assert sorted((e.payload["key"], str(e.id)) for e in events) == sorted(
        [("text_embedding/model.onnx", first["event_id"]),
         ("text_embedding/tokenizer.bin", later["event_id"])])


# --------------------------------------------------------------------------- s3:// (moto)


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch):
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="models")
        yield client


@pytest.mark.prefect
def test_watch_s3_source(prefect_harness, s3_bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    emitted: list[dict[str, Any]] = []
    monkeypatch.setattr("prefect.events.emit_event", lambda **kw: emitted.append(kw))
    monkeypatch.setattr(watch_mod, "_flush_events", lambda timeout=30.0: None)
    s3_bucket.put_object(Bucket="models", Key="incoming/text_embedding/model.safetensors", Body=b"a" * 7)
    s3_bucket.put_object(Bucket="models", Key="incoming/vision/squeeze/net.onnx", Body=b"b" * 3)
    s3_bucket.put_object(Bucket="models", Key="incoming/text_embedding/notes.txt", Body=b"skip")
    s3_bucket.put_object(Bucket="models", Key="elsewhere/other/model.onnx", Body=b"outside the source")
    kwargs = {"source_uri": "s3://models/incoming", "state_uri": "s3://models/watch-state/incoming.json",
              "ensemble_map": {"vision/": "image_classifier"}}

    first = watch(**kwargs)
    assert sorted((r["uri"], r["key"], r["ensemble"], r["size"]) for r in first) == [
        ("s3://models/incoming/text_embedding/model.safetensors", "text_embedding/model.safetensors",
         "text_embedding", 7),
        ("s3://models/incoming/vision/squeeze/net.onnx", "vision/squeeze/net.onnx", "image_classifier", 3),
    ]
    assert len(emitted) == 2
    ev = next(e for e in emitted if e["payload"]["key"] == "vision/squeeze/net.onnx")
    assert ev["event"] == EVENT_NAME
    assert ev["resource"] == {"prefect.resource.id": "s3://models/incoming/vision/squeeze/net.onnx",
                              "prefect.resource.name": "vision/squeeze/net.onnx",
                              "mme.ensemble": "image_classifier"}
    assert ev["related"] == [{"prefect.resource.id": "mme.ensemble.image_classifier",
                              "prefect.resource.role": "ensemble"}]
    assert isinstance(ev["id"], uuid.UUID)
    state = json.loads(s3_bucket.get_object(Bucket="models", Key="watch-state/incoming.json")["Body"].read())
    assert state["source_uri"] == "s3://models/incoming" and len(state["objects"]) == 2

    emitted.clear()
    assert watch(**kwargs) == [] and emitted == []

    s3_bucket.put_object(Bucket="models", Key="incoming/text_embedding/model.safetensors", Body=b"a" * 9)
    s3_bucket.delete_object(Bucket="models", Key="incoming/vision/squeeze/net.onnx")
    third = watch(**kwargs)
    assert [(r["key"], r["change"], r["size"]) for r in third] == [
        ("text_embedding/model.safetensors", "changed", 9), ("vision/squeeze/net.onnx", "removed", 3)]
    assert [e["payload"]["key"] for e in emitted] == ["text_embedding/model.safetensors"]
