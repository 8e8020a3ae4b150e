"""Where a fleet deploy's SageMaker endpoints really load their models from, asked of SageMaker.

Why: a fleet deploy adds variants to an existing multi-model endpoint by publishing objects
under its model prefix, and SageMaker loads a TargetModel from its model's ``ModelDataUrl``
only. Computing that prefix from ``--store`` published where SageMaker never looks whenever
``--store`` was not the store the endpoint was deployed with; a region silently defaulting to
us-east-1 found no endpoint, or someone else's. So, for the ``sagemaker`` backend, before
anything is uploaded, invoked or changed (read-only Describe calls only):

* the region is the caller's (``--region``, else ``AWS_REGION``, ``AWS_DEFAULT_REGION`` or the
  AWS profile's ``region``), never a default (:func:`require_region`);
* each endpoint's ``ModelDataUrl`` and image are read: DescribeEndpoint -> its
  DescribeEndpointConfig -> DescribeModel of its variants (``PrimaryContainer`` or
  ``Containers``) (:func:`describe_served`);
* ``--store`` must be the store whose ``<store>/models/<endpoint>`` is that ``ModelDataUrl``;
  without ``--store`` it is derived from it (:func:`store_for`);
* the image's Triton release must keep variants apart
  (:data:`ensembles.fleet_spec.FIRST_NAMESPACING_RELEASE`) (:func:`check_release`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from botocore.exceptions import ClientError
from prefect import task
from prefect.cache_policies import NO_CACHE

from ensembles.fleet_spec import FIRST_NAMESPACING_RELEASE, namespacing_problem
from infra.aws import clients as aws
from infra.aws.clients import AwsResponse, SageMakerClient
from infra.aws.errors import describe as aws_describe
from infra.errors import InvalidInput, UserError
from infra.aws.preflight import Check, Clients, check_bucket, check_credentials, clients_for
from infra.aws.sagemaker import _describe as describe_or_none
from infra.triton.release import TritonRelease
from tasks.deploy.publish import model_data_url
from tasks.runtime.run_context import run_logger


@dataclass(frozen=True)
class ServedEndpoint:
    """An existing SageMaker endpoint as SageMaker describes it."""

    endpoint: str
    region: str
    model_data_url: str  # its model's ModelDataUrl, without the trailing "/"
    image: str | None = None
    mode: str | None = None

    @property
    def store_uri(self) -> str | None:
        """The store ``mme deploy`` made this endpoint with (``<store>/models/<endpoint>`` is
        its ModelDataUrl), or None when the URL has another layout."""
        suffix = f"/models/{self.endpoint}"
        store = self.model_data_url.removesuffix(suffix)
        return store if store != self.model_data_url and len(store) > len("s3://") else None

    def where(self) -> str:
        return f"endpoint {self.endpoint} (in {self.region}) loads models from {self.model_data_url}/"


def require_region(region: str | None) -> str:
    """``region``, else the environment's or the AWS profile's: never a silent default (an
    endpoint looked up in the wrong region is not found, or is another one)."""
    found = region or os.environ.get("AWS_REGION") or aws.session().region_name
    if not found:
        raise UserError("no AWS region for the SageMaker endpoints: give --region, or set "
                        "AWS_REGION or AWS_DEFAULT_REGION, or `region` in your AWS profile")
    return str(found)


def _read(call: Callable[..., AwsResponse], what: str, **params: str) -> AwsResponse | None:
    """One read-only describe call: its answer, None when the resource does not exist, an AWS
    error as one line naming ``what``."""
    try:
        return describe_or_none(call, **params)
    except ClientError as e:
        raise aws_describe(e, service="sagemaker", resource=what) from e


def _containers(sm_client: SageMakerClient, endpoint: str, config_name: str) -> list[AwsResponse]:
    """The containers of every model the endpoint's config serves."""
    config = _read(sm_client.describe_endpoint_config, f"endpoint config {config_name}",
                   EndpointConfigName=config_name)
    found: list[AwsResponse] = []
    for variant in (config or {}).get("ProductionVariants", []):
        name = variant.get("ModelName")
        model = _read(sm_client.describe_model, f"model {name}", ModelName=name) if name else None
        if model:
            found += [model["PrimaryContainer"]] if model.get("PrimaryContainer") else model.get("Containers", [])
    if not found:
        raise UserError(f"endpoint {endpoint}: its config {config_name} serves no model that "
                        f"SageMaker still describes: redeploy it (`mme deploy --backend sagemaker`)")
    return found


def describe_served(sm_client: SageMakerClient, endpoint: str, region: str) -> ServedEndpoint:
    """The endpoint's model prefix and image (three describe calls); refuses a missing endpoint,
    one that is not a multi-model endpoint, or one whose models load from several prefixes."""
    doc = _read(sm_client.describe_endpoint, f"endpoint {endpoint}", EndpointName=endpoint)
    if doc is None:
        raise UserError(f"endpoint {endpoint} does not exist in {region}: a fleet deploy adds "
                        f"variants to an existing multi-model endpoint (`mme deploy --backend "
                        f"sagemaker` makes one); give --region if it is in another region")
    containers = _containers(sm_client, endpoint, doc["EndpointConfigName"])
    urls = sorted({c["ModelDataUrl"].rstrip("/") for c in containers if c.get("ModelDataUrl")})
    if len(urls) != 1:
        raise UserError(f"endpoint {endpoint} loads models from {len(urls)} prefixes "
                        f"({', '.join(urls) or 'no ModelDataUrl'}): a fleet needs one")
    first = next(c for c in containers if c.get("ModelDataUrl"))
    if first.get("Mode") not in (None, "MultiModel"):
        raise UserError(f"endpoint {endpoint} is a {first['Mode']} endpoint: a TargetModel needs a "
                        f"multi-model endpoint (Mode=MultiModel)")
    return ServedEndpoint(endpoint, region, urls[0], first.get("Image"), first.get("Mode"))


