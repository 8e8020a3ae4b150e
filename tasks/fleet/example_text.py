"""An offline text fleet to build, test and measure with: N customers' own intent heads.

``make_text_example_fleet(N, out_uri)`` writes what a training pipeline would drop into a model
prefix for the ``text_intent_tenant`` template, one folder per customer:
``tenants/tenant-0001/model.onnx`` and ``labels.txt``, plus a fleet file (``prefix`` source,
``layout`` as asked) that ``mme fleet show`` and the fleet build read directly.

Why a second example: fusion (:mod:`tasks.fleet.fusion`) must not be tied to one template. Here
the shared trunk is the template's sentence encoder (all-MiniLM-L6-v2, built once per fleet)
and each customer owns only a small head ONNX over the encoder's output: masked mean pooling
(constants only, identical for everyone), one ``Gemm`` (W [K, 384], bias [K]) and a ``Softmax``
over the customer's K intents (3-20, seeded per customer, labels ``intent-00``...). The heads
are written with ``onnx.helper`` from seeded random weights: milliseconds each, no torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensembles.fleet_spec import Layout
from infra.aws.clients import S3Client
from infra.jsontypes import JsonObject
from infra.store.objects import open_store
from tasks.fleet.example import (
    prefix_source,
    prefix_uri_of,
    put_tenant_files,
    tenant_name,
    tenants_progress,
    write_fleet_file,
)

if TYPE_CHECKING:
    from onnx import ModelProto

TEMPLATE = "text_intent_tenant"
FLEET_NAME = "intents-example"
MIN_INTENTS, MAX_INTENTS = 3, 20
#: The encoder's hidden size (all-MiniLM-L6-v2): the width of every head's input.
HIDDEN = 384
HEAD_OPSET = 17
#: The inputs a head takes: what the template's encoder step hands it (ensemble tensor names).
HEAD_INPUTS = ("token_embeddings", "attention_mask")
HEAD_OUTPUT = "probabilities"


@dataclass(frozen=True)
class IntentTenant:
    """One customer: its name (``tenant-0001``) and how many intents its head tells apart."""

    name: str
    intents: int

    @property
    def labels(self) -> list[str]:
        return [f"intent-{i:02d}" for i in range(self.intents)]


@dataclass
class TextExampleFleet:
    """What :func:`make_text_example_fleet` wrote: where, which tenants, how long it took."""

    out_uri: str
    fleet_file: Path | None
    layout: Layout
    tenants: list[IntentTenant] = field(default_factory=list)
    written: int = 0
    unchanged: int = 0
    seconds: float = 0.0


def head_weights(index: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tenant ``index``'s head: W FP32 [K, 384] and bias FP32 [K], K in 3-20, from a generator
    seeded with ``(seed, index)`` (a tenant's head never depends on how many others there are).
    The scale keeps the softmax away from one-hot on real sentence features, so a wrong row
    or a wrong tenant shows in every probability."""
    rng = np.random.default_rng([seed, index, 7])
    k = int(rng.integers(MIN_INTENTS, MAX_INTENTS + 1))
    w = rng.normal(0.0, 4.0 / np.sqrt(HIDDEN), size=(k, HIDDEN)).astype(np.float32)
    b = rng.normal(0.0, 0.1, size=k).astype(np.float32)
    return w, b


