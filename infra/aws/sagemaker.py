"""Deploy the published Triton ensembles to a SageMaker multi-model endpoint (MME) on GPU.

Design: the deploy is a *plan* of exact AWS calls computed from a declarative
:class:`EndpointPlan` and the endpoint's current state (:func:`describe_state`).
The same list is printed by ``--dry-run`` and executed by :func:`apply`, so what
a dry run shows is what a deploy does.  Everything takes injected boto3 clients
(``sagemaker`` and ``application-autoscaling``) so tests run against moto.

Why names carry content hashes: SageMaker models and endpoint configs are
immutable.  A changed image, model prefix, role, instance type or count
therefore needs a *new* model / endpoint config, and the endpoint is moved to
it with ``UpdateEndpoint``.  That update is SageMaker's blue/green deployment:
the old fleet keeps serving until the new one is InService, and if validating
the new fleet fails afterwards, :func:`rollback_endpoint` updates back to the
previous config.  Same plan, same names: a second deploy plans nothing.

Ownership: everything created here is tagged ``managed-by: triton-mme`` and
``triton-mme:endpoint: <endpoint>``; :func:`delete_endpoint_and_resources`
removes only resources carrying those tags.

The ``sagemaker`` SDK is optional (it is ~1 GB): it is used only to resolve the
Triton image URI when it is installed and knows the release.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from botocore.exceptions import ClientError

from infra.aws.clients import AutoScalingClient, AwsResponse, BotoClient, S3Client, SageMakerClient
from infra.aws.errors import AwsCallError
from infra.aws.errors import describe as aws_describe
from infra.errors import InvalidInput, MMEError, UserError
from infra.jsontypes import JsonObject, JsonValue
from infra.triton.release import TritonRelease

_logger = logging.getLogger(__name__)

SAGEMAKER = "sagemaker"
AUTOSCALING = "application-autoscaling"
WAIT_IN_SERVICE = "wait_in_service"
"""Pseudo-operation in a plan: poll ``DescribeEndpoint`` until InService (read-only)."""

SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
INVOCATIONS_METRIC = "SageMakerVariantInvocationsPerInstance"
MANAGED_BY_KEY = "managed-by"
MANAGED_BY_VALUE = "triton-mme"
ENDPOINT_TAG_KEY = "triton-mme:endpoint"

Log = Callable[[str], None]

# --------------------------------------------------------------------------- errors


class SageMakerDeployError(MMEError, RuntimeError):
    """Base of every failure this module reports (messages name the resource and what to do).
    Not the user's by itself (the CLI exits 1: a timeout, an endpoint busy with another
    update); ``EndpointFailed`` and ``NotOwned`` are also ``UserError`` (exit 2), and
    ``AwsCallFailed`` exits as AWS's error code says."""


class EndpointFailed(SageMakerDeployError, UserError):
    """The endpoint reached Failed (or an update did not take); the message carries FailureReason."""


class EndpointTimeout(SageMakerDeployError):
    """The endpoint did not become InService in time (SageMaker keeps working on it)."""


class EndpointBusy(SageMakerDeployError):
    """The endpoint is in a transitional state; a plan computed now would be wrong."""


class NotOwned(SageMakerDeployError, UserError):
    """A resource to delete does not carry our tags, so it is left alone."""


# --------------------------------------------------------------------------- image URI


# Accounts hosting the ``sagemaker-tritonserver`` images of the releases used by the
# SageMaker Triton MME examples (22.xx-23.xx).  Source: the account table of the
# SageMaker Triton examples (aws/amazon-sagemaker-examples, ``account_id_map``), the
# same as ``TRITON_IMAGE_ACCOUNT_ID_MAP`` in the sagemaker Python SDK's Triton builder.
# These must be checked (``aws ecr describe-images --registry-id ...``) before relying
# on a new region.
TRITON_LEGACY_ACCOUNTS: dict[str, str] = {
    "us-east-1": "785573368785",
    "us-east-2": "007439368137",
    "us-west-1": "710691900526",
    "us-west-2": "301217895009",
    "eu-west-1": "802834080501",
    "eu-west-2": "205493899709",
    "eu-west-3": "254080097072",
    "eu-north-1": "601324751636",
    "eu-south-1": "966458181534",
    "eu-central-1": "746233611703",
    "ap-east-1": "110948597952",
    "ap-south-1": "763008648453",
    "ap-northeast-1": "941853720454",
    "ap-northeast-2": "151534178276",
    "ap-southeast-1": "324986816169",
    "ap-southeast-2": "355873309152",
    "cn-northwest-1": "474822919863",
    "cn-north-1": "472730292857",
    "sa-east-1": "756306329178",
    "ca-central-1": "464438896020",
    "me-south-1": "836785723513",
    "af-south-1": "774647643957",
}

# From 23.12 on, the images are published with the AWS Deep Learning Containers
# (sagemaker SDK ``image_uri_config/sagemaker-tritonserver.json``: 23.12 ... 24.09 list
# these registries).  Same caveat: check before relying on a new region.
DLC_FIRST_RELEASE = TritonRelease(23, 12)
TRITON_DLC_ACCOUNTS: dict[str, str] = {
    **{
        region: "763104351884"
        for region in (
            "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "sa-east-1",
            "eu-west-1", "eu-west-2", "eu-west-3", "eu-central-1", "eu-north-1",
            "ap-northeast-1", "ap-northeast-2", "ap-south-1", "ap-southeast-1", "ap-southeast-2",
        )
    },
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-northeast-3": "364406365360",
    "ap-southeast-3": "907027046896",
    "ca-west-1": "204538143572",
    "eu-south-1": "692866216735",
    "il-central-1": "780543022126",
    "me-south-1": "217643126080",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
}

TRITON_REPOSITORY = "sagemaker-tritonserver"

