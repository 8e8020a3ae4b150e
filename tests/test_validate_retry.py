"""Validation retries 429 ModelNotReadyException (a cold load that outlasts one invoke), with
backoff up to a limit, against the REAL local endpoint, whose answer is a real 429 when a load
takes longer than its ``ready_wait_s``. Sleep and clock are injected: the tests count tries
and backoff steps, they never time anything."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from runtime_stub import FakeTime

from infra.aws.errors import AwsCallError
from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint
from infra.records.manifest import Manifest, Validation
from infra.aws.runtime_client import runtime_client_for
from tasks.deploy.validate import (
    SAGEMAKER_LOAD_LIMIT_S,
    DeployValidationFailed,
    LoadWait,
    validate_deployed,
)
from tasks.build.verify import Sample

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pytriton tritonserver is Linux-only"),
]

ENDPOINT = "retry-mme"
READY_WAIT_S = 0.5  # the endpoint answers 429 after this long; the models load for longer


@pytest.fixture(scope="module")
def slow_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """The local endpoint over a file:// prefix holding ``pipe`` models (Y = X + k) whose
    initialize() sleeps longer than the endpoint's ready wait."""
    from fixtures.tiny_models import publish_pipe

    root = tmp_path_factory.mktemp("retry")
    prefix = root / "store" / "models" / ENDPOINT
    prefix.mkdir(parents=True)
    publish_pipe(prefix, "slow.tar.gz", k=1, mbs=4, init_sleep_s=2.5)
    publish_pipe(prefix, "slower.tar.gz", k=1, mbs=4, init_sleep_s=6)
    cfg = EndpointConfig(name=ENDPOINT, model_data_url=prefix.as_uri(), cache_dir=root / "cache",
                         ready_wait_s=READY_WAIT_S)
    with LocalEndpoint(cfg) as ep:
        yield ep


def _manifest(target_model: str) -> Manifest:
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    sample = Sample(inputs={"X": x}, expected={"Y": x + 1})
    return Manifest(ensemble="pipe", target_model=target_model, artifact="file:///unused",
                    sha256="0" * 64, bytes=0, sample=sample.to_record(),
                    validation=Validation(metric="min_cosine", threshold=0.9999))


def test_a_slow_cold_load_is_retried_until_it_answers(slow_endpoint: Any) -> None:
    t = FakeTime()
    wait = LoadWait(limit_s=SAGEMAKER_LOAD_LIMIT_S, first_s=1.0, max_s=4.0, sleep=t.sleep, clock=t.clock,
                    random=lambda: 0.0)  # no jitter: the exact exponential steps
    result = validate_deployed(slow_endpoint.url, ENDPOINT, _manifest("slow.tar.gz"),
                               warm_invocations=2, load_wait=wait)
    assert result.validation.passed
    assert result.cold_tries >= 2, "the first invoke must have been answered 429"
    assert len(t.sleeps) == result.cold_tries - 1
    assert t.sleeps == [min(1.0 * 2 ** i, 4.0) for i in range(len(t.sleeps))]  # exponential, capped


def test_validation_gives_up_after_the_limit(slow_endpoint: Any) -> None:
    t = FakeTime()
    wait = LoadWait(limit_s=3.0, first_s=1.0, sleep=t.sleep, clock=t.clock, random=lambda: 0.0)
    with pytest.raises(DeployValidationFailed) as info:
        validate_deployed(slow_endpoint.url, ENDPOINT, _manifest("slower.tar.gz"), load_wait=wait)
    msg = str(info.value)
    assert "ensemble pipe (TargetModel slower.tar.gz) on endpoint retry-mme" in msg
    assert "429 ModelNotReadyException; gave up after 3 tries / 3 s (limit 3 s)" in msg
    assert t.sleeps == [1.0, 2.0]


def test_other_errors_are_not_retried(slow_endpoint: Any) -> None:
    t = FakeTime()
    wait = LoadWait(sleep=t.sleep, clock=t.clock)
    with pytest.raises(AwsCallError) as info:
        validate_deployed(slow_endpoint.url, ENDPOINT, _manifest("absent.tar.gz"), load_wait=wait)
    assert t.sleeps == []
    text = str(info.value)
    assert text.startswith("sagemaker-runtime.invoke_endpoint failed for ensemble pipe "
                           "(TargetModel absent.tar.gz) on endpoint retry-mme: ")
    assert "\n" not in text


def test_runtime_read_timeout_covers_one_invoke(monkeypatch: pytest.MonkeyPatch) -> None:
    """The read timeout must outlast one invoke (SageMaker holds one at most 60 s while a model
    loads, then answers 429), and botocore must not retry on its own: validation does the
    retrying (tests/test_invoke_retry.py)."""
    from infra.aws.clients import aws_clients

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    for client in (runtime_client_for("http://127.0.0.1:9"), aws_clients("eu-west-1").runtime):
        cfg = client.meta.config
        assert 60 < cfg.read_timeout < SAGEMAKER_LOAD_LIMIT_S
        assert cfg.retries["total_max_attempts"] == 1  # one invoke per try, no hidden retry
    assert aws_clients("eu-west-1").runtime.meta.region_name == "eu-west-1"
