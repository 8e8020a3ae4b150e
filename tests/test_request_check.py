"""Tests for infra.endpoint.request_check: every request is checked before it can reach Triton.

Bodies are the real ones: built with tritonclient's encoder (``infra.aws.runtime_client``), the AWS
sample's KServe JSON, and the catalog ensembles' own configs rendered by ``ensembles.render``.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from fixtures import request_strategies as rs

from ensembles.catalog import load_ensemble
from ensembles.render import render_repository
from infra.endpoint.request_check import (
    BINARY_MIME_PREFIX,
    MAX_PAYLOAD_BYTES,
    ContractError,
    ModelContract,
    RequestRejected,
    TensorSpec,
    TritonRequest,
    check_request,
    contract_from_config,
)
from infra.aws.runtime_client import encode_request, pack_images
from tasks.build.verify import sample_image

OCTET = "application/octet-stream"
IMAGE = ModelContract("image_classifier", {"INPUT": TensorSpec("INPUT", "UINT8", (-1,))},
                      frozenset({"OUTPUT"}), 8)
TEXT = ModelContract("text_embedding", {"INPUT0": TensorSpec("INPUT0", "BYTES", (1,))},
                     frozenset({"finaloutput"}), 16)


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return sample_image("skimage:chelsea")


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    spec, _ = load_ensemble("text_embedding")
    return [str(s) for s in spec.validation.params["sentences"]]


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode()


def _one(name: str = "INPUT", shape: list | None = None, datatype: str = "UINT8",
         **fields: object) -> bytes:
    t: dict = {"name": name, "shape": [1, 3] if shape is None else shape, "datatype": datatype}
    t.update(fields)
    return _json({"inputs": [t]})


def _rejected(content_type: str, body: bytes, contract: ModelContract | None = None,
              **kw: int) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        check_request(content_type, body, contract, **kw)
    err = info.value
    assert "\n" not in err.message and err.message == str(err)
    return err


def _binary(header: dict, tail: bytes) -> tuple[bytes, str]:
    """A binary+json body with an arbitrary (possibly lying) header and binary section."""
    raw = json.dumps(header).encode()
    return raw + tail, f"{BINARY_MIME_PREFIX}{len(raw)}"


# ---------------------------------------------------------------------------------- rule 1
def test_aws_sample_json_body_with_octet_stream_is_accepted(jpeg: bytes) -> None:
    """The sample's exact call: KServe JSON, nested data, ContentType application/octet-stream."""
    payload = {"inputs": [{"name": "INPUT", "shape": [1, len(jpeg)], "datatype": "UINT8",
                           "data": [list(jpeg)]}]}
    body = json.dumps(payload).encode()
    for contract in (None, IMAGE):
        got = check_request(OCTET, body, contract)
        assert got == TritonRequest({"Content-Type": "application/json"}, None)


@pytest.mark.parametrize("content_type", [
    "application/json", OCTET, "", "text/csv", "application/x-npy",
    "application/vnd.sagemaker-triton.json",
    # SageMaker's match is exact and case-sensitive: these are read as all-JSON bodies
    "Application/vnd.sagemaker-triton.binary+json;json-header-size=5",
    "application/vnd.sagemaker-triton.binary+json; json-header-size=5",
])
def test_any_other_content_type_means_the_whole_body_is_json(content_type: str) -> None:
    body = _one(data=[1, 2, 3])
    assert check_request(content_type, body, IMAGE).json_header_size is None


def test_binary_body_without_the_binary_content_type_is_refused_with_a_hint(jpeg: bytes) -> None:
    body, _ = encode_request({"INPUT": pack_images([jpeg])})
    err = _rejected(OCTET, body, IMAGE)
    assert err.status == 400 and err.code == "ValidationError"
    assert "not valid JSON" in err.message and BINARY_MIME_PREFIX in err.message
    spaced = "application/vnd.sagemaker-triton.binary+json; json-header-size=10"
    assert "read as all JSON" in _rejected(spaced, body).message


def test_binary_body_with_the_binary_content_type_is_accepted(jpeg: bytes) -> None:
    body, ct = encode_request({"INPUT": pack_images([jpeg])})
    size = int(ct.rsplit("=", 1)[1])
    got = check_request(ct, body, IMAGE)
    assert got.json_header_size == size
    assert got.headers == {"Content-Type": "application/octet-stream",
                           "Inference-Header-Content-Length": str(size)}
    # the header size is read like C's atoi: leading blanks, trailing parameters ignored
    assert check_request(f"{BINARY_MIME_PREFIX} {size};charset=x", body, IMAGE) == got