# The ``sagemaker-tritonserver`` tags known to exist, per release: the AWS Deep Learning
# Containers list (aws/deep-learning-containers ``available_images.md``, "NVIDIA Triton Inference
# Containers (SM support only)": 21.08 and 22.05-22.12 with GPU and CPU tags, 23.01-23.03 GPU
# only) and, from 23.12, the sagemaker SDK's ``image_uri_config/sagemaker-tritonserver.json``
# (23.12, 24.01, 24.03, 24.05, 24.09). Without the SDK a release outside this table is refused
# rather than turned into a URI that may not exist (the endpoint would then fail after ~10 min
# of provisioning with an image pull error). Add a release here once its tag is published.
KNOWN_TRITON_TAGS: dict[str, tuple[str, ...]] = {
    **{r: ("-py3", "-py3-cpu") for r in ("21.08", "22.05", "22.07", "22.08", "22.09", "22.10",
                                         "22.12")},
    **{r: ("-py3",) for r in ("23.01", "23.02", "23.03", "23.12", "24.01", "24.03", "24.05",
                              "24.09")},
}


def known_tags() -> list[str]:
    return [f"{r}{suffix}" for r, suffixes in sorted(KNOWN_TRITON_TAGS.items()) for suffix in suffixes]
_GPU_INSTANCE_RE = re.compile(r"^ml\.(g4dn|g5|g6|g6e|g7e|p3|p3dn|p4d|p4de|p5|p5e|p5en|p6)\.")


def check_release(release: str) -> str:
    """Validate a Triton container release ``"YY.MM"`` (e.g. ``"24.09"``) and return it
    (:meth:`infra.triton.release.TritonRelease.parse`)."""
    return str(TritonRelease.parse(release))


def is_gpu_instance(instance_type: str) -> bool:
    """True for the NVIDIA GPU instance families the Triton MME container runs on."""
    return bool(_GPU_INSTANCE_RE.match(instance_type))


def _ecr_domain(region: str) -> str:
    return "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"


def _sdk_image_uri(region: str, release: str, instance_type: str) -> str | None:
    """The SDK's answer, or None when the SDK is absent or does not know this release/region.

    Why the SDK first: it is updated with new releases and registries; the built-in
    tables below are the fallback that keeps this module usable without a 1 GB install.
    """
    try:
        from sagemaker.core import image_uris  # sagemaker SDK v3
    except ImportError:
        try:
            from sagemaker import image_uris  # sagemaker SDK v2
        except ImportError:
            return None
        except Exception as exc:  # noqa: BLE001 - a broken SDK install must not block deploys
            _logger.debug("sagemaker SDK not usable: %s", exc)
            return None
    except Exception as exc:  # noqa: BLE001 - a broken SDK install must not block deploys
        _logger.debug("sagemaker SDK not usable: %s", exc)
        return None
    try:
        uri = image_uris.retrieve(framework="sagemaker-tritonserver", region=region,
                                  version=release, instance_type=instance_type)
    except Exception as exc:  # noqa: BLE001 - ValueError (and others) for unknown versions/regions
        _logger.debug("sagemaker SDK has no Triton image %s in %s: %s", release, region, exc)
        return None
    return uri if isinstance(uri, str) and uri else None


def triton_image_uri(region: str, release: str, *, instance_type: str = "ml.g5.xlarge") -> str:
    """ECR URI of SageMaker's Triton container (``sagemaker-tritonserver:<release>-py3``).

    Resolution: the sagemaker SDK's ``image_uris`` when importable and it knows the
    release; otherwise the built-in account tables (DLC accounts from 23.12 on, the
    examples' per-region accounts before).  Raises ValueError for a malformed release,
    an unknown region, or a CPU instance type on a release the tables have no CPU tag for.
    """
    check_release(release)
    sdk_uri = _sdk_image_uri(region, release, instance_type)
    if sdk_uri is not None:
        return sdk_uri
    if release not in KNOWN_TRITON_TAGS:
        raise InvalidInput(
            f"no known {TRITON_REPOSITORY} image for Triton release {release}: without the "
            f"sagemaker SDK only these tags are known: {', '.join(known_tags())} (install the "
            f"sagemaker SDK if it knows newer ones, or add the release to "
            f"infra.aws.sagemaker.KNOWN_TRITON_TAGS once its tag is published)")
    dlc = TritonRelease.parse(release) >= DLC_FIRST_RELEASE
    table = TRITON_DLC_ACCOUNTS if dlc else TRITON_LEGACY_ACCOUNTS
    account = table.get(region)
    if account is None:
        raise InvalidInput(
            f"unknown region {region!r} for the Triton image {release}: known regions are "
            f"{', '.join(sorted(table))} (install the sagemaker SDK or pass the image URI)")
    suffix = "-py3"
    if not is_gpu_instance(instance_type):
        if "-py3-cpu" not in KNOWN_TRITON_TAGS[release]:
            raise InvalidInput(f"{instance_type} is not a GPU instance type; no CPU Triton image is "
                               f"known for release {release} without the sagemaker SDK (CPU tags: "
                               f"{', '.join(t for t in known_tags() if t.endswith('-cpu'))})")
        suffix = "-py3-cpu"  # the CPU tags of 21.08 and the 22.xx releases
    return f"{account}.dkr.ecr.{region}.{_ecr_domain(region)}/{TRITON_REPOSITORY}:{release}{suffix}"


# --------------------------------------------------------------------------- cost


def _us_east_1_prices() -> dict[str, float]:
    """On-demand SageMaker real-time inference prices (USD per instance-hour) in us-east-1, from
    the instance catalog (infra/aws/instances.yaml: its source and the date checked; prices change,
    check https://aws.amazon.com/sagemaker/pricing/ before quoting). Other regions may differ."""
    from infra.aws.instance_catalog import load_catalog

    return {name: p for name, row in load_catalog().instances.items()
            if (p := row.hourly("us-east-1")) is not None}


HOURLY_PRICE_US_EAST_1: dict[str, float] = _us_east_1_prices()


def estimate_hourly_cost(instance_type: str, count: int = 1) -> float | None:
    """Approximate USD/hour of ``count`` instances (us-east-1 list price), None if unknown.

    Why: a GPU endpoint bills every hour it exists, used or not; the CLI and README
    show this before anyone creates one.
    """
    if count < 0:
        raise InvalidInput(f"instance count must be >= 0, got {count}")
    price = HOURLY_PRICE_US_EAST_1.get(instance_type)
    return None if price is None else round(price * count, 4)


# --------------------------------------------------------------------------- container options

# botocore's ContainerDefinition.Environment: keys match this, keys and values up to 1024
# characters, at most 100 entries (the CreateModel API reference).
_ENV_KEY_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_ENV_MAX_LEN = 1024
_ENV_MAX_ITEMS = 100


