"""Generated requests for the local endpoint, and what must hold after each one.

Shared by ``tests/test_endpoint_fuzz.py`` (a modest, reproducible number of cases in the suite)
and ``bench/fuzz.py`` (the same strategies for as long as one likes). Why a separate module: the
strategies, the two tiny models and the invariants are one definition of "the front end
survives any request", and the test and the long run must not drift apart.

The endpoint serves two tiny Python-backend ensembles, so both request paths are fuzzed:

* ``pipe.tar.gz``: ``pipe`` -> ``add`` (tests/fixtures/tiny_models.py), FP32 ``X`` dims [-1],
  ``max_batch_size`` 0, answers ``Y = X + 1``;
* ``words.tar.gz``: ``words`` -> ``count``, BYTES (``TYPE_STRING``) ``S`` dims [1],
  ``max_batch_size`` 4, answers ``N`` = the byte length of each string (INT32).

Bodies: the function-level strategies of tests/fixtures/request_strategies.py (random JSON and bytes,
lying ``json-header-size``, BYTES length prefixes), tritonclient-encoded valid requests and
mutations of them, the declared shapes that used to kill Triton, and HTTP-level oddities
(content types, TargetModel strings, endpoint names, chunked and over-size bodies).
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import orjson
from hypothesis import strategies as st
from fixtures.local_endpoint import ENDPOINT
from fixtures.tiny_models import write_pipe_repo
from fixtures import request_strategies as rs

from infra.triton.model_repo import namespace_for
from infra.endpoint.request_check import (
    BINARY_MIME_PREFIX,
    DTYPE_SIZES,
    MAX_PAYLOAD_BYTES,
    ModelContract,
    RequestRejected,
    check_request,
    contract_from_config,
)
from infra.aws.runtime_client import BINARY_CT, decode_response, encode_request
from infra.store.tarball import pack_deterministic

FP32_TARGET = "pipe.tar.gz"
BYTES_TARGET = "words.tar.gz"
MODELS = (FP32_TARGET, BYTES_TARGET)
ENTRY = {FP32_TARGET: "pipe", BYTES_TARGET: "words"}
K = np.float32(1.0)  # pipe's add: Y = X + K
TARGET_HEADER = "X-Amzn-SageMaker-Target-Model"
OCTET = "application/octet-stream"

COUNT_CONFIG = """\
name: "count"
backend: "python"
max_batch_size: 4
input [ { name: "S", data_type: TYPE_STRING, dims: [ 1 ] } ]
output [ { name: "N", data_type: TYPE_INT32, dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""

COUNT_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            s = pb_utils.get_input_tensor_by_name(request, "S").as_numpy()
            n = np.frompyfunc(len, 1, 1)(s).astype(np.int32).reshape(s.shape)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("N", n)]))
        return out
"""

WORDS_CONFIG = """\
name: "words"
platform: "ensemble"
max_batch_size: 4
input [ { name: "S", data_type: TYPE_STRING, dims: [ 1 ] } ]
output [ { name: "N", data_type: TYPE_INT32, dims: [ 1 ] } ]
ensemble_scheduling {
  step [ { model_name: "count" model_version: -1
           input_map { key: "S" value: "S" } output_map { key: "N" value: "N" } } ]
}
"""


def publish_models(store_dir: Path) -> dict[str, ModelContract]:
    """Pack both ensembles into the model prefix; return each TargetModel's request contract
    (read from the same config.pbtxt the endpoint reads: the oracle for "is this valid")."""
    contracts = {}
    with tempfile.TemporaryDirectory(prefix="fuzz-src-") as tmp:
        pipe = write_pipe_repo(Path(tmp) / "pipe", float(K))
        contracts[FP32_TARGET] = contract_from_config(pipe / "pipe" / "config.pbtxt")
        pack_deterministic(pipe, store_dir / FP32_TARGET)
        words = Path(tmp) / "words"
        (words / "count" / "1").mkdir(parents=True)
        (words / "count" / "config.pbtxt").write_text(COUNT_CONFIG)
        (words / "count" / "1" / "model.py").write_text(COUNT_MODEL)
        (words / "words" / "1").mkdir(parents=True)
        (words / "words" / "config.pbtxt").write_text(WORDS_CONFIG)
        contracts[BYTES_TARGET] = contract_from_config(words / "words" / "config.pbtxt")
        pack_deterministic(words, store_dir / BYTES_TARGET)
    return contracts


# ---------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One HTTP request to the endpoint. ``None`` headers are not sent at all."""

    kind: str  # the strategy (and mutation) that made it: the summary counts by kind
    target: str | None
    content_type: str | None
    body: bytes
    endpoint: str = ENDPOINT  # the name in the URL
    chunked: bool = False  # Transfer-Encoding: chunked instead of Content-Length
    valid: bool = False  # valid by construction: must answer 200 with the right answer

    def describe(self) -> dict[str, Any]:
        """Everything but the body, for a report (the body goes to a file of its own)."""
        doc = asdict(self)
        doc.pop("body")
        doc["body_bytes"] = len(self.body)
        return doc


