"""What the local endpoint answers: no host path in any error, the tarball's own model names in
every answer, and request validation in front of Triton (a huge declared shape is a 4xx naming
the input, and Triton keeps running: same pid, no death counted).
"""

from __future__ import annotations

import json
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fixtures.local_endpoint import ENDPOINT, Endpoint, X, assert_error, call, metrics, models, post, start_endpoint
from fixtures.tiny_models import ADD_MODEL, link_member, reg_member, publish_pipe, repo_members, tar_gz, write_pipe_repo

from infra.endpoint.app import rename_model
from infra.triton.model_repo import namespace_for
from infra.aws.runtime_client import BINARY_CT, decode_response, encode_request
from infra.store.tarball import pack_deterministic

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pytriton tritonserver is Linux-only"),
]


@pytest.fixture(scope="module")
def ep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    e = start_endpoint(tmp_path_factory.mktemp("errors-mme"))
    try:
        yield e
    finally:
        e.ep.stop()


def host_paths(e: Endpoint) -> list[str]:
    """Every spelling of where the endpoint keeps its files on this host."""
    out = set()
    for p in (e.cache_dir, e.cache_dir / "repo", e.cache_dir / "work", e.store_dir.parent):
        out |= {str(p), str(p.resolve())}
    return sorted(out)


def assert_no_host_path(e: Endpoint, doc: dict) -> None:
    text = json.dumps(doc)
    for path in host_paths(e):
        assert path not in text, (path, doc)


def publish_broken(store_dir: Path, target: str, model_py: str) -> None:
    """A ``pipe`` tarball whose ``add/1/model.py`` is replaced by ``model_py``."""
    with tempfile.TemporaryDirectory(prefix="broken-src-") as tmp:
        repo = write_pipe_repo(Path(tmp) / "repo", k=1)
        (repo / "add" / "1" / "model.py").write_text(model_py)
        pack_deterministic(repo, store_dir / target)


# ---------------------------------------------------------------------------------- C. host paths
def _with_config_dir() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    members = [(i, d) for i, d in repo_members() if i.name != "add/config.pbtxt"]
    folder = tarfile.TarInfo("add/config.pbtxt")
    folder.type, folder.mode = tarfile.DIRTYPE, 0o755
    return [*members, (folder, None)]


def test_bad_tarball_errors_name_the_target_and_member_not_a_host_path(ep: Endpoint) -> None:
    bad = {
        "paths-dotdot.tar.gz": (tar_gz(repo_members() + [reg_member("../escape", b"x")]), "'../escape'"),
        "paths-link.tar.gz": (tar_gz(repo_members() + [link_member("add/1/l", "/etc/passwd",
                                                              tarfile.SYMTYPE)]), "'add/1/l'"),
        "paths-corrupt.tar.gz": (b"\x1f\x8b" + b"\0" * 200, "not a valid tar.gz"),
        # a config.pbtxt that is a folder: an OSError, whose text would name the host path
        "paths-dir-config.tar.gz": (tar_gz(_with_config_dir()), "add: cannot read config.pbtxt"),
    }
    body, ct = encode_request({"X": X})
    for target, (data, needle) in bad.items():
        (ep.store_dir / target).write_bytes(data)
        doc = assert_error(post(ep.url, target, body, ct), 400, "ValidationError", target, needle)
        assert_no_host_path(ep, doc)
        assert ".tar.gz:" not in doc["message"].replace(f"{target}:", ""), doc  # no archive path


def test_triton_errors_carry_no_host_path_or_internal_name(ep: Endpoint) -> None:
    # a model.py that fails to load: Triton's message holds a traceback with the file's path
    publish_broken(ep.store_dir, "paths-init.tar.gz", ADD_MODEL.replace(
        "        self.k = ", "        raise RuntimeError('broken on purpose in ' + __file__)\n"
                            "        self.k = "))
    body, ct = encode_request({"X": X})
    doc = assert_error(post(ep.url, "paths-init.tar.gz", body, ct), 400, "ValidationError",
                       "paths-init.tar.gz", "broken on purpose in add/1/model.py")
    assert_no_host_path(ep, doc)
    assert namespace_for("paths-init.tar.gz") not in json.dumps(doc)

    # a model that fails per request, naming its own file: 424, same scrubbing
    publish_broken(ep.store_dir, "paths-exec.tar.gz", ADD_MODEL.replace(
        "            x = pb_utils", "            raise ValueError('refused by ' + __file__)\n"
                                    "            x = pb_utils"))
    doc = assert_error(post(ep.url, "paths-exec.tar.gz", body, ct), 424, "ModelError",
                       "refused by add/1/model.py")
    assert "refused by add/1/model.py" in doc["OriginalMessage"]
    assert_no_host_path(ep, doc)
    assert namespace_for("paths-exec.tar.gz") not in json.dumps(doc)


# ---------------------------------------------------------------------------------- C. model names
@pytest.mark.parametrize("binary", [False, True])
def test_answers_carry_the_tarballs_model_name(ep: Endpoint, binary: bool) -> None:
    publish_pipe(ep.store_dir, "names.tar.gz", k=3)
    body, ct = encode_request({"X": X}, binary=binary)
    r = post(ep.url, "names.tar.gz", body, ct)
    assert r.status_code == 200, r.text
    out_ct = r.headers["content-type"]
    if binary:
        assert out_ct.startswith(f"{BINARY_CT};json-header-size=")
        size = int(out_ct.split("=")[1])
        header = json.loads(r.content[:size])  # exactly the JSON header, recomputed
    else:
        assert out_ct == "application/json"
        header = r.json()
    assert header["model_name"] == "pipe"
    assert namespace_for("names.tar.gz") not in r.content[:512].decode(errors="replace")
    np.testing.assert_array_equal(decode_response(r.content, out_ct)["Y"], X + 3)