def store_for(served: Mapping[str, ServedEndpoint], store_uri: str | None) -> str:
    """The store the fleet's routing table and model prefixes live in: ``store_uri`` when every
    endpoint's ModelDataUrl is ``<store_uri>/models/<endpoint>``, else refused naming both; the
    endpoints' own store when ``store_uri`` is None."""
    for s in served.values():
        if store_uri is not None and model_data_url(store_uri, s.endpoint) != s.model_data_url:
            fix = (f"give --store {s.store_uri} or leave --store out" if s.store_uri else
                   "no --store publishes there (its ModelDataUrl is not <store>/models/<endpoint>/)")
            raise UserError(f"--store {store_uri} would publish to "
                            f"{model_data_url(store_uri, s.endpoint)}/, but {s.where()} "
                            f"(its ModelDataUrl): SageMaker would never see them; {fix}")
        if s.store_uri is None:
            raise UserError(f"{s.where()}, not <store>/models/{s.endpoint}/ (the layout `mme deploy` "
                            f"makes): a fleet cannot be published where it loads from")
    stores = sorted({s.store_uri for s in served.values() if s.store_uri})
    if store_uri is None and len(stores) > 1:
        raise UserError(f"the endpoints load models from different stores ({', '.join(stores)}): "
                        f"a fleet's routing table lives in one; deploy them as separate fleets")
    return store_uri or stores[0]


def check_release(served: ServedEndpoint, log: Callable[[str], None]) -> None:
    """Refuse an endpoint whose Triton image cannot keep a fleet's variants apart; an image
    whose tag names no release (a custom one) is only warned about."""
    try:
        release = TritonRelease.of_image(served.image or "")
    except InvalidInput:
        log(f"endpoint {served.endpoint}: cannot tell the Triton release of its image "
            f"{served.image!r}; a fleet needs Triton's --model-namespacing (SageMaker's Triton "
            f"container passes it from {FIRST_NAMESPACING_RELEASE} on)")
        return
    problem = namespacing_problem(release, f"endpoint {served.endpoint} ({served.image})")
    if problem:
        raise UserError(f"{problem} (`mme deploy --backend sagemaker --endpoint {served.endpoint} "
                        f"--triton-release ...` updates it)")


@task(name="describe-fleet-endpoints", cache_policy=NO_CACHE)
def sagemaker_endpoints_task(endpoints: Sequence[str], store_uri: str | None, region: str | None
                             ) -> tuple[str, str, dict[str, ServedEndpoint]]:
    """(store, region, each endpoint as SageMaker describes it), or a refusal: before the
    deploy uploads, invokes or changes anything."""
    region = require_region(region)
    sm_client = aws.aws_clients(region).sagemaker
    served = {e: describe_served(sm_client, e, region) for e in endpoints}
    log = run_logger()
    for s in served.values():
        check_release(s, log.warning)
    return store_for(served, store_uri), region, served


def _endpoint_check(sm_client: SageMakerClient, endpoint: str, region: str) -> tuple[Check, ServedEndpoint | None]:
    """One endpoint, read-only: it exists, is multi-model, loads from one prefix, and runs a
    Triton release that keeps variants apart; one pre-flight line either way."""
    try:
        served = describe_served(sm_client, endpoint, region)
    except UserError as e:
        return Check(f"endpoint {endpoint}", "problem", str(e)), None
    notes: list[str] = []
    try:
        check_release(served, notes.append)
    except UserError as e:
        return Check(f"endpoint {endpoint}", "problem", str(e)), served
    return Check(f"endpoint {endpoint}", "ok", f"MultiModel, loads from {served.model_data_url}/, "
                 f"image {served.image or '?'}" + (f" ({notes[0]})" if notes else "")), served


def fleet_preflight(endpoints: Sequence[str], store_uri: str | None, region: str | None,
                    clients: Clients | None = None) -> list[Check]:
    """What a first real ``mme fleet deploy --backend sagemaker`` needs, read-only, every check
    run whatever the others found: a chosen region, credentials, each endpoint as SageMaker
    describes it, the store its ModelDataUrl names (and ``--store`` agreeing), and that
    bucket in the endpoints' region. No call but Describe/Get/List is ever sent."""
    try:
        chosen = require_region(region)
    except UserError as e:
        return [Check("region", "problem", str(e))]
    get = clients or clients_for(chosen)
    lines = [Check("region", "ok", f"{chosen} ({'--region' if region else 'AWS config'})"),
             check_credentials(get("sts"))[0]]
    served: dict[str, ServedEndpoint] = {}
    for endpoint in endpoints:
        line, found = _endpoint_check(get("sagemaker"), endpoint, chosen)
        lines.append(line)
        if found is not None:
            served[endpoint] = found
    if len(served) < len(endpoints):
        return [*lines, Check("store", "unchecked", "an endpoint could not be read (see above)")]
    try:
        store = store_for(served, store_uri)
    except UserError as e:
        return [*lines, Check("store", "problem", str(e))]
    return [*lines, Check("store", "ok", store), check_bucket(get("s3"), store, chosen)]
