"""Validate a deployed ensemble by invoking it by TargetModel, as a client would.

The first invoke is the cold one (download, extract, load); then ``n`` warm invokes give
p50/p99. The answers are scored against the expected outputs recorded in the build manifest.

A cold load can outlast one invoke: SageMaker answers ``429 ModelNotReadyException`` when a
model is still loading after its wait (60 s on AWS, ``ready_wait_s`` on the local endpoint)
and goes on loading, up to its load limit of 360 s. Those answers, throttling and the transient
5xx (500 ``InternalFailure``, 503 ``ServiceUnavailable``) are retried with jittered exponential
backoff per :class:`LoadWait` (:class:`infra.aws.invoke_retry.InvokeRetry`, the policy the fleet
Router uses too), on the cold invoke and on the warm ones: one transient answer must not roll
back a deploy. Any other error (a 4xx ``ValidationError``, a 424 ``ModelError``) fails at once,
as one line naming the call, the ensemble, its TargetModel and the endpoint.
"""

from __future__ import annotations

import time

import numpy as np
from botocore.exceptions import ClientError

from infra.aws.clients import RuntimeClient
from infra.aws.errors import aws_message
from infra.aws.errors import describe as aws_describe
from infra.errors import UserError
from infra.aws.invoke_retry import (  # noqa: F401 - SAGEMAKER_LOAD_LIMIT_S, is_model_not_ready: re-exported
    DEFAULT_RETRY,
    SAGEMAKER_LOAD_LIMIT_S,
    InvokeRetry,
    RetriesExhausted,
    call_with_retries,
    is_model_not_ready,
)
from infra.records.manifest import Manifest, ManifestError
from infra.aws.runtime_client import infer_direct, invoke, runtime_client_for
from tasks.deploy.publish import Published
from tasks.deploy.records import DeployedEnsemble, LatencyMs, ValidationReport
from tasks.build.verify import Sample, score


class DeployValidationFailed(UserError, RuntimeError):
    """An ensemble answered wrongly on the endpoint: the deploy was rolled back."""


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q)) if xs else 0.0


LoadWait = InvokeRetry
"""How validation retries an invoke (the name callers already use for
:class:`infra.aws.invoke_retry.InvokeRetry`): ``limit_s`` is ``--load-wait``."""

OPERATION = "sagemaker-runtime.invoke_endpoint"


def invoke_when_ready(client: RuntimeClient, endpoint: str, manifest: Manifest,
                      inputs: dict[str, np.ndarray], *, binary: bool = True,
                      wait: LoadWait = DEFAULT_RETRY) -> tuple[dict[str, np.ndarray], int]:
    """Invoke by TargetModel, retrying 429 ModelNotReadyException, throttles and transient
    5xx per ``wait``.

    Returns (outputs, tries). Raises DeployValidationFailed when the model was still loading
    (429) after N tries / S seconds, :class:`~infra.aws.invoke_retry.RetriesExhausted` (one line,
    with the attempts) when throttles or 5xx outlasted the budget, or an AwsCallError (one line)
    for any other error, which is not retried.
    """
    target = manifest.target_model
    about = f"ensemble {manifest.ensemble} (TargetModel {target}) on endpoint {endpoint}"
    try:
        return call_with_retries(lambda: invoke(client, endpoint, target, inputs, binary=binary),
                                 wait, operation=OPERATION, resource=about)
    except RetriesExhausted as exc:
        if exc.code != "ModelNotReadyException":
            raise
        limit = (f"{wait.limit_s:.0f} s" if exc.elapsed_s >= wait.limit_s
                 else f"{wait.max_attempts} tries")
        raise DeployValidationFailed(  # a validation failure (exit 2), not AWS's
            f"{about}: still answering 429 ModelNotReadyException; gave up after {exc.attempts} "
            f"tries / {exc.elapsed_s:.0f} s (limit {limit}): the model is still loading; raise "
            f"the load wait, or make the model load faster (last answer: "
            f"{aws_message(exc.__cause__ or exc)})") from None
    except ClientError as exc:
        raise aws_describe(exc, operation=OPERATION, resource=about) from exc