@pytest.mark.parametrize("content_type, words", [
    (f"text/plain, {BINARY_MIME_PREFIX}10", "expect MIME type for binary data starts with"),
    (f"{BINARY_MIME_PREFIX}abc", "Unable to parse inference header size"),
    (f"{BINARY_MIME_PREFIX}", "Unable to parse inference header size"),
    (f"{BINARY_MIME_PREFIX}-1", "should be in range"),
])
def test_content_types_sagemaker_refuses_are_refused(content_type: str, words: str) -> None:
    assert words in _rejected(content_type, _one(data=[1, 2, 3])).message


# ---------------------------------------------------------------------------------- rule 2
def test_payload_over_the_limit_is_413_like_sagemaker() -> None:
    body = _one(data=[1, 2, 3])
    padded = body + b" " * (1000 - len(body))  # trailing blanks: still valid JSON
    assert check_request("application/json", padded, None, max_bytes=1000).json_header_size is None
    err = _rejected("application/json", padded + b" ", max_bytes=1000)
    assert (err.status, err.code, err.message) == (413, "413", "HTTP content length exceeded 1000 bytes.")
    assert MAX_PAYLOAD_BYTES == 6291456
    big = _rejected("application/json", b" " * (MAX_PAYLOAD_BYTES + 1))
    assert big.status == 413 and str(MAX_PAYLOAD_BYTES) in big.message


# ---------------------------------------------------------------------------------- rule 3
@pytest.mark.parametrize("body, words", [
    (b"[]", "non-empty \"inputs\" list"),
    (b"{}", "non-empty \"inputs\" list"),
    (b'{"inputs": []}', "non-empty \"inputs\" list"),
    (b'{"inputs": {"name": "INPUT"}}', "non-empty \"inputs\" list"),
    (b'{"inputs": [7]}', "inputs[0] must be an object"),
    (b'{"inputs": [{"shape": [1], "datatype": "UINT8", "data": [1]}]}', "inputs[0]: \"name\""),
    (b'{"inputs": [{"name": 3, "shape": [1], "datatype": "UINT8", "data": [1]}]}', "inputs[0]: \"name\""),
    (_one(shape=None, data=[1, 2, 3]).replace(b"[1, 3]", b"3"), "\"shape\" must be a list"),
    (_one(shape=[1, True, 3], data=[1, 2, 3]), "list holding true"),
    (_one(shape=[1, 3.0], data=[1, 2, 3]), "list holding 3.0"),
    (_one(shape=[1, -3], data=[1, 2, 3]), "negative dimension"),
    (_one(datatype="FLOAT32", data=[1, 2, 3]), "'FLOAT32' is not a Triton datatype"),
    (_one(datatype="uint8", data=[1, 2, 3]), "'uint8' is not a Triton datatype"),
    (_one(datatype=None, data=[1, 2, 3]), "null is not a Triton datatype"),
    (_one(), "neither \"data\" nor parameters.binary_data_size"),
    (_one(data=[1, 2, 3], parameters=[1]), "\"parameters\" must be an object"),
    (_json({"inputs": [{"name": "A", "shape": [1], "datatype": "UINT8", "data": [1]}] * 2}),
     "input 'A' is given twice"),
    (_json({"inputs": [{"name": "A", "shape": [1], "datatype": "UINT8", "data": [1]}],
            "outputs": {"name": "OUTPUT"}}), "\"outputs\" must be a list"),
    (_json({"inputs": [{"name": "A", "shape": [1], "datatype": "UINT8", "data": [1]}],
            "outputs": [{"nom": "OUTPUT"}]}), "outputs[0] must be an object with a string"),
    (_json({"inputs": [{"name": "A", "shape": [1], "datatype": "UINT8", "data": [1]}],
            "outputs": ["OUTPUT"]}), "outputs[0] must be an object with a string"),
    (_json({"inputs": [{"name": "A", "shape": [1], "datatype": "UINT8", "data": [1]}],
            "outputs": [{"name": "O"}, {"name": "O"}]}), "output 'O' is requested twice"),
    (_json({"inputs": [{"name": "A", "shape": [1], "datatype": "UINT8", "data": [1]}], "id": 5}),
     "\"id\" must be a string"),
])
def test_malformed_json_header_is_refused_naming_the_field(body: bytes, words: str) -> None:
    err = _rejected("application/json", body)
    assert err.status == 400 and words in err.message