def check_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The container Environment as CreateModel accepts it, or ValueError naming the entry."""
    out: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY_RE.match(key) or len(key) > _ENV_MAX_LEN:
            raise InvalidInput(f"environment variable name {key!r} is not valid for a SageMaker "
                               f"container: letters, digits and _, not starting with a digit, "
                               f"at most {_ENV_MAX_LEN} characters")
        if not isinstance(value, str) or len(value) > _ENV_MAX_LEN:
            raise InvalidInput(f"environment variable {key}: the value must be a string of at most "
                               f"{_ENV_MAX_LEN} characters")
        out[key] = value
    if len(out) > _ENV_MAX_ITEMS:
        raise InvalidInput(f"{len(out)} environment variables given; a SageMaker container takes "
                           f"at most {_ENV_MAX_ITEMS}")
    return out


def inference_ami_versions() -> list[str]:
    """The values botocore's model allows for ``ProductionVariant.InferenceAmiVersion`` (the
    AMI, hence the NVIDIA driver and CUDA version, of the serving instances); [] when this
    botocore has no such enum."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.shape_for("ProductionVariant").members.get("InferenceAmiVersion")
    return list(getattr(shape, "enum", None) or [])


def check_inference_ami_version(version: str) -> str:
    allowed = inference_ami_versions()
    if allowed and version not in allowed:
        raise InvalidInput(f"inference AMI version {version!r} is not one SageMaker accepts: "
                           f"{', '.join(allowed)}")
    if not version:
        raise InvalidInput("inference AMI version must not be empty")
    return version


# SageMaker's Tag shape (botocore): key 1-128 and value 0-256 characters of letters, separators,
# digits and ``_.:/=+-@`` (``[\p{L}\p{Z}\p{N}_.:/=+\-@]*``), at most 50 tags a resource; keys
# starting ``aws:`` are AWS's. Two of the 50 are ours (MANAGED_BY_KEY, ENDPOINT_TAG_KEY).
_TAG_KEY_MAX, _TAG_VALUE_MAX, _TAGS_MAX = 128, 256, 50
_TAG_PUNCTUATION = set("_.:/=+-@")


