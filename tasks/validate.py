"""Validate a deployed ensemble by invoking it by TargetModel, as a client would.

The first invoke is the cold one (download, extract, load); then ``n`` warm invokes give
p50/p99. The answers are scored against the expected outputs recorded in the build manifest.

A cold load can outlast one invoke: SageMaker answers ``429 ModelNotReadyException`` when a
model is still loading after its wait (60 s on AWS, ``ready_wait_s`` on the local endpoint)
and goes on loading, up to its load limit of 360 s. Those answers (and only those) are
retried with exponential backoff until :class:`LoadWait`'s limit; any other error fails at
once, as one line naming the call, the ensemble, its TargetModel and the endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from botocore.exceptions import ClientError

from infra.aws_errors import aws_message
from infra.aws_errors import describe as aws_describe
from infra.errors import UserError
from infra.manifest import Manifest, ManifestError
from infra.runtime_client import infer_direct, invoke, runtime_client_for
from tasks.records import DeployedEnsemble
from tasks.verify import Sample, score


class DeployValidationFailed(UserError, RuntimeError):
    """An ensemble answered wrongly on the endpoint: the deploy was rolled back."""


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q)) if xs else 0.0


SAGEMAKER_LOAD_LIMIT_S = 360.0
"""How long SageMaker keeps loading a model on an MME before it gives up (its documented
limit); the default of :attr:`LoadWait.limit_s`."""


@dataclass(frozen=True)
class LoadWait:
    """How long validation keeps retrying ``ModelNotReadyException`` (429) for one model.

    Backoff: ``first_s``, doubling, at most ``max_s`` between tries, never past ``limit_s``
    from the first try. ``sleep``/``clock`` are injectable so tests count tries, not seconds.
    """

    limit_s: float = SAGEMAKER_LOAD_LIMIT_S
    first_s: float = 2.0
    max_s: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)


def is_model_not_ready(exc: BaseException) -> bool:
    if not isinstance(exc, ClientError):
        return False
    code = exc.response.get("Error", {}).get("Code")
    return code == "ModelNotReadyException"


def invoke_when_ready(client: Any, endpoint: str, manifest: Manifest,
                      inputs: dict[str, np.ndarray], *, binary: bool = True,
                      wait: LoadWait = LoadWait()) -> tuple[dict[str, np.ndarray], int]:
    """Invoke by TargetModel, retrying 429 ModelNotReadyException per ``wait``.

    Returns (outputs, tries). Raises DeployValidationFailed saying it gave up after N tries /
    S seconds, or an AwsCallError (one line) for any other error, which is not retried.
    """
    target = manifest.target_model
    start, delay, tries = wait.clock(), wait.first_s, 0
    while True:
        tries += 1
        try:
            return invoke(client, endpoint, target, inputs, binary=binary), tries
        except ClientError as exc:
            about = f"ensemble {manifest.ensemble} (TargetModel {target}) on endpoint {endpoint}"
            if not is_model_not_ready(exc):
                raise aws_describe(exc, operation="sagemaker-runtime.invoke_endpoint",
                                   resource=about) from exc
            elapsed = wait.clock() - start
            if elapsed >= wait.limit_s:
                raise DeployValidationFailed(  # a validation failure (exit 2), not AWS's
                    f"{about}: still answering 429 ModelNotReadyException; gave up after {tries} "
                    f"tries / {elapsed:.0f} s (limit {wait.limit_s:.0f} s): the model is still "
                    f"loading; raise the load wait, or make the model load faster (last answer: "
                    f"{aws_message(exc)})") from None
        wait.sleep(min(delay, wait.limit_s - elapsed))
        delay = min(delay * 2, wait.max_s)


def validate_deployed(url: str | None, endpoint: str, manifest: Manifest, *,
                      warm_invocations: int = 20, binary: bool = True,
                      runtime_client: Any = None, load_wait: LoadWait = LoadWait()) -> dict[str, Any]:
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
    for _ in range(3):  # first runs after a load are slower (allocator, ORT warm-up): not counted
        invoke(client, endpoint, manifest.target_model, sample.inputs, binary=binary)
    warm: list[float] = []
    for _ in range(warm_invocations):
        t = time.perf_counter()
        invoke(client, endpoint, manifest.target_model, sample.inputs, binary=binary)
        warm.append((time.perf_counter() - t) * 1000)
    return {
        "validation": {k: v for k, v in result.items() if k != "per_item"},
        "latency_ms": {"cold": round(cold_ms, 2), "p50": round(percentile(warm, 50), 2),
                       "p99": round(percentile(warm, 99), 2), "n": len(warm)},
        "cold_tries": tries,
    }


def direct_triton_latency(triton_url: str, model_name: str, manifest: Manifest,
                          n: int = 20) -> dict[str, float]:
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
    return {"p50": round(percentile(times, 50), 2), "p99": round(percentile(times, 99), 2), "n": n}


def check_validations(manifests: list[Manifest], results: list[dict[str, Any]]) -> None:
    """Raise DeployValidationFailed naming every ensemble that answered wrongly."""
    failed = [(m, r) for m, r in zip(manifests, results, strict=True) if not r["validation"]["passed"]]
    if failed:
        raise DeployValidationFailed("; ".join(
            f"{m.ensemble}: {r['validation']['metric']} = {r['validation']['value']:.6f} "
            f"< {r['validation']['threshold']}" for m, r in failed))


def deploy_entries(manifests: list[Manifest], published: list[Any],
                   results: list[dict[str, Any]]) -> list[DeployedEnsemble]:
    """The per-ensemble lines of a deploy result (and of `mme demo --report`)."""
    return [DeployedEnsemble(name=m.ensemble, target=m.target, artifact=p.uri,
                             sha256=p.sha256, bytes=p.bytes, uploaded=p.uploaded, **r)
            for m, p, r in zip(manifests, published, results, strict=True)]