@pytest.mark.parametrize("datatype, nbytes", [("UINT8", 10**12), ("FP32", 4 * 10**12)])
def test_huge_shape_with_few_values_is_refused(datatype: str, nbytes: int) -> None:
    """The request that made tritonserver 2.51 abort with std::bad_alloc."""
    err = _rejected("application/json", _one(shape=[1, 10**12], datatype=datatype, data=[1, 2, 3]))
    assert err.message == (f"input 'INPUT': shape [1, 1000000000000] has 1000000000000 elements "
                           f"({nbytes} bytes as {datatype}), over the 6291456-byte payload limit")
    # the same shape with its (few) bytes in a binary section
    body, ct = _binary({"inputs": [{"name": "INPUT", "shape": [1, 10**12], "datatype": datatype,
                                    "parameters": {"binary_data_size": 3}}]}, b"abc")
    assert "1000000000000 elements" in _rejected(ct, body, IMAGE).message


def test_shapes_overflowing_int64_are_refused() -> None:
    """[2**62, 2**62] passes Triton's own checks and kills the model's Python stub."""
    err = _rejected("application/json", _one(shape=[2**62, 2**62], data=[1, 2, 3]))
    assert "shape [4611686018427387904, 4611686018427387904]" in err.message
    assert "overflows int64" in err.message and err.message.startswith("input 'INPUT'")
    assert "over int64" in _rejected("application/json", _one(shape=[2**63], data=[1])).message
    # past 64 bits JSON integers are read as doubles (as Triton's rapidjson does)
    assert "list holding 1.8446744073709552e+19" in _rejected("application/json", _one(shape=[2**64], data=[1])).message
    # zero elements however large the other dims (Triton computes the same product)
    assert check_request("application/json", _one(shape=[0, 2**40], data=[]), None)
    # BYTES: every element needs at least its 4-byte length prefix
    err = _rejected("application/json", _one(shape=[2, 10**6], datatype="BYTES", data=["a"]))
    assert "at least 8000000 bytes as BYTES" in err.message


@pytest.mark.parametrize("where", ["input", "output", "request"])
@pytest.mark.parametrize("key", ["shared_memory_region", "shared_memory_byte_size",
                                 "shared_memory_offset"])
def test_shared_memory_parameters_are_refused(where: str, key: str) -> None:
    t = {"name": "INPUT", "shape": [1, 3], "datatype": "UINT8", "data": [1, 2, 3]}
    doc: dict = {"inputs": [t]}
    if where == "input":
        t["parameters"] = {key: "region0"}
    elif where == "output":
        doc["outputs"] = [{"name": "OUTPUT", "parameters": {key: "region0"}}]
    else:
        doc["parameters"] = {key: 0}
    err = _rejected("application/json", _json(doc), IMAGE)
    assert key in err.message and "shared memory" in err.message
    assert {"input": "input 'INPUT'", "output": "output 'OUTPUT'",
            "request": "the request"}[where] in err.message


# ---------------------------------------------------------------------------------- rule 4
def test_json_value_count_must_equal_the_element_count() -> None:
    assert check_request("application/json", _one(shape=[2, 2], data=[[1, 2], [3, 4]]), None)
    assert check_request("application/json", _one(shape=[2, 2], data=[1, 2, 3, 4]), None)
    assert check_request("application/json", _one(shape=[2, 2], data=[[[1], [2]], [3, [4]]]), None)
    err = _rejected("application/json", _one(shape=[1, 4], data=[[1, 2, 3]]))
    assert err.message == "input 'INPUT': shape [1, 4] has 4 elements but \"data\" holds 3 values"
    assert "holds 5 values" in _rejected("application/json", _one(shape=[1, 4], data=[[1, 2], [3, [4, 5]]])).message
    assert "\"data\" must be a list" in _rejected("application/json", _one(shape=[1], data=7)).message


