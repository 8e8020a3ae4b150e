"""Reference image pre-processing in numpy/PIL, to check the DALI pipelines against.

What the DALI pipelines of ``ensembles/catalog/image_classifier/pipelines.py`` compute, written
with the tools a Keras/PyTorch user would use, and without DALI (so the classifier's own
validation can import it on any machine):

* decode with PIL, applying the EXIF orientation (DALI's decoder does), to 3 channels;
* resize straight to the model size with ``PIL.Image.BILINEAR``: PIL widens its triangle
  filter by the reduction factor when it downsizes, which is what DALI's linear resize with
  ``antialias=True`` does. Measured on ``skimage.data.chelsea()`` (451x300) as a quality-95
  JPEG: DALI (CPU) vs this reference, SqueezeNet variant: mean abs diff 0.17, max abs 1.0 on
  the 0-255 scale; the other PIL filters are far worse (BICUBIC mean 0.84 / max 18, NEAREST,
  the default of Keras' ``load_img``, mean 2.96 / max 71).
  The decoded pixels are bit-identical (both use libjpeg-turbo with the same IDCT); the
  residual +-1 comes from the resize alone: both round to uint8 after resampling, with
  slightly different fixed-point filter weights.

Tolerance used by the tests (0-255 scale): mean abs <= 0.5 and max abs <= 2.0, i.e. one
uint8 rounding step with margin; a wrong channel order, mean, layout or filter gives a mean
difference of several units and maxima in the tens.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

SQUEEZENET_SIZE = 227
SQUEEZENET_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
INCEPTION_SIZE = 299

#: Tolerances (on the 0-255 scale) between DALI's CPU output and this reference; see above.
MEAN_ABS_TOLERANCE = 0.5
MAX_ABS_TOLERANCE = 2.0


def decode_rgb(image_bytes: bytes) -> Image.Image:
    """Decode to an 8-bit RGB PIL image the way DALI's decoder does.

    EXIF orientation applied; greyscale, palette, CMYK and alpha converted to RGB (alpha
    dropped, not composited); 16-bit greyscale scaled to 8 bits rather than clipped (PIL's own
    ``convert("RGB")`` clips ``I;16`` at 255).
    """
    im = Image.open(io.BytesIO(image_bytes))
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im).astype(np.float64)
        im = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def resize_rgb(im: Image.Image, size: int) -> np.ndarray:
    """Resize straight to ``size x size`` (aspect ratio not kept); uint8 HWC RGB."""
    return np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def reference_preprocess(image_bytes: bytes) -> np.ndarray:
    """SqueezeNet v1.1 input for one encoded image: FP32 [3, 227, 227], BGR, 0-255 minus mean."""
    rgb = resize_rgb(decode_rgb(image_bytes), SQUEEZENET_SIZE).astype(np.float32)
    bgr = rgb[:, :, ::-1] - SQUEEZENET_MEAN_BGR
    return np.ascontiguousarray(bgr.transpose(2, 0, 1))


def reference_preprocess_inception(image_bytes: bytes) -> np.ndarray:
    """Inception v3 input for one encoded image: FP32 [299, 299, 3], RGB, (x / 127.5) - 1."""
    rgb = resize_rgb(decode_rgb(image_bytes), INCEPTION_SIZE).astype(np.float32)
    return np.ascontiguousarray((rgb - 127.5) / 127.5)


def diff_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean and max absolute difference (and the fraction of values that differ)."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"mean_abs": float(d.mean()), "max_abs": float(d.max()),
            "frac_differ": float((d > 1e-6).mean())}