def sendable(value: str) -> str:
    """``value`` as an HTTP client can send it: latin-1 without control characters, no outer
    blanks (what the server can receive at all)."""
    kept = "".join(c for c in value if 0x20 <= ord(c) <= 0xFF and not 0x7F <= ord(c) <= 0x9F)
    return kept.strip(" ")


# Header values h11 will send: visible latin-1, inner blanks (no control characters)
_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                     exclude_characters="\x7f", exclude_categories=["Cc"]),
                       max_size=40).map(lambda s: s.strip(" "))
content_types = st.one_of(
    st.sampled_from(["application/json", OCTET, "", "text/csv", "application/x-npy",
                     "application/json; charset=utf-8", f"{BINARY_MIME_PREFIX}0",
                     f"{BINARY_MIME_PREFIX}{2**64}", f"{BINARY_MIME_PREFIX}-5",
                     "Application/vnd.sagemaker-triton.binary+json;json-header-size=5",
                     f"text/plain, {BINARY_MIME_PREFIX}10"]),
    _header_text.map(lambda s: f"{BINARY_MIME_PREFIX}{s}"), _header_text)
odd_targets = st.one_of(
    st.sampled_from(["nope.tar.gz", "../pipe.tar.gz", "/pipe.tar.gz", "pipe.tar.gz/..",
                     "a\\b", "pipe", "PIPE.TAR.GZ", "pipe.tar.gz\u00a0", "x" * 1025, "",
                     "%2e%2e/pipe.tar.gz", "words.tar.gz/x", "\u00e9t\u00e9.tar.gz"]),
    _header_text)
# mostly the two real models, so bodies reach the deep checks (and Triton)
targets = st.one_of(st.sampled_from(MODELS), st.sampled_from(MODELS), st.sampled_from(MODELS),
                    odd_targets)
ATTACK_SHAPES = [[1, 10**12], [10**12], [2**62, 2**62], [2**63], [2**63 - 1], [2**64], [-1],
                 [1, -1], [0, 2**40], [2**31, 2**31, 4], [3, 2**61], [2**32], [4, 2**30],
                 [1, 1, 1, 1, 1, 1, 1, 10**7], [1, 2**63 - 1], [2**21, 2**21, 2**21]]


@st.composite
def random_requests(draw: st.DrawFn) -> Case:
    """tests/fixtures/request_strategies.py's any-body strategy, sent over HTTP to a TargetModel."""
    ct, body = draw(rs.any_request())
    return Case("random", draw(targets), sendable(ct), body)