@pytest.mark.parametrize("datatype, data, ok", [
    ("UINT8", [0, 255], True), ("UINT8", [300, 1], False), ("UINT8", [-1, 1], False),
    ("UINT8", [1.5, 1], False), ("UINT8", [True, 1], False), ("UINT8", ["1", 1], False),
    ("INT64", [-(2**63), 2**63 - 1], True), ("INT64", [2**63, 1], False),
    ("UINT64", [2**64 - 1, 0], True), ("INT8", [-129, 0], False),
    ("FP32", [1, 2.5], True), ("FP32", ["1.0", 2.0], False), ("FP32", [None, 1.0], False),
    ("FP64", [True, 1.0], False), ("INT64", [10**30, 1], False),
    ("BOOL", [True, False], True), ("BOOL", [1, 0], False),
    ("BYTES", ["a", ""], True), ("BYTES", [5, "a"], False),
    ("FP16", [1.0, 2.0], False), ("BF16", [1.0, 2.0], False),
])
def test_json_value_types_must_suit_the_datatype(datatype: str, data: list, ok: bool) -> None:
    body = _one(shape=[2], datatype=datatype, data=data)
    if ok:
        assert check_request("application/json", body, None).json_header_size is None
    else:
        err = _rejected("application/json", body)
        assert err.message.startswith("input 'INPUT'") and datatype in err.message


def test_non_finite_json_numbers_are_refused() -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"1" + b"0" * 400):
        body = b'{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":[' + literal + b"]}]}"
        err = _rejected("application/json", body)
        assert "not valid JSON" in err.message or "outside the range of a double" in err.message


def test_invalid_utf8_and_deep_nesting_are_refused_not_crashed() -> None:
    assert "not valid JSON" in _rejected("application/json", b'{"inputs": "\xff"}').message
    deep = b'{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":' + b"[" * 100_000
    assert "not valid JSON" in _rejected("application/json", deep + b"]" * 100_000 + b"}]}").message


# ---------------------------------------------------------------------------------- rule 5
def test_binary_sizes_must_fill_the_binary_section_exactly() -> None:
    head = {"inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "UINT8",
                        "parameters": {"binary_data_size": 4}}]}
    body, ct = _binary(head, b"abcd")
    assert check_request(ct, body, IMAGE).json_header_size == len(body) - 4
    err = _rejected(ct, body[:-1], IMAGE)  # truncated
    assert "binary_data_size is 4 but only 3 bytes" in err.message and "input 'INPUT'" in err.message
    assert "1 bytes after the JSON header and the inputs' binary data" in _rejected(ct, body + b"x").message
    head["inputs"][0]["parameters"]["binary_data_size"] = 3
    body, ct = _binary(head, b"abc")
    assert "shape [1, 4] of UINT8 needs 4 bytes" in _rejected(ct, body).message
    head["inputs"][0]["shape"] = [1, 3]
    head["inputs"][0]["datatype"] = "FP32"
    body, ct = _binary(head, b"abc")
    assert "needs 12 bytes" in _rejected(ct, body).message


def test_binary_sizes_without_a_binary_section_are_refused() -> None:
    body = _one(shape=[1, 3], parameters={"binary_data_size": 3})
    err = _rejected("application/json", body)
    assert "no binary section" in err.message and BINARY_MIME_PREFIX in err.message
    assert "is the whole body" in _rejected(f"{BINARY_MIME_PREFIX}{len(body)}", body).message
    both = _one(shape=[1, 3], data=[1, 2, 3], parameters={"binary_data_size": 3})
    assert "both \"data\" and parameters.binary_data_size" in _rejected("application/json", both).message
    for bad in (-1, "3", True, 1.0):
        err = _rejected("application/json", _one(shape=[1, 3], parameters={"binary_data_size": bad}))
        assert "binary_data_size must be a non-negative integer" in err.message


def test_lying_json_header_size_is_refused(jpeg: bytes) -> None:
    body, ct = encode_request({"INPUT": pack_images([jpeg])})
    size = int(ct.rsplit("=", 1)[1])
    err = _rejected(f"{BINARY_MIME_PREFIX}{len(body) + 1}", body)
    assert "should be in range" in err.message and "larger than the" in err.message
    for lie in (size - 1, size + 1, size + 100, len(body), 0):  # not at the JSON's end
        err = _rejected(f"{BINARY_MIME_PREFIX}{lie}", body, IMAGE)
        assert "not valid JSON" in err.message and f"first {lie} bytes" in err.message


def _bytes_body(items: list[bytes], count: int | None = None, extra: bytes = b"") -> tuple[bytes, str]:
    data = b"".join(struct.pack("<I", len(s)) + s for s in items) + extra
    head = {"inputs": [{"name": "INPUT0", "shape": [count or len(items), 1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(data)}}]}
    return _binary(head, data)


