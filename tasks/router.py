"""``Router``: invoke a fleet's variant by name, wherever the routing table says it lives.

    from tasks.router import Router

    router = Router("s3://my-bucket/mme", "tenants")        # or the local store's file:// URI
    endpoint, target_model = router.resolve("tenant-0042")  # one GET of routes/tenants.json, cached
    outputs = router.invoke("tenant-0042", {"INPUT": images})

The table is read once and cached. When an endpoint answers that the TargetModel does not exist
(the variant moved, or its old version was deleted after a redeploy), the Router reads the table
again once and retries on the new route; any other error is raised as it came. Invokes go through
boto3's ``sagemaker-runtime`` client: AWS's for a SageMaker endpoint (the region the table
records), the running local endpoint's URL for a local one; ``runtime=`` overrides the client
(one client, or a callable ``endpoint -> client``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from botocore.exceptions import ClientError

from infra.errors import UserError
from infra.runtime_client import invoke, runtime_client_for
from tasks.fleet_routes import RoutingTable, require_routes

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


class Router:
    """Resolve and invoke a fleet's variants through its routing table (thread-safe)."""

    def __init__(self, store_uri: str, fleet: str, *,
                 runtime: Any | Callable[[str], Any] | None = None) -> None:
        self.store_uri, self.fleet = store_uri, fleet
        self._runtime = runtime
        self._clients: dict[str, Any] = {}
        self._table: RoutingTable | None = None
        self._lock = threading.Lock()
        self.reads = 0  # routing-table GETs made (the first read plus refreshes)

    def table(self, *, refresh: bool = False) -> RoutingTable:
        """The cached table; ``refresh`` reads it again (one GET). A fleet with no routing table
        in the store is :class:`~tasks.fleet_routes.NoSuchFleet` ("no such fleet ... (known:
        ...)"), not a variant that is not routed."""
        with self._lock:
            if self._table is None or refresh:
                self.reads += 1
                self._table = require_routes(self.store_uri, self.fleet)
            return self._table

    def resolve(self, variant: str, *, refresh: bool = False) -> tuple[str, str]:
        """(endpoint, TargetModel) of ``variant``'s current version."""
        route = self.table(refresh=refresh).variants.get(variant)
        if route is None:
            raise VariantNotRouted(f"fleet {self.fleet}: variant {variant!r} is not routed (routes "
                                   f"in {self.store_uri}; deploy it with `mme fleet deploy`)")
        return route.endpoint, route.target_model

    def client(self, endpoint: str) -> Any:
        """The runtime client for ``endpoint`` (made once)."""
        if endpoint not in self._clients:
            self._clients[endpoint] = self._make_client(endpoint)
        return self._clients[endpoint]

    def _make_client(self, endpoint: str) -> Any:
        if self._runtime is not None:
            return self._runtime(endpoint) if callable(self._runtime) else self._runtime
        ref = self.table().endpoints.get(endpoint)
        if ref is not None and ref.backend == "sagemaker":
            from infra.aws import client

            return client("sagemaker-runtime", region=ref.region)
        from infra.endpoint_process import find_running

        running = find_running(endpoint)
        if running is None:
            raise UserError(f"local endpoint {endpoint!r} (fleet {self.fleet}) is not running: "
                            f"`mme endpoint start --name {endpoint}` or `mme fleet deploy`")
        return runtime_client_for(running.url)

    def invoke(self, variant: str, inputs: dict[str, np.ndarray], *,
               binary: bool = True) -> dict[str, np.ndarray]:
        """Invoke ``variant``; on "model not found", refresh the table once and retry."""
        endpoint, target = self.resolve(variant)
        try:
            return invoke(self.client(endpoint), endpoint, target, inputs, binary=binary)
        except ClientError as exc:
            if not model_missing(exc):
                raise
        endpoint, target = self.resolve(variant, refresh=True)
        return invoke(self.client(endpoint), endpoint, target, inputs, binary=binary)
