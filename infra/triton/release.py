"""A Triton (NGC) monthly release, ``"YY.MM"``, and what it fixes: TensorRT and Python versions.

Why one value object: the release decides which TensorRT a plan must be compiled with (a plan
only loads in the TensorRT that built it), which Python a packed env must target (the Python
backend stub embeds the image's CPython), which dtypes a TensorRT step may use (no INT64 I/O
before TensorRT 10) and which SageMaker image serves it. Parsing, ordering and those tables
live here once, in the bottom layer, so ``infra/``, ``ensembles/`` and ``tasks/`` all read the
same answer. :data:`DEFAULT_RELEASE` is the one default everywhere (CLI, SageMaker backend,
``compile_tensorrt``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from infra.errors import InvalidInput

_RELEASE_RE = re.compile(r"^(\d{2})\.(\d{2})$")
# an image tag that names a release: ``24.09-py3`` or ``24.09``
_TAG_RE = re.compile(r"^(\d{2}\.\d{2})(?:-.*)?$")

# TensorRT in the NGC framework containers (PyTorch, Triton) of each monthly release, from the
# NGC "Frameworks Support Matrix" / container release notes. Only major.minor.patch is kept: that
# is what the version checks compare. The plan-loading rule only needs "same release"; the table
# serves (a) the trtexec flags (TensorRT 10, from 24.05, removed ``--workspace`` in favour of
# ``--memPoolSize=workspace:<N>M``; ``--skipInference`` exists from TensorRT 8.6, i.e. 23.04) and
# (b) checking a host TensorRT against the serving release. Releases missing here still compile
# in Docker (flags follow :data:`FIRST_TRT10_RELEASE`); the host route refuses them.
TENSORRT_BY_RELEASE: dict[str, str] = {
    "23.01": "8.5.2",
    "23.02": "8.5.3", "23.03": "8.5.3",
    "23.04": "8.6.1", "23.05": "8.6.1", "23.06": "8.6.1", "23.07": "8.6.1", "23.08": "8.6.1",
    "23.09": "8.6.1", "23.10": "8.6.1", "23.11": "8.6.1", "23.12": "8.6.1", "24.01": "8.6.1",
    "24.02": "8.6.3", "24.03": "8.6.3", "24.04": "8.6.3",
    "24.05": "10.0.1",
    "24.06": "10.1.0",
    "24.07": "10.2.0",
    "24.08": "10.3.0",
    "24.09": "10.4.0",
    "24.10": "10.5.0",
    "24.11": "10.6.0",
    "24.12": "10.7.0",
    "25.01": "10.8.0", "25.02": "10.8.0",
    "25.03": "10.9.0", "25.04": "10.9.0",
    "25.05": "10.10.0",
    "25.06": "10.11.0",
}

#: CUDA (major.minor) of each release's NGC containers, Triton's among them (NGC "Frameworks
#: Support Matrix"). Why: a container whose CUDA is newer than the host driver's runs only through
#: CUDA forward compatibility (the ``cuda-compat`` libraries), which the SageMaker inference AMIs
#: named ``...-2-1``, ``...-3-1``, ``...-4-1`` no longer mount (:mod:`infra.aws.inference_ami`).
#: Releases missing here are refused on such an AMI rather than guessed.
CUDA_BY_RELEASE: dict[str, str] = {
    "21.08": "11.4", "22.05": "11.7", "22.07": "11.7", "22.08": "11.7", "22.09": "11.8",
    "22.10": "11.8", "22.12": "11.8",
    "23.01": "12.0", "23.02": "12.0", "23.03": "12.1", "23.04": "12.1", "23.05": "12.1",
    "23.06": "12.1", "23.07": "12.1", "23.08": "12.2", "23.09": "12.2", "23.10": "12.2",
    "23.11": "12.3", "23.12": "12.3", "24.01": "12.3", "24.02": "12.3",
    "24.03": "12.4", "24.04": "12.4", "24.05": "12.4", "24.06": "12.5", "24.07": "12.5",
    "24.08": "12.6", "24.09": "12.6", "24.10": "12.6", "24.11": "12.6", "24.12": "12.6",
    "25.01": "12.8", "25.02": "12.8", "25.03": "12.8", "25.04": "12.9", "25.05": "12.9",
    "25.06": "12.9",
}

#: (first NGC release "YY.MM", Python major.minor of its python backend stub), ascending.
#: Sources (CHECK again for every new release -- the env's Python must equal the stub's):
#:   * 20.12 - 21.xx release notes: "Ubuntu 20.04 including Python 3.8" (20.10 was 18.04/3.6);
#:     the seed's conda env used python=3.8 for 23.03.
#:   * 23.04: NGC images moved to Ubuntu 22.04 / Python 3.10 (aws/sagemaker-inference-toolkit
#:     issue #134 says "py310 since 23.02"; 23.03 is taken as 3.8 from the seed -- unverified).
#:   * 24.11 still Python 3.10.12, 24.12 "Ubuntu 24.04 including Python 3.12" (release notes and
#:     the compatibility matrix, which lists 3.12.3 up to 25.12).
TRITON_PYTHON: tuple[tuple[str, str], ...] = (
    ("20.12", "3.8"),
    ("23.04", "3.10"),
    ("24.12", "3.12"),
)
#: The newest release whose Python was checked; newer ones raise until the table is updated.
TRITON_PYTHON_CHECKED_THROUGH = "25.12"


@dataclass(frozen=True, order=True)
class TritonRelease:
    """An NGC monthly release: ordered in time, printed ``"YY.MM"``."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not (0 <= self.year <= 99 and 1 <= self.month <= 12):
            raise InvalidInput(f"malformed Triton release {self.year:02d}.{self.month:02d}: "
                               f"expected 'YY.MM', e.g. '{DEFAULT_RELEASE_TEXT}'")

    @classmethod
    def parse(cls, text: object) -> TritonRelease:
        """``"24.09"`` -> ``TritonRelease(24, 9)``; anything else (``"24.9"``, ``"24.13"``,
        ``"24.09-py3"``, ``"latest"``) raises ValueError naming the value."""
        if isinstance(text, TritonRelease):
            return text
        m = _RELEASE_RE.match(text) if isinstance(text, str) else None
        if m is None or not 1 <= int(m.group(2)) <= 12:
            raise InvalidInput(f"malformed Triton release {text!r}: expected 'YY.MM', "
                               f"e.g. '{DEFAULT_RELEASE_TEXT}'")
        return cls(int(m.group(1)), int(m.group(2)))

    @classmethod
    def of_image(cls, image_or_release: str) -> TritonRelease:
        """The release of ``"24.09"``, of a tag ``"24.09-py3"`` or of an image reference
        ``"nvcr.io/nvidia/pytorch:24.09-py3"`` (the tag of its last path segment)."""
        s = str(image_or_release).strip()
        last = s.rsplit("/", 1)[-1]
        m = _TAG_RE.match(last.rsplit(":", 1)[-1])
        if not m:
            raise InvalidInput(f"{s!r} is neither a release 'YY.MM' nor an image tagged "
                               f"'<YY.MM>-...'")
        return cls.parse(m.group(1))

    def __str__(self) -> str:
        return f"{self.year:02d}.{self.month:02d}"

    @property
    def tensorrt_version(self) -> str | None:
        """TensorRT major.minor.patch of the release's NGC containers; None when not in
        :data:`TENSORRT_BY_RELEASE`."""
        return TENSORRT_BY_RELEASE.get(str(self))

    @property
    def tensorrt_major(self) -> int:
        """The TensorRT major version: from the table, else by :data:`FIRST_TRT10_RELEASE`."""
        known = self.tensorrt_version
        if known:
            return int(known.split(".")[0])
        return 10 if self >= FIRST_TRT10_RELEASE else 8

    @property
    def cuda_version(self) -> str | None:
        """CUDA ``major.minor`` of the release's containers; None when not in
        :data:`CUDA_BY_RELEASE`."""
        return CUDA_BY_RELEASE.get(str(self))

    @property
    def min_compute_capability(self) -> str | None:
        """The oldest GPU architecture (compute capability) the release's TensorRT runs on:
        TensorRT 10.5 (Triton 24.10) removed Volta (7.0) ("NVIDIA Volta support ... has been removed
        starting with TensorRT 10.5", its release notes), so from then on 7.5 (Turing); None
        before (every GPU this project serves on is supported)."""
        return "7.5" if self >= FIRST_RELEASE_WITHOUT_VOLTA else None

    @property
    def python_version(self) -> str:
        """Python ``major.minor`` of the release's Triton image (its Python backend stub).

        Raises ValueError for a release before the table or after
        :data:`TRITON_PYTHON_CHECKED_THROUGH` (an unchecked guess would build an env the stub
        cannot import)."""
        first = TritonRelease.parse(TRITON_PYTHON[0][0])
        if self < first:
            raise InvalidInput(f"Triton {self} predates the table (first entry {first})")
        if self > TritonRelease.parse(TRITON_PYTHON_CHECKED_THROUGH):
            raise InvalidInput(
                f"Python of Triton {self} is not known here (checked through "
                f"{TRITON_PYTHON_CHECKED_THROUGH}); look it up in the release notes and extend "
                f"infra.triton.release.TRITON_PYTHON")
        version = TRITON_PYTHON[0][1]
        for start, py in TRITON_PYTHON:
            if self >= TritonRelease.parse(start):
                version = py
        return version