def _tag_text_ok(text: str) -> bool:
    return all(ch in _TAG_PUNCTUATION or unicodedata.category(ch)[0] in "LZN" for ch in text)


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The caller's tags, or InvalidInput naming the tag: SageMaker would refuse it at the first
    Create call, after the upload, and an ``aws:`` key or one of ours would be worse (refused, or
    taking over what marks the resources this tool owns)."""
    if len(tags) > _TAGS_MAX - 2:
        raise InvalidInput(f"{len(tags)} tags given: a SageMaker resource takes {_TAGS_MAX}, two of "
                           f"which are this tool's ({MANAGED_BY_KEY}, {ENDPOINT_TAG_KEY})")
    for key, value in tags.items():
        where = f"--tag {key}={value}"
        if key in (MANAGED_BY_KEY, ENDPOINT_TAG_KEY):
            raise InvalidInput(f"{where}: tag {key!r} is reserved: it marks what this tool owns")
        if not isinstance(key, str) or not 1 <= len(key) <= _TAG_KEY_MAX or not _tag_text_ok(key):
            raise InvalidInput(f"{where}: a tag key is 1-{_TAG_KEY_MAX} letters, digits, spaces "
                               f"and _.:/=+-@")
        if key.lower().startswith("aws:"):
            raise InvalidInput(f"{where}: keys starting 'aws:' are reserved for AWS")
        if not isinstance(value, str) or len(value) > _TAG_VALUE_MAX or not _tag_text_ok(value):
            raise InvalidInput(f"{where}: a tag value is 0-{_TAG_VALUE_MAX} letters, digits, "
                               f"spaces and _.:/=+-@")
    return dict(tags)


# --------------------------------------------------------------------------- plan

_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker resource names
_MAX_NAME = 63


def _short_hash(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]


def _derived_name(endpoint: str, kind: str, digest: str) -> str:
    suffix = f"-{kind}-{digest}"
    return endpoint[: _MAX_NAME - len(suffix)].rstrip("-") + suffix


@dataclass(frozen=True)
class EndpointPlan:
    """What the endpoint should look like; ``model_name``/``endpoint_config_name`` are derived.

    The model name hashes everything that defines the container (image, model prefix,
    role, cache setting, environment); the config name hashes the model name and the
    fleet (variant, instance type, count, inference AMI version when set).  So any change produces new names, which is
    what makes an update a blue/green ``UpdateEndpoint`` and a re-run a no-op.
    Autoscaling is on when ``autoscaling_max`` is set; ``autoscaling_min`` defaults
    to the initial instance count.  ``target_invocations_per_instance`` is
    SageMaker's InvocationsPerInstance (per minute, per instance): set it from a load test.
    """

    endpoint_name: str
    image_uri: str
    model_data_url: str
    execution_role_arn: str
    instance_type: str = "ml.g4dn.xlarge"
    initial_instance_count: int = 1
    variant_name: str = "AllTraffic"
    model_cache_setting: str = "Enabled"
    environment: Mapping[str, str] = field(default_factory=dict)
    inference_ami_version: str | None = None
    autoscaling_min: int | None = None
    autoscaling_max: int | None = None
    target_invocations_per_instance: float = 200.0
    scale_in_cooldown_s: int = 300
    scale_out_cooldown_s: int = 60
    tags: Mapping[str, str] = field(default_factory=dict)
    model_name: str = field(init=False)
    endpoint_config_name: str = field(init=False)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.endpoint_name):
            raise InvalidInput(f"invalid endpoint name {self.endpoint_name!r}: 1-63 letters, digits, "
                               "hyphens, starting and ending with a letter or digit")
        if not self.model_data_url.startswith("s3://") or len(self.model_data_url.rstrip("/")) <= 5:
            raise InvalidInput(f"model_data_url must be an s3://bucket/prefix URL, got {self.model_data_url!r}")
        if not self.model_data_url.endswith("/"):
            # An MME's ModelDataUrl is a prefix: TargetModel names are appended to it.
            object.__setattr__(self, "model_data_url", self.model_data_url + "/")
        if not self.execution_role_arn.startswith("arn:") or ":role/" not in self.execution_role_arn:
            raise InvalidInput(f"execution_role_arn must be an IAM role ARN, got {self.execution_role_arn!r}")
        if self.model_cache_setting not in ("Enabled", "Disabled"):
            raise InvalidInput(f"model_cache_setting must be 'Enabled' or 'Disabled', got {self.model_cache_setting!r}")
        if self.initial_instance_count < 1:
            raise InvalidInput(f"initial_instance_count must be >= 1, got {self.initial_instance_count}")
        if self.autoscaling_max is not None:
            low = self.autoscaling_min if self.autoscaling_min is not None else self.initial_instance_count
            if not 1 <= low <= self.initial_instance_count <= self.autoscaling_max:
                raise InvalidInput(
                    "autoscaling needs 1 <= autoscaling_min <= initial_instance_count <= autoscaling_max, "
                    f"got {low} <= {self.initial_instance_count} <= {self.autoscaling_max}")
            if self.target_invocations_per_instance <= 0:
                raise InvalidInput("target_invocations_per_instance must be > 0")
        elif self.autoscaling_min is not None:
            raise InvalidInput("autoscaling_min without autoscaling_max: set both to enable autoscaling")
        check_tags(self.tags)
        object.__setattr__(self, "environment", check_environment(self.environment))
        if self.inference_ami_version is not None:
            check_inference_ami_version(self.inference_ami_version)
        object.__setattr__(self, "tags", dict(self.tags))
        model_spec = {"image": self.image_uri, "model_data_url": self.model_data_url,
                      "role": self.execution_role_arn, "cache": self.model_cache_setting,
                      "environment": self.environment}
        object.__setattr__(self, "model_name", _derived_name(self.endpoint_name, "model", _short_hash(model_spec)))
        config_spec = {"model": self.model_name, "variant": self.variant_name,
                       "instance_type": self.instance_type, "count": self.initial_instance_count}
        if self.inference_ami_version is not None:  # absent key: names of older plans unchanged
            config_spec["inference_ami_version"] = self.inference_ami_version
        object.__setattr__(self, "endpoint_config_name",
                           _derived_name(self.endpoint_name, "config", _short_hash(config_spec)))

    # ---- derived request pieces

    @property
    def autoscaling(self) -> bool:
        return self.autoscaling_max is not None

    @property
    def scaling_resource_id(self) -> str:
        return f"endpoint/{self.endpoint_name}/variant/{self.variant_name}"

    @property
    def scaling_policy_name(self) -> str:
        return f"{self.endpoint_name}-invocations-per-instance"

    def aws_tags(self) -> list[dict[str, str]]:
        """Tags in AWS's ``[{"Key", "Value"}]`` shape; ours first, then the caller's."""
        tags = {MANAGED_BY_KEY: MANAGED_BY_VALUE, ENDPOINT_TAG_KEY: self.endpoint_name, **self.tags}
        return [{"Key": k, "Value": v} for k, v in tags.items()]

    def scalable_target_params(self) -> JsonObject:
        return {"ServiceNamespace": "sagemaker", "ResourceId": self.scaling_resource_id,
                "ScalableDimension": SCALABLE_DIMENSION,
                "MinCapacity": (self.autoscaling_min if self.autoscaling_min is not None
                                else self.initial_instance_count),
                "MaxCapacity": self.autoscaling_max}

    def target_tracking_config(self) -> JsonObject:
        return {"TargetValue": float(self.target_invocations_per_instance),
                "PredefinedMetricSpecification": {"PredefinedMetricType": INVOCATIONS_METRIC},
                "ScaleInCooldown": self.scale_in_cooldown_s,
                "ScaleOutCooldown": self.scale_out_cooldown_s}

    def hourly_cost(self) -> float | None:
        """Approximate USD/hour at the initial instance count (see :func:`estimate_hourly_cost`)."""
        return estimate_hourly_cost(self.instance_type, self.initial_instance_count)


def plan_for(endpoint_name: str, model_data_url: str, execution_role_arn: str, *, region: str,
             release: str, instance_type: str = "ml.g4dn.xlarge", **options: Any) -> EndpointPlan:
    """An EndpointPlan for a GPU MME whose image is SageMaker's Triton ``release`` in ``region``.

    Refuses (before any AWS call) an instance type AWS does not document for GPU multi-model
    endpoints (:mod:`infra.aws.gpu_instances`), a release whose TensorRT no longer runs on its GPU,
    and an inference AMI that cannot run the release's CUDA (:mod:`infra.aws.inference_ami`)."""
    from infra.aws.gpu_instances import check_release_runs_on
    from infra.aws.inference_ami import check_ami_release

    check_release_runs_on(instance_type, release)  # refuses a type not in the MME GPU table too
    if options.get("inference_ami_version"):
        check_ami_release(options["inference_ami_version"], release)
    image = triton_image_uri(region, release, instance_type=instance_type)
    return EndpointPlan(endpoint_name=endpoint_name, image_uri=image, model_data_url=model_data_url,
                        execution_role_arn=execution_role_arn, instance_type=instance_type, **options)


def bucket_region(s3_client: S3Client, bucket: str) -> str:
    """The region of ``bucket`` from GetBucketLocation (read-only); its ``None`` means
    us-east-1 and the legacy ``EU`` eu-west-1."""
    try:
        where = s3_client.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    except ClientError as exc:
        raise aws_describe(exc, operation="s3.get_bucket_location", resource=f"bucket {bucket}") from exc
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(where, where)


def check_bucket_region(s3_client: S3Client, model_data_url: str, region: str) -> None:
    """Refuse (one line naming both) a model bucket in another region than the endpoint: the
    endpoint could not download its models ("Failed to download model data"), which SageMaker
    says only after provisioning. Called before a deploy creates anything."""
    bucket = model_data_url.removeprefix("s3://").split("/", 1)[0]
    found = bucket_region(s3_client, bucket)
    if found != region:
        raise InvalidInput(f"bucket {bucket} is in {found} but the endpoint would be in {region}: "
                           f"SageMaker reads model data from its own region; deploy with "
                           f"--region {found} or use a bucket in {region}")


# --------------------------------------------------------------------------- state