@st.composite
def valid_requests(draw: st.DrawFn, target: str | None = None) -> Case:
    """A request the model must answer correctly: tritonclient's encoder, binary or JSON."""
    target = draw(st.sampled_from(MODELS)) if target is None else target
    binary = draw(st.booleans())
    if target == FP32_TARGET:
        xs = draw(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False),
                           max_size=6))
        inputs = {"X": np.array(xs, dtype=np.float32)}
    else:
        texts = draw(st.lists(st.text(max_size=6), min_size=1, max_size=4))
        inputs = {"S": np.array([t.encode() for t in texts] + [b""], dtype=object)[:-1]
                  .reshape(-1, 1)}
    outputs = draw(st.sampled_from([None, ["Y" if target == FP32_TARGET else "N"]]))
    body, ct = encode_request(inputs, binary=binary, outputs=outputs)
    return Case("valid", target, ct, body, valid=True)


def _dumps(doc: Any) -> bytes:
    """Compact JSON that, unlike orjson, writes integers past 64 bits (2**64 in a shape)."""
    return json.dumps(doc, separators=(",", ":")).encode()


def _split(case: Case) -> tuple[dict[str, Any], bytes]:
    ct = case.content_type or ""
    size = int(ct.rsplit("=", 1)[1]) if "=" in ct else None
    return orjson.loads(case.body[:size]), case.body[size:] if size is not None else b""


def _join(draw: st.DrawFn, doc: dict[str, Any], tail: bytes) -> tuple[str, bytes]:
    head = _dumps(doc)
    if tail or draw(st.booleans()):
        return f"{BINARY_CT};json-header-size={len(head)}", head + tail
    return "application/json", head


def _lie_field(draw: st.DrawFn, doc: dict[str, Any], tail: bytes) -> tuple[str, bytes]:
    t = doc["inputs"][0]
    key = draw(st.sampled_from(["shape", "shape", "datatype", "data", "parameters", "name"]))
    t[key] = draw({"shape": st.one_of(st.lists(rs.dims, max_size=4), st.sampled_from(ATTACK_SHAPES)),
                   "datatype": st.sampled_from(sorted(DTYPE_SIZES)),
                   "data": st.one_of(rs.numbers, rs.values), "parameters": rs.params,
                   "name": st.sampled_from(["X", "S", "INPUT", ""])}[key])
    return _join(draw, doc, tail)


def _lie_binary_size(draw: st.DrawFn, doc: dict[str, Any], tail: bytes) -> tuple[str, bytes]:
    params = doc["inputs"][0].setdefault("parameters", {})
    real = params.get("binary_data_size", len(tail))
    params["binary_data_size"] = draw(st.one_of(
        st.integers(real - 5, real + 5), st.sampled_from([2**31, 2**32, 2**63 - 1, 2**64, -1]),
        st.sampled_from([None, "4", 4.0, True, [4]])))
    return _join(draw, doc, tail)


def _lie_bytes_prefix(draw: st.DrawFn, doc: dict[str, Any], tail: bytes) -> tuple[str, bytes]:
    """Overwrite a 4-byte length prefix of the BYTES section (any 4 bytes if not BYTES)."""
    if len(tail) >= 4:
        starts, pos = [], 0
        while pos + 4 <= len(tail) and doc["inputs"][0]["datatype"] == "BYTES":
            starts.append(pos)
            pos += 4 + struct.unpack_from("<I", tail, pos)[0]
        at = draw(st.sampled_from(starts or range(len(tail) - 3)))
        real = struct.unpack_from("<I", tail, at)[0]
        lie = draw(st.one_of(st.sampled_from([0, 1, 2**31, 2**32 - 1, real + 1,
                                              max(real - 1, 0)]),
                             st.integers(0, 2**32 - 1)))
        tail = tail[:at] + struct.pack("<I", lie) + tail[at + 4:]
    return _join(draw, doc, tail)


def _lie_outputs(draw: st.DrawFn, doc: dict[str, Any], tail: bytes) -> tuple[str, bytes]:
    """Requested outputs with parameters that change the answer's layout."""
    out_params = st.dictionaries(st.sampled_from(["binary_data", "classification", "x"]),
                                 st.one_of(st.booleans(), st.integers(-1, 3), rs.values), max_size=2)
    doc["outputs"] = draw(st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(["Y", "N", "OUTPUT"])}, optional={"parameters": out_params}),
        max_size=2, unique_by=lambda o: str(o["name"])))
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": draw(st.one_of(st.booleans(), rs.values))}
    return _join(draw, doc, tail)