def test_bytes_length_prefixes_are_walked() -> None:
    body, ct = _bytes_body([b"hello", b"", b"a cat"])
    assert check_request(ct, body, TEXT).json_header_size is not None
    # a prefix that claims more than the input holds
    n = int(ct.rsplit("=", 1)[1])
    lying = body[:n] + struct.pack("<I", 999) + body[n + 4:]
    err = _rejected(ct, lying, TEXT)
    assert "BYTES element 0 declares 999 bytes, past the end" in err.message
    # elements that end before the input's binary data does
    body, ct = _bytes_body([b"hello", b"a cat"], extra=b"xxxx")
    assert ("2 BYTES elements end after 18 bytes, but parameters.binary_data_size is 22"
            in _rejected(ct, body, TEXT).message)
    # more elements than prefixes fit / than are present
    body, ct = _bytes_body([b"hello"], count=3)
    assert "need at least 12 bytes" in _rejected(ct, body, TEXT).message
    body, ct = _bytes_body([b"hello", b""], count=3)
    assert "BYTES element 2 has no room for its 4-byte length (0 bytes left of 13)" in _rejected(ct, body).message


# ---------------------------------------------------------------------------------- rule 6
@pytest.mark.parametrize("body, words", [
    (_one(name="IMAGE", data=[1, 2, 3]),
     "input 'IMAGE' is not an input of model 'image_classifier' (its inputs: INPUT)"),
    (_one(datatype="FP32", data=[1, 2, 3]), "datatype FP32, but model 'image_classifier' expects UINT8"),
    (_one(shape=[3], data=[1, 2, 3]), "rank 1, model 'image_classifier' expects rank 2: [1..8, -1]"),
    (_one(shape=[1, 1, 3], data=[1, 2, 3]), "has rank 3"),
    (_one(shape=[9, 1], data=list(range(9))), "batch size 9, model 'image_classifier' takes 1..8"),
    (_one(shape=[0, 3], data=[]), "batch size 0"),
    (_json({"inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "UINT8", "data": [1]}],
            "outputs": [{"name": "PROBS"}]}), "output 'PROBS' is not an output of model"),
])
def test_requests_are_checked_against_the_model_contract(body: bytes, words: str) -> None:
    assert check_request("application/json", body, None)  # structurally fine
    assert words in _rejected("application/json", body, IMAGE).message


def test_contract_fixed_dims_missing_inputs_batch_and_optional() -> None:
    err = _rejected("application/json", _one("INPUT0", shape=[2, 2], datatype="BYTES", data=["a"] * 4), TEXT)
    assert "shape [2, 2] has 2 at dimension 1, model 'text_embedding' expects 1: [1..16, 1]" in err.message
    two = ModelContract("m", {"A": TensorSpec("A", "FP32", (2,)), "B": TensorSpec("B", "INT64", ()),
                              "C": TensorSpec("C", "BOOL", (1,), optional=True)},
                        frozenset({"Y"}), 4)
    a = {"name": "A", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}
    b = {"name": "B", "shape": [2], "datatype": "INT64", "data": [1, 2]}
    assert check_request("application/json", _json({"inputs": [a, b]}), two)  # C is optional
    assert ("needs input 'B' (INT64, shape [1..4]): not given"
            in _rejected("application/json", _json({"inputs": [a]}), two).message)
    b3 = {**b, "shape": [3], "data": [1, 2, 3]}
    assert ("batch size 3 differs from input 'A''s 2"
            in _rejected("application/json", _json({"inputs": [a, b3]}), two).message)
    flat = ModelContract("n", {"X": TensorSpec("X", "FP32", (2, -1))}, frozenset(), 0)
    assert check_request("application/json", _one("X", shape=[2, 3], datatype="FP32", data=[0.0] * 6), flat)
    bad = _one("X", shape=[1, 2, 3], datatype="FP32", data=[0.0] * 6)
    assert "has rank 3, model 'n' expects rank 2: [2, -1]" in _rejected("application/json", bad, flat).message


# ---------------------------------------------------------------------------------- rule 7
def test_messages_are_one_line_and_name_the_input() -> None:
    err = _rejected("application/json", _one(name="bad\nname" + "x" * 500, shape=[1, -1], data=[]))
    assert err.message.startswith("input 'bad\\\\nname") and "..." in err.message and len(err.message) < 300
    unnamed = _json({"inputs": [{"name": "A", "shape": [1], "datatype": "UINT8", "data": [1]},
                                {"shape": [1], "datatype": "UINT8", "data": [1]}]})
    assert _rejected("application/json", unnamed).message.startswith("inputs[1]: \"name\"")