@dataclass
class DeployState:
    """What exists now, as far as a deploy of one plan cares.

    ``endpoint_config_name`` is the config the endpoint serves now (the rollback target);
    ``endpoint_instance_type``/``endpoint_instance_count`` come from that config's variant.
    ``scaling_policy`` is our named policy as described by Application Auto Scaling.
    """

    model_exists: bool = False
    config_exists: bool = False
    endpoint_status: str | None = None
    endpoint_config_name: str | None = None
    endpoint_instance_type: str | None = None
    endpoint_instance_count: int | None = None
    failure_reason: str | None = None
    scalable_target: ScalableTarget | None = None
    scaling_policy: ScalingPolicy | None = None


@dataclass(frozen=True)
class ScalableTarget:
    """A variant's scalable target, as much of Application Auto Scaling's description as a
    deploy compares with its plan and a rollback registers again."""

    resource_id: str
    min_capacity: int
    max_capacity: int


@dataclass(frozen=True)
class ScalingPolicy:
    """A scaling policy on a variant: its name and type, and (target tracking) its
    configuration as AWS describes it, which a rollback puts back as it was."""

    name: str
    policy_type: str | None = None
    target_tracking: JsonObject | None = None


class Scaling(NamedTuple):
    """(scalable target, our policy) on a variant, each None when absent."""

    target: ScalableTarget | None
    policy: ScalingPolicy | None


@dataclass(frozen=True)
class EndpointDescription:
    """What :func:`wait_in_service` saw last: the endpoint's status, the config it serves, and
    SageMaker's reason when it failed."""

    endpoint: str
    status: str | None
    config_name: str | None = None
    failure_reason: str | None = None


def _is_not_found(exc: ClientError) -> bool:
    """SageMaker answers a missing model/config/endpoint with ValidationException 'Could not find'."""
    err = exc.response.get("Error", {})
    code = str(err.get("Code", ""))
    return code in ("ResourceNotFound", "ResourceNotFoundException", "ObjectNotFoundException") or (
        code == "ValidationException" and "could not find" in str(err.get("Message", "")).lower())


def _describe(fn: Callable[..., AwsResponse], **params: str) -> AwsResponse | None:
    try:
        return fn(**params)
    except ClientError as exc:
        if _is_not_found(exc):
            return None
        raise


def _variant(config: AwsResponse, variant_name: str) -> AwsResponse | None:
    return next((v for v in config.get("ProductionVariants", []) if v.get("VariantName") == variant_name), None)


def describe_scaling(aas_client: AutoScalingClient, resource_id: str, policy_name: str | None
                     ) -> Scaling:
    """(scalable target, our policy) on a variant, each None when absent."""
    targets = aas_client.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[resource_id],
        ScalableDimension=SCALABLE_DIMENSION).get("ScalableTargets", [])
    found = next((t for t in targets if t.get("ResourceId") == resource_id), None)
    if found is None:
        return Scaling(None, None)
    target = ScalableTarget(resource_id, int(found["MinCapacity"]), int(found["MaxCapacity"]))
    policy = None
    if policy_name is not None:
        policies = aas_client.describe_scaling_policies(
            ServiceNamespace="sagemaker", ResourceId=resource_id, ScalableDimension=SCALABLE_DIMENSION,
            PolicyNames=[policy_name]).get("ScalingPolicies", [])
        p = next((p for p in policies if p.get("PolicyName") == policy_name), None)
        if p is not None:
            policy = ScalingPolicy(policy_name, p.get("PolicyType"),
                                   p.get("TargetTrackingScalingPolicyConfiguration"))
    return Scaling(target, policy)


def describe_state(sm_client: SageMakerClient, aas_client: AutoScalingClient, plan: EndpointPlan) -> DeployState:
    """Read (only) what exists for ``plan``: model, config, endpoint, autoscaling."""
    state = DeployState()
    state.model_exists = _describe(sm_client.describe_model, ModelName=plan.model_name) is not None
    state.config_exists = _describe(sm_client.describe_endpoint_config,
                                    EndpointConfigName=plan.endpoint_config_name) is not None
    endpoint = _describe(sm_client.describe_endpoint, EndpointName=plan.endpoint_name)
    if endpoint is not None:
        state.endpoint_status = endpoint.get("EndpointStatus")
        state.endpoint_config_name = endpoint.get("EndpointConfigName")
        state.failure_reason = endpoint.get("FailureReason")
        if state.endpoint_config_name:
            current = _describe(sm_client.describe_endpoint_config,
                                EndpointConfigName=state.endpoint_config_name)
            variant = _variant(current or {}, plan.variant_name)
            if variant is not None:
                state.endpoint_instance_type = variant.get("InstanceType")
                state.endpoint_instance_count = variant.get("InitialInstanceCount")
    if aas_client is not None:
        state.scalable_target, state.scaling_policy = describe_scaling(
            aas_client, plan.scaling_resource_id, plan.scaling_policy_name)
    return state


# --------------------------------------------------------------------------- calls


class Call(NamedTuple):
    """One AWS call: ``getattr(clients[service], operation)(**params)``.

    ``operation`` is the boto3 method name; :data:`WAIT_IN_SERVICE` is the one
    pseudo-operation (polling DescribeEndpoint), listed so a dry run shows the wait.
    """

    service: str
    operation: str
    params: JsonObject

    @property
    def mutating(self) -> bool:
        return not self.operation.startswith(("describe_", "list_", "get_", "wait"))

    def __str__(self) -> str:
        return f"{self.service}.{self.operation}({json.dumps(self.params, sort_keys=True, default=str)})"


def format_calls(calls: Iterable[Call]) -> str:
    """The plan as numbered lines, for ``--dry-run``."""
    lines = [f"{i:2d}. {c}" for i, c in enumerate(calls, 1)]
    return "\n".join(lines) if lines else "nothing to do: the endpoint already matches the plan"


def _create_model_call(plan: EndpointPlan) -> Call:
    container: JsonObject = {
        "Image": plan.image_uri,
        "ModelDataUrl": plan.model_data_url,
        "Mode": "MultiModel",
        "MultiModelConfig": {"ModelCacheSetting": plan.model_cache_setting},
    }
    if plan.environment:
        container["Environment"] = {**plan.environment}
    return Call(SAGEMAKER, "create_model", {
        "ModelName": plan.model_name, "ExecutionRoleArn": plan.execution_role_arn,
        "PrimaryContainer": container, "Tags": _json_tags(plan)})