_EXTREMES: dict[str, list[Any]] = {
    "FP32": [1e308, -1e308, 3.5e38, -3.5e38, 1e-320, -0.0, 2**63, -(2**63), 2**64 - 1,
             2**53 + 1, 16777217, 2**70, 0.1],
    "BYTES": ["", "\x00", "\u00e9", "\U0001f600", "a" * 1000, "\\", '"', "\ud7ff"],
}


def _renest(draw: st.DrawFn, flat: list[Any]) -> list[Any]:
    """The same values, in the same order, under another (ragged) nesting of lists."""
    if len(flat) < 2 or draw(st.booleans()):
        return [*flat, []] if draw(st.booleans()) else list(flat)
    k = draw(st.integers(1, len(flat) - 1))
    left, right = _renest(draw, flat[:k]), _renest(draw, flat[k:])
    return [left, *right] if draw(st.booleans()) else [*left, right]


def _lie_values(draw: st.DrawFn, doc: dict[str, Any], tail: bytes) -> tuple[str, bytes]:
    """JSON data: extreme values of the right type, or a ragged nesting: still valid, so the
    answer is compared with what the model must compute. A binary input is left as it is."""
    t = doc["inputs"][0]
    if "data" in t:
        flat = _flatten(t["data"])
        pool = _EXTREMES.get(t["datatype"], [0])
        flat = [draw(st.sampled_from(pool)) if draw(st.booleans()) else v for v in flat]
        t["data"] = _renest(draw, flat)
    return _join(draw, doc, tail)


def _cut_bytes(draw: st.DrawFn, case: Case) -> tuple[str | None, bytes]:
    body, how = case.body, draw(st.sampled_from(["truncate", "extend", "flip"]))
    if how == "truncate" or not body:
        return case.content_type, body[:draw(st.integers(0, max(len(body) - 1, 0)))]
    if how == "extend":
        return case.content_type, body + draw(st.binary(min_size=1, max_size=16))
    k = draw(st.integers(0, len(body) - 1))
    return case.content_type, body[:k] + bytes([body[k] ^ draw(st.integers(1, 255))]) + body[k + 1:]


def _lie_header_size(draw: st.DrawFn, case: Case) -> tuple[str | None, bytes]:
    ct = case.content_type or ""
    size = int(ct.rsplit("=", 1)[1]) if "=" in ct else len(case.body)
    lie = draw(st.one_of(st.integers(-3, 3), st.integers(-size - 2, len(case.body) + 3)))
    return f"{BINARY_MIME_PREFIX}{size + lie}", case.body


_DOC_MUTATIONS: dict[str, Callable[..., tuple[str, bytes]]] = {
    "field": _lie_field, "binary_data_size": _lie_binary_size,
    "bytes_prefix": _lie_bytes_prefix, "outputs": _lie_outputs, "values": _lie_values}
_RAW_MUTATIONS = {"bytes": _cut_bytes, "json_header_size": _lie_header_size}


@st.composite
def mutated_requests(draw: st.DrawFn) -> Case:
    """A valid tritonclient-encoded request with one thing broken (or sent elsewhere)."""
    base = draw(valid_requests())
    how = draw(st.sampled_from([*_DOC_MUTATIONS, *_RAW_MUTATIONS, "content_type", "target"]))
    target, ct, body = base.target, base.content_type, base.body
    if how in _DOC_MUTATIONS:
        doc, tail = _split(base)
        ct, body = _DOC_MUTATIONS[how](draw, doc, tail)
    elif how in _RAW_MUTATIONS:
        ct, body = _RAW_MUTATIONS[how](draw, base)
    elif how == "content_type":
        ct = draw(content_types)
    else:  # the other model's body, or an unknown TargetModel
        target = draw(st.one_of(st.sampled_from([m for m in MODELS if m != base.target]),
                                odd_targets))
    return Case(f"mutated:{how}", target, ct, body)


