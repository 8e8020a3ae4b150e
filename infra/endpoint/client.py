"""A client of the local endpoint's admin and runtime API (the one place that speaks it).

The endpoint (:mod:`infra.endpoint.local_mme`) answers SageMaker's runtime path
(``/endpoints/<name>/invocations``) and a small admin API of its own: ``/ping``, ``/models``
(what is loaded), ``DELETE /models/<TargetModel>`` (unload, so a replaced object reloads) and
``/metrics`` (SageMaker's MME CloudWatch metrics). Deploy, retire, the CLI and the benches use
this class instead of building URLs by hand, so the API's shape lives in one file (and the
documents' shapes in :mod:`infra.endpoint.reports`).
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import numpy as np

from infra.endpoint.reports import EndpointMetrics, ModelRow, ModelsDoc


class LocalEndpointClient:
    """``LocalEndpointClient(url)``: ping, models, unload, metrics, invoke.

    One pooled :class:`httpx.Client` per instance (a deploy asks several questions in a row);
    close it with :meth:`close` or use the client as a context manager. ``transport`` replaces
    the network (tests pass an :class:`httpx.MockTransport`).
    """

    def __init__(self, url: str, *, timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"LocalEndpointClient({self.url!r})"

    def __enter__(self) -> LocalEndpointClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def ping(self, timeout: float = 5.0) -> httpx.Response:
        """``GET /ping`` (raises only on a transport error: the caller reads the status)."""
        return self._http.get("/ping", timeout=timeout)

    def models(self) -> list[ModelRow]:
        """The endpoint's TargetModels: ``target_model``, ``internal_name``, ``state``..."""
        r = self._http.get("/models")
        r.raise_for_status()
        return ModelsDoc.model_validate_json(r.content).models

    def internal_name(self, target_model: str) -> str | None:
        """The Triton model name ``target_model`` is loaded as, or None when it is not."""
        return next((m.internal_name for m in self.models() if m.target_model == target_model),
                    None)

    def unload(self, target_model: str, *, check: bool = True) -> None:
        """Unload ``target_model`` (the next request loads the object in the store again)."""
        r = self._http.delete(f"/models/{target_model}")
        if check:
            r.raise_for_status()

    def metrics(self) -> EndpointMetrics:
        """``GET /metrics``: the endpoint's counters, Triton's memory, each model's counters."""
        r = self._http.get("/metrics")
        r.raise_for_status()
        return EndpointMetrics.model_validate_json(r.content)

    def invoke(self, endpoint: str, target_model: str, inputs: dict[str, np.ndarray], *,
               binary: bool = True) -> dict[str, np.ndarray]:
        """Invoke by TargetModel through the SageMaker runtime API (boto3), as a client would."""
        from infra.aws.runtime_client import invoke, runtime_client_for

        return invoke(runtime_client_for(self.url), endpoint, target_model, inputs, binary=binary)


def memory_note(m: Mapping[str, object]) -> str:
    """Triton's memory on the limit's basis (PSS), with summed RSS beside it for comparison
    ("" from an endpoint too old to report it). ``m`` is ``GET /metrics`` as JSON."""
    pss, rss, limit = m.get("TritonMemoryPss"), m.get("TritonMemoryRss", 0), m.get("MemoryLimitBytes")
    if not isinstance(pss, int) or not isinstance(rss, int):
        return ""
    of = f" of {limit / 2**20:,.0f} MiB limit" if isinstance(limit, int) and limit else ""
    return (f", Triton memory {pss / 2**20:,.0f} MiB "
            f"{m.get('MemoryLimitBasis', 'pss')}{of} (summed rss {rss / 2**20:,.0f} MiB)")