DEFAULT_RELEASE_TEXT = "24.09"
#: The one default Triton release (CLI options, the SageMaker backend, ``compile_tensorrt``).
DEFAULT_RELEASE = TritonRelease.parse(DEFAULT_RELEASE_TEXT)
#: TensorRT 10 (no ``--workspace``, INT64 I/O) from this release on.
FIRST_TRT10_RELEASE = TritonRelease(24, 5)
#: TensorRT 10.5, which no longer runs on Volta (compute capability 7.0), from this release on.
FIRST_RELEASE_WITHOUT_VOLTA = TritonRelease(24, 10)

# ------------------------------------------------------------------------------ ONNX runtimes

#: ONNX Runtime inside each release's ``onnxruntime`` backend: the ``ORT`` entry of
#: ``TRITON_VERSION_MAP`` (to 24.11) / ``DEFAULT_TRITON_VERSION_MAP["ort_version"]`` (from 24.12)
#: in triton-inference-server/server ``build.py`` on each ``rYY.MM`` release branch, which is
#: what the NGC image's backend is built from. Why: the backend serves a model only if this ORT
#: implements the model's opset (:data:`ONNX_OPSET_BY_ONNXRUNTIME`).
ONNXRUNTIME_BY_RELEASE: dict[str, str] = {
    "23.01": "1.13.1", "23.02": "1.13.1",
    "23.03": "1.14.1", "23.04": "1.14.1",
    "23.05": "1.15.0", "23.06": "1.15.0", "23.07": "1.15.1", "23.08": "1.15.1",
    "23.09": "1.16.0", "23.10": "1.16.0",
    "23.11": "1.16.3", "23.12": "1.16.3", "24.01": "1.16.3", "24.02": "1.16.3",
    "24.03": "1.17.2", "24.04": "1.17.3",
    "24.05": "1.18.0", "24.06": "1.18.0", "24.07": "1.18.1",
    "24.08": "1.19.0", "24.09": "1.19.2", "24.10": "1.19.2", "24.11": "1.19.2",
    "24.12": "1.20.1", "25.01": "1.20.1", "25.02": "1.20.1",
    "25.03": "1.21.0", "25.04": "1.21.0",
    "25.05": "1.22.0", "25.06": "1.22.0",
}

