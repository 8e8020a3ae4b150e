"""Invoke retries (issue "The first real AWS deploy works", items 4, 5 and 10): the Router and
deploy validation retry 429 ModelNotReadyException, throttles and transient 5xx with one
jittered, bounded backoff policy (infra/aws/invoke_retry.py), and nothing else; the runtime client
itself sends exactly one request per call and times out a read after 70 s.

Every test talks through a real boto3 ``sagemaker-runtime`` client to a scripted stub on
127.0.0.1 (tests/runtime_stub.py): the requests counted are the ones botocore really sent.
Sleep, clock and the jitter's random are injected: tests assert the waits and attempt counts,
never a duration.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from runtime_stub import (
    INTERNAL,
    INVALID,
    MODEL_ERROR,
    MODEL_NOT_READY,
    THROTTLED,
    UNAVAILABLE,
    X,
    Answer,
    FakeTime,
    RuntimeStub,
)

from infra.aws.errors import AwsCallError
from infra.errors import InvalidInput
from infra.aws.invoke_retry import InvokeRetry, RetriesExhausted, is_retryable
from infra.records.manifest import Manifest, Validation
from infra.aws.runtime_client import runtime_client_for
from tasks.fleet.routes import EndpointRef, RoutingTable, RouteVersion, promote, write_routes
from tasks.fleet.router import Router
from tasks.deploy.validate import DeployValidationFailed, LoadWait, invoke_when_ready, validate_deployed
from tasks.build.verify import Sample

ENDPOINT = "stub-mme"


def _policy(t: FakeTime, **kw: float) -> InvokeRetry:
    """The default policy's shape with the jitter's random fixed at 0.5 (each wait is then
    3/4 of its exponential step: jitter 0.5 cuts up to half)."""
    return InvokeRetry(sleep=t.sleep, clock=t.clock, random=lambda: 0.5, **kw)  # type: ignore[arg-type]


def _router(tmp_path: Path, stub: RuntimeStub, retry: InvokeRetry) -> Router:
    uri = (tmp_path / "store").as_uri()
    table = RoutingTable(fleet="f", endpoints={ENDPOINT: EndpointRef(backend="local")})
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, tzinfo=UTC)
    promote(table, "a", RouteVersion(target_model="a-1.tar.gz", sha256="1" * 64,
                                     since=now.isoformat(), endpoint=ENDPOINT), now)
    write_routes(uri, table, now)
    return Router(uri, "f", runtime=runtime_client_for(stub.url), retry=retry)


# ------------------------------------------------------------------ item 4: the Router
def test_router_retries_not_ready_throttles_and_5xx_with_jittered_backoff(tmp_path: Path) -> None:
    t = FakeTime()
    with RuntimeStub([MODEL_NOT_READY, THROTTLED, UNAVAILABLE, INTERNAL]) as stub:
        out = _router(tmp_path, stub, _policy(t)).invoke("a", {"X": X})
    assert out["Y"].tolist() == [[2.0, 3.0, 4.0]]
    assert stub.requests == ["a-1.tar.gz"] * 5  # 4 answers retried, 5th answered; no botocore retry
    assert t.sleeps == [1.5, 3.0, 6.0, 12.0]  # 2 s doubling, each cut by the jitter (0.5 * 0.5)


@pytest.mark.parametrize("answer", [INVALID, MODEL_ERROR], ids=["400-ValidationError", "424-ModelError"])
def test_router_does_not_retry_a_4xx_or_a_model_error(tmp_path: Path, answer: Answer) -> None:
    t = FakeTime()
    with RuntimeStub([answer]) as stub:
        with pytest.raises(ClientError) as info:
            _router(tmp_path, stub, _policy(t)).invoke("a", {"X": X})
    assert answer is not None and info.value.response["Error"]["Code"] == answer[1]
    assert stub.requests == ["a-1.tar.gz"] and t.sleeps == []


def test_router_gives_up_after_max_attempts_and_says_how_many(tmp_path: Path) -> None:
    t = FakeTime()
    with RuntimeStub([UNAVAILABLE] * 10) as stub:
        with pytest.raises(RetriesExhausted) as info:
            _router(tmp_path, stub, _policy(t, max_attempts=4)).invoke("a", {"X": X})
    assert len(stub.requests) == 4 and t.sleeps == [1.5, 3.0, 6.0]
    err = info.value
    assert err.attempts == 4 and err.code == "ServiceUnavailable"
    assert str(err).startswith("sagemaker-runtime.invoke_endpoint failed for fleet f variant a "
                               "(TargetModel a-1.tar.gz) on endpoint stub-mme: ServiceUnavailable: ")
    assert "gave up after 4 attempts / 10 s; retry limit 4 attempts / 360 s" in str(err)


def test_the_budget_keeps_a_cold_load_within_sagemakers_360_s(tmp_path: Path) -> None:
    """SageMaker holds each invoke 60 s before answering 429 ModelNotReadyException: the
    Router waits 2, 4, 8, 16 s, then only what is left of the 360 s budget, and stops."""
    t = FakeTime()

    def hold(answer: Answer) -> None:
        if answer == MODEL_NOT_READY:
            t.now += 60.0

    with RuntimeStub([MODEL_NOT_READY] * 20, on_answer=hold) as stub:
        with pytest.raises(RetriesExhausted) as info:
            _router(tmp_path, stub, _policy(t, jitter=0.0)).invoke("a", {"X": X})
    assert t.sleeps == [2.0, 4.0, 8.0, 16.0, 30.0]  # the 5th wait ends at 360 s
    assert len(stub.requests) == 6 and info.value.attempts == 6
    assert sum(t.sleeps) + 60.0 * 5 == 360.0  # the last attempt starts at the limit, not after


def test_a_jittered_wait_stays_within_its_step() -> None:
    """Jitter only shortens a wait (random in [0, 1) cuts up to ``jitter`` of it), so the
    budget arithmetic holds whatever the draw."""
    for draw in (0.0, 0.25, 0.999):
        p = InvokeRetry(random=lambda d=draw: d)  # type: ignore[misc]
        assert [p.delay(a, 0.0) for a in (1, 2, 5, 9)] == [
            step * (1 - 0.5 * draw) for step in (2.0, 4.0, 30.0, 30.0)]
    assert InvokeRetry(random=lambda: 0.0).delay(3, 355.0) == 5.0  # never past the budget
    with pytest.raises(InvalidInput, match="max_attempts 0"):
        InvokeRetry(max_attempts=0)


def test_what_is_retried() -> None:
    from infra.aws.errors import client_error

    for code, status in (("ModelNotReadyException", 429), ("ThrottlingException", 400),
                         ("Throttling", 400), ("InternalFailure", 500), ("ServiceUnavailable", 503),
                         ("502", 502), ("504", 504), ("TooManyRequests", 429)):
        assert is_retryable(client_error(code, "m", "InvokeEndpoint", status)), code
    for code, status in (("ValidationError", 400), ("ModelError", 424), ("ModelError", 500),
                         ("InternalDependencyException", 530), ("AccessDeniedException", 403),
                         ("404", 404), ("ModelError", 507)):
        assert not is_retryable(client_error(code, "m", "InvokeEndpoint", status)), code
    assert not is_retryable(ConnectionError("reset"))


# ------------------------------------------------------------------ item 5: deploy validation
def _manifest(target_model: str = "pipe.tar.gz") -> Manifest:
    sample = Sample(inputs={"X": X}, expected={"Y": X + 1})
    return Manifest(ensemble="pipe", target_model=target_model, artifact="file:///unused",
                    sha256="0" * 64, bytes=0, sample=sample.to_record(),
                    validation=Validation(metric="min_cosine", threshold=0.9999))


def test_validation_retries_transient_answers_on_cold_and_warm_invokes() -> None:
    """One 503, 500 or throttle used to roll back a whole deploy: now the cold invoke and the
    warm ones retry them, and only the answering attempt of a warm invoke is timed."""
    t = FakeTime()
    script = [UNAVAILABLE, INTERNAL, THROTTLED, None, None, UNAVAILABLE]  # cold x4, warm-up 1, 2
    with RuntimeStub(script) as stub:
        result = validate_deployed(stub.url, ENDPOINT, _manifest(), warm_invocations=2,
                                   load_wait=_policy(t))
    assert result.validation.passed and result.cold_tries == 4
    assert result.latency_ms.n == 2
    assert len(stub.requests) == 4 + 4 + 2  # cold 4, warm-up 3 (one retried once), warm 2
    assert t.sleeps == [1.5, 3.0, 6.0, 1.5]


def test_fleet_validation_retries_a_503_with_the_policy_fleet_deploy_builds() -> None:
    """``mme fleet deploy`` validates each version with ``invoke_when_ready`` and
    ``LoadWait(limit_s=...)``: a 503 no longer drops the variant's new version."""
    t = FakeTime()
    wait = LoadWait(limit_s=360.0, sleep=t.sleep, clock=t.clock, random=lambda: 0.0)
    with RuntimeStub([UNAVAILABLE]) as stub:
        got, tries = invoke_when_ready(runtime_client_for(stub.url), ENDPOINT, _manifest(),
                                       {"X": X}, wait=wait)
    assert tries == 2 and got["Y"].tolist() == [[2.0, 3.0, 4.0]] and t.sleeps == [2.0]


