"""Reference image pre-processing in numpy/PIL, to check the DALI pipelines against.

What the DALI pipelines of ``ensembles/catalog/image_classifier/pipelines.py`` compute, written
with the tools a Keras/PyTorch user would use, and without DALI (so the classifier's own
validation can import it on any machine):

* decode with PIL, applying the EXIF orientation (DALI's decoder does), to 3 channels;
* resize straight to the model size with ``PIL.Image.BILINEAR``: PIL widens its triangle
  filter by the reduction factor when it downsizes, which is what DALI's linear resize with
  ``antialias=True`` does. At the image border the two differ: DALI replicates the edge
  pixels under the filter, PIL renormalizes the weights of the pixels inside the image. So the
  reference pads the decoded image by edge replication and resizes the original region
  (PIL's ``box``); without that, the outermost ring of output pixels differs by up to 9-12
  (measured: astronaut 512x512, 4000x3000 upscaled astronaut, 800x800 noise).

Measured (0-255 scale), DALI 2.4 CPU output vs this reference, SqueezeNet variant:
``skimage.data.chelsea()`` (451x300) as a quality-95 JPEG: mean abs 0.171, max abs 1.0; the
same as PNG 0.175 / 1.0; astronaut (512x512 PNG) 0.114 / 1.0; coffee, rocket (JPEG) 0.137,
0.084 / 1.0; 800x800 noise 0.102 / 1.0; greyscale, 16-bit, palette, CMYK, EXIF-rotated and
1x1 images 0-0.18 / <= 1.0. The Inception variant gives the same numbers divided by 127.5.
The decoded pixels are bit-identical (both use libjpeg-turbo with the same IDCT); the residual
+-1 comes from the resize: both round to uint8 after resampling, with slightly different
fixed-point filter weights. Other PIL filters are far off (on chelsea: BICUBIC mean 0.84 /
max 18; NEAREST, the default of Keras' ``load_img``, mean 2.96 / max 71), as is a plain
``resize(BILINEAR)`` at the border (see above).

Tolerance (0-255 scale; divide by 127.5 for Inception): mean abs <= 0.5 and max abs <= 1.5,
i.e. one uint8 rounding step with a margin. A wrong channel order, mean, layout, filter or
border handling shows up as a mean difference of several units or maxima of 9 and more.
This is for DALI's CPU decoder. The GPU (``mixed``) decoder is nvJPEG, whose IDCT and chroma
upsampling are not libjpeg-turbo's: its JPEG output is expected to differ by a few units
more (not measured here: no GPU); check it on the GPU target against these functions and
at the classifier's output.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from ensembles.classifier_input import BGR_MEAN, INCEPTION_SIZE, SQUEEZENET_SIZE

SQUEEZENET_MEAN_BGR = np.array(BGR_MEAN, dtype=np.float32)

#: Tolerances (on the 0-255 scale) between DALI's CPU output and this reference; see above.
MEAN_ABS_TOLERANCE = 0.5
MAX_ABS_TOLERANCE = 1.5


def decode_rgb(image_bytes: bytes) -> Image.Image:
    """Decode to an 8-bit RGB PIL image the way DALI's decoder does.

    EXIF orientation applied; greyscale, palette, CMYK and alpha converted to RGB (alpha
    dropped, not composited); 16-bit greyscale scaled to 8 bits rather than clipped (PIL's own
    ``convert("RGB")`` clips ``I;16`` at 255).
    """
    im: Image.Image = Image.open(io.BytesIO(image_bytes))  # not ImageFile: derived images replace it below
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im).astype(np.float64)
        im = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def resize_rgb(im: Image.Image, size: int) -> np.ndarray:
    """Resize straight to ``size x size`` (aspect ratio not kept) like DALI: antialiased
    linear filter, edge pixels replicated under the filter at the border; uint8 HWC RGB."""
    a = np.asarray(im, dtype=np.uint8)
    h, w = a.shape[:2]
    # the filter reaches max(1, w/size) source pixels either side of a sample: pad beyond it
    pad = int(np.ceil(max(w, h) / size)) + 2
    padded = Image.fromarray(np.pad(a, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    out = padded.resize((size, size), Image.Resampling.BILINEAR, box=(pad, pad, pad + w, pad + h))
    return np.asarray(out, dtype=np.uint8)


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