#: The highest default-domain (``ai.onnx``) opset each ONNX Runtime major.minor implements:
#: ONNX Runtime's published compatibility table (docs/reference/compatibility.md: 1.13 -> 17,
#: 1.14 -> 18, 1.15 and 1.16 -> 19, 1.17 -> 20, 1.18, 1.19 and 1.20 -> 21), and 1.21 -> 22 (ONNX
#: 1.17, integrated "for ORT 1.21.0", microsoft/onnxruntime PR 21897). 1.22 is left out: whether
#: it took ONNX 1.18's opset 23 (PR 24449, merged during its cycle) was not confirmed, so a
#: release bundling it is refused (:func:`onnxruntime_max_opset`) rather than guessed.
ONNX_OPSET_BY_ONNXRUNTIME: dict[str, int] = {
    "1.13": 17, "1.14": 18, "1.15": 19, "1.16": 19, "1.17": 20,
    "1.18": 21, "1.19": 21, "1.20": 21, "1.21": 22,
}

#: The highest opset TensorRT's ONNX parser takes, by TensorRT major (onnx/onnx-tensorrt
#: docs/operators.md on its release branches: 8.5 and 8.6 "up to Opset 17"; 10.0 and 10.1 "opset
#: 9 to opset 20"). For 10.x the 10.0 bound is kept: a later parser only adds opsets, so it is a
#: floor that never lets a model through that the release's parser refuses.
TENSORRT_PARSER_OPSET: dict[int, int] = {8: 17, 10: 20}

