"""DALI pre-processing of the image-classification ensemble.

Serialization of every variant (GPU ``mixed`` ones included: they serialize without a GPU),
the CPU pipeline against the numpy/PIL reference, the external-source check, and the local-cpu
Python-backend model (``preprocess/model.py``) running the serialized pipeline inside a real
tritonserver, with good and bad images.
"""

from __future__ import annotations

import io
import shutil
import sys
import threading
from pathlib import Path
from collections.abc import Iterator

import numpy as np
import pytest

from infra.aws.runtime_client import pack_images

# DALI, Pillow and scikit-image are project dependencies: missing means a broken install
import nvidia.dali as dali  # noqa: E402
import skimage.data as skdata  # noqa: E402
from PIL import Image  # noqa: E402

from tasks.producers.dali import (  # noqa: E402
    DaliPipelineError,
    check_external_source,
    external_source_names,
    parse_serialized,
    serialize_pipeline,
)
from tasks.producers.image_reference import (  # noqa: E402
    MAX_ABS_TOLERANCE,
    MEAN_ABS_TOLERANCE,
    diff_stats,
    reference_preprocess,
    reference_preprocess_inception,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CATALOG = PROJECT_ROOT / "ensembles" / "catalog" / "image_classifier"
# a spec names its DALI pipeline by module path (tasks/ imports no catalog entry)
PIPELINES = "ensembles.catalog.image_classifier.pipelines"
SQUEEZENET = f"{PIPELINES}:squeezenet"
INCEPTION = f"{PIPELINES}:inception"


def _encode(arr: np.ndarray | Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    im = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def chelsea_jpeg() -> bytes:
    return _encode(skdata.chelsea(), "JPEG", quality=95)


def _run_cpu(path: Path, images: list[bytes], batch_size: int = 8) -> np.ndarray:
    pipe = dali.Pipeline.deserialize(filename=str(path), batch_size=batch_size, num_threads=2,
                                     device_id=None, prefetch_queue_depth=1)
    pipe.feed_input("INPUT", [np.frombuffer(b, dtype=np.uint8) for b in images])
    (out,) = pipe.run()
    return np.asarray(out.as_array())


# --------------------------------------------------------------------------- serialization


@pytest.mark.parametrize("pipeline,device", [
    (SQUEEZENET, "cpu"), (SQUEEZENET, "mixed"), (INCEPTION, "mixed"), (INCEPTION, "cpu"),
])
def test_serialize_without_gpu(tmp_path: Path, pipeline: str, device: str) -> None:
    path, meta = serialize_pipeline(tmp_path / "a", pipeline=pipeline, device=device, batch_size=8)
    data = path.read_bytes()
    assert path.name == "model.dali" and len(data) > 100
    assert external_source_names(path) == ["INPUT"]
    assert meta["sha256"] and meta["bytes"] == len(data)
    assert meta["input"] == {"name": "INPUT", "dtype": "TYPE_UINT8", "dims": [-1],
                             "content": "encoded image bytes, one image per batch item"}
    assert meta["output"]["name"] == "preprocessed" and meta["output"]["dtype"] == "TYPE_FP32"
    assert meta["output"]["dims"] == ([3, 227, 227] if pipeline == SQUEEZENET else [299, 299, 3])
    # DALI records the defining file's absolute path for its error messages: stripped, so the
    # artifact is the same on every machine
    assert str(PROJECT_ROOT).encode() not in data and b"pipelines.py" not in data
    again, meta2 = serialize_pipeline(tmp_path / "b", pipeline=pipeline, device=device, batch_size=8)
    assert meta2["sha256"] == meta["sha256"]

    msg = parse_serialized(data)
    decoder = next(op for op in msg.op if "Image" in op.name)
    assert next(a.strings[0] for a in decoder.args if a.name == "device") == device
    assert msg.pipe_outputs[0].device == ("gpu" if device == "mixed" else "cpu")
    assert msg.device_id < 0  # CPU_ONLY_DEVICE_ID: the DALI backend picks the GPU at load


def test_unknown_pipeline_or_device_refused(tmp_path: Path) -> None:
    with pytest.raises(DaliPipelineError, match="unknown DALI pipeline 'resnet'.*squeezenet"):
        serialize_pipeline(tmp_path, pipeline="resnet", device="cpu")
    with pytest.raises(DaliPipelineError, match=r"'no_such_module:x'.*cannot import"):
        serialize_pipeline(tmp_path, pipeline="no_such_module:x", device="cpu")
    with pytest.raises(DaliPipelineError, match=r"has no pipeline definition 'resnet'"):
        serialize_pipeline(tmp_path, pipeline=f"{PIPELINES}:resnet", device="cpu")
    with pytest.raises(DaliPipelineError, match=r"has no pipeline definition 'OUTPUT_NAME'"):
        serialize_pipeline(tmp_path, pipeline=f"{PIPELINES}:OUTPUT_NAME", device="cpu")
    with pytest.raises(DaliPipelineError, match="device must be 'cpu'.*'gpu'"):
        serialize_pipeline(tmp_path, pipeline=SQUEEZENET, device="gpu")


# --------------------------------------------------------------------------- numerics


def test_cpu_pipeline_matches_reference(tmp_path: Path, chelsea_jpeg: bytes) -> None:
    path, _ = serialize_pipeline(tmp_path, pipeline=SQUEEZENET, device="cpu", batch_size=4)
    out = _run_cpu(path, [chelsea_jpeg], batch_size=4)
    assert out.shape == (1, 3, 227, 227) and out.dtype == np.float32
    ref = reference_preprocess(chelsea_jpeg)
    stats = diff_stats(out[0], ref)
    assert stats["mean_abs"] <= MEAN_ABS_TOLERANCE and stats["max_abs"] <= MAX_ABS_TOLERANCE, stats
    # the tolerance tells a right pre-processing from a wrong one: RGB instead of BGR
    wrong = diff_stats(out[0], ref[::-1])
    assert wrong["mean_abs"] > 10 * MEAN_ABS_TOLERANCE, wrong


def test_inception_cpu_variant_matches_reference(tmp_path: Path, chelsea_jpeg: bytes) -> None:
    path, _ = serialize_pipeline(tmp_path, pipeline=INCEPTION, device="cpu", batch_size=2)
    out = _run_cpu(path, [chelsea_jpeg, chelsea_jpeg], batch_size=2)
    assert out.shape == (2, 299, 299, 3)
    assert -1.0 <= out.min() and out.max() <= 1.0
    stats = diff_stats(out[1], reference_preprocess_inception(chelsea_jpeg))
    # same pixels as the SqueezeNet variant, scaled by 1/127.5
    assert stats["mean_abs"] * 127.5 <= MEAN_ABS_TOLERANCE, stats
    assert stats["max_abs"] * 127.5 <= MAX_ABS_TOLERANCE + 1e-3, stats


def test_partial_batches_and_padding(tmp_path: Path, chelsea_jpeg: bytes) -> None:
    """Fewer samples than the batch size, and Triton-style trailing zero padding, change nothing."""
    path, _ = serialize_pipeline(tmp_path, pipeline=SQUEEZENET, device="cpu", batch_size=8)
    png = _encode(skdata.astronaut(), "PNG")
    one = _run_cpu(path, [chelsea_jpeg])
    padded = _run_cpu(path, [chelsea_jpeg + b"\0" * 5000, png + b"\0" * 3000, chelsea_jpeg])
    assert padded.shape == (3, 3, 227, 227)
    np.testing.assert_array_equal(padded[0], one[0])
    np.testing.assert_array_equal(padded[2], one[0])
    assert diff_stats(padded[1], reference_preprocess(png))["max_abs"] <= MAX_ABS_TOLERANCE


def test_cpu_pipeline_matches_reference_at_the_border(tmp_path: Path) -> None:
    """Noise is the worst case for the border handling (DALI replicates edge pixels under its
    filter, a plain PIL resize does not; the reference pads to do the same)."""
    path, _ = serialize_pipeline(tmp_path, pipeline=SQUEEZENET, device="cpu", batch_size=2)
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    png = _encode(noise, "PNG")
    stats = diff_stats(_run_cpu(path, [png], batch_size=2)[0], reference_preprocess(png))
    assert stats["mean_abs"] <= MEAN_ABS_TOLERANCE and stats["max_abs"] <= MAX_ABS_TOLERANCE, stats


# --------------------------------------------------------------------------- external source


def test_external_source_mismatch_refused(tmp_path: Path) -> None:
    path, _ = serialize_pipeline(tmp_path, pipeline=SQUEEZENET, device="mixed", input_name="IMAGE")
    assert check_external_source(path, "IMAGE") == ["IMAGE"]
    with pytest.raises(DaliPipelineError) as err:
        check_external_source(path, "INPUT", pipeline_name="squeezenet")
    msg = str(err.value)
    assert "'squeezenet'" in msg and "'INPUT'" in msg and "['IMAGE']" in msg

    # a Pipeline object, before anything is serialized to disk, is checked the same way
    from ensembles.catalog.image_classifier.pipelines import inception_pipeline

    with pytest.raises(DaliPipelineError, match=r"\['RAW'\], none named 'INPUT'"):
        check_external_source(inception_pipeline("mixed", 4, input_name="RAW"), "INPUT")

    # the producer refuses nothing it wrote itself, but a pipeline with two sources is refused
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def two_inputs():
        a = fn.external_source(name="INPUT", dtype=types.UINT8)
        b = fn.external_source(name="EXTRA", dtype=types.UINT8)
        return fn.cat(a, b)

    with pytest.raises(DaliPipelineError, match=r"2 external sources \['INPUT', 'EXTRA'\]"):
        check_external_source(two_inputs(), "INPUT")
    with pytest.raises(DaliPipelineError, match="not a serialized DALI pipeline"):
        check_external_source(b"\x00not a pipeline at all", "INPUT")


# --------------------------------------------------------------------------- Triton

MAX_BATCH = 8


def _write_model(repo: Path, name: str, dali_file: Path, *, input_name: str = "INPUT",
                 max_pixels: str | None = None) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=MAX_BATCH)
    inp = cfg.input.add(name=input_name, data_type=mc.TYPE_UINT8)
    inp.dims.append(-1)
    out = cfg.output.add(name="preprocessed", data_type=mc.TYPE_FP32)
    out.dims.extend([3, 227, 227])
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    cfg.dynamic_batching.max_queue_delay_microseconds = 20000
    cfg.parameters["dali_file"].string_value = "model.dali"
    cfg.parameters["num_threads"].string_value = "2"
    if max_pixels:
        cfg.parameters["max_pixels"].string_value = max_pixels
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    shutil.copyfile(CATALOG / "preprocess" / "model.py", repo / name / "1" / "model.py")
    shutil.copyfile(dali_file, repo / name / "1" / "model.dali")


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    if not sys.platform.startswith("linux"):
        pytest.skip("the pytriton tritonserver is Linux-only")
    from infra.triton.server import TritonServer

    work = tmp_path_factory.mktemp("dali")
    dali_file, _ = serialize_pipeline(work / "art", pipeline=SQUEEZENET, device="cpu",
                                      batch_size=MAX_BATCH)
    repo = work / "repo"
    _write_model(repo, "preprocess", dali_file)
    _write_model(repo, "preprocess_badname", dali_file, input_name="IMAGE")
    with TritonServer(repo) as srv:
        srv.load("preprocess")
        yield srv


_pack = pack_images  # [B, N] uint8, zero-padded: how a client sends a batch


def _infer(srv, images: list[bytes], model: str = "preprocess") -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=srv.url.removeprefix("http://"))
    try:
        x = _pack(images)
        inp = httpclient.InferInput("INPUT", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x)
        res = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput("preprocessed")])
        return res.as_numpy("preprocessed")
    finally:
        client.close()  # an open keep-alive connection delays Triton's shutdown