def test_rename_keeps_the_binary_section() -> None:
    header = b'{"model_name":"ns-1_pipe","model_version":"1","outputs":[{"name":"Y"}]}'
    tail = bytes(range(256)) * 3
    content, size = rename_model(header + tail, len(header), "ns-1_pipe", "p\u00e9 \"q\"")
    assert content[size:] == tail
    assert json.loads(content[:size])["model_name"] == "p\u00e9 \"q\""
    # another layout (spaces): parsed and rewritten
    spaced = b'{"model_version": "1", "model_name": "ns-1_pipe"}'
    content, size = rename_model(spaced, None, "ns-1_pipe", "pipe")
    assert size is None and json.loads(content) == {"model_version": "1", "model_name": "pipe"}


# ---------------------------------------------------------------------------------- D. validation
HUGE = b'{"inputs":[{"name":"INPUT","shape":[1,1000000000000],"datatype":"UINT8","data":[1,2,3]}]}'


@pytest.mark.parametrize("body, content_type, needle", [
    (HUGE, "application/json", "'INPUT'"),
    (HUGE, "application/octet-stream", "'INPUT'"),  # the AWS sample's content type
    (json.dumps({"inputs": [{"name": "X", "shape": [1, 1000000000000], "datatype": "FP32",
                             "data": [1.0, 2.0, 3.0]}]}).encode(), "application/json", "'X'"),
    (json.dumps({"inputs": [{"name": "X", "shape": [2**62, 2**62], "datatype": "FP32",
                             "data": [1.0]}]}).encode(), "application/json", "overflows int64"),
])
def test_huge_shapes_are_refused_and_triton_keeps_running(
        ep: Endpoint, body: bytes, content_type: str, needle: str) -> None:
    publish_pipe(ep.store_dir, "huge.tar.gz", k=4)
    np.testing.assert_array_equal(call(ep.url, "huge.tar.gz"), X + 4)
    pid = ep.ep.triton.pid
    before = metrics(ep.url)
    for target in ("huge.tar.gz", "huge-never-published.tar.gz"):
        r = post(ep.url, target, body, content_type)
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        assert needle in r.json()["message"], r.json()
    # Triton never saw it: same process, no death, the model still answers
    assert ep.ep.triton.pid == pid and ep.ep.triton.running
    after = metrics(ep.url)
    assert after["TritonDeaths"] == before["TritonDeaths"] == 0
    assert httpx.get(f"{ep.url}/ping", timeout=10).status_code == 200
    np.testing.assert_array_equal(call(ep.url, "huge.tar.gz", binary=False), X + 4)
    assert "huge-never-published.tar.gz" not in models(ep.url), "refused before any load"


def test_requests_are_checked_against_the_entry_models_config(ep: Endpoint) -> None:
    publish_pipe(ep.store_dir, "contract.tar.gz", k=5)
    body, ct = encode_request({"X": X})
    # a first request refused by the contract loads the model (its config is read at load)
    bad = json.dumps({"inputs": [{"name": "X", "shape": [3], "datatype": "INT32",
                                  "data": [1, 2, 3]}]}).encode()
    doc = assert_error(post(ep.url, "contract.tar.gz", bad, "application/json"), 400,
                       "ValidationError", "'X'", "FP32", "'pipe'")
    assert namespace_for("contract.tar.gz") not in doc["message"]
    assert models(ep.url)["contract.tar.gz"]["state"] == "loaded"
    # once loaded, the same check comes first; good requests pass
    assert_error(post(ep.url, "contract.tar.gz", bad, "application/json"), 400,
                 "ValidationError", "'X'", "FP32")
    np.testing.assert_array_equal(call(ep.url, "contract.tar.gz"), X + 5)
    r = post(ep.url, "contract.tar.gz", body, ct)
    assert r.status_code == 200, r.text


def test_oversize_body_is_sagemakers_413(ep: Endpoint) -> None:
    """Over InvokeEndpoint's 6 MB Body limit: 413 with SageMaker's message and no error type,
    so boto3's ClientError code is "413", as against SageMaker."""
    from botocore.exceptions import ClientError

    from infra.endpoint.request_check import MAX_PAYLOAD_BYTES
    from infra.aws.runtime_client import runtime_client_for

    big = b" " * (MAX_PAYLOAD_BYTES + 1)
    r = post(ep.url, "any.tar.gz", big, "application/json")
    assert r.status_code == 413 and "x-amzn-errortype" not in r.headers
    assert r.json() == {"message": f"HTTP content length exceeded {MAX_PAYLOAD_BYTES} bytes."}
    with pytest.raises(ClientError) as info:
        runtime_client_for(ep.url).invoke_endpoint(EndpointName=ENDPOINT, TargetModel="any.tar.gz",
                                                   ContentType="application/json", Body=big)
    assert info.value.response["Error"]["Code"] == "413"
    assert "any.tar.gz" not in models(ep.url)


def test_unknown_target_models_leave_no_entry_behind(ep: Endpoint) -> None:
    """A request for a TargetModel with no object answers 400 and is forgotten: a client (or a
    scanner) naming many unknown models must not grow the endpoint's model table."""
    for i in range(20):
        r = httpx.post(f"{ep.url}/endpoints/{ENDPOINT}/invocations",
                       content=b'{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":[1]}]}',
                       headers={"Content-Type": "application/json",
                                "X-Amzn-SageMaker-Target-Model": f"nope-{i}.tar.gz"}, timeout=30)
        assert r.status_code == 400 and "Failed to download model data" in r.json()["message"]
    assert not [n for n in models(ep.url) if n.startswith("nope-")]