@st.composite
def shape_attacks(draw: st.DrawFn) -> Case:
    """Huge, negative and int64-overflowing declared shapes with a few values (JSON) or a
    few bytes (binary): what made tritonserver abort or a Python stub die (issue 8, 2-3)."""
    target = draw(st.sampled_from(MODELS))
    name = {FP32_TARGET: "X", BYTES_TARGET: "S"}[target]
    dtype = draw(st.sampled_from(["FP32", "BYTES", "UINT8", "INT64", "FP16"]))
    t: dict[str, Any] = {"name": name, "datatype": dtype, "shape": draw(st.sampled_from(ATTACK_SHAPES))}
    if draw(st.booleans()):
        t["data"] = ["ab", "c", ""] if dtype == "BYTES" else [1, 2, 3]
        return Case("shape_attack:json", target, draw(st.sampled_from(["application/json", OCTET])),
                    _dumps({"inputs": [t]}))
    tail = struct.pack("<I", 2) + b"ab" if dtype == "BYTES" else b"\0" * draw(st.integers(0, 12))
    t["parameters"] = {"binary_data_size": len(tail)}
    head = _dumps({"inputs": [t]})
    return Case("shape_attack:binary", target, f"{BINARY_CT};json-header-size={len(head)}",
                head + tail)


def _padded_to(size: int) -> bytes:
    """A valid JSON request for ``pipe`` padded with trailing blanks to exactly ``size`` bytes."""
    body, _ = encode_request({"X": np.array([1.0, 2.0], dtype=np.float32)}, binary=False)
    return body + b" " * (size - len(body))


@st.composite
def http_oddities(draw: st.DrawFn) -> Case:
    """What is wrong is the HTTP request itself: names, headers, framing, size."""
    base = draw(st.one_of(valid_requests(), random_requests()))
    how = draw(st.sampled_from(["endpoint", "no_target", "no_content_type", "chunked",
                                "over_size", "at_size", "empty"]))
    if how == "endpoint":
        name = draw(st.text("abcdefghijklmnopqrstuvwxyzABC0123456789-", min_size=1, max_size=63)
                    .filter(lambda n: n != ENDPOINT))
        return Case("http:endpoint", base.target, base.content_type, base.body, endpoint=name)
    if how == "no_target":
        return Case("http:no_target", None, base.content_type, base.body)
    if how == "no_content_type":
        return Case("http:no_content_type", base.target, None, base.body)
    if how == "chunked":
        return Case("http:chunked", base.target, base.content_type, base.body, chunked=True,
                    valid=base.valid)
    if how in ("over_size", "at_size"):  # at the limit it is valid; one byte over, a 413
        over = how == "over_size"
        return Case(f"http:{how}", FP32_TARGET, "application/json",
                    _padded_to(MAX_PAYLOAD_BYTES + over), chunked=draw(st.booleans()),
                    valid=not over)
    return Case("http:empty", base.target, base.content_type, b"")


def all_requests() -> st.SearchStrategy[Case]:
    return st.one_of(random_requests(), mutated_requests(), valid_requests(), shape_attacks(),
                     http_oddities())


# ---------------------------------------------------------------------------------- oracle
def _flatten(data: Any) -> list[Any]:
    """Nested JSON data, row-major, as Triton reads it."""
    if not isinstance(data, list):
        return [data]
    return [v for item in data for v in _flatten(item)]


def _tensor(t: dict[str, Any], body: bytes, offset: int) -> tuple[np.ndarray, int]:
    """One input of an accepted request as the model sees it, and the next binary offset."""
    shape = t["shape"]
    size = (t.get("parameters") or {}).get("binary_data_size")
    if size is None:
        flat = _flatten(t["data"])
        if t["datatype"] == "BYTES":
            return np.array([s.encode() for s in flat] + [b""], dtype=object)[:-1].reshape(shape), offset
        return np.array(flat, dtype=np.float64).astype(np.float32).reshape(shape), offset
    raw = body[offset:offset + size]
    if t["datatype"] != "BYTES":
        return np.frombuffer(raw, dtype=np.float32).reshape(shape), offset + size
    items, pos = [], 0
    while pos < len(raw):
        (n,) = struct.unpack_from("<I", raw, pos)
        items.append(raw[pos + 4:pos + 4 + n])
        pos += 4 + n
    return np.array(items + [b""], dtype=object)[:-1].reshape(shape), offset + size