def test_validation_fails_at_once_on_a_model_error() -> None:
    t = FakeTime()
    with RuntimeStub([MODEL_ERROR]) as stub:
        with pytest.raises(AwsCallError) as info:
            validate_deployed(stub.url, ENDPOINT, _manifest(), load_wait=_policy(t))
    assert stub.requests == ["pipe.tar.gz"] and t.sleeps == []
    assert str(info.value).startswith("sagemaker-runtime.invoke_endpoint failed for ensemble pipe "
                                      "(TargetModel pipe.tar.gz) on endpoint stub-mme: ModelError: ")


def test_validation_that_runs_out_says_how_many_attempts() -> None:
    t = FakeTime()
    with RuntimeStub([THROTTLED] * 5) as stub:
        with pytest.raises(RetriesExhausted, match="gave up after 3 attempts"):
            validate_deployed(stub.url, ENDPOINT, _manifest(), load_wait=_policy(t, max_attempts=3))
    assert len(stub.requests) == 3
    with RuntimeStub([MODEL_NOT_READY] * 5) as stub:  # a load that never ends: a validation failure
        with pytest.raises(DeployValidationFailed, match=r"gave up after 3 tries / \d+ s \(limit 3 tries\)"):
            validate_deployed(stub.url, ENDPOINT, _manifest(), load_wait=_policy(t, max_attempts=3))