def _create_config_call(plan: EndpointPlan) -> Call:
    variant: JsonObject = {
        "VariantName": plan.variant_name, "ModelName": plan.model_name,
        "InstanceType": plan.instance_type, "InitialInstanceCount": plan.initial_instance_count,
        "InitialVariantWeight": 1.0}
    if plan.inference_ami_version is not None:
        variant["InferenceAmiVersion"] = plan.inference_ami_version
    return Call(SAGEMAKER, "create_endpoint_config", {
        "EndpointConfigName": plan.endpoint_config_name, "ProductionVariants": [variant],
        "Tags": _json_tags(plan)})


def _json_tags(plan: EndpointPlan) -> list[JsonValue]:
    """:meth:`EndpointPlan.aws_tags` as request parameters."""
    return [{**tag} for tag in plan.aws_tags()]


def _wait_call(endpoint: str, config: str) -> Call:
    return Call(SAGEMAKER, WAIT_IN_SERVICE, {"EndpointName": endpoint, "EndpointConfigName": config})


def _deregister_call(resource_id: str) -> Call:
    return Call(AUTOSCALING, "deregister_scalable_target", {
        "ServiceNamespace": "sagemaker", "ResourceId": resource_id, "ScalableDimension": SCALABLE_DIMENSION})


def _policy_matches(policy: ScalingPolicy | None, plan: EndpointPlan) -> bool:
    if policy is None or policy.policy_type != "TargetTrackingScaling":
        return False
    have = policy.target_tracking or {}
    want = plan.target_tracking_config()
    metric = have.get("PredefinedMetricSpecification")
    return (have.get("TargetValue", -1) == want["TargetValue"]
            and isinstance(metric, dict) and metric.get("PredefinedMetricType") == INVOCATIONS_METRIC
            and have.get("ScaleInCooldown") == want["ScaleInCooldown"]
            and have.get("ScaleOutCooldown") == want["ScaleOutCooldown"]
            and not have.get("DisableScaleIn", False))


def plan_calls(plan: EndpointPlan, current_state: DeployState) -> list[Call]:
    """The exact calls that move the current state to ``plan`` (empty when it already matches).

    Order: model, endpoint config, endpoint (create, or blue/green update when it serves
    another config), wait until InService, then autoscaling (a variant is registered only
    once the fleet it scales exists).  Per the SageMaker docs, an update that changes the
    instance type of an autoscaled variant fails, so the target is deregistered first and
    registered again after.  When neither instance type nor count changes (a new image or
    model prefix) on an autoscaled variant, ``RetainAllVariantProperties`` keeps the
    scaled-out instance count instead of dropping to the initial count mid-traffic.
    """
    s = current_state
    _check_updatable(plan, s)
    calls: list[Call] = []
    if not s.model_exists:
        calls.append(_create_model_call(plan))
    if not s.config_exists:
        calls.append(_create_config_call(plan))
    endpoint_calls, scaling_cleared = _endpoint_calls(plan, s)
    calls += endpoint_calls
    target = None if scaling_cleared else s.scalable_target
    policy = None if scaling_cleared else s.scaling_policy
    return calls + _autoscaling_calls(plan, target, policy)


def _check_updatable(plan: EndpointPlan, s: DeployState) -> None:
    """Refuse a Failed endpoint (it cannot be updated) and one still changing."""
    if s.endpoint_status == "Failed":
        raise EndpointFailed(
            f"endpoint {plan.endpoint_name} is Failed ({s.failure_reason or 'no FailureReason given'}); "
            "a Failed endpoint cannot be updated: delete it, then deploy again")
    if s.endpoint_status not in (None, "InService"):
        raise EndpointBusy(f"endpoint {plan.endpoint_name} is {s.endpoint_status}; wait until it "
                           "is InService (or Failed) and plan again")


def _endpoint_calls(plan: EndpointPlan, s: DeployState) -> tuple[list[Call], bool]:
    """Create the endpoint, or move it to the plan's config (blue/green); and whether that
    deregisters its scalable target (an instance-type change of an autoscaled variant)."""
    if s.endpoint_status is None:
        return [Call(SAGEMAKER, "create_endpoint", {
            "EndpointName": plan.endpoint_name, "EndpointConfigName": plan.endpoint_config_name,
            "Tags": _json_tags(plan)}), _wait_call(plan.endpoint_name, plan.endpoint_config_name)], False
    if s.endpoint_config_name == plan.endpoint_config_name:
        return [], False
    calls: list[Call] = []
    scaling_cleared = False
    params: JsonObject = {"EndpointName": plan.endpoint_name,
                          "EndpointConfigName": plan.endpoint_config_name}
    same_type = s.endpoint_instance_type == plan.instance_type
    if s.scalable_target is not None and not same_type:
        calls.append(_deregister_call(plan.scaling_resource_id))  # also deletes its policies
        scaling_cleared = True
    elif (s.scalable_target is not None and same_type
          and s.endpoint_instance_count == plan.initial_instance_count):
        params["RetainAllVariantProperties"] = True
    calls.append(Call(SAGEMAKER, "update_endpoint", params))
    calls.append(_wait_call(plan.endpoint_name, plan.endpoint_config_name))
    return calls, scaling_cleared


def _autoscaling_calls(plan: EndpointPlan, target: ScalableTarget | None,
                       policy: ScalingPolicy | None) -> list[Call]:
    """Register the scalable target and put the policy where they differ from the plan; with
    autoscaling off, remove them, but only where our named policy shows that we set them up
    (a target someone registered by hand is left alone)."""
    calls: list[Call] = []
    if plan.autoscaling:
        want = plan.scalable_target_params()
        if target is None or (target.min_capacity, target.max_capacity) != (
                want["MinCapacity"], want["MaxCapacity"]):
            calls.append(Call(AUTOSCALING, "register_scalable_target", want))
        if not _policy_matches(policy, plan):
            calls.append(Call(AUTOSCALING, "put_scaling_policy", {
                "PolicyName": plan.scaling_policy_name, "ServiceNamespace": "sagemaker",
                "ResourceId": plan.scaling_resource_id, "ScalableDimension": SCALABLE_DIMENSION,
                "PolicyType": "TargetTrackingScaling",
                "TargetTrackingScalingPolicyConfiguration": plan.target_tracking_config()}))
    elif policy is not None:
        calls.append(Call(AUTOSCALING, "delete_scaling_policy", {
            "PolicyName": plan.scaling_policy_name, "ServiceNamespace": "sagemaker",
            "ResourceId": plan.scaling_resource_id, "ScalableDimension": SCALABLE_DIMENSION}))
        calls.append(_deregister_call(plan.scaling_resource_id))
    return calls