def expected_answer(target: str, content_type: str, body: bytes) -> dict[str, np.ndarray]:
    """The model's outputs for a request ``check_request`` accepted (Y = X + 1; N = lengths)."""
    size = check_request(content_type, body, None).json_header_size
    doc = orjson.loads(body if size is None else body[:size])
    offset = len(body) if size is None else size
    (t,) = doc["inputs"]
    arr, _ = _tensor(t, body, offset)
    with np.errstate(over="ignore", invalid="ignore"):
        if target == FP32_TARGET:
            return {"Y": (arr + K).astype(np.float32)}
        return {"N": np.frompyfunc(len, 1, 1)(arr).astype(np.int32).reshape(arr.shape)}


def checker_accepts(case: Case, contracts: dict[str, ModelContract]) -> bool:
    """Would the endpoint's own rules let this request through to a model?"""
    if case.endpoint != ENDPOINT or case.target not in contracts:
        return False
    try:
        check_request(case.content_type or "", case.body, contracts[case.target])
    except RequestRejected:
        return False
    return True


def _classification(body: bytes, content_type: str | None) -> bool:
    """Requests whose answer is not the plain numeric output (classification, or odd output
    parameters): the answer is decoded but not compared."""
    try:
        size = check_request(content_type or "", body, None).json_header_size
        doc = orjson.loads(body if size is None else body[:size])
    except (RequestRejected, ValueError):
        return True
    return any(set(o.get("parameters") or {}) - {"binary_data"} for o in doc.get("outputs") or [])