# ------------------------------------------------------------------ the client: item 10, and why not botocore's retries
def test_runtime_client_reads_for_70_s_and_sends_one_request_per_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.aws.clients import aws_clients

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    for client in (runtime_client_for("http://127.0.0.1:9"), aws_clients("eu-west-1").runtime):
        assert client.meta.config.read_timeout == 70.0  # one invoke answers within 60 s
        assert client.meta.config.retries["total_max_attempts"] == 1
    with RuntimeStub([UNAVAILABLE]) as stub:
        with pytest.raises(ClientError):
            runtime_client_for(stub.url).invoke_endpoint(EndpointName=ENDPOINT, Body=b"{}",
                                                         ContentType="application/json")
    assert len(stub.requests) == 1  # a 503 is not resent by botocore: the policy retries it


def test_botocore_standard_mode_would_not_retry_model_not_ready() -> None:
    """Why the project retries by itself: botocore's standard mode resends a 503 but not a 429
    ModelNotReadyException (a modeled InvokeEndpoint error without a retryable trait)."""
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"mode": "standard", "total_max_attempts": 3})
    for answer, sent in ((MODEL_NOT_READY, 1), (UNAVAILABLE, 3)):
        with RuntimeStub([answer] * 3) as stub:
            client = boto3.client("sagemaker-runtime", endpoint_url=stub.url, config=cfg,
                                  region_name="us-east-1", aws_access_key_id="x",
                                  aws_secret_access_key="x")
            with pytest.raises(ClientError):
                client.invoke_endpoint(EndpointName=ENDPOINT, Body=b"{}", ContentType="application/json")
        assert len(stub.requests) == sent


def test_mme_invoke_fleet_takes_the_attempts_and_budget(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``mme invoke --fleet F --variant V --max-attempts N --retry-budget S``: the Router's
    policy from the command line (a SageMaker route, the runtime endpoint pointed at the stub)."""
    from datetime import UTC, datetime

    from typer.testing import CliRunner

    from flows.cli import app

    uri, now = (tmp_path / "store").as_uri(), datetime(2026, 1, 1, tzinfo=UTC)
    table = RoutingTable(fleet="f", endpoints={ENDPOINT: EndpointRef(backend="sagemaker",
                                                                     region="us-east-1")})
    promote(table, "a", RouteVersion(target_model="a-1.tar.gz", sha256="1" * 64,
                                     since=now.isoformat(), endpoint=ENDPOINT), now)
    write_routes(uri, table, now)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    with RuntimeStub([UNAVAILABLE] * 5) as stub:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", stub.url)
        got = CliRunner().invoke(app, ["invoke", "hello", "--fleet", "f", "--variant", "a",
                                       "--store", uri, "--max-attempts", "2", "--retry-budget", "1"])
    assert isinstance(got.exception, RetriesExhausted) and got.exception.attempts == 2
    assert "gave up after 2 attempts" in str(got.exception)
    assert stub.requests == ["a-1.tar.gz"] * 2
