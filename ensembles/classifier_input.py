"""The image classifiers' input contract, shared by the catalog's DALI pipelines and tasks/.

Why here: the DALI pipeline (``ensembles/catalog/image_classifier/pipelines.py``), the ONNX
export and the numpy reference (``tasks.producers.classifiers``, ``tasks.producers.image_reference``) must agree on
these numbers. ``ensembles/`` is below ``tasks/`` in the layering (a catalog entry imports
nothing from ``tasks/``), so the one definition lives in ``ensembles/`` and both sides import it.
"""

from __future__ import annotations

# SqueezeNet v1.1 (ImageNet weights, Caffe/Keras "caffe" mode): 227x227, BGR, 0-255 minus the
# per-channel ImageNet mean, channels first.
SQUEEZENET_INPUT = "preprocessed"  # FP32 [batch, 3, 227, 227]: the DALI output, the ONNX input
SQUEEZENET_SIZE = 227
BGR_MEAN = (103.939, 116.779, 123.68)

# Inception v3 (TF/Keras convention): 299x299, RGB, (x / 127.5) - 1, channels last.
INCEPTION_SIZE = 299
