"""A client of the local endpoint's admin and runtime API (the one place that speaks it).

The endpoint (:mod:`infra.endpoint.local_mme`) answers SageMaker's runtime path
(``/endpoints/<name>/invocations``) and a small admin API of its own: ``/ping``, ``/models``
(what is loaded), ``DELETE /models/<TargetModel>`` (unload, so a replaced object reloads) and
``/metrics`` (SageMaker's MME CloudWatch metrics). Deploy, retire, the CLI and the benches use
this class instead of building URLs by hand, so the API's shape lives in one file.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np


class LocalEndpointClient:
    """``LocalEndpointClient(url)``: ping, models, unload, metrics, invoke."""

    def __init__(self, url: str, *, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"LocalEndpointClient({self.url!r})"

    def ping(self, timeout: float = 5.0) -> httpx.Response:
        """``GET /ping`` (raises only on a transport error: the caller reads the status)."""
        return httpx.get(f"{self.url}/ping", timeout=timeout)

    def models(self) -> list[dict[str, Any]]:
        """The endpoint's TargetModels: ``target_model``, ``internal_name``, ``state``..."""
        r = httpx.get(f"{self.url}/models", timeout=self.timeout)
        r.raise_for_status()
        return list(r.json()["models"])

    def internal_name(self, target_model: str) -> str | None:
        """The Triton model name ``target_model`` is loaded as, or None when it is not."""
        return next((m["internal_name"] for m in self.models()
                     if m["target_model"] == target_model), None)

    def unload(self, target_model: str, *, check: bool = True) -> None:
        """Unload ``target_model`` (the next request loads the object in the store again)."""
        r = httpx.delete(f"{self.url}/models/{target_model}", timeout=self.timeout)
        if check:
            r.raise_for_status()

    def metrics(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/metrics", timeout=self.timeout)
        r.raise_for_status()
        return dict(r.json())

    def invoke(self, endpoint: str, target_model: str, inputs: dict[str, np.ndarray], *,
               binary: bool = True) -> dict[str, np.ndarray]:
        """Invoke by TargetModel through the SageMaker runtime API (boto3), as a client would."""
        from infra.aws.runtime_client import invoke, runtime_client_for

        return invoke(runtime_client_for(self.url), endpoint, target_model, inputs, binary=binary)


def memory_note(m: dict) -> str:
    """Triton's memory on the limit's basis (PSS), with summed RSS beside it for comparison
    ("" from an endpoint too old to report it)."""
    if "TritonMemoryPss" not in m:
        return ""
    limit = m.get("MemoryLimitBytes")
    of = f" of {limit / 2**20:,.0f} MiB limit" if limit else ""
    return (f", Triton memory {m['TritonMemoryPss'] / 2**20:,.0f} MiB "
            f"{m.get('MemoryLimitBasis', 'pss')}{of} (summed rss {m.get('TritonMemoryRss', 0) / 2**20:,.0f} MiB)")
