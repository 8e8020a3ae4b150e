"""The image-classification ensemble end to end: rendered configs for both targets, the real
build (DALI CPU pipeline + SqueezeNet ONNX, verified in Triton), the built tarball served by the
local multi-model endpoint (boto3, both body kinds, batches, bad images), the build-time refusal
of a DALI pipeline whose external source does not match its step, and request payload sizes.

One endpoint is shared by the module (``endpoint``): it serves the built tarball as
``image_classifier.tar.gz``; the first request loads it (DALI warm-up, ONNX session), later
ones reuse it.
"""

from __future__ import annotations

import io
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import numpy as np
import pytest
import yaml
from botocore.exceptions import ClientError

from ensembles.catalog import CATALOG_DIR, load_ensemble
from ensembles.render import parse_pbtxt, render_repository
from infra.aws.runtime_client import pack_images, encode_request, invoke, runtime_client_for
from tasks.build.verify import sample_image

ENS = "image_classifier"
PRE, CLS = f"{ENS}__preprocess", f"{ENS}__classifier"
TARGET_MODEL = f"{ENS}.tar.gz"
ENDPOINT = "image-ep"
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the pytriton tritonserver is Linux-only")


def _encode(im, fmt: str, **kw: Any) -> bytes:
    from PIL import Image

    if isinstance(im, np.ndarray):
        im = Image.fromarray(im)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


_pack = pack_images  # [B, N] uint8, zero-padded: how a client sends a batch


@pytest.fixture(scope="module")
def chelsea() -> bytes:
    """The build's own sample image: chelsea (skimage) as a quality-95 JPEG."""
    return sample_image("skimage:chelsea")


# ---------------------------------------------------------------------------------- 1. render
@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    spec, _ = load_ensemble(ENS)
    out = {}
    for target in ("local-cpu", "sagemaker-gpu"):
        repo = render_repository(spec, target, tmp_path_factory.mktemp(target) / "repo",
                                 configs_only=True)
        out[target] = {p.parent.name: parse_pbtxt(p.read_text()) for p in repo.glob("*/config.pbtxt")}
    return out


