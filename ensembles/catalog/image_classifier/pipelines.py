"""DALI pre-processing pipelines of the image-classification ensemble.

The seed's image ensemble is "DALI decode/resize -> classifier". The pipeline is defined once
here, named by module path in ``ensemble.yaml`` (``pipeline:
"ensembles.catalog.image_classifier.pipelines:squeezenet"``) and serialized by
:func:`tasks.producers.dali.serialize_pipeline` (``model.dali``):

* **sagemaker-gpu**: the file is served by Triton's DALI backend; the decoder runs as
  ``device="mixed"`` (nvJPEG: bitstream parsing on the CPU, decoding on the GPU) and every
  following operator on the GPU, so the classifier's input never leaves the GPU.
* **local-cpu**: the CPU tritonserver has no DALI backend, so the *same* graph with every
  operator on ``device="cpu"`` is run by DALI's Python API inside a Python-backend model
  (``preprocess/model.py``).

Contract with the ensemble (and with Triton's DALI backend, which binds inputs by name and
outputs by position):

* one external source, named ``input_name`` (default ``"INPUT"``, the ensemble/step input
  name; the DALI backend refuses a config whose input names do not match), fed with one
  UINT8 1-D array of encoded image bytes per sample (JPEG, PNG, BMP, TIFF, WebP, JPEG 2000,
  PNM; trailing padding bytes are ignored by the decoders);
* one output, bound to the step output ``preprocessed`` (FP32).

Pipelines are built with ``device_id=None`` by default: that makes the CPU graph runnable on a
machine without a GPU, and a ``mixed`` graph serializable there (Triton's DALI backend sets
the device when it loads the model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import Pipeline

# the classifiers' input contract, defined once (shared with the ONNX export and the reference)
from ensembles.classifier_input import BGR_MEAN as SQUEEZENET_MEAN_BGR
from ensembles.classifier_input import INCEPTION_SIZE, SQUEEZENET_INPUT, SQUEEZENET_SIZE

Device = Literal["cpu", "mixed"]

#: Name of the pipeline output, as the ensemble's step output (and the classifier input) calls it.
OUTPUT_NAME = SQUEEZENET_INPUT

# Inception v3 (TF/Keras convention): 299x299, RGB, (x / 127.5) - 1, channels last.
INCEPTION_MEAN = 127.5
INCEPTION_STD = 127.5

DEFAULT_NUM_THREADS = 4


def _check_device(device: str) -> None:
    if device not in ("cpu", "mixed"):
        raise ValueError(f"device must be 'cpu' (local-cpu target) or 'mixed' (GPU decode, "
                         f"sagemaker-gpu target), not {device!r}")


def _decode(input_name: str, device: str, output_type: types.DALIImageType) -> DataNode:
    """External source of encoded bytes -> decoded HWC uint8 image.

    ``fn.decoders.image`` (nvImageCodec; libjpeg-turbo on the CPU, nvJPEG for "mixed")
    converts greyscale, palette, CMYK and alpha images to 3 channels and applies the EXIF
    orientation, so every sample comes out as HWC with 3 channels in ``output_type`` order.
    """
    encoded = fn.external_source(name=input_name, dtype=types.DALIDataType.UINT8, device="cpu")
    return fn.decoders.image(encoded, device=device, output_type=output_type)


def _resize(images: DataNode, size: int) -> DataNode:
    """Straight to ``size x size`` (aspect ratio not kept), linear filter with antialiasing."""
    out = fn.resize(images, resize_x=size, resize_y=size,
                    interp_type=types.DALIInterpType.INTERP_LINEAR, antialias=True)
    assert isinstance(out, DataNode)  # one output: resize adds a second (attrs) only with save_attrs=True
    return out


@pipeline_def
def _squeezenet_graph(input_name: str, device: str):
    images = _decode(input_name, device, types.DALIImageType.BGR)
    # Straight to 227x227 (aspect ratio not kept), like the Keras SqueezeNet example; no
    # shorter-side-256 + centre crop. Linear filter with antialiasing (DALI's default): PIL's
    # BILINEAR resize with edge pixels replicated at the border (tasks.producers.image_reference).
    images = _resize(images, SQUEEZENET_SIZE)
    return fn.crop_mirror_normalize(
        images, dtype=types.DALIDataType.FLOAT, output_layout="CHW",
        mean=list(SQUEEZENET_MEAN_BGR), std=[1.0, 1.0, 1.0])


@pipeline_def
def _inception_graph(input_name: str, device: str):
    images = _decode(input_name, device, types.DALIImageType.RGB)
    images = _resize(images, INCEPTION_SIZE)
    return fn.crop_mirror_normalize(
        images, dtype=types.DALIDataType.FLOAT, output_layout="HWC",
        mean=[INCEPTION_MEAN] * 3, std=[INCEPTION_STD] * 3)


def squeezenet_pipeline(device: Device = "cpu", batch_size: int = 16, *,
                        input_name: str = "INPUT", num_threads: int = DEFAULT_NUM_THREADS,
                        device_id: int | None = None) -> Pipeline:
    """SqueezeNet v1.1 pre-processing: encoded bytes -> FP32 [3, 227, 227] per sample.

    Decode as BGR, resize to 227x227, subtract the ImageNet BGR mean
    (103.939, 116.779, 123.68) on the 0-255 scale (std 1), CHW layout.
    ``device="cpu"`` runs everything on the CPU (local-cpu); ``"mixed"`` decodes on the GPU and
    resizes/normalizes there (sagemaker-gpu).
    """
    _check_device(device)
    return _squeezenet_graph(input_name=input_name, device=device, batch_size=batch_size,
                             num_threads=num_threads, device_id=device_id)


def inception_pipeline(device: Device = "mixed", batch_size: int = 16, *,
                       input_name: str = "INPUT", num_threads: int = DEFAULT_NUM_THREADS,
                       device_id: int | None = None) -> Pipeline:
    """The seed's Inception v3 pre-processing: encoded bytes -> FP32 [299, 299, 3] per sample.

    Decode as RGB, resize to 299x299, ``(x - 127.5) / 127.5`` (i.e. [-1, 1]), HWC layout (the
    TF Inception graph is NHWC). Defaults to ``"mixed"``: the seed ran it on the GPU target;
    ``"cpu"`` gives the same graph on the CPU (used to check it without a GPU).
    """
    _check_device(device)
    return _inception_graph(input_name=input_name, device=device, batch_size=batch_size,
                            num_threads=num_threads, device_id=device_id)


@dataclass(frozen=True)
class PipelineDef:
    """A pipeline as a spec names it: ``pipeline: "<module>:<name>"`` in the params of a
    ``serialize_dali_pipeline`` artifact, loaded by :func:`tasks.producers.dali.load_pipeline` (so
    ``tasks/`` imports no catalog entry). Calling it builds the DALI ``Pipeline``; the output
    fields describe the step output it feeds (dims without the batch dimension)."""

    factory: Callable[..., Pipeline]
    output_dims: tuple[int, ...]
    output_layout: str
    output_name: str = OUTPUT_NAME

    def __call__(self, device: str, batch_size: int, *, input_name: str = "INPUT",
                 **kw: Any) -> Pipeline:
        return self.factory(device, batch_size, input_name=input_name, **kw)


#: ``ensembles.catalog.image_classifier.pipelines:squeezenet`` in ``ensemble.yaml``
squeezenet = PipelineDef(squeezenet_pipeline, (3, SQUEEZENET_SIZE, SQUEEZENET_SIZE), "CHW")
#: ``ensembles.catalog.image_classifier.pipelines:inception`` in ``ensemble.yaml``
inception = PipelineDef(inception_pipeline, (INCEPTION_SIZE, INCEPTION_SIZE, 3), "HWC")