def warm_latencies(client: RuntimeClient, endpoint: str, manifest: Manifest, inputs: dict[str, np.ndarray],
                   n: int, *, binary: bool = True, wait: LoadWait = DEFAULT_RETRY) -> list[float]:
    """``n`` warm invoke latencies in ms (after 3 uncounted ones: the first runs after a load
    are slower: allocator, ORT warm-up). A transient answer is retried like the cold invoke's;
    only the attempt that answered is timed, so a retry's backoff is not a latency."""
    def timed() -> float:
        t = time.perf_counter()
        invoke(client, endpoint, manifest.target_model, inputs, binary=binary)
        return (time.perf_counter() - t) * 1000

    about = (f"ensemble {manifest.ensemble} (TargetModel {manifest.target_model}) on endpoint "
             f"{endpoint}")
    times: list[float] = []
    for _ in range(n + 3):
        try:
            times.append(call_with_retries(timed, wait, operation=OPERATION, resource=about)[0])
        except ClientError as exc:
            raise aws_describe(exc, operation=OPERATION, resource=about) from exc
    return times[3:]


def validate_deployed(url: str | None, endpoint: str, manifest: Manifest, *,
                      warm_invocations: int = 20, binary: bool = True,
                      runtime_client: RuntimeClient | None = None,
                      load_wait: LoadWait = DEFAULT_RETRY) -> ValidationReport:
    """Invoke ``manifest``'s ensemble by its TargetModel on ``endpoint`` (through ``url``, or
    ``runtime_client``: SageMaker's), score the answer against the manifest's sample, and time
    ``warm_invocations`` more."""
    client = runtime_client or runtime_client_for(url)
    sample = Sample.from_json(manifest.required_sample())
    v = manifest.validation
    if v.metric is None or v.threshold is None:
        raise ManifestError(f"the manifest of {manifest.ensemble!r} records no validation metric "
                            f"and threshold: rebuild it (`mme build {manifest.ensemble}`)")
    t0 = time.perf_counter()
    got, tries = invoke_when_ready(client, endpoint, manifest, sample.inputs, binary=binary,
                                   wait=load_wait)
    cold_ms = (time.perf_counter() - t0) * 1000
    result = score(v.metric, v.threshold, sample, got)
    warm = warm_latencies(client, endpoint, manifest, sample.inputs, warm_invocations,
                          binary=binary, wait=load_wait)
    return ValidationReport(
        validation=result, cold_tries=tries,
        latency_ms=LatencyMs(cold=round(cold_ms, 2), p50=round(percentile(warm, 50), 2),
                             p99=round(percentile(warm, 99), 2), n=len(warm)))


def direct_triton_latency(triton_url: str, model_name: str, manifest: Manifest,
                          n: int = 20) -> LatencyMs:
    """The same request straight to Triton's HTTP API, to show what the front end costs."""
    import httpx

    sample = Sample.from_json(manifest.required_sample())
    times = []
    with httpx.Client(base_url=triton_url, timeout=120) as c:
        for _ in range(n + 3):  # the first 3 are warm-up, not counted
            t = time.perf_counter()
            infer_direct(c, model_name, sample.inputs)
            times.append((time.perf_counter() - t) * 1000)
    times = times[3:]
    return LatencyMs(p50=round(percentile(times, 50), 2), p99=round(percentile(times, 99), 2), n=n)


def check_validations(manifests: list[Manifest], results: list[ValidationReport]) -> None:
    """Raise DeployValidationFailed naming every ensemble that answered wrongly."""
    failed = [(m, r.validation) for m, r in zip(manifests, results, strict=True)
              if not r.validation.passed]
    if failed:
        raise DeployValidationFailed("; ".join(
            f"{m.ensemble}: {v.metric} = {v.value:.6f} < {v.threshold}" for m, v in failed))


def deploy_entries(manifests: list[Manifest], published: list[Published],
                   results: list[ValidationReport]) -> list[DeployedEnsemble]:
    """The per-ensemble lines of a deploy result (and of `mme demo --report`)."""
    return [DeployedEnsemble(name=m.ensemble, target=m.target, artifact=p.uri,
                             sha256=p.sha256, bytes=p.bytes, uploaded=p.uploaded,
                             validation=r.validation_json(), latency_ms=r.latency_ms,
                             cold_tries=r.cold_tries, direct_triton_latency_ms=r.direct_triton_latency_ms)
            for m, p, r in zip(manifests, published, results, strict=True)]
