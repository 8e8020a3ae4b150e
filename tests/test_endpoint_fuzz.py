"""Fuzz the local endpoint's front end through HTTP: it survives any request (issue 8).

One real endpoint (real tritonserver) serves two tiny Python-backend ensembles, an FP32 one and
a BYTES one (tests/endpoint_fuzz_cases.py). Generated requests go to
``POST /endpoints/<name>/invocations``; after EVERY case :class:`EndpointWatch` checks that the
answer is a 2xx exactly when the endpoint's rules accept the request (and then the right
numbers) or else a 4xx with a JSON ``message``, that ``/ping`` is 200, that Triton's pid is unchanged with
no death, restart or stub failure counted, and that a good request to the other model still answers correctly.

The suite runs 150 cases in all, derandomized (the same cases on every run); set
``MME_FUZZ_EXAMPLES`` to run more (the split between the tests is kept). ``bench/fuzz.py`` runs
the same strategies for minutes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from endpoint_fuzz_cases import (
    BYTES_TARGET,
    FP32_TARGET,
    Case,
    EndpointWatch,
    http_oddities,
    mutated_requests,
    publish_models,
    random_requests,
    shape_attacks,
    valid_requests,
)
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from fixtures.local_endpoint import ENDPOINT

from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint
from infra.endpoint.request_check import BINARY_MIME_PREFIX, RequestRejected, check_request
from infra.aws.runtime_client import encode_request

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pytriton tritonserver is Linux-only"),
]

TOTAL = int(os.environ.get("MME_FUZZ_EXAMPLES", "150"))


def _fuzz_settings(share: float) -> settings:
    # derandomize: CI runs the same cases every time; no shrinking: after a real failure the
    # endpoint's state is suspect, so the first failing case (printed) is the useful one
    return settings(max_examples=max(1, round(TOTAL * share)), deadline=None, derandomize=True,
                    database=None, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def watch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndpointWatch]:
    root = tmp_path_factory.mktemp("fuzz-mme")
    store = root / "store"
    store.mkdir()
    contracts = publish_models(store)
    ep = LocalEndpoint(EndpointConfig(name=ENDPOINT, model_data_url=store.as_uri(),
                                      cache_dir=root / "cache", triton_log=root / "triton.log"))
    ep.start()
    w = None
    try:
        w = EndpointWatch(ep.url, root / "cache", contracts)
        yield w
    finally:
        if w is not None:
            w.close()
        ep.stop()


def _survives(watch: EndpointWatch, case: Case) -> None:
    r = watch.send(case)
    broken = watch.violations(case, r)
    assert not broken, (case.describe(), case.body[:2000], r.status_code, r.text[:500], broken)


def _binary_case(target: str, header: bytes, tail: bytes) -> Case:
    return Case("explicit", target, f"{BINARY_MIME_PREFIX}{len(header)}", header + tail)


# the requests that took Triton or a model down before the endpoint validated requests, and a
# BYTES section whose length prefix lies (5 bytes then no room for the second element)
_KILLERS = [
    Case("explicit", FP32_TARGET, "application/json",
         b'{"inputs":[{"name":"X","shape":[1,1000000000000],"datatype":"FP32","data":[1,2,3]}]}'),
    Case("explicit", FP32_TARGET, "application/octet-stream",
         b'{"inputs":[{"name":"X","shape":[1000000000000],"datatype":"UINT8","data":[1,2,3]}]}'),
    Case("explicit", BYTES_TARGET, "application/json",
         b'{"inputs":[{"name":"S","shape":[4611686018427387904,4611686018427387904],'
         b'"datatype":"BYTES","data":["a"]}]}'),
    _binary_case(BYTES_TARGET, b'{"inputs":[{"name":"S","shape":[2,1],"datatype":"BYTES",'
                               b'"parameters":{"binary_data_size":9}}]}',
                 b"\x05\x00\x00\x00abc\xff\xff"),
]


@_fuzz_settings(0.3)
@given(case=st.one_of(random_requests(), http_oddities()))
def test_fuzz_random_bodies_and_http_oddities(watch: EndpointWatch, case: Case) -> None:
    """Random JSON and bytes, wrong types, lying header sizes and BYTES prefixes (the request
    checker's own strategies), random content types, TargetModels and endpoint names, chunked,
    empty and over-size bodies."""
    _survives(watch, case)


# found by bench/fuzz.py: a finite double past FP32's range became -inf in the model, and the
# 200 answer carried "-Infinity", which tritonclient's JSON parser cannot read
_PAST_FP32 = Case("explicit", FP32_TARGET, "application/json",
                  b'{"inputs":[{"name":"X","shape":[3],"datatype":"FP32",'
                  b'"data":[-4.031122730542694e+16,[],[[-3.5e+38],1.0]]}],"outputs":[{"name":"Y"}]}')


@_fuzz_settings(0.45)
@example(case=_PAST_FP32)
@given(case=st.one_of(mutated_requests(), valid_requests()))
def test_fuzz_mutations_of_valid_requests(watch: EndpointWatch, case: Case) -> None:
    """tritonclient-encoded requests for both models, valid (must answer the right numbers) or
    with one thing broken: a field, binary_data_size, a BYTES length prefix, the requested
    outputs, json-header-size, truncated / extended / flipped bytes, the content type, or the
    TargetModel."""
    _survives(watch, case)


@_fuzz_settings(0.25)
@example(case=_KILLERS[0])
@example(case=_KILLERS[1])
@example(case=_KILLERS[2])
@example(case=_KILLERS[3])
@given(case=shape_attacks())
def test_fuzz_huge_negative_and_overflowing_shapes(watch: EndpointWatch, case: Case) -> None:
    """Declared shapes far larger than the data (10**12, 2**62 x 2**62, 2**64, negative), as
    JSON and as binary: refused with a 4xx, and Triton keeps its pid."""
    _survives(watch, case)


@pytest.mark.parametrize("value, ok", [
    ("3.4028234663852886e+38", True),  # FP32's largest value
    ("3.4028235e+38", True),  # rounds down to it
    ("340282346638528859811704183484516925440", True),  # FP32's largest, as a JSON integer
    ("3.4028235677973366e+38", False),  # half an ulp past it: rounds to infinity
    ("-3.5e+38", False), ("1e+308", False), ("18446744073709551615", True),
])
def test_fp32_json_values_past_the_fp32_range_are_refused(value: str, ok: bool) -> None:
    body = f'{{"inputs":[{{"name":"X","shape":[2],"datatype":"FP32","data":[1.5,{value}]}}]}}'.encode()
    if ok:
        assert check_request("application/json", body, None).json_header_size is None
        return
    with pytest.raises(RequestRejected) as info:
        check_request("application/json", body, None)
    assert info.value.message.startswith("input 'X': \"data\" needs finite numbers for FP32, got ")
    assert "past FP32's largest value" in info.value.message
    # FP64 takes it: the range is the datatype's
    assert check_request("application/json", body.replace(b"FP32", b"FP64"), None)


def test_fp32_value_past_the_range_is_a_400_not_an_unreadable_200(watch: EndpointWatch) -> None:
    """Before: 200 with ``"data":[...,-Infinity,...]``, which decode_response cannot read."""
    r = watch.send(_PAST_FP32)
    assert r.status_code == 400, r.text
    assert "input 'X'" in r.json()["message"] and "-3.5e+38" in r.json()["message"]
    assert watch.violations(_PAST_FP32, r) == []


_X = {"name": "X", "shape": [1], "datatype": "FP32", "data": [1.0]}


@pytest.mark.parametrize("doc, words", [
    ({"inputs": [_X], "parameters": {"binary_data_output": "yes"}},
     "the request: parameter 'binary_data_output' must be true or false, got 'yes'"),
    ({"inputs": [_X], "outputs": [{"name": "Y", "parameters": {"binary_data": 1}}]},
     "output 'Y': parameter 'binary_data' must be true or false, got 1"),
    ({"inputs": [_X], "outputs": [{"name": "Y", "parameters": {"classification": -1}}]},
     "output 'Y': parameter 'classification' must be a non-negative integer, got -1"),
    ({"inputs": [_X], "outputs": [{"name": "Y", "parameters": {"classification": True}}]},
     "parameter 'classification' must be a non-negative integer, got true"),
])
def test_wrongly_typed_triton_parameters_are_400_not_424(watch: EndpointWatch, doc: dict,
                                                         words: str) -> None:
    """Found by bench/fuzz.py: Triton answered these with 500 "attempt to access JSON
    non-boolean as boolean", which the client saw as a 424 "server error (500) from primary"
    for its own mistake. Now a 400 naming the parameter, before Triton; right types pass."""
    body = json.dumps(doc).encode()
    r = watch.send(Case("explicit", FP32_TARGET, "application/json", body))
    assert r.status_code == 400 and words in r.json()["message"], r.text
    assert watch.violations(Case("explicit", FP32_TARGET, "application/json", body), r) == []
    fixed = json.loads(body)
    for holder in [fixed, *fixed.get("outputs", [])]:
        for key in holder.get("parameters", {}):
            holder["parameters"][key] = 1 if key == "classification" else True
    good = Case("explicit", FP32_TARGET, "application/json", json.dumps(fixed).encode())
    r = watch.send(good)
    assert r.status_code == 200 and watch.answer_problem(good, r) is None, r.text


def test_watch_sees_a_broken_invariant(watch: EndpointWatch) -> None:
    """The invariants can fail: a valid request sent to the wrong model, an answer judged
    against the wrong model, and a wrong number are reported (a green fuzz run means something)."""
    body, ct = encode_request({"X": np.array([1.0, 2.0], dtype=np.float32)})
    good = Case("valid", FP32_TARGET, ct, body, valid=True)
    r = watch.send(good)
    assert r.status_code == 200 and watch.violations(good, r) == []
    wrong_model = Case("valid", BYTES_TARGET, ct, body, valid=True)
    assert any("valid request got 400" in v
               for v in watch.violations(wrong_model, watch.send(wrong_model)))
    assert any("rules refuse" in v for v in watch.violations(
        Case("lying", BYTES_TARGET, ct, body), r))
    other, other_ct = encode_request({"X": np.array([1.0, 5.0], dtype=np.float32)})
    problem = watch.answer_problem(Case("valid", FP32_TARGET, other_ct, other, valid=True), r)
    assert problem is not None and "wrong answer for Y" in problem