# ---------------------------------------------------------------------------------- configs
@pytest.fixture(scope="module")
def catalog_contracts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelContract]:
    """The entry model's contract of each catalog ensemble, from its rendered config.pbtxt."""
    out = {}
    for name, target in [("text_embedding", "local-cpu"), ("image_classifier", "local-cpu"),
                         ("image_classifier_inception", "sagemaker-gpu")]:
        spec, _ = load_ensemble(name)
        repo = render_repository(spec, target, tmp_path_factory.mktemp(name) / "repo", configs_only=True)
        out[name] = contract_from_config(repo / name / "config.pbtxt")
    return out


def test_contract_from_rendered_catalog_configs(catalog_contracts: dict[str, ModelContract]) -> None:
    assert catalog_contracts["text_embedding"] == TEXT  # TYPE_STRING -> BYTES
    assert catalog_contracts["image_classifier"] == IMAGE  # TYPE_UINT8 -> UINT8
    inception = catalog_contracts["image_classifier_inception"]
    assert (inception.inputs, inception.outputs, inception.max_batch_size) == (
        IMAGE.inputs, frozenset({"OUTPUT"}), 8)


def test_contract_from_config_edge_cases(tmp_path: Path) -> None:
    cfg = tmp_path / "mymodel" / "config.pbtxt"
    cfg.parent.mkdir()
    cfg.write_text('input { name: "X" data_type: TYPE_FP16 dims: [ 3, -1 ] optional: true }\n'
                   'output { name: "Y" data_type: TYPE_BOOL dims: [ 1 ] }\n')
    got = contract_from_config(cfg)
    assert got == ModelContract("mymodel", {"X": TensorSpec("X", "FP16", (3, -1), optional=True)},
                                frozenset({"Y"}), 0)
    cfg.write_text('name: "m" input { name: "X" data_type: TYPE_FP32 dims: 1 }\n'
                   'input { name: "X" data_type: TYPE_FP32 dims: 1 }\n')
    with pytest.raises(ContractError, match="input 'X' is declared twice"):
        contract_from_config(cfg)
    cfg.write_text("input { name: \"X\" data_type: TYPE_FP32 dims: 1 \n")
    with pytest.raises(ContractError, match=re.escape(str(cfg))):
        contract_from_config(cfg)


def test_seed_ensembles_real_inputs_pass_in_both_encodings(
        jpeg: bytes, sentences: list[str], catalog_contracts: dict[str, ModelContract]) -> None:
    texts = np.array([s.encode() for s in sentences], dtype=object).reshape(-1, 1)
    cases = [("text_embedding", {"INPUT0": texts}, ["finaloutput"]),
             ("image_classifier", {"INPUT": pack_images([jpeg])}, ["OUTPUT"]),
             ("image_classifier", {"INPUT": pack_images([jpeg, jpeg[:1000]])}, None)]
    for name, inputs, outputs in cases:
        for binary in (True, False):
            body, ct = encode_request(inputs, binary=binary, outputs=outputs)
            got = check_request(ct, body, catalog_contracts[name])
            assert got.json_header_size == (int(ct.rsplit("=", 1)[1]) if binary else None)


# ---------------------------------------------------------------------------------- fuzzing
# well-formed requests: a random contract, arrays that fit it, tritonclient's encoder
_NP = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
       "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
       "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