# ---------------------------------------------------------------------------------- invariants
class EndpointWatch:
    """Sends cases to one running endpoint and says what broke after each one.

    Invariants, after every case: the answer is a 2xx exactly for the requests the endpoint's
    rules (``check_request`` with the model's contract) accept, and then the model's correct
    answer under the tarball's own model name (both models take any request those rules accept,
    so a refusal there means validation let through what Triton refuses); otherwise a 4xx with
    a JSON body holding a string ``message`` (a 5xx for a client's request counts as a
    violation: nothing here may take Triton or a model down). No host path of the cache and no
    internal model name in any answer. ``/ping`` is 200; Triton's pid and generation are
    unchanged and ``/metrics`` counts no Triton death, restart, failed start or stub failure;
    and a good request to the other model (both, after an unknown TargetModel) still answers
    correctly.
    """

    def __init__(self, url: str, cache_dir: Path, contracts: dict[str, ModelContract]):
        self.client = httpx.Client(base_url=url, timeout=120)
        self.contracts = contracts
        self.secrets = sorted({str(cache_dir), str(cache_dir.resolve()),
                               *(namespace_for(m) + "_" for m in MODELS)})
        for target in MODELS:  # load both models; then take the baseline
            problem = self.good_request(target)
            assert problem is None, problem
        self.baseline = self.triton_state()

    def close(self) -> None:
        self.client.close()

    def send(self, case: Case) -> httpx.Response:
        headers = []
        if case.content_type is not None:
            headers.append((b"content-type", case.content_type.encode("latin-1")))
        if case.target is not None:
            headers.append((TARGET_HEADER.encode(), case.target.encode("latin-1")))
        content = iter([case.body]) if case.chunked else case.body
        return self.client.post(f"/endpoints/{quote(case.endpoint, safe='')}/invocations",
                                content=content, headers=headers)

    def triton_state(self) -> dict[str, Any]:
        triton = self.client.get("/models").json()["triton"]
        m = self.client.get("/metrics").json()
        return {"pid": triton["pid"], "generation": triton["generation"],
                "state": triton["state"],
                **{k: m[k] for k in ("TritonDeaths", "TritonRestarts", "TritonFailedStarts",
                                     "StubFailures")}}

    def good_request(self, target: str) -> str | None:
        """A known-good request (binary+json) to ``target``; a problem, or None."""
        if target == FP32_TARGET:
            inputs = {"X": np.array([1.5, -2.0, 3.25], dtype=np.float32)}
        else:
            inputs = {"S": np.array([[b"abc"], [b""], [b"hello!"]], dtype=object)}
        body, ct = encode_request(inputs)
        r = self.send(Case("good", target, ct, body))
        return self.answer_problem(Case("good", target, ct, body, valid=True), r)

    def answer_problem(self, case: Case, r: httpx.Response) -> str | None:
        """What is wrong with a 2xx answer (wrong numbers, wrong name), or with a refusal."""
        if not 200 <= r.status_code < 300:
            if case.valid:
                return f"a valid request got {r.status_code}: {r.text[:300]}"
            if checker_accepts(case, self.contracts):  # validation let through what Triton refuses
                return f"{r.status_code} for a request the endpoint's rules accept: {r.text[:300]}"
            return _refusal_problem(r)
        if not checker_accepts(case, self.contracts) or case.target is None:
            return f"{r.status_code} for a request the endpoint's rules refuse"
        try:
            got = decode_response(r.content, r.headers["content-type"])
            name = _model_name(r)
        except Exception as e:  # noqa: BLE001 - any undecodable answer is the finding
            return f"{r.status_code} answer cannot be decoded: {type(e).__name__}: {e}"
        if name != ENTRY[case.target]:
            return f"answer names model {name!r}, not {ENTRY[case.target]!r}"
        if _classification(case.body, case.content_type):
            return None
        want = expected_answer(case.target, case.content_type or "", case.body)
        for k, v in want.items():
            if k not in got or got[k].shape != v.shape or not np.array_equal(got[k], v,
                                                                          equal_nan=True):
                return f"wrong answer for {k}: got {got.get(k)!r}, expected {v!r}"
        return None

    def violations(self, case: Case, r: httpx.Response) -> list[str]:
        """Every invariant broken by ``case`` (answered ``r``); empty when all hold."""
        out = []
        problem = self.answer_problem(case, r)
        if problem:
            out.append(problem)
        text = r.content.decode("latin-1")
        out += [f"the answer leaks {s!r}" for s in self.secrets if s in text]
        ping = self.client.get("/ping")
        if ping.status_code != 200:
            out.append(f"/ping answers {ping.status_code}: {ping.text[:200]}")
        state = self.triton_state()
        if state != self.baseline:
            out.append(f"Triton state changed: {self.baseline} -> {state}")
        others = [m for m in MODELS if m != case.target]
        out += [f"good request to {m}: {p}" for m in others if (p := self.good_request(m))]
        return out

    def rebaseline(self) -> None:
        """After a violation: take the endpoint as it is now, so one finding is counted once."""
        self.baseline = self.triton_state()


def _refusal_problem(r: httpx.Response) -> str | None:
    if r.status_code >= 500:
        return f"{r.status_code} for a client's request: {r.text[:300]}"
    if r.status_code < 400:
        return f"status {r.status_code} is neither a 2xx nor an error"
    try:
        doc = r.json()
    except ValueError:
        return f"{r.status_code} answer is not JSON: {r.text[:200]!r}"
    if not isinstance(doc, dict) or not isinstance(doc.get("message"), str) or not doc["message"]:
        return f"{r.status_code} answer has no string \"message\": {r.text[:200]!r}"
    return None


def _model_name(r: httpx.Response) -> Any:
    ct = r.headers["content-type"]
    size = int(ct.rsplit("=", 1)[1]) if "json-header-size=" in ct else None
    return orjson.loads(r.content if size is None else r.content[:size]).get("model_name")
