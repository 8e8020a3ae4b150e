"""``mme invoke``: one request to an ensemble through the SageMaker runtime API, by TargetModel
on an endpoint, or by a fleet's variant through its routing table. A classifier's answer is its
top-k classes named by the model's own labels (Triton's where the served model has a label file,
else ranked here: :func:`~tasks.runtime.invoke_answer.ask_triton`), with the TargetModel hit."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.cli.common import JSON_OPTION, _fail, app, emit_json, say
from flows.cli.options import takes_options
from infra import paths

if TYPE_CHECKING:
    import numpy as np

    from tasks.runtime.invoke_answer import LabelsFrom, TopClass


@dataclass(frozen=True, kw_only=True)
class InvokeOptions:
    """``mme invoke``'s options, typed (more than a function's 8 parameters)."""

    text: Annotated[list[str] | None, typer.Argument(help="sentences to embed (text ensembles)")] = None
    image: Annotated[list[Path] | None, typer.Option(help="image files to classify (image ensembles)")] = None
    endpoint: Annotated[str, typer.Option()] = "local-mme"
    target_model: Annotated[str | None, typer.Option(
        help="default: text_embedding's (image_classifier's) current one in the endpoint record")] = None
    url: Annotated[str | None, typer.Option(help="default: the running local endpoint")] = None
    json_body: Annotated[bool, typer.Option("--json-body", help="send the request as a KServe v2 "
                                            "JSON body, not binary+json")] = False
    as_json: Annotated[bool, JSON_OPTION] = False
    top_k: Annotated[int, typer.Option(min=1, help="a classifier's best classes shown per input")] = 5
    fleet: Annotated[str | None, typer.Option(help="invoke a fleet's --variant through its routing "
                                                   "table: the fleet's name, file or build folder")] = None
    variant: Annotated[str | None, typer.Option(help="the fleet variant to invoke")] = None
    store: Annotated[str | None, typer.Option(help="the routing table's store (with --fleet)")] = None
    max_attempts: Annotated[int, typer.Option(min=1, help="with --fleet: invoke attempts at most (429, 5xx)")] = 10
    retry_budget: Annotated[float, typer.Option(min=1, help="with --fleet: seconds of retrying at most")] = 360.0


@dataclass(frozen=True)
class Answer:
    """What one invoke got: the arrays, where they came from, the top-k classes Triton ranked
    and named (``classes``, by output), and the labels that name a classifier's raw scores
    here (None: none known) with where they came from."""

    outputs: dict[str, np.ndarray]
    endpoint: str
    target_model: str
    labels: list[str] | None = None
    labels_from: LabelsFrom = "build"
    classes: dict[str, list[list[TopClass]]] = field(default_factory=dict)
    fleet: str | None = None
    variant: str | None = None
    tenant: int | None = None


@app.command()
@takes_options(InvokeOptions)
def invoke(opts: InvokeOptions) -> None:
    """Invoke an ensemble by TargetModel (or a fleet's variant) through the SageMaker runtime
    API; a classifier's answer is its --top-k labels with scores, and the TargetModel hit."""
    from botocore.exceptions import ClientError

    if bool(opts.fleet) != bool(opts.variant):
        _fail("--fleet and --variant go together")
    inputs = _inputs(opts)
    try:
        answer = _invoke_variant(opts, inputs) if opts.fleet else _invoke_target(opts, inputs)
    except ClientError as e:
        _fail(f"{e.response['Error'].get('Code')}: {e.response['Error'].get('Message')}")
    except ValueError as e:  # a classification answer that is not "score:index:label"
        _fail(f"the endpoint's answer: {e}")
    doc = answer_document(answer, [str(p) for p in opts.image or []], opts.top_k)
    if opts.as_json:
        emit_json(doc)
    else:
        print_answer(doc)


def _inputs(opts: InvokeOptions) -> dict[str, np.ndarray]:
    """The request's inputs: the images packed into one padded batch, or the sentences."""
    import numpy as np

    from infra.aws.runtime_client import pack_images

    if opts.image:
        return {"INPUT": pack_images([p.read_bytes() for p in opts.image])}
    if opts.text:
        return {"INPUT0": np.array([t.encode() for t in opts.text], dtype=object).reshape(-1, 1)}
    _fail("give sentences, or --image FILE")


def _invoke_target(opts: InvokeOptions, inputs: dict[str, np.ndarray]) -> Answer:
    """Invoke ``--target-model`` (default: the endpoint record's current one) on ``--endpoint``."""
    from infra.aws.runtime_client import invoke as do_invoke, runtime_client_for
    from infra.endpoint.process import find_running
    from infra.records.endpoint import target_model_for
    from tasks.runtime.invoke_answer import ask_triton

    url = opts.url
    if url is None:
        info = find_running(opts.endpoint)
        if info is None:
            _fail(f"endpoint {opts.endpoint!r} is not running (mme endpoint start, or mme deploy)")
        url = info.url
    target = opts.target_model or target_model_for(
        opts.endpoint, "image_classifier" if opts.image else "text_embedding")
    call = partial(do_invoke, runtime_client_for(url), opts.endpoint, target, inputs,
                   binary=not opts.json_body)
    out, classes = ask_triton(call, opts.top_k) if opts.image else (call(), {})
    return Answer(outputs=out, endpoint=opts.endpoint, target_model=target, classes=classes)


def _invoke_variant(opts: InvokeOptions, inputs: dict[str, np.ndarray]) -> Answer:
    """Invoke ``--variant`` through the ``--fleet``'s :class:`~tasks.fleet.router.Router`
    (refreshes on a moved model); a classifier's labels are the variant's own: Triton's from
    its label file, else its build's here (a fused tenant's always: its shard's tenants
    sidecar, by the TENANT index the routing table gives)."""
    from flows.cli.fleet_ref import resolved
    from infra.aws import invoke_retry
    from infra.errors import UserError
    from tasks.fleet.router import Router, variant_labels
    from tasks.runtime.invoke_answer import ask_triton

    assert opts.fleet and opts.variant  # invoke() checked they go together
    ref = resolved(opts.fleet)
    retry = invoke_retry.InvokeRetry(max_attempts=opts.max_attempts, limit_s=opts.retry_budget)  # 429 / 5xx
    try:
        router = Router(opts.store or paths.store_uri(), ref.name, retry=retry)
        fused = router.route_of(opts.variant)[2] is not None  # its shard's output has no labels
        call = partial(router.invoke, opts.variant, inputs, binary=not opts.json_body)
        out, classes = ask_triton(call, opts.top_k) if opts.image and not fused else (call(), {})
        endpoint, target, tenant = router.route_of(opts.variant)  # after a refresh: the one hit
    except UserError as e:  # not routed, endpoint not running, unreadable table: one line
        _fail(str(e))
    dirs = [ref.build_dir] if ref.build_dir is not None else []
    labels = variant_labels(ref.name, opts.variant, dirs, tenant) if opts.image and not classes else None
    return Answer(outputs=out, endpoint=endpoint, target_model=target, labels=labels, classes=classes,
                  fleet=ref.name, variant=opts.variant, tenant=tenant)


def answer_document(answer: Answer, images: list[str], k: int) -> dict[str, Any]:
    """``mme invoke --json``'s document: where it went, where the labels came from
    (``labels_from``), then per image its top-k classes (a classifier's answer: Triton's, or
    ranked here from the scores) and any other output as plain lists."""
    import numpy as np

    from tasks.runtime.invoke_answer import is_class_scores, top_k

    doc: dict[str, Any] = {"endpoint": answer.endpoint, "target_model": answer.target_model,
                           "fleet": answer.fleet, "variant": answer.variant, "tenant": answer.tenant,
                           "labels_from": "triton" if answer.classes else None, "results": [],
                           "outputs": {}}
    classes = dict(answer.classes)
    for name, value in answer.outputs.items():
        arr = np.asarray(value)
        if not (images and is_class_scores(arr)):
            doc["outputs"][name] = arr.round(6).tolist() if np.issubdtype(arr.dtype, np.floating) \
                else arr.tolist()
            continue
        labels, doc["labels_from"] = answer.labels, answer.labels_from if answer.labels is not None else None
        if labels is None and arr.shape[1] in (1000, 1001):
            from tasks.producers.classifiers import imagenet_label_names  # the catalog's classifiers

            labels, doc["labels_from"] = imagenet_label_names(offset=arr.shape[1] - 1000), "imagenet"
        classes[name] = top_k(arr, labels, k)
    doc["results"] = [{"input": path, "output": name, "top_k": [t.model_dump() for t in best]}
                      for name, rows in classes.items() for path, best in zip(images, rows, strict=False)]
    return doc


def print_answer(doc: dict[str, Any]) -> None:
    """``mme invoke`` for people: the TargetModel hit, each image's classes, other outputs as
    one JSON line each (embeddings are data, not prose)."""
    where = f"TargetModel {doc['target_model']} on endpoint {doc['endpoint']}"
    if doc["variant"]:
        tenant = "" if doc["tenant"] is None else f", tenant {doc['tenant']}"
        where += f" (fleet {doc['fleet']} variant {doc['variant']}{tenant})"
    say(where)
    if doc["results"]:
        from tasks.runtime.invoke_answer import labels_line

        say(labels_line(doc["labels_from"], fused=doc["tenant"] is not None))
    for r in doc["results"]:
        say(f"{r['input']}:")
        for t in r["top_k"]:
            say(f"  {t['score']:.4f}  {t['label']}  (class {t['index']})")
    for name, value in doc["outputs"].items():
        print(json.dumps({name: value}, default=str))