#: Ops a fused head (and the catalog templates' trunks) use that TensorRT's ONNX parser lists as
#: supported, by TensorRT major (the same operators.md tables, 8.5-GA to 10.1-GA: each op "Y").
#: Deliberately short: an op outside it is refused as unchecked, not assumed to parse.
TENSORRT_PARSER_OPS: dict[int, frozenset[str]] = {
    major: frozenset({
        "Add", "And", "Cast", "Concat", "Conv", "Div", "Flatten", "Gather", "Gemm",
        "GlobalAveragePool", "GreaterOrEqual", "Identity", "LeakyRelu", "Less", "MatMul", "Max",
        "MaxPool", "Mul", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Sigmoid", "Slice",
        "Softmax", "Squeeze", "Tanh", "Transpose", "Unsqueeze", "Where"})
    for major in (8, 10)
}


def onnxruntime_version(release: str | TritonRelease) -> str:
    """The ONNX Runtime of ``release``'s onnxruntime backend; raises naming the release when it
    is not in :data:`ONNXRUNTIME_BY_RELEASE`."""
    rel = TritonRelease.parse(release)
    known = ONNXRUNTIME_BY_RELEASE.get(str(rel))
    if known is None:
        raise InvalidInput(f"the ONNX Runtime of Triton {rel} is not known here (known: "
                           f"{min(ONNXRUNTIME_BY_RELEASE)} to {max(ONNXRUNTIME_BY_RELEASE)}); look "
                           f"it up in the server's build.py on branch r{rel} and extend "
                           f"infra.triton.release.ONNXRUNTIME_BY_RELEASE")
    return known


def onnxruntime_max_opset(release: str | TritonRelease) -> int:
    """The highest default-domain opset ``release``'s onnxruntime backend runs; raises naming
    the release and its ONNX Runtime when either table lacks it."""
    rel = TritonRelease.parse(release)
    ort = onnxruntime_version(rel)
    opset = ONNX_OPSET_BY_ONNXRUNTIME.get(".".join(ort.split(".")[:2]))
    if opset is None:
        raise InvalidInput(f"the highest ONNX opset of ONNX Runtime {ort} (Triton {rel}) is not "
                           f"known here; look it up in ONNX Runtime's compatibility table and "
                           f"extend infra.triton.release.ONNX_OPSET_BY_ONNXRUNTIME")
    return opset


def tensorrt_parser_max_opset(release: str | TritonRelease) -> int:
    """The highest opset ``release``'s TensorRT ONNX parser takes; raises naming the release
    when its TensorRT major is not in :data:`TENSORRT_PARSER_OPSET`."""
    rel = TritonRelease.parse(release)
    opset = TENSORRT_PARSER_OPSET.get(rel.tensorrt_major)
    if opset is None:
        raise InvalidInput(f"the ONNX opsets TensorRT {rel.tensorrt_major} (Triton {rel}) parses "
                           f"are not known here; extend infra.triton.release.TENSORRT_PARSER_OPSET")
    return opset