# --------------------------------------------------------------------------- execution


def _default_log(message: str) -> None:
    _logger.info("%s", message)


def apply(calls: Iterable[Call], clients: Mapping[str, BotoClient], *, log: Log = _default_log,
          timeout_s: float = 1800, poll_s: float = 30, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic,
          on_applied: Callable[[Call], None] | None = None) -> list[AwsResponse | EndpointDescription]:
    """Execute ``calls`` in order with ``clients`` (keyed ``"sagemaker"``, ``"application-autoscaling"``).

    Returns each call's response.  Stops at the first failure: the error names the call
    (the ClientError is chained), and the calls already made stay made (a re-plan
    picks up from there because every create is keyed by a content-addressed name).
    """
    results: list[AwsResponse | EndpointDescription] = []
    for call in calls:
        client = clients.get(call.service)
        if client is None:
            raise SageMakerDeployError(f"no {call.service!r} client given for {call.operation}")
        log(f"{call.service}.{call.operation} {_brief(call.params)}")
        try:
            if call.operation == WAIT_IN_SERVICE:
                config = call.params.get("EndpointConfigName")
                results.append(wait_in_service(
                    client, str(call.params["EndpointName"]),
                    expected_config=None if config is None else str(config),
                    timeout_s=timeout_s, poll_s=poll_s, sleep=sleep, clock=clock, log=log))
                continue
            results.append(getattr(client, call.operation)(**call.params))
        except ClientError as exc:
            raise AwsCallFailed.from_client_error(call, exc) from exc
        if on_applied is not None:  # e.g. the endpoint record, kept in step call by call
            on_applied(call)
    return results


class AwsCallFailed(AwsCallError, SageMakerDeployError):
    """A control-plane call was refused: one line naming the call, the resource and AWS's
    message (HTML stripped); ``code`` is AWS's error code."""

    @classmethod
    def from_client_error(cls, call: Call, exc: ClientError) -> AwsCallFailed:
        err = aws_describe(exc, operation=f"{call.service}.{call.operation}", resource=_resource(call.params))
        return cls(err.operation, err.resource, err.code, err.message)


def _resource(params: JsonObject) -> str | None:
    """What a call is about, in words: ``endpoint my-mme``, ``model my-mme-model-1a2b``."""
    for key, word in (("ModelName", "model"), ("EndpointConfigName", "endpoint config"),
                      ("EndpointName", "endpoint"), ("PolicyName", "scaling policy"),
                      ("ResourceId", "scalable target")):
        if key in params and not (key == "EndpointConfigName" and "EndpointName" in params):
            return f"{word} {params[key]}"
    return None


def _brief(params: JsonObject) -> str:
    names = [f"{k}={params[k]}" for k in ("EndpointName", "EndpointConfigName", "ModelName",
                                           "ResourceId", "PolicyName") if k in params]
    return " ".join(names)


def wait_in_service(sm_client: SageMakerClient, endpoint: str, *, expected_config: str | None = None,
                    timeout_s: float = 1800, poll_s: float = 30,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic,
                    log: Log = _default_log) -> EndpointDescription:
    """Poll DescribeEndpoint until InService; return what it said last.

    Why not boto3's waiter: it hides ``FailureReason`` behind a generic WaiterError,
    and GPU MME creation routinely takes 10-20 minutes, so the caller wants progress
    lines and a message that says what failed.  ``expected_config`` catches an update
    that failed while SageMaker kept the old fleet: the endpoint is InService again,
    but on the previous config. That is judged only once the update was seen to start (a
    status other than InService) or the config changed: right after UpdateEndpoint,
    DescribeEndpoint can still answer InService on the old config, which is not a failure.
    """
    deadline = clock() + timeout_s
    last_status, started = None, False
    while True:
        desc = sm_client.describe_endpoint(EndpointName=endpoint)
        status = desc.get("EndpointStatus")
        if status != last_status:
            log(f"endpoint {endpoint}: {status}")
            last_status = status
        started = started or status != "InService"
        if _settled(desc, endpoint, expected_config, started):
            return EndpointDescription(endpoint, status, desc.get("EndpointConfigName"),
                                       desc.get("FailureReason"))
        remaining = deadline - clock()
        if remaining <= 0:
            waited = "" if started else f" on {desc.get('EndpointConfigName')}; the update never showed as started"
            raise EndpointTimeout(
                f"endpoint {endpoint} still {status}{waited} after {timeout_s:.0f} s; stopped waiting "
                "(SageMaker continues; check the console or the endpoint's CloudWatch logs)")
        sleep(min(poll_s, remaining))


def _settled(desc: AwsResponse, endpoint: str, expected_config: str | None, started: bool) -> bool:
    """True when ``desc`` is the endpoint InService on the expected config; raises when it is
    Failed, or InService on another config after the update started; False: keep waiting."""
    status = desc.get("EndpointStatus")
    reason = desc.get("FailureReason") or "no FailureReason given"
    if status in ("Failed", "UpdateRollbackFailed", "OutOfService", "Deleting"):
        raise EndpointFailed(
            f"endpoint {endpoint} is {status}: {reason} (container logs: CloudWatch log group "
            f"/aws/sagemaker/Endpoints/{endpoint})")
    if status != "InService":
        return False
    current = desc.get("EndpointConfigName")
    if expected_config is None or current == expected_config:
        return True
    if started:
        raise EndpointFailed(
            f"endpoint {endpoint} is InService on {current}, not {expected_config}: the update "
            f"failed and SageMaker kept the previous fleet: {reason}")
    return False  # the update has not shown yet: DescribeEndpoint still answers the old state


@dataclass(frozen=True)
class ApplySettings:
    """How :func:`apply` runs a list of calls: where progress goes, how long and how often a
    wait polls (with the sleep and clock tests replace), and a hook after each call."""

    log: Log = _default_log
    timeout_s: float = 1800
    poll_s: float = 30
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    on_applied: Callable[[Call], None] | None = None

    def apply(self, calls: Iterable[Call], clients: Mapping[str, BotoClient]
              ) -> list[AwsResponse | EndpointDescription]:
        return apply(calls, clients, log=self.log, timeout_s=self.timeout_s, poll_s=self.poll_s,
                     sleep=self.sleep, clock=self.clock, on_applied=self.on_applied)


