"""Every image format and pixel layout the README lists, through the real image ensemble.

The built ``image_classifier`` tarball (session fixture) is served by a local endpoint; each
image's top-1 class must equal the top-1 the project's own reference gives for the same bytes:
``tasks.producers.image_reference.reference_preprocess`` (PIL decode with EXIF orientation, 16-bit
scaling, the DALI-equivalent resize) fed to the tarball's own ``model.onnx`` in ONNX Runtime.
A decoder that drops the EXIF rotation, clips 16-bit values or mixes up CMYK gives another
top-1 (checked below for the rotation: the rotated file's class is not the raw pixels' class).
"""

from __future__ import annotations

import io
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fixtures.image_reference import reference_probs, reference_top1

from infra.aws.runtime_client import invoke, pack_images, runtime_client_for

pytestmark = [
    pytest.mark.triton,
    pytest.mark.prefect,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pytriton tritonserver is Linux-only"),
]

ENDPOINT = "formats-ep"
TARGET_MODEL = "image_classifier.tar.gz"


# ---------------------------------------------------------------------------------- images
def _save(im: Any, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _exif_rotated(rgb: np.ndarray) -> bytes:
    """A JPEG whose stored pixels are the image turned 90 degrees clockwise, tagged EXIF
    Orientation=8 (display after turning 90 degrees counter-clockwise): upright when the
    decoder applies the tag, sideways when it ignores it."""
    from PIL import Image

    stored = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, k=-1)))
    exif = Image.Exif()
    exif[0x0112] = 8  # Orientation
    return _save(stored, "JPEG", quality=95, exif=exif.tobytes())


def format_cases() -> dict[str, bytes]:
    """One encoded image per format / layout the README names (cat and coffee photos)."""
    import skimage.data as skdata
    from PIL import Image

    cat = Image.fromarray(skdata.chelsea())
    coffee = Image.fromarray(skdata.coffee())
    grey16 = (skdata.chelsea().mean(axis=2) * 257).astype(np.uint16)  # full 16-bit range
    return {
        "WebP (lossless)": _save(cat, "WEBP", lossless=True),
        "WebP (lossy)": _save(coffee, "WEBP", quality=90),
        "TIFF": _save(cat, "TIFF"),
        "TIFF (LZW)": _save(coffee, "TIFF", compression="tiff_lzw"),
        "BMP": _save(cat, "BMP"),
        "JPEG 2000": _save(coffee, "JPEG2000"),
        "PNM (PPM)": _save(cat, "PPM"),
        "PNM (PGM, greyscale)": _save(coffee.convert("L"), "PPM"),
        "16-bit greyscale PNG": _save(Image.fromarray(grey16), "PNG"),
        "palette PNG": _save(coffee.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG"),
        "CMYK JPEG": _save(cat.convert("CMYK"), "JPEG", quality=95),
        "EXIF-rotated JPEG": _exif_rotated(skdata.chelsea()),
    }


# ---------------------------------------------------------------------------------- endpoint
@pytest.fixture(scope="module")
def formats_client(tmp_path_factory: pytest.TempPathFactory,
                   built_image_classifier: dict) -> Iterator[Any]:
    from infra.endpoint.local_mme import EndpointConfig, LocalEndpoint

    root = tmp_path_factory.mktemp("formats-mme")
    store = root / "store"
    store.mkdir()
    shutil.copyfile(built_image_classifier["archive"], store / TARGET_MODEL)
    ep = LocalEndpoint(EndpointConfig(name=ENDPOINT, model_data_url=store.as_uri(),
                                      cache_dir=root / "cache", triton_log=root / "triton.log"))
    ep.start()
    try:
        yield runtime_client_for(ep.url)
    finally:
        ep.stop()


def classify(client: Any, images: list[bytes]) -> np.ndarray:
    return invoke(client, ENDPOINT, TARGET_MODEL, {"INPUT": pack_images(images)})["OUTPUT"]


def test_every_listed_format_matches_the_reference_top1(formats_client: Any,
                                                        built_image_classifier: dict) -> None:
    from PIL import Image

    archive = built_image_classifier["archive"]
    cases = format_cases()
    wrong = {}
    for what, data in cases.items():
        got = classify(formats_client, [data])
        assert got.shape == (1, 1000), what
        want = reference_top1(archive, data)
        if int(got[0].argmax()) != want:
            wrong[what] = (int(got[0].argmax()), want)
    assert wrong == {}, f"top-1 differs from the reference (endpoint, reference): {wrong}"

    # the formats are what they claim to be (PIL reads the header)
    fmts = {what: Image.open(io.BytesIO(data)).format for what, data in cases.items()}
    assert fmts["JPEG 2000"] == "JPEG2000" and fmts["PNM (PPM)"] == "PPM", fmts
    assert Image.open(io.BytesIO(cases["16-bit greyscale PNG"])).mode.startswith("I;16")
    assert Image.open(io.BytesIO(cases["CMYK JPEG"])).mode == "CMYK"

    # mixed formats in padded batches (kept under the 6 MB request cap): same classes as
    # one by one
    order = sorted(cases, key=lambda w: len(cases[w]))
    batches: list[list[str]] = [[]]
    for what in order:
        if (len(batches[-1]) + 1) * len(cases[what]) > 5_000_000 or len(batches[-1]) == 8:
            batches.append([])
        batches[-1].append(what)
    assert any(len(b) > 1 for b in batches), batches
    for names in batches:
        batch = classify(formats_client, [cases[w] for w in names])
        assert batch.shape == (len(names), 1000)
        for k, what in enumerate(names):
            assert int(batch[k].argmax()) == reference_top1(archive, cases[what]), what


def test_exif_orientation_is_applied(formats_client: Any, built_image_classifier: dict) -> None:
    """The rotated file answers like the reference, which turns it upright, and unlike the
    same stored pixels without the tag (what a decoder ignoring EXIF would see)."""
    import skimage.data as skdata
    from PIL import Image

    archive = built_image_classifier["archive"]
    rotated = _exif_rotated(skdata.chelsea())
    raw = _save(Image.fromarray(np.ascontiguousarray(np.rot90(skdata.chelsea(), k=-1))), "JPEG",
                quality=95)  # the same stored pixels, no orientation tag
    got_rotated, got_raw = classify(formats_client, [rotated, raw])
    upright_ref, sideways_ref = reference_probs(archive, rotated), reference_probs(archive, raw)
    near = float(np.abs(got_rotated - upright_ref).max())
    far = float(np.abs(got_rotated - sideways_ref).max())
    print(f"\nEXIF-rotated: max abs vs upright reference {near:.4f}, vs sideways {far:.4f}")
    assert near < far, (near, far)
    assert int(got_rotated.argmax()) == int(upright_ref.argmax())
    assert float(np.abs(got_raw - sideways_ref).max()) < far  # the raw file is the sideways one
