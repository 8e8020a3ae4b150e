"""``mme invoke``: one request to an ensemble through the SageMaker runtime API, by TargetModel
on an endpoint, or by a fleet's variant through its routing table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flows.cli.common import _fail, app
from flows.cli.options import takes_options
from infra import paths

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True, kw_only=True)
class InvokeOptions:
    """``mme invoke``'s options, typed (more than a function's 8 parameters)."""

    text: Annotated[list[str] | None, typer.Argument(help="sentences to embed (text ensembles)")] = None
    image: Annotated[list[Path] | None, typer.Option(help="image files to classify (image ensembles)")] = None
    endpoint: Annotated[str, typer.Option()] = "local-mme"
    target_model: Annotated[str | None, typer.Option(
        help="default: text_embedding's (image_classifier's) current one in the endpoint record")] = None
    url: Annotated[str | None, typer.Option(help="default: the running local endpoint")] = None
    json_body: Annotated[bool, typer.Option("--json", help="send a JSON body, not binary+json")] = False
    fleet: Annotated[str | None, typer.Option(help="invoke a fleet's --variant through its routing "
                                                   "table (tasks/fleet/router.py)")] = None
    variant: Annotated[str | None, typer.Option(help="the fleet variant to invoke")] = None
    store: Annotated[str | None, typer.Option(help="the routing table's store (with --fleet)")] = None
    max_attempts: Annotated[int, typer.Option(min=1, help="with --fleet: invoke attempts at most (429, 5xx)")] = 10
    retry_budget: Annotated[float, typer.Option(min=1, help="with --fleet: seconds of retrying at most")] = 360.0


@app.command()
@takes_options(InvokeOptions)
def invoke(opts: InvokeOptions) -> None:
    """Invoke an ensemble by TargetModel (or a fleet's variant) through the SageMaker runtime API."""
    text, image, endpoint, url, fleet, variant = (opts.text, opts.image, opts.endpoint, opts.url,
                                                  opts.fleet, opts.variant)
    import numpy as np
    from botocore.exceptions import ClientError

    from infra.endpoint.process import find_running
    from infra.records.endpoint import target_model_for
    from infra.aws.runtime_client import invoke as do_invoke, pack_images, runtime_client_for

    if bool(fleet) != bool(variant):
        _fail("--fleet and --variant go together")
    if url is None and not fleet:
        info = find_running(endpoint)
        if info is None:
            _fail(f"endpoint {endpoint!r} is not running (mme endpoint start, or mme deploy)")
        url = info.url
    if image:
        inputs = {"INPUT": pack_images([p.read_bytes() for p in image])}
    elif text:
        inputs = {"INPUT0": np.array([t.encode() for t in text], dtype=object).reshape(-1, 1)}
    else:
        _fail("give sentences, or --image FILE")
    target_model = opts.target_model or target_model_for(
        endpoint, "image_classifier" if image else "text_embedding")
    try:
        out = (_invoke_variant(opts, inputs) if fleet and variant else
               do_invoke(runtime_client_for(url), endpoint, target_model, inputs, binary=not opts.json_body))
    except ClientError as e:
        _fail(f"{e.response['Error'].get('Code')}: {e.response['Error'].get('Message')}")
    for name, arr in out.items():
        arr = np.asarray(arr)
        if image and arr.ndim == 2 and arr.shape[1] in (1000, 1001):
            from tasks.producers.classifiers import imagenet_label_names

            labels = imagenet_label_names(offset=arr.shape[1] - 1000)
            for path, row in zip(image, arr, strict=False):
                top = np.argsort(-row)[:5]
                print(json.dumps({"image": str(path), "top5": [
                    {"label": labels[i], "prob": round(float(row[i]), 6)} for i in top]}))
        else:
            print(json.dumps({name: arr.round(6).tolist()}))


def _invoke_variant(opts: InvokeOptions, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Invoke ``--variant`` through the ``--fleet``'s :class:`~tasks.fleet.router.Router`
    (refreshes on a moved model)."""
    from infra.aws import invoke_retry
    from infra.errors import UserError
    from tasks.fleet.router import Router

    assert opts.fleet and opts.variant  # invoke() checked they go together
    retry = invoke_retry.InvokeRetry(max_attempts=opts.max_attempts, limit_s=opts.retry_budget)  # 429 / 5xx
    try:
        router = Router(opts.store or paths.store_uri(), opts.fleet, retry=retry)
        return router.invoke(opts.variant, inputs, binary=not opts.json_body)
    except UserError as e:  # not routed, endpoint not running, unreadable table: one line
        _fail(str(e))


