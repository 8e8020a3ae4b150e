"""The ``retire`` flow: remove ensembles from an endpoint, or stop the endpoint itself.

Only what the deploy ledger says we published is deleted, and only if the object still has
the digest we published (someone else's upload under the same name is left alone).
"""


import shutil
from typing import Any

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from infra import paths
from infra.endpoint_process import find_running, stop
from infra.store import ObjectNotFound, open_store
from tasks.publish import read_ledger, write_ledger


@task(name="retire-ensemble", cache_policy=NO_CACHE)
def retire_ensemble_task(store_uri: str, endpoint: str, ensemble: str, ledger: dict[str, Any]) -> str:
    entry = ledger["ensembles"].get(ensemble)
    if entry is None:
        return f"{ensemble}: not deployed to {endpoint} by us; nothing removed"
    running = find_running(endpoint) if ledger.get("backend", "local") == "local" else None
    if running:
        httpx.delete(f"{running.url}/models/{entry['target_model']}", timeout=120).raise_for_status()
    # (on SageMaker a deleted object stays loaded on instances that have it until SageMaker
    # unloads it; requests for it fail once it is unloaded)
    # keys in the ledger are relative to the store opened at the endpoint's model prefix
    store, _ = open_store(entry.get("model_data_url") or ledger["model_data_url"])
    try:
        current = store.head(entry["key"])
    except ObjectNotFound:
        current = None
    if current is None:
        outcome = "object already gone"
    elif current.sha256 != entry["sha256"]:
        outcome = f"object {entry['uri']} was replaced by someone else; left in place"
    else:
        store.delete(entry["key"])
        outcome = f"deleted {entry['uri']}"
    del ledger["ensembles"][ensemble]
    return f"{ensemble}: {'unloaded; ' if running else ''}{outcome}"


@flow(name="retire", log_prints=True)
def retire(ensembles: list[str] | None = None, endpoint: str = "local-mme",
           stop_endpoint: bool = False, store_uri: str | None = None) -> list[str]:
    """Retire ``ensembles`` from ``endpoint``; with ``stop_endpoint`` (or no ensembles given)
    also stop the endpoint and delete its disk cache."""
    log = get_run_logger()
    store_uri = store_uri or paths.store_uri()
    ledger = read_ledger(store_uri, endpoint)
    names = list(ensembles) if ensembles else list(ledger["ensembles"])
    lines = [retire_ensemble_task(store_uri, endpoint, n, ledger) for n in names]
    write_ledger(store_uri, endpoint, ledger)
    if (stop_endpoint or not ensembles) and ledger.get("backend") == "sagemaker":
        from flows.sagemaker_backend import retire_sagemaker_endpoint

        calls = retire_sagemaker_endpoint(ledger["plan"], ledger["region"], log=log.info)
        lines.append(f"endpoint {endpoint}: deleted on SageMaker ({', '.join(calls) or 'nothing to delete'})")
        ledger.pop("plan", None)
        write_ledger(store_uri, endpoint, ledger)
    elif stop_endpoint or not ensembles:
        was_running = stop(endpoint)
        shutil.rmtree(paths.endpoint_dir(endpoint) / "cache", ignore_errors=True)
        lines.append(f"endpoint {endpoint}: {'stopped' if was_running else 'was not running'}; cache removed")
    for line in lines:
        log.info(line)
    create_markdown_artifact(key="retire-summary", markdown="\n".join(f"- {l}" for l in lines),
                             description=f"Retired from {endpoint}")
    return lines