def _params(cfg) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def _io(tensors) -> list[tuple[str, str, list[int]]]:
    from tritonclient.grpc import model_config_pb2 as mc

    return [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


def test_render_local_cpu(configs) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    cfgs = configs["local-cpu"]
    assert sorted(cfgs) == sorted([ENS, PRE, CLS])
    pre, cls = cfgs[PRE], cfgs[CLS]
    assert pre.backend == "python" and pre.platform == ""
    assert _params(pre)["dali_file"] == "model.dali"
    assert pre.default_model_filename == ""  # the Python backend runs model.py
    assert [g.kind for g in pre.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert cls.backend == "python" and cls.platform == ""
    assert _params(cls)["onnx_file"] == "model.onnx"
    assert [g.kind for g in cls.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]


def test_render_sagemaker_gpu(configs) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    cfgs = configs["sagemaker-gpu"]
    assert sorted(cfgs) == sorted([ENS, PRE, CLS])
    pre, cls = cfgs[PRE], cfgs[CLS]
    assert pre.backend == "dali" and pre.platform == ""
    assert pre.default_model_filename == "model.dali"
    assert "dali_file" not in _params(pre)
    assert [g.kind for g in pre.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert cls.platform == "onnxruntime_onnx" and cls.backend == ""
    assert cls.default_model_filename == "model.onnx"
    assert "onnx_file" not in _params(cls)
    assert [g.kind for g in cls.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]


@pytest.mark.parametrize("target", ["local-cpu", "sagemaker-gpu"])
def test_render_shared_parts(configs, target: str) -> None:
    cfgs = configs[target]
    ens = cfgs[ENS]
    assert ens.platform == "ensemble"
    assert _io(ens.input) == [("INPUT", "TYPE_UINT8", [-1])]
    assert _io(ens.output) == [("OUTPUT", "TYPE_FP32", [1000])]
    assert {name: c.max_batch_size for name, c in cfgs.items()} == {ENS: 8, PRE: 8, CLS: 8}
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [PRE, CLS]
    assert [(dict(s.input_map), dict(s.output_map)) for s in steps] == [
        ({"INPUT": "INPUT"}, {"preprocessed": "preprocessed"}),
        ({"preprocessed": "preprocessed"}, {"probabilities": "OUTPUT"}),
    ]
    pre, cls = cfgs[PRE], cfgs[CLS]
    assert _io(pre.input) == [("INPUT", "TYPE_UINT8", [-1])]
    assert _io(pre.output) == [("preprocessed", "TYPE_FP32", [3, 227, 227])]
    assert _io(cls.output) == [("probabilities", "TYPE_FP32", [1000])]
    assert [o.label_filename for o in cls.output] == ["labels.txt"]
    assert [o.label_filename for o in pre.output] == [""]


# ---------------------------------------------------------------------------------- 2. build
@pytest.mark.triton
@pytest.mark.prefect
@linux_only
def test_built_artifact(built_image_classifier: dict, tmp_path: Path) -> None:
    m = built_image_classifier["manifest"]
    v = m.validation
    assert v.passed is True
    assert v.metric == "top1_is_cat" and v.value == 1.0
    extras = v.model_extra or {}  # the metric's own numbers
    assert extras["top5"][0]["index"] in CATS, extras["top5"]
    assert extras["max_abs_diff"] <= 1e-4, v
    pre_vs_ref = m.sample.context["preprocess_vs_reference"]
    assert pre_vs_ref["max_abs"] <= 1.5, pre_vs_ref
    # the sample is the chelsea JPEG as one [1, N] UINT8 batch
    assert m.sample.inputs["INPUT"].shape == [1, len(sample_image("skimage:chelsea"))]
    assert m.sample.expected["OUTPUT"].shape == [1, 1000]

    with tarfile.open(built_image_classifier["archive"]) as tar:
        members = {name.removeprefix("./"): name for name in tar.getnames()}
        for needed in (f"{PRE}/1/model.dali", f"{PRE}/1/model.py", f"{CLS}/1/model.onnx",
                       f"{CLS}/labels.txt", f"{ENS}/config.pbtxt"):
            assert needed in members, (needed, sorted(members))
        labels = tar.extractfile(members[f"{CLS}/labels.txt"]).read().decode().splitlines()
        assert len(labels) == 1000
        assert labels[281].lower().startswith("tabby"), labels[281:286]
        assert all("cat" in label.lower() for label in labels[282:286]), labels[281:286]
        assert extras["top5"][0]["label"] == labels[extras["top5"][0]["index"]]
        dali_file = tar.extractfile(members[f"{PRE}/1/model.dali"]).read()
    from tasks.producers.dali import external_source_names

    assert external_source_names(dali_file) == ["INPUT"]


# ---------------------------------------------------------------------------------- 3. endpoint
@dataclass
class Served:
    client: Any  # boto3 sagemaker-runtime client pointed at the local endpoint
    ep: Any  # the LocalEndpoint
    triton_pid: int


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, built_image_classifier: dict) -> Iterator[Served]:
    """A local endpoint with the built tarball in its model prefix (``image_classifier.tar.gz``)."""
    from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint

    if not sys.platform.startswith("linux"):
        pytest.skip("the pytriton tritonserver is Linux-only")
    root = tmp_path_factory.mktemp("image-mme")
    store = root / "store" / "models" / ENDPOINT
    store.mkdir(parents=True)
    shutil.copyfile(built_image_classifier["archive"], store / TARGET_MODEL)
    ep = LocalEndpoint(EndpointConfig(name=ENDPOINT, model_data_url=store.as_uri(),
                                      cache_dir=root / "cache", triton_log=root / "triton.log"))
    ep.start()
    try:
        yield Served(runtime_client_for(ep.url), ep, ep.triton.pid)
    finally:
        ep.stop()


@pytest.fixture
def endpoint(served: Served) -> Any:
    return served.client


def _classify(client, images: list[bytes] | np.ndarray, *, binary: bool = True) -> np.ndarray:
    x = images if isinstance(images, np.ndarray) else _pack(images)
    out = invoke(client, ENDPOINT, TARGET_MODEL, {"INPUT": x}, binary=binary)["OUTPUT"]
    assert out.dtype == np.float32
    return out


def _refused(client, x: np.ndarray, *, binary: bool = True) -> str:
    """Send a request that must fail as the caller's fault; return the error message.

    The endpoint wraps the model's error the way SageMaker does: 424 ModelError, with the
    status Triton answered (400: the preprocess model reports bad input as INVALID_ARG).
    """
    body, ct = encode_request({"INPUT": x}, binary=binary)
    with pytest.raises(ClientError) as info:
        client.invoke_endpoint(EndpointName=ENDPOINT, TargetModel=TARGET_MODEL, ContentType=ct,
                               Body=body)
    resp = info.value.response
    status = resp["ResponseMetadata"]["HTTPStatusCode"]
    assert 400 <= status < 500, resp
    assert resp["Error"]["Code"] == "ModelError" and status == 424, resp
    assert resp["OriginalStatusCode"] == 400, resp
    assert "client error (400)" in resp["Error"]["Message"], resp
    return resp["Error"]["Message"]


def _assert_still_serving(served: Served, chelsea: bytes, want: np.ndarray) -> None:
    """The same Triton process is alive and answers a good request as before."""
    assert served.ep.triton.running and served.ep.triton.pid == served.triton_pid
    got = _classify(served.client, [chelsea])
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.triton
@pytest.mark.prefect
def test_endpoint_binary_and_json_bodies_agree(endpoint, chelsea: bytes,
                                               built_image_classifier: dict) -> None:
    binary = _classify(endpoint, [chelsea], binary=True)
    plain = _classify(endpoint, [chelsea], binary=False)  # the seed's style: bytes as a list
    assert binary.shape == plain.shape == (1, 1000)
    assert float(np.abs(binary - plain).max()) < 1e-6
    assert int(binary[0].argmax()) in CATS
    assert abs(float(binary.sum()) - 1.0) < 1e-4
    # the same answer the build verified (ONNX Runtime run directly on DALI's output)
    expected = np.asarray(built_image_classifier["manifest"].sample.expected["OUTPUT"].data,
                          dtype=np.float32).reshape(1, 1000)
    assert float(np.abs(binary - expected).max()) <= 1e-4


@pytest.mark.triton
@pytest.mark.prefect
def test_endpoint_batch_of_padded_images(endpoint, chelsea: bytes) -> None:
    import skimage.data as skdata

    images = [_encode(skdata.astronaut(), "JPEG", quality=90), chelsea,
              _encode(skdata.coffee(), "PNG")]
    assert len({len(b) for b in images}) == 3  # different sizes: the shorter ones are padded
    batch = _classify(endpoint, images)
    assert batch.shape == (3, 1000)
    for k, img in enumerate(images):
        single = _classify(endpoint, [img])
        assert single.shape == (1, 1000)
        assert float(np.abs(batch[k] - single[0]).max()) < 1e-5, k
    assert int(batch[1].argmax()) in CATS


# ---------------------------------------------------------------------------------- 4. bad input
@pytest.mark.triton
@pytest.mark.prefect
def test_endpoint_bad_images_are_refused_without_crashing(endpoint, served: Served,
                                                          chelsea: bytes) -> None:
    from PIL import Image

    want = _classify(endpoint, [chelsea])

    random_bytes = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)
    msg = _refused(endpoint, random_bytes.reshape(1, -1))
    assert "INPUT[0] is not a decodable image" in msg and "unknown format" in msg, msg
    _assert_still_serving(served, chelsea, want)

    huge = _encode(Image.new("RGB", (8000, 8000), (200, 30, 60)), "JPEG")  # 64 Mpixel, ~1 MB
    msg = _refused(endpoint, _pack([huge]))
    assert "INPUT[0] is too large: 8000x8000" in msg and "max_pixels=40000000" in msg, msg
    _assert_still_serving(served, chelsea, want)

    # a truncated JPEG passes the header check and fails in DALI itself (the model rebuilds
    # its pipeline): same kind of answer
    msg = _refused(endpoint, _pack([chelsea[: len(chelsea) // 3]]))
    assert "INPUT[0] is not a decodable image" in msg, msg
    _assert_still_serving(served, chelsea, want)

    # a bad image in a batch fails the request and names its position
    msg = _refused(endpoint, _pack([chelsea, random_bytes.tobytes()]))
    assert "INPUT[1] is not a decodable image" in msg, msg
    _assert_still_serving(served, chelsea, want)


@pytest.mark.triton
@pytest.mark.prefect
def test_endpoint_unusual_but_valid_images(endpoint, served: Served, chelsea: bytes,
                                           built_image_classifier: dict) -> None:
    """Converted and answered, and answered right: each top-1 is the top-1 of the project's
    reference pipeline (PIL decode + DALI-equivalent resize + the tarball's ONNX model)."""
    import skimage.data as skdata
    from fixtures.image_reference import reference_probs

    rgb = skdata.coffee()
    cases = {
        "greyscale PNG": _encode(skdata.camera(), "PNG"),
        "RGBA PNG": _encode(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]), "PNG"),
        "1x1 PNG": _encode(np.array([[[10, 200, 30]]], dtype=np.uint8), "PNG"),
    }
    for what, img in cases.items():
        out = _classify(endpoint, [img])
        assert out.shape == (1, 1000), what
        assert np.isfinite(out).all() and (out >= 0).all(), what
        assert abs(float(out.sum()) - 1.0) < 1e-4, (what, float(out.sum()))
        ref = reference_probs(built_image_classifier["archive"], img)
        assert int(out[0].argmax()) == int(ref.argmax()), (what, int(out[0].argmax()), int(ref.argmax()))
    assert served.ep.triton.running and served.ep.triton.pid == served.triton_pid


@pytest.mark.triton
@pytest.mark.prefect
def test_endpoint_empty_request(endpoint, served: Served, chelsea: bytes) -> None:
    want = _classify(endpoint, [chelsea])
    empty = np.zeros((1, 0), dtype=np.uint8)
    for binary in (True, False):
        msg = _refused(endpoint, empty, binary=binary)
        assert "empty" in msg.lower(), (binary, msg)
        _assert_still_serving(served, chelsea, want)


# ---------------------------------------------------------------------------------- 5. build refusal
@pytest.mark.triton
@pytest.mark.prefect
def test_build_refuses_dali_pipeline_with_other_input_name(tmp_path: Path, mme_home: Path,
                                                           prefect_harness) -> None:
    from flows.build import build
    from tasks.producers.dali import DaliPipelineError

    folder = tmp_path / ENS
    shutil.copytree(CATALOG_DIR / ENS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    doc = yaml.safe_load((folder / "ensemble.yaml").read_text())
    (pre,) = [s for s in doc["steps"] if s["name"] == "preprocess"]
    pre["inputs"][0]["name"] = "IMAGE"
    pre["input_map"] = {"IMAGE": "INPUT"}
    assert doc["artifacts"]["dali_cpu"]["params"]["input_name"] == "INPUT"  # unchanged
    (folder / "ensemble.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    out = tmp_path / "out"
    with pytest.raises(DaliPipelineError) as info:
        build(ensembles=[str(folder)], output_dir=str(out))
    msg = str(info.value)
    assert "'INPUT'" in msg and "'IMAGE'" in msg, msg
    assert "preprocess" in msg, msg
    assert not out.exists() or not any(out.iterdir()), "nothing may be written for a refused build"


# ---------------------------------------------------------------------------------- 6. payload sizes
def test_payload_sizes(chelsea: bytes, record_property) -> None:
    x = np.frombuffer(chelsea, dtype=np.uint8).reshape(1, -1)
    binary_body, binary_ct = encode_request({"INPUT": x}, binary=True)
    json_body, json_ct = encode_request({"INPUT": x}, binary=False)
    assert binary_ct.startswith("application/vnd.sagemaker-triton.binary+json;json-header-size=")
    assert json_ct == "application/json"
    # the binary body is the image plus a small JSON header
    assert len(chelsea) < len(binary_body) < len(chelsea) + 500
    ratio = len(json_body) / len(binary_body)
    print(f"\nchelsea JPEG {len(chelsea)} bytes: binary+json body {len(binary_body)} bytes, "
          f"JSON body {len(json_body)} bytes (x{ratio:.2f})")
    record_property("binary_body_bytes", len(binary_body))
    record_property("json_body_bytes", len(json_body))
    assert ratio > 2, ratio
