"""Image pre-processing step for local-cpu (Triton Python backend running a DALI pipeline).

The GPU target serves ``model.dali`` with Triton's DALI backend, which the CPU tritonserver we
run locally does not ship. This model runs the *same* serialized pipeline (its CPU variant)
with DALI's Python API, so both targets share one pipeline definition
(``ensembles/catalog/image_classifier/pipelines.py``).

Tensors: input ``INPUT`` UINT8 ``[B, N]``: B encoded images (JPEG, PNG, BMP, TIFF, WebP,
JPEG 2000, PNM), each padded with trailing bytes to the longest (Triton needs a rectangular
tensor; the decoders ignore bytes after the end of the image). Output ``preprocessed`` FP32
``[B, ...]`` (``[B, 3, 227, 227]`` for SqueezeNet). Names come from config.pbtxt.

Config parameters: ``dali_file`` (default ``model.dali``, in the version folder),
``max_pixels`` (default 40e6: bigger images are refused from their header before anything is
decoded), ``num_threads`` (DALI CPU threads, default min(4, CPU count)).

Failure handling: a bad image gives an error response for its request only, naming the image
and the cause (``INPUT[1] is not a decodable image: ...``). Images are checked with PIL
(header only, nothing decoded) first: unknown or unsupported formats and oversize images never
reach DALI. A DALI error (e.g. a truncated file) leaves the DALI pipeline unusable ("Current
pipeline object is no longer valid"), so the pipeline is rebuilt from the serialized bytes
(~5 ms) after every failed run, and the failed batch is re-run image by image to find out
which request holds the bad image; the other requests still get their results.

Memory (issue 19: one stub per loaded model): DALI's own cost is fixed at import (its operator
registry, ~19.5 MiB private per process); what a run leaves behind is the C heap's free pages,
which the model hands back to the kernel (``malloc_trim``) after the warm-up and whenever a
request brings more images than any before it (steady traffic never pays for it). PIL stays
imported at load: every request's headers are checked with it (~0.8 MiB).
"""

import ctypes
import io
import json
import os
import re
import warnings

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image, UnidentifiedImageError

# PIL format names of what DALI's image decoder (nvImageCodec) reads. GIF, for instance, is
# identified by PIL but not decoded by DALI. MPO is how PIL names many camera JPEGs.
SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "JPEG2000", "PPM")


class _DaliRunError(RuntimeError):
    pass


def _release_freed_memory():
    """Return the C heap's free pages to the kernel (glibc ``malloc_trim``; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _dali_reason(exc: BaseException) -> str:
    """The useful part of a DALI error: what the operator reported, without the traceback of
    the pipeline definition and DALI's "no longer valid" trailer."""
    text = str(exc)
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1]
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and "no longer valid" not in ln
             and not ln.startswith("Critical error in pipeline")]
    reason = " ".join(lines) or type(exc).__name__
    # DALI numbers samples within its own batch, not the request's: drop that, and say what a
    # bare decoder failure means (libjpeg-turbo's own reason goes to the server log)
    reason = re.sub(r"^Failed to decode sample #\d+\s*:?\s*$",
                    "the decoder failed (corrupt or truncated image data)", reason)
    return reason if len(reason) <= 300 else reason[:297] + "..."