def head_model(w: np.ndarray, b: np.ndarray) -> ModelProto:
    """The head ONNX (a ``ModelProto``): ``token_embeddings`` FP32 [batch, tokens, 384] and
    ``attention_mask`` INT64 [batch, tokens] -> masked mean over the tokens -> ``Gemm`` (the
    customer's rows) -> ``Softmax`` -> ``probabilities`` FP32 [batch, K]. Only W and the bias
    differ between customers; every other initializer is the same constant."""
    from onnx import TensorProto, helper, numpy_helper

    n = helper.make_node
    nodes = [
        n("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["mask_f", "axis_last"], ["mask_3d"]),
        n("Mul", ["token_embeddings", "mask_3d"], ["masked"]),
        n("ReduceSum", ["masked", "axis_tokens"], ["summed"], keepdims=0),
        n("ReduceSum", ["mask_3d", "axis_tokens"], ["counts_raw"], keepdims=0),
        n("Max", ["counts_raw", "min_count"], ["counts"]),
        n("Div", ["summed", "counts"], ["pooled"]),
        n("Gemm", ["pooled", "head_weight", "head_bias"], ["logits"], transB=1),
        n("Softmax", ["logits"], [HEAD_OUTPUT], axis=-1),
    ]
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "axis_last"),
             numpy_helper.from_array(np.array([1], np.int64), "axis_tokens"),
             numpy_helper.from_array(np.array([1e-9], np.float32), "min_count"),
             numpy_helper.from_array(np.asarray(w, np.float32), "head_weight"),
             numpy_helper.from_array(np.asarray(b, np.float32), "head_bias")]
    graph = helper.make_graph(
        nodes, "intent_head",
        [helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT, ["batch", "tokens", HIDDEN]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info(HEAD_OUTPUT, TensorProto.FLOAT, ["batch", int(w.shape[0])])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", HEAD_OPSET)],
                              producer_name="mme-fleet-example")
    model.ir_version = 8  # what every ONNX Runtime the project supports reads
    return model


def head_reference(w: np.ndarray, b: np.ndarray, token_embeddings: np.ndarray,
                   attention_mask: np.ndarray) -> np.ndarray:
    """What the head computes, in numpy (FP64, cast to FP32): the check that the ONNX graph
    is the function the docs describe."""
    m = np.asarray(attention_mask, np.float64)[..., None]
    pooled = (np.asarray(token_embeddings, np.float64) * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    z = pooled @ np.asarray(w, np.float64).T + b
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def fleet_document(prefix_uri: str, layout: Layout = "separate") -> JsonObject:
    """The text example's fleet file: a ``prefix`` source over the written tenants."""
    return {
        "name": FLEET_NAME,
        "description": "per-customer intent heads over one sentence encoder, written by "
                       "`mme fleet example --kind text`",
        "template": TEMPLATE,
        "target": "local-cpu",
        "layout": layout,
        "prefix": prefix_source(prefix_uri, {"head_onnx.source": "{match}",
                                             "labels.source": "tenants/{variant}/labels.txt"}),
    }


def make_text_example_fleet(count: int, out_uri: str, *, seed: int = 0, s3_client: S3Client = None,
                            fleet_file: Path | None = None, layout: Layout = "separate",
                            say: Callable[[str], None] | None = None) -> TextExampleFleet:
    """Write ``count`` tenants' ``model.onnx`` and ``labels.txt`` under ``out_uri``
    (``file://``, ``s3://`` or a path) and the fleet file (default ``<out>/fleet.yaml`` for a
    local prefix; none for S3 unless ``fleet_file`` is given). Objects that already hold the
    same bytes are left alone (a rerun changes nothing the fleet build would see). ``say``
    gets progress lines."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    t0 = time.perf_counter()
    store, base = open_store(out_uri, s3_client=s3_client)
    prefix_uri = prefix_uri_of(store, base)
    result = TextExampleFleet(out_uri=prefix_uri, fleet_file=None, layout=layout)
    root = f"{base}/" if base else ""
    progress = tenants_progress(count, say)
    for i in range(1, count + 1):
        w, b = head_weights(i, seed)
        tenant = IntentTenant(tenant_name(i), int(w.shape[0]))
        result.tenants.append(tenant)
        put_tenant_files(store, f"{root}tenants/{tenant.name}", {
            "model.onnx": head_model(w, b).SerializeToString(),
            "labels.txt": "".join(f"{label}\n" for label in tenant.labels).encode()}, result)
        if progress is not None:
            progress.record(tenant.name)
    result.fleet_file = write_fleet_file(store, fleet_file, fleet_document(prefix_uri, layout))
    result.seconds = round(time.perf_counter() - t0, 2)
    return result
