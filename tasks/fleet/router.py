"""``Router``: invoke a fleet's variant by name, wherever the routing table says it lives.

    from tasks.fleet.router import Router

    router = Router("s3://my-bucket/mme", "tenants")        # or the local store's file:// URI
    endpoint, target_model = router.resolve("tenant-0042")  # HEAD + GET of routes/tenants.json
    outputs = router.invoke("tenant-0042", {"INPUT": images})

The table is cached for ``max_age_s`` (30 s): a long-lived Router must follow redeploys, and with
``--keep-versions 1`` the previous version's object stays, so invoking a stale route would go on
answering from the old version and never fail over. After that age the next call checks the
table with one HEAD and GETs it again only when its fingerprint (S3 ETag, or the file store's
mtime/size/sha256) changed: following a fleet costs a HEAD per ``max_age_s``, not a GET. When
an endpoint answers that the TargetModel does not exist (404, or ``Failed to download model
data``: the variant moved, or its old version was retired), the Router checks the table at
once and, if the route changed, retries that invoke once on the new route; any other error is
raised as it came.

Each invoke retries 429 ``ModelNotReadyException``, throttles and transient 5xx per
:class:`~infra.aws.invoke_retry.InvokeRetry` (``retry=``; the policy deploy validation uses), and
says how many attempts it made when it gives up. Invokes go through boto3's
``sagemaker-runtime`` client: AWS's for a SageMaker endpoint (the region the table records),
the running local endpoint's URL for a local one; ``runtime=`` overrides the client (one
client, or a callable ``endpoint -> client``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

import numpy as np
from botocore.exceptions import ClientError

from infra.errors import InvalidInput, UserError
from infra.aws.clients import RuntimeClient
from infra.aws.invoke_retry import DEFAULT_RETRY, InvokeRetry, call_with_retries
from infra.aws.runtime_client import invoke, runtime_client_for
from infra.store.objects import ObjectInfo, ObjectNotFound, ObjectStore, StoreError
from tasks.fleet.fusion import TENANT_INPUT
from tasks.fleet.routes import RoutingTable, parse_routes, require_routes, routes_location

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE_S = 30.0
"""How long the Router trusts its cached table before checking it (one HEAD) again."""

#: What SageMaker (and the local endpoint) answer for a TargetModel with no object behind it.
MISSING_MODEL = re.compile(r"Failed to download model data|model .*not found|does not exist|"
                           r"Could not find model", re.IGNORECASE)


class VariantNotRouted(UserError, LookupError):
    """The routing table has no route for the variant (never deployed, or removed)."""


def model_missing(exc: BaseException) -> bool:
    """True for the endpoint's "no such TargetModel" answers: a 404, or a ValidationError /
    ModelError whose message says the model (data) is not there."""
    if not isinstance(exc, ClientError):
        return False
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status == 404:
        return True
    return err.get("Code") in ("ValidationError", "ModelError") and bool(
        MISSING_MODEL.search(str(err.get("Message", ""))))


Fingerprint: TypeAlias = "tuple[str | None, int | None, int, str | None]"
"""(ETag, mtime in ns, size, sha256) of a stored routing table: see :func:`fingerprint`."""


def fingerprint(info: ObjectInfo) -> Fingerprint:
    """What identifies a stored table's bytes without reading them: S3's ETag, the file store's
    mtime and sha256 (its sidecar), and the size."""
    return (info.etag, info.mtime_ns, info.size, info.sha256)


class Router:
    """Resolve and invoke a fleet's variants through its routing table (thread-safe).

    ``max_age_s``: how long the cached table is used before one HEAD checks it (0: every call).
    ``retry``: how invokes are retried (:class:`~infra.aws.invoke_retry.InvokeRetry`). ``clock``
    is injectable so tests age the table without waiting."""

    def __init__(self, store_uri: str, fleet: str, *,
                 runtime: RuntimeClient | Callable[[str], RuntimeClient] | None = None,
                 retry: InvokeRetry | None = None, max_age_s: float = DEFAULT_MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not max_age_s >= 0:
            raise InvalidInput(f"Router max_age_s {max_age_s}: must be >= 0 seconds")
        self.store_uri, self.fleet = store_uri, fleet
        self.retry, self.max_age_s, self._clock = retry or DEFAULT_RETRY, max_age_s, clock
        self._runtime = runtime
        self._clients: dict[str, RuntimeClient] = {}
        self._table: RoutingTable | None = None
        self._fingerprint: Fingerprint | None = None
        self._checked_at = 0.0
        self._location: tuple[ObjectStore, str] | None = None
        self._lock = threading.Lock()
        self.reads = 0  # routing-table GETs made (the first read plus refreshes that found a change)
        self.checks = 0  # routing-table HEADs made (one before every GET, one per max_age_s)

    def table(self, *, refresh: bool = False) -> RoutingTable:
        """The cached table, checked again (one HEAD; a GET only if it changed) when older
        than ``max_age_s`` or when ``refresh``. A fleet with no routing table in the store is
        :class:`~tasks.fleet.routes.NoSuchFleet` ("no such fleet ... (known: ...)"), not a
        variant that is not routed. A store that fails an age check keeps the cached table in
        use (logged; checked again after ``max_age_s``): an S3 hiccup must not stop invokes."""
        with self._lock:
            if self._table is None or refresh:
                return self._load()
            if self._clock() - self._checked_at >= self.max_age_s:
                try:
                    return self._load()
                except StoreError as e:
                    log.warning("fleet %s: routing table check failed, keeping the cached "
                                "table: %s", self.fleet, e)
            return self._table

    def _load(self) -> RoutingTable:
        """HEAD the table, then GET it unless its fingerprint is the cached one (the HEAD comes
        first: a write between the two makes the next check read again, never miss it)."""
        if self._location is None:
            self._location = routes_location(self.store_uri, self.fleet)
        store, key = self._location
        self._checked_at = self._clock()
        self.checks += 1
        try:
            seen: Fingerprint | None = fingerprint(store.head(key))
        except ObjectNotFound:
            seen = None
        if self._table is not None and seen is not None and seen == self._fingerprint:
            return self._table
        self.reads += 1
        try:
            table = parse_routes(store.get_bytes(key), store.uri_for(key))
        except ObjectNotFound:
            table = require_routes(self.store_uri, self.fleet)  # NoSuchFleet naming the known ones
        self._table, self._fingerprint = table, seen
        return table

    def resolve(self, variant: str, *, refresh: bool = False) -> tuple[str, str]:
        """(endpoint, TargetModel) of ``variant``'s current version."""
        endpoint, target, _ = self._resolve(variant, refresh=refresh)
        return endpoint, target

    def _resolve(self, variant: str, *, refresh: bool = False) -> tuple[str, str, int | None]:
        """(endpoint, TargetModel, tenant index in a fused shard or None) of ``variant``."""
        route = self.table(refresh=refresh).variants.get(variant)
        if route is None:
            raise VariantNotRouted(f"fleet {self.fleet}: variant {variant!r} is not routed (routes "
                                   f"in {self.store_uri}; deploy it with `mme fleet deploy`)")
        return route.endpoint, route.target_model, route.tenant

    def route_of(self, variant: str) -> tuple[str, str, int | None]:
        """(endpoint, TargetModel, TENANT index in a fused shard or None) of ``variant``: what
        ``mme invoke`` reports it hit, and the tenant whose labels name the answer."""
        return self._resolve(variant)

    def client(self, endpoint: str) -> RuntimeClient:
        """The runtime client for ``endpoint`` (made once)."""
        if endpoint not in self._clients:
            self._clients[endpoint] = self._make_client(endpoint)
        return self._clients[endpoint]

    def _make_client(self, endpoint: str) -> RuntimeClient:
        if self._runtime is not None:
            return self._runtime(endpoint) if callable(self._runtime) else self._runtime
        ref = self.table().endpoints.get(endpoint)
        if ref is not None and ref.backend == "sagemaker":
            from infra.aws.clients import client

            return client("sagemaker-runtime", region=ref.region)
        from infra.endpoint.process import find_running

        running = find_running(endpoint)
        if running is None:
            raise UserError(f"local endpoint {endpoint!r} (fleet {self.fleet}) is not running: "
                            f"`mme endpoint start --name {endpoint}` or `mme fleet deploy`")
        return runtime_client_for(running.url)

    def invoke(self, variant: str, inputs: dict[str, np.ndarray], *, binary: bool = True,
               classify: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """Invoke ``variant`` (transient answers retried per ``retry``). On "model not found",
        check the table at once and, if the route moved, invoke the new route once; if it did
        not, the answer is raised as it came (a second try on the same route would fail too).
        A fused fleet's tenant is asked of its shard with its ``TENANT`` index added to the
        inputs (one value per row); the answer is the tenant's own classes, as its own model's.
        ``classify``: outputs answered as Triton's top-k classes
        (:func:`~infra.aws.runtime_client.encode_request`)."""
        route = self._resolve(variant)
        try:
            return self._invoke(variant, route, inputs, binary, classify)
        except ClientError as exc:
            if not model_missing(exc):
                raise
            moved = self._resolve(variant, refresh=True)
            if moved == route:
                raise
        return self._invoke(variant, moved, inputs, binary, classify)

    def _invoke(self, variant: str, route: tuple[str, str, int | None], inputs: dict[str, np.ndarray],
                binary: bool, classify: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """One invoke of ``route`` with :attr:`retry`; giving up is
        :class:`~infra.aws.invoke_retry.RetriesExhausted` saying how many attempts were made."""
        endpoint, target, tenant = route
        if tenant is not None:
            rows = next(iter(inputs.values())).shape[0] if inputs else 1
            inputs = {**inputs, TENANT_INPUT: np.full((rows, 1), tenant, dtype=np.int32)}
        client = self.client(endpoint)
        out, _ = call_with_retries(
            lambda: invoke(client, endpoint, target, inputs, binary=binary, classify=classify), self.retry,
            operation="sagemaker-runtime.invoke_endpoint",
            resource=f"fleet {self.fleet} variant {variant} (TargetModel {target}) on endpoint "
                     f"{endpoint}")
        return out


def variant_labels(fleet: str, variant: str, build_dirs: Sequence[Path] = (),
                   tenant: int | None = None) -> list[str] | None:
    """The class labels ``variant`` of ``fleet`` answers with, from its build on this machine
    (``build_dirs``, default every ``$MME_HOME/artifacts/*/fleets/<fleet>/``): a fused tenant's
    from its shard's tenants sidecar (the shard's output carries none), a variant's own from its
    manifest's validation sample. ``tenant``: the TENANT index the routing table gives (it wins
    over the build index's). None when no build here knows the variant (a raw SageMaker caller
    then has only the indices)."""
    from infra import paths
    from infra.records.manifest import MANIFEST_SUFFIX, load_manifest
    from tasks.fleet.build import INDEX_FILE, FleetIndex
    from tasks.fleet.fused import TENANTS_SUFFIX, TenantsSidecar

    dirs = list(build_dirs) or [p.parent for p in sorted(
        paths.home().glob(f"artifacts/*/fleets/{fleet}/{INDEX_FILE}"))]
    for d in dirs:
        try:
            entry = FleetIndex.read((d / INDEX_FILE).read_bytes(), str(d / INDEX_FILE)).variants.get(variant)
            if entry is None:
                continue
            if entry.layout == "fused" and entry.shard:
                index = entry.tenant if tenant is None else tenant
                sidecar = TenantsSidecar.model_validate_json((d / f"{entry.shard}{TENANTS_SUFFIX}").read_text())
                return next((t.labels for t in sidecar.tenants if t.index == index), None)
            manifest = load_manifest(d / (entry.file.removesuffix(".tar.gz") + MANIFEST_SUFFIX))
            labels = manifest.sample.context.get("labels") if manifest.sample else None
            return [str(x) for x in labels] if isinstance(labels, list) else None
        except (OSError, ValueError) as e:
            log.debug("fleet %s: no labels for %s in %s: %s", fleet, variant, d, e)
    return None