class TritonPythonModel:
    def initialize(self, args):
        import nvidia.dali as dali

        self._dali = dali
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = config.get("name", "preprocess")
        self.max_batch_size = int(config.get("max_batch_size", 0))
        if self.max_batch_size < 1:
            raise ValueError(f"{self.name}: max_batch_size must be >= 1 (the input is a batch of "
                             f"encoded images, [B, N] UINT8); it is {self.max_batch_size}")
        if len(config["input"]) != 1 or len(config["output"]) != 1:
            raise ValueError(f"{self.name}: expected one input and one output in config.pbtxt")
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.output_dims = [int(d) for d in config["output"][0]["dims"]]
        self.max_pixels = int(float(params.get("max_pixels", "40e6")))
        self.num_threads = int(params.get("num_threads", str(min(4, os.cpu_count() or 1))))
        # our own max_pixels check replaces PIL's decompression-bomb limit (PIL never decodes
        # pixels here: only headers are read)
        Image.MAX_IMAGE_PIXELS = None

        filename = params.get("dali_file", "model.dali")
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        try:
            with open(path, "rb") as f:
                self.serialized = f.read()
        except OSError as e:
            raise ValueError(f"{self.name}: cannot read the DALI pipeline {filename!r}: {e}") from e
        self.pipe = self._build(path)
        try:
            self.pipe.input_feed_count(self.input_name)
        except RuntimeError as e:
            raise ValueError(
                f"{self.name}: the DALI pipeline {filename!r} has no external source named "
                f"{self.input_name!r} (the model's input in config.pbtxt): {e}") from e
        self._warm_up()
        self.largest_batch = 1  # the warm-up's: more images in one execute trims the heap again
        _release_freed_memory()

    # ------------------------------------------------------------------ DALI
    def _build(self, path="model.dali"):
        try:
            return self._dali.Pipeline.deserialize(
                serialized_pipeline=self.serialized, batch_size=self.max_batch_size,
                num_threads=self.num_threads, device_id=None,
                # synchronous, one batch in flight: feed, run, read. Nothing is prefetched
                # that a later request would have to supply (with the default depth 2 a
                # pipeline built in Python failed its 2nd run here: "Attempted to peek the
                # data batch that doesn't exist").
                prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        except Exception as e:  # noqa: BLE001
            hint = ""
            if "CUDA" in str(e) or "cuda" in str(e) or "GPU" in str(e):
                hint = (" (a pipeline serialized with device='mixed' needs a GPU; the local-cpu "
                        "target needs the device='cpu' pipeline)")
            raise ValueError(f"{self.name}: cannot load the DALI pipeline {path!r}{hint}: "
                             f"{_dali_reason(e)}") from e

    def _run(self, images):
        """Run one DALI batch (<= max_batch_size images); rebuild the pipeline if it fails."""
        try:
            self.pipe.feed_input(self.input_name, images)
            (out,) = self.pipe.run()
            return np.asarray(out.as_array(), dtype=np.float32)
        except Exception as e:  # noqa: BLE001 - DALI raises RuntimeError, IndexError, ...
            self.pipe = self._build()
            raise _DaliRunError(_dali_reason(e)) from e

    def _warm_up(self):
        """Run one tiny image at load time: the first run allocates DALI's buffers, and a
        pipeline whose output does not fit config.pbtxt fails the load, not a request."""
        buf = io.BytesIO()
        Image.new("RGB", (8, 6), (120, 60, 30)).save(buf, format="PNG")
        out = self._run([np.frombuffer(buf.getvalue(), dtype=np.uint8)])
        shape = list(out.shape[1:])
        if len(shape) != len(self.output_dims) or any(
                d != -1 and d != s for d, s in zip(self.output_dims, shape)):
            raise ValueError(f"{self.name}: the DALI pipeline produces {shape} per image, but "
                             f"config.pbtxt declares {self.output_name!r} as {self.output_dims}")

    # ------------------------------------------------------------------ inputs
    def _check_header(self, data: np.ndarray, j: int) -> None:
        """Refuse, from the header alone, what DALI cannot or should not decode."""
        where = f"{self.input_name}[{j}]"
        if data.size == 0 or not data.any():
            raise ValueError(f"{where} is not a decodable image: it is empty (or all zero bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(data.tobytes())) as im:
                    fmt, (w, h) = im.format, im.size
        except UnidentifiedImageError:
            raise ValueError(f"{where} is not a decodable image: unknown format "
                             f"(first bytes {data[:8].tobytes()!r})") from None
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds on bad headers
            raise ValueError(f"{where} is not a decodable image: {type(e).__name__}: {e}") from None
        if fmt not in SUPPORTED_FORMATS:
            raise ValueError(f"{where} is a {fmt} image, which the DALI decoder does not read "
                             f"(supported: {', '.join(SUPPORTED_FORMATS)})")
        if w < 1 or h < 1:
            raise ValueError(f"{where} is not a decodable image: size {w}x{h}")
        if w * h > self.max_pixels:
            raise ValueError(f"{where} is too large: {w}x{h} = {w * h} pixels, over the limit "
                             f"max_pixels={self.max_pixels}")

    def _request_images(self, request) -> list:
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            raise ValueError(f"missing input {self.input_name!r}")
        batch = tensor.as_numpy()
        if batch.dtype != np.uint8:
            raise ValueError(f"{self.input_name} must be UINT8 encoded image bytes, got {batch.dtype}")
        if batch.ndim != 2:
            raise ValueError(f"{self.input_name} must have shape [batch, bytes], got {list(batch.shape)}")
        images = []
        for j in range(batch.shape[0]):
            row = np.ascontiguousarray(batch[j])
            self._check_header(row, j)
            images.append(row)
        return images

    # ------------------------------------------------------------------ serve
    def execute(self, requests):
        errors = [None] * len(requests)
        counts = [0] * len(requests)
        items = []  # (request index, image index, bytes) of every image of every valid request
        for i, request in enumerate(requests):
            try:
                images = self._request_images(request)
            except Exception as e:  # noqa: BLE001
                errors[i] = str(e)
                continue
            counts[i] = len(images)
            items.extend((i, j, img) for j, img in enumerate(images))

        results = {}
        for start in range(0, len(items), self.max_batch_size):
            chunk = items[start:start + self.max_batch_size]
            try:
                out = self._run([img for _, _, img in chunk])
                for k, (i, j, _) in enumerate(chunk):
                    results[(i, j)] = out[k]
                continue
            except _DaliRunError:
                pass
            # one image spoilt the batch: run them one by one to tell which request it was
            for i, j, img in chunk:
                if errors[i] is not None:
                    continue
                try:
                    results[(i, j)] = self._run([img])[0]
                except _DaliRunError as e:
                    errors[i] = f"{self.input_name}[{j}] is not a decodable image: {e}"

        responses = []
        for i in range(len(requests)):
            if errors[i] is not None:
                # the request's own input is at fault: INVALID_ARG (HTTP 400), not the default
                # INTERNAL (HTTP 500, "server error", which clients may retry)
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(
                        f"preprocess: {errors[i]}", pb_utils.TritonError.INVALID_ARG)))
                continue
            if counts[i]:
                out = np.stack([results[(i, j)] for j in range(counts[i])])
            else:
                out = np.zeros([0] + [max(d, 0) for d in self.output_dims], dtype=np.float32)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(self.output_name, np.ascontiguousarray(out))]))
        if len(items) > self.largest_batch:
            self.largest_batch = len(items)
            _release_freed_memory()
        return responses

    def finalize(self):
        self.pipe = None
