"""The one place boto3 sessions and clients are made.

Every AWS client of the project comes from here, so a test binds the whole deploy or retire to
moto (or to a wrapper that injects a failure) by passing an :class:`AwsClients` or a
:data:`ClientFactory` in, never by patching a module global. The ``sagemaker-runtime`` client
always gets :func:`runtime_config` (one try per invoke, a 70 s read timeout): the Router and
deploy validation retry invokes themselves, per :mod:`infra.aws.invoke_retry` (which says why not
botocore's standard mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:  # boto3 and botocore are imported lazily at run time (the CLI starts faster)
    from boto3.session import Session as BotoSession
    from botocore.config import Config as BotoConfig

SageMakerClient: TypeAlias = Any
"""A boto3 ``sagemaker`` client. Each client alias here is ``Any``: boto3 makes its clients at
run time and no type stubs are installed for them (a third-party gap); the names say which
service a parameter wants."""
AutoScalingClient: TypeAlias = Any
"""A boto3 ``application-autoscaling`` client (``Any``: see :data:`SageMakerClient`)."""
RuntimeClient: TypeAlias = Any
"""A boto3 ``sagemaker-runtime`` client (``Any``: see :data:`SageMakerClient`)."""
S3Client: TypeAlias = Any
"""A boto3 ``s3`` client (``Any``: see :data:`SageMakerClient`)."""
BotoClient: TypeAlias = Any
"""A boto3 client of any other service (``Any``: see :data:`SageMakerClient`)."""
AwsResponse: TypeAlias = dict[str, Any]
"""A boto3 call's parsed answer (its shape is the AWS API's; no stubs describe it)."""

AWS_ATTEMPTS = 3
"""Attempts per AWS control-plane or S3 call (first try included): botocore's standard retry
mode retries throttling, 5xx and dropped connections with jittered backoff. It is the one
layer that retries those failures (docs/retries.md): the store and the tasks do not again."""

READ_TIMEOUT_S = 70.0
"""The ``sagemaker-runtime`` read timeout. One invoke answers within 60 s: SageMaker holds an
invoke at most 60 s while the model loads, then answers 429 ``ModelNotReadyException`` (the
local endpoint's ``ready_wait_s`` is 60 s too), and the load itself goes on for up to 360 s
across retries (:mod:`infra.aws.invoke_retry`). 70 s is AWS's suggestion: a little over one invoke,
so a hung connection costs 70 s, not the 400 s this used to be."""


def runtime_config() -> BotoConfig:
    """The botocore Config of every ``sagemaker-runtime`` client this project makes."""
    from botocore.config import Config

    # total_max_attempts, not max_attempts: botocore reads max_attempts as *retries* (1 would
    # mean a second invoke after a read timeout or a 5xx). One attempt per call: the retrying
    # is infra.aws.invoke_retry's (botocore's standard mode does not retry ModelNotReadyException)
    return Config(retries={"total_max_attempts": 1, "mode": "standard"},
                  read_timeout=READ_TIMEOUT_S, connect_timeout=10)


def control_config(**kwargs: object) -> BotoConfig:
    """The botocore Config of every other client (SageMaker, Application Auto Scaling, S3, the
    preflight's): standard retry mode, :data:`AWS_ATTEMPTS` attempts in total. ``kwargs``: other
    Config settings (the S3 store's connection pool)."""
    from botocore.config import Config

    return Config(retries={"total_max_attempts": AWS_ATTEMPTS, "mode": "standard"}, **kwargs)


def session(region: str | None = None) -> BotoSession:
    """A boto3 session on the default credential chain (env, profile, instance role)."""
    import boto3

    return boto3.session.Session(region_name=region)


def client(service: str, region: str | None = None, **kwargs: object) -> BotoClient:
    """One boto3 client of ``service``; ``sagemaker-runtime`` gets :func:`runtime_config`, every
    other service :func:`control_config`."""
    kwargs.setdefault("config", runtime_config() if service == "sagemaker-runtime" else control_config())
    return session(region).client(service, **kwargs)


def runtime_client_for(url: str | None = None, region: str = "us-east-1") -> RuntimeClient:
    """A ``sagemaker-runtime`` client; ``url`` points it at a local endpoint.

    The local endpoint does not check signatures, so dummy credentials are used when none
    are configured (boto3 refuses to send an unsigned request otherwise)."""
    s = session()
    kwargs: dict[str, object] = {"region_name": s.region_name or region, "config": runtime_config()}
    if url:
        kwargs["endpoint_url"] = url
        if s.get_credentials() is None:
            kwargs.update(aws_access_key_id="local", aws_secret_access_key="local")
    return s.client("sagemaker-runtime", **kwargs)


@dataclass(frozen=True)
class AwsClients:
    """The clients a SageMaker deploy or retire uses, made once per flow run."""

    region: str
    sagemaker: SageMakerClient
    autoscaling: AutoScalingClient
    runtime: RuntimeClient | None = None

    def by_service(self) -> ClientsByService:
        """The ``{service: client}`` map :func:`infra.aws.sagemaker.apply` dispatches calls on."""
        return {"sagemaker": self.sagemaker, "application-autoscaling": self.autoscaling,
                "runtime": self.runtime}


ClientsByService: TypeAlias = "dict[str, BotoClient]"
"""``{service name: client}``: what :func:`infra.aws.sagemaker.apply` dispatches each call on."""

ClientFactory = Callable[[str, "str | None"], AwsClients]
"""``(region, runtime_url) -> AwsClients``: what a backend is given to make its clients."""


_bound: ContextVar[ClientFactory | None] = ContextVar("mme_aws_clients", default=None)


@contextmanager
def using(factory: ClientFactory) -> Iterator[ClientFactory]:
    """``with using(factory):`` every default-made :class:`AwsClients` in this context (a flow
    started from the CLI, its tasks) comes from ``factory``: how a test binds a whole command
    to moto, or to a wrapper that injects a failure, without patching a module global."""
    token = _bound.set(factory)
    try:
        yield factory
    finally:
        _bound.reset(token)


def aws_clients(region: str, runtime_url: str | None = None) -> AwsClients:
    """The default :data:`ClientFactory`: boto3's credential chain, one session per region
    (or the factory bound by :func:`using`)."""
    bound = _bound.get()
    if bound is not None:
        return bound(region, runtime_url)
    s = session(region)
    runtime = (runtime_client_for(runtime_url, region=region) if runtime_url
               else s.client("sagemaker-runtime", config=runtime_config()))
    return AwsClients(region=region, sagemaker=s.client("sagemaker", config=control_config()),
                      autoscaling=s.client("application-autoscaling", config=control_config()),
                      runtime=runtime)