def _infer_error(srv, images: list[bytes]) -> str:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as err:
        _infer(srv, images)
    return str(err.value)


@pytest.mark.triton
def test_triton_preprocess_good_images(triton, chelsea_jpeg: bytes) -> None:
    out = _infer(triton, [chelsea_jpeg])
    assert out.shape == (1, 3, 227, 227) and out.dtype == np.float32
    stats = diff_stats(out[0], reference_preprocess(chelsea_jpeg))
    assert stats["mean_abs"] <= MEAN_ABS_TOLERANCE and stats["max_abs"] <= MAX_ABS_TOLERANCE

    rgb = skdata.astronaut()
    grey_png = _encode(skdata.camera(), "PNG")  # mode L: the decoder makes 3 equal channels
    rgba_png = _encode(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]), "PNG")
    one_px = _encode(np.array([[[10, 200, 30]]], dtype=np.uint8), "PNG")  # upscaled to 227x227
    images = [chelsea_jpeg, grey_png, rgba_png, one_px]
    out = _infer(triton, images)  # padded to the longest (the RGBA PNG)
    assert out.shape == (4, 3, 227, 227)
    for k, img in enumerate(images):
        stats = diff_stats(out[k], reference_preprocess(img))
        assert stats["max_abs"] <= MAX_ABS_TOLERANCE, (k, stats)
    np.testing.assert_allclose(out[1][0], out[1][1] + (116.779 - 103.939), atol=1e-3)  # grey: B == G
    np.testing.assert_allclose(out[3][:, 100, 100], [30 - 103.939, 200 - 116.779, 10 - 123.68],
                               atol=1e-4)  # BGR order

    full = _infer(triton, [chelsea_jpeg] * MAX_BATCH)  # a whole batch
    assert full.shape == (MAX_BATCH, 3, 227, 227)
    np.testing.assert_array_equal(full[-1], out[0])


