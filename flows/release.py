"""The ``release`` flow: build one ensemble, then deploy it. What a new model triggers.

The watcher (``flows/watch.py``) or the S3 -> EventBridge -> Lambda path
(``infra/aws/lambda_handler.py``) emits ``mme.model.landed`` with the ensemble as a resource
label; the ``deploy-on-new-model`` deployment in ``prefect.yaml`` matches that event and runs
this flow with ``ensemble`` taken from the event.
"""


from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict

from ensembles.spec import Target
from flows.build import build
from flows.deploy import deploy
from infra.jsontypes import JsonObject
from infra.records.manifest import Manifest
from tasks.deploy.records import BuildSource


class ReleaseResult(BaseModel):
    """What a release made: the build's manifests, and the deploy's result document (without
    the local endpoint's process details)."""

    model_config = ConfigDict(frozen=True)

    build: list[Manifest]
    deploy: JsonObject


@flow(name="release", log_prints=True)
def release(ensemble: str, endpoint: str = "local-mme", target: Target = "local-cpu",
            source_uri: str | None = None, store_uri: str | None = None,
            output_dir: str | None = None) -> ReleaseResult:
    """Rebuild ``ensemble`` (unchanged steps are cached) and deploy it to ``endpoint``."""
    log = get_run_logger()
    log.info("release of %s to %s (new source: %s)", ensemble, endpoint, source_uri or "n/a")
    manifests = build(ensembles=[ensemble], target=target, output_dir=output_dir)
    result = deploy(ensembles=[ensemble], endpoint=endpoint, store_uri=store_uri,
                    build=BuildSource(target=target, dir=output_dir))
    return ReleaseResult(build=manifests,
                         deploy={k: v for k, v in result.items() if k != "endpoint_info"})
