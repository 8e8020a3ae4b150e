"""The ``local`` backend: the embedded store and the local multi-model endpoint.

The artifacts go to the store under the endpoint's model prefix, each version under its own
TargetModel (``<ensemble>-<sha256[:12]>.tar.gz``); the endpoint is started once (or reused: it
is never redeployed to add a model); each ensemble is invoked by its new TargetModel and
scored. A failed deploy deletes what it uploaded and unloads it: the previous version, never
touched, keeps serving. After a validated deploy the versions past the keep count are deleted
and unloaded.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import httpx

from infra.records import endpoint as record
from infra import paths
from infra.endpoint.process import StopOutcome, find_running, start_background, stop
from infra.endpoint.client import LocalEndpointClient
from ensembles.spec import Target
from infra.jsontypes import JsonObject
from infra.records.endpoint import EnsembleLine
from infra.records.manifest import Manifest
from tasks.deploy.backends.base import (
    Backend,
    DELETED,
    INFO,
    Step,
    delete_versions,
    missing_entry,
    other_versions,
    prune_versions,
    publish_actions,
    restore_objects,
    settle,
    write_deploy_ledger,
)
from tasks.deploy.publish import Published, model_data_url, publish_artifact
from tasks.deploy.records import DeployedEnsemble, DeployPlan, DeployResult, EndpointHandle, ValidationReport
from tasks.deploy.validate import direct_triton_latency, validate_deployed


class LocalBackend:
    """:class:`~tasks.deploy.backends.DeployBackend` on this machine."""

    name: Backend = "local"
    default_target: Target = "local-cpu"

    def __init__(self, endpoint: str, store_uri: str | None = None) -> None:
        self.endpoint = endpoint
        self.store_uri = store_uri or paths.store_uri()
        self.models_url = model_data_url(self.store_uri, endpoint)
        self.log: Callable[[str], None] = lambda line: None

    def check(self, manifests: list[Manifest]) -> list[str]:
        return []

    def plan(self, manifests: list[Manifest]) -> DeployPlan:
        return DeployPlan(endpoint=self.endpoint, model_data_url=self.models_url, calls=(
            publish_actions(manifests, self.models_url)
            + [f"start or reuse the local endpoint {self.endpoint}"]
            + [f"invoke TargetModel={m.target_model} (validation)" for m in manifests]))

    def begin(self, manifests: list[Manifest]) -> None:
        record.note_ensembles_publishing(self.endpoint, manifests, self.models_url, backend="local",
                                         store_uri=self.store_uri, model_data_url=self.models_url)

    def publish(self, manifest: Manifest, backup_dir: Path) -> Published:
        return publish_artifact(manifest, self.models_url, backup_dir)

    def ensure_endpoint(self) -> EndpointHandle:
        info = start_background(self.endpoint, self.models_url)
        return EndpointHandle(url=info.url, triton_url=info.triton_url, info=asdict(info))

    def activate(self, handle: EndpointHandle, published: list[Published]) -> None:
        """A replaced object must not keep serving from memory: unload it so it reloads."""
        client = LocalEndpointClient(handle.url)
        for pub in published:
            if pub.uploaded:
                client.unload(pub.target_model)

    def validate(self, handle: EndpointHandle, manifest: Manifest, warm: int) -> ValidationReport:
        result = validate_deployed(handle.url, self.endpoint, manifest, warm_invocations=warm)
        try:  # informative only: what the same request costs straight to Triton
            internal = LocalEndpointClient(handle.url).internal_name(manifest.target_model)
            if internal is None:
                raise LookupError(f"{manifest.target_model} is not loaded")
            if handle.triton_url is None:
                raise LookupError(f"endpoint {self.endpoint} names no Triton URL")
            direct = direct_triton_latency(handle.triton_url, internal, manifest, n=warm)
        except (httpx.HTTPError, LookupError, KeyError) as e:
            return result.model_copy(update={"direct_triton_error": str(e)})
        return result.model_copy(update={"direct_triton_latency_ms": direct})

    def rollback(self, handle: EndpointHandle | None, published: list[Published],
                 error: BaseException) -> list[str]:
        lines = restore_objects(published, self.models_url, error)
        if handle is not None:  # unload what failed; the next request loads the restored object
            client = LocalEndpointClient(handle.url, timeout=60)
            for pub in published:
                try:
                    client.unload(pub.target_model, check=False)
                except httpx.HTTPError:
                    pass
        return lines

    def finish(self, handle: EndpointHandle, manifests: list[Manifest], published: list[Published],
               entries: list[DeployedEnsemble]) -> DeployResult:
        settle(self.endpoint, manifests, deployed=True)
        write_deploy_ledger(self.store_uri, self.endpoint, self.models_url, published)
        return DeployResult(endpoint=self.endpoint, url=handle.url, model_data_url=self.models_url,
                            ensembles=entries, endpoint_info=handle.info)

    def prune(self, handle: EndpointHandle, manifests: list[Manifest], keep: int) -> list[Step]:
        client = LocalEndpointClient(handle.url, timeout=60)
        return prune_versions(self.endpoint, self.store_uri, [m.ensemble for m in manifests], keep,
                              unload=lambda target: client.unload(target, check=False))

    def retire_ensemble(self, ensemble: str, entry: EnsembleLine | None) -> Step:
        if entry is None:
            return missing_entry(self.endpoint, ensemble)
        running = find_running(self.endpoint)
        if running:
            client = LocalEndpointClient(running.url)
            client.unload(entry.target_model)
            for kept in other_versions(entry):  # loaded if a client still used it
                client.unload(kept.target_model, check=False)
        return delete_versions(ensemble, entry, "unloaded; " if running else "")

    def retire_endpoint(self, plan_doc: JsonObject | None) -> list[Step]:
        outcome = stop(self.endpoint)
        was_running = outcome is StopOutcome.STOPPED
        cache = paths.endpoint_dir(self.endpoint) / "cache"
        had_cache = cache.exists()
        shutil.rmtree(cache, ignore_errors=True)
        what = outcome.value
        return [Step(DELETED if was_running or had_cache else INFO,
                     f"endpoint {self.endpoint}: {what}; {'cache removed' if had_cache else 'no cache'}")]