def rollback_endpoint(sm_client: SageMakerClient, endpoint: str, previous_config_name: str, *,
                      aas_client: AutoScalingClient | None = None, previous_state: DeployState | None = None,
                      variant_name: str = "AllTraffic",
                      settings: ApplySettings = ApplySettings()) -> list[Call]:
    """Blue/green back: ``UpdateEndpoint`` to ``previous_config_name`` and wait until InService.

    Used when the new fleet came up but validating it failed.  With ``aas_client``,
    autoscaling is deregistered first (an update changing the instance type of an
    autoscaled variant is refused) and, if ``previous_state`` had it, registered again
    with the previous limits and policy.  Returns the calls made.
    """
    resource_id = f"endpoint/{endpoint}/variant/{variant_name}"
    calls: list[Call] = []
    if aas_client is not None:
        target, _ = describe_scaling(aas_client, resource_id, None)
        if target is not None:
            calls.append(_deregister_call(resource_id))
    calls.append(Call(SAGEMAKER, "update_endpoint",
                      {"EndpointName": endpoint, "EndpointConfigName": previous_config_name}))
    calls.append(_wait_call(endpoint, previous_config_name))
    if aas_client is not None and previous_state is not None:
        calls += _restore_scaling_calls(resource_id, previous_state)
    settings.log(f"rolling endpoint {endpoint} back to {previous_config_name}")
    settings.apply(calls, {SAGEMAKER: sm_client, AUTOSCALING: aas_client})
    return calls


def _restore_scaling_calls(resource_id: str, previous_state: DeployState) -> list[Call]:
    """Register the previous scalable target again, with its target-tracking policy."""
    old = previous_state.scalable_target
    if not old:
        return []
    calls = [Call(AUTOSCALING, "register_scalable_target", {
        "ServiceNamespace": "sagemaker", "ResourceId": resource_id, "ScalableDimension": SCALABLE_DIMENSION,
        "MinCapacity": old.min_capacity, "MaxCapacity": old.max_capacity})]
    pol = previous_state.scaling_policy
    if pol is not None and pol.target_tracking is not None:
        calls.append(Call(AUTOSCALING, "put_scaling_policy", {
            "PolicyName": pol.name, "ServiceNamespace": "sagemaker", "ResourceId": resource_id,
            "ScalableDimension": SCALABLE_DIMENSION, "PolicyType": pol.policy_type,
            "TargetTrackingScalingPolicyConfiguration": pol.target_tracking}))
    return calls


# --------------------------------------------------------------------------- delete


def _tags(sm_client: SageMakerClient, arn: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for page in sm_client.get_paginator("list_tags").paginate(ResourceArn=arn):
        tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
    return tags


def _owned(tags: Mapping[str, str], endpoint: str) -> bool:
    return tags.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE and tags.get(ENDPOINT_TAG_KEY) == endpoint


def plan_delete(sm_client: SageMakerClient, aas_client: AutoScalingClient, plan: EndpointPlan, *,
                delete_model: bool = True, delete_config: bool = True) -> list[Call]:
    """The calls that remove the endpoint and what we created for it (read-only to compute).

    Removes only what carries our tags for this endpoint: the endpoint itself (refused
    with :class:`NotOwned` otherwise), every endpoint config of this endpoint (the plan's,
    the one serving, and older blue/green ones found by name), and the models they use.
    """
    endpoint = plan.endpoint_name
    calls: list[Call] = []
    desc = _describe(sm_client.describe_endpoint, EndpointName=endpoint)
    config_names = {plan.endpoint_config_name}
    if desc is not None:
        if not _owned(_tags(sm_client, desc["EndpointArn"]), endpoint):
            raise NotOwned(f"endpoint {endpoint} does not carry the tags {MANAGED_BY_KEY}={MANAGED_BY_VALUE} "
                           f"and {ENDPOINT_TAG_KEY}={endpoint}; not deleting what this tool did not create")
        if aas_client is not None:
            target, _ = describe_scaling(aas_client, plan.scaling_resource_id, None)
            if target is not None:
                calls.append(_deregister_call(plan.scaling_resource_id))
        calls.append(Call(SAGEMAKER, "delete_endpoint", {"EndpointName": endpoint}))
        if desc.get("EndpointConfigName"):
            config_names.add(desc["EndpointConfigName"])
    if not (delete_config or delete_model):
        return calls
    for page in sm_client.get_paginator("list_endpoint_configs").paginate(NameContains=endpoint):
        config_names.update(c["EndpointConfigName"] for c in page.get("EndpointConfigs", []))
    model_names = {plan.model_name}
    config_calls: list[Call] = []
    for name in sorted(config_names):
        config = _describe(sm_client.describe_endpoint_config, EndpointConfigName=name)
        if config is None or not _owned(_tags(sm_client, config["EndpointConfigArn"]), endpoint):
            continue
        model_names.update(v["ModelName"] for v in config.get("ProductionVariants", []) if v.get("ModelName"))
        config_calls.append(Call(SAGEMAKER, "delete_endpoint_config", {"EndpointConfigName": name}))
    if delete_config:
        calls.extend(config_calls)
    if delete_model:
        for name in sorted(model_names):
            model = _describe(sm_client.describe_model, ModelName=name)
            if model is not None and _owned(_tags(sm_client, model["ModelArn"]), endpoint):
                calls.append(Call(SAGEMAKER, "delete_model", {"ModelName": name}))
    return calls


def delete_endpoint_and_resources(sm_client: SageMakerClient, aas_client: AutoScalingClient, plan: EndpointPlan, *,
                                  delete_model: bool = True, delete_config: bool = True,
                                  dry_run: bool = False, log: Log = _default_log) -> list[Call]:
    """Deregister autoscaling, delete the endpoint, then our configs and models; return the calls.

    "Removes only what it owns": see :func:`plan_delete`.  Deleting the endpoint stops
    the GPU bill; the S3 model objects are left to the retire flow.
    """
    calls = plan_delete(sm_client, aas_client, plan, delete_model=delete_model, delete_config=delete_config)
    if not dry_run:
        apply(calls, {SAGEMAKER: sm_client, AUTOSCALING: aas_client}, log=log)
    return calls