@pytest.mark.triton
def test_triton_preprocess_bad_images(triton, chelsea_jpeg: bytes) -> None:
    rng = np.random.default_rng(0)
    random_bytes = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    msg = _infer_error(triton, [random_bytes])
    assert "INPUT[0] is not a decodable image" in msg and "unknown format" in msg

    msg = _infer_error(triton, [chelsea_jpeg, random_bytes])
    assert "INPUT[1] is not a decodable image" in msg

    huge = _encode(Image.new("L", (8000, 8000)), "PNG")  # ~64 kB, 64 Mpixel
    msg = _infer_error(triton, [huge])
    assert "INPUT[0] is too large: 8000x8000" in msg and "max_pixels=40000000" in msg

    msg = _infer_error(triton, [_encode(skdata.chelsea(), "GIF")])
    assert "GIF" in msg and "does not read" in msg

    # a truncated JPEG passes the header check: DALI itself fails, the pipeline is rebuilt
    msg = _infer_error(triton, [chelsea_jpeg, chelsea_jpeg[: len(chelsea_jpeg) // 3]])
    assert "INPUT[1] is not a decodable image" in msg

    # still serving, with the same numbers as before
    assert triton.running and triton.is_ready("preprocess")
    out = _infer(triton, [chelsea_jpeg])
    assert diff_stats(out[0], reference_preprocess(chelsea_jpeg))["max_abs"] <= MAX_ABS_TOLERANCE


@pytest.mark.triton
def test_triton_bad_request_does_not_fail_its_batch_neighbours(triton, chelsea_jpeg: bytes) -> None:
    """Concurrent requests (dynamically batched into one execute) with a truncated image among
    them: only that request fails."""
    bad = chelsea_jpeg[: len(chelsea_jpeg) // 3]
    batches = [[chelsea_jpeg], [chelsea_jpeg, bad], [chelsea_jpeg, chelsea_jpeg], [chelsea_jpeg]]
    results: dict[int, object] = {}

    def call(k: int) -> None:
        try:
            results[k] = _infer(triton, batches[k])
        except Exception as e:  # noqa: BLE001
            results[k] = e

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert isinstance(results[1], Exception) and "INPUT[1] is not a decodable image" in str(results[1])
    ref = reference_preprocess(chelsea_jpeg)
    for k in (0, 2, 3):
        out = results[k]
        assert isinstance(out, np.ndarray) and out.shape == (len(batches[k]), 3, 227, 227), out
        assert diff_stats(out[-1], ref)["max_abs"] <= MAX_ABS_TOLERANCE


@pytest.mark.triton
def test_triton_refuses_pipeline_with_other_input_name(triton) -> None:
    from infra.triton.server import TritonModelError

    with pytest.raises(TritonModelError, match="no external source named 'IMAGE'"):
        triton.load("preprocess_badname")
    assert triton.is_ready("preprocess")