@st.composite
def _fitting_request(draw: st.DrawFn) -> tuple[ModelContract, dict[str, np.ndarray], bool, list[str]]:
    binary = draw(st.booleans())
    dtypes = [*_NP, "BYTES"] if binary else [d for d in [*_NP, "BYTES"] if d != "FP16"]
    max_batch = draw(st.integers(0, 8))
    batch = draw(st.integers(1, max(max_batch, 1)))
    specs, arrays = {}, {}
    for k in range(draw(st.integers(1, 3))):
        dtype = draw(st.sampled_from(dtypes))
        dims = tuple(draw(st.lists(st.sampled_from([-1, 1, 2, 3]), max_size=3)))
        specs[f"in{k}"] = TensorSpec(f"in{k}", dtype, dims)
        shape = [draw(st.integers(0, 3)) if d == -1 else d for d in dims]
        shape = [batch, *shape] if max_batch else shape
        count = int(np.prod(shape))
        if dtype == "BYTES":
            items = draw(st.lists(st.text(max_size=6), min_size=count, max_size=count))
            arr = np.array([s.encode() for s in items] or [b""], dtype=object)[:count].reshape(shape)
        else:
            raw = draw(st.binary(min_size=count * np.dtype(_NP[dtype]).itemsize,
                                 max_size=count * np.dtype(_NP[dtype]).itemsize))
            arr = np.frombuffer(raw, dtype=np.uint8).view(_NP[dtype]).reshape(shape)
            if dtype.startswith("FP"):
                arr = np.asarray(np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=-1.0))
            elif dtype == "BOOL":
                arr = (np.frombuffer(raw, dtype=np.uint8) % 2 == 1).reshape(shape)
        arrays[f"in{k}"] = arr
    outputs = draw(st.lists(st.sampled_from(["out0", "out1"]), unique=True, max_size=2))
    return ModelContract("m", specs, frozenset({"out0", "out1"}), max_batch), arrays, binary, outputs




@st.composite
def _mutated_request(draw: st.DrawFn) -> tuple[ModelContract, str, bytes]:
    """A well-formed request with one thing broken: sizes, shapes, types, prefixes, bytes."""
    contract, arrays, binary, outputs = draw(_fitting_request())
    body, ct = encode_request(arrays, binary=binary, outputs=outputs or None)
    size = int(ct.rsplit("=", 1)[1]) if "=" in ct else len(body)
    doc, tail = json.loads(body[:size]), body[size:]
    how = draw(st.sampled_from(["field", "field", "flip", "truncate", "extend", "header_size"]))
    if how == "header_size":
        lie = draw(st.one_of(st.integers(-3, 3), st.integers(-size - 2, len(body) + 3)))
        ct = f"{BINARY_MIME_PREFIX}{size + lie}"
    elif how == "truncate":
        body = body[:draw(st.integers(0, max(len(body) - 1, 0)))]
    elif how == "extend":
        body += draw(st.binary(min_size=1, max_size=16))
    elif how == "flip" and body:
        k = draw(st.integers(0, len(body) - 1))
        body = body[:k] + bytes([body[k] ^ draw(st.integers(1, 255))]) + body[k + 1:]
    elif how == "field":
        t = draw(st.sampled_from(doc["inputs"]))
        key = draw(st.sampled_from(["shape", "datatype", "data", "parameters", "name"]))
        t[key] = draw({"shape": st.lists(rs.dims, max_size=4), "datatype": st.sampled_from(rs.DTYPES),
                       "data": st.one_of(rs.numbers, rs.values), "parameters": rs.params,
                       "name": st.sampled_from(["in0", "in1", "in9"])}[key])
        head = json.dumps(doc).encode()
        body = head + tail
        ct = f"{BINARY_MIME_PREFIX}{len(head)}" if tail or draw(st.booleans()) else "application/json"
    return contract, ct, body


def _answered_or_rejected(ct: str, body: bytes, contract: ModelContract | None) -> None:
    try:
        got = check_request(ct, body, contract, max_bytes=4096)
    except RequestRejected as e:
        assert e.status in (400, 413) and e.message and "\n" not in e.message
    else:
        assert got.json_header_size is None or 0 < got.json_header_size <= len(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=rs.any_request(), contract=st.sampled_from([None, IMAGE, TEXT]))
def test_fuzz_any_body_is_answered_or_rejected_never_crashes(req: tuple[str, bytes],
                                                               contract: ModelContract | None) -> None:
    """Random JSON, wrong types, huge/negative/overflowing shapes, lying header sizes and
    BYTES prefixes: a RequestRejected or an answer, never any other exception."""
    _answered_or_rejected(*req, contract)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_mutated_request(), with_contract=st.booleans())
def test_fuzz_broken_real_requests_are_answered_or_rejected(case, with_contract: bool) -> None:
    contract, ct, body = case
    _answered_or_rejected(ct, body, contract if with_contract else None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_fitting_request())
def test_fuzz_well_formed_requests_from_tritonclient_are_accepted(case) -> None:
    contract, arrays, binary, outputs = case
    body, ct = encode_request(arrays, binary=binary, outputs=outputs or None)
    got = check_request(ct, body, contract)
    assert got.headers["Content-Type"] in ("application/json", "application/octet-stream")
