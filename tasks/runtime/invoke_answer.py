"""What ``mme invoke`` makes of an endpoint's answer: the top-k classes of a classifier's
scores, named by the model's own labels (:class:`TopClass`, :func:`top_k`), or the top-k that
Triton's classification extension ranked and named on the server (:func:`triton_classes`).

Why here (the bottom of ``tasks/``): the answer is plain arrays and a list of labels, wherever
the labels came from (the server's label file, the build's manifest, a fused shard's tenants
sidecar, ImageNet's names), so the CLI and any other caller rank and name them the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias

import numpy as np
from pydantic import BaseModel, ConfigDict

DEFAULT_TOP_K = 5

CLASS_OUTPUT = "OUTPUT"
"""The class-score output of the catalog's image classifiers (each names it ``OUTPUT``): the
output whose top-k is asked of Triton. A model without it answers the plain request."""

Invoker: TypeAlias = Callable[..., dict[str, np.ndarray]]
"""One invoke of the chosen model; ``classify=`` (output name -> k) asks outputs for their
top-k classes (:func:`infra.aws.runtime_client.encode_request`)."""

LabelsFrom = Literal["triton", "build", "imagenet"]
"""Where an answer's labels came from: the served model's label file (Triton's classification
extension), this machine's build (a fleet variant's manifest, a fused shard's sidecar), or the
ImageNet class names (a 1000/1001-class output with no labels known). None: no labels."""


class TopClass(BaseModel):
    """One of a row's top classes: its index in the output, its label (the index as text when
    no label is known) and its score, as the model gave it."""

    model_config = ConfigDict(frozen=True)

    index: int
    label: str
    score: float


def top_k(scores: np.ndarray, labels: Sequence[str] | None, k: int = DEFAULT_TOP_K) -> list[list[TopClass]]:
    """The ``k`` highest scores of each row of ``scores`` (rows x classes), best first, named by
    ``labels`` (index ``i`` is ``labels[i]``; a shorter list leaves the rest unnamed)."""
    if k < 1:
        raise ValueError(f"top-k {k}: must be >= 1")
    rows = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    names = list(labels or [])
    out = []
    for row in rows:
        best = np.argsort(-row, kind="stable")[:k]
        out.append([TopClass(index=int(i), label=names[i] if i < len(names) else str(int(i)),
                             score=round(float(row[i]), 6)) for i in best])
    return out


def is_class_scores(arr: np.ndarray) -> bool:
    """True for an answer that reads as one row of class scores per input: 2-D floats (an
    image classifier's; the caller knows it asked one)."""
    return arr.ndim == 2 and arr.shape[1] > 0 and bool(np.issubdtype(arr.dtype, np.floating))


class RankedClass(BaseModel):
    """One class as Triton's classification extension answers it: ``"score:index:label"``
    (``label`` None when the output has no ``label_filename``, or the file has no line for
    the index)."""

    model_config = ConfigDict(frozen=True)

    index: int
    score: float
    label: str | None = None


def parse_classification(value: bytes | str, output: str) -> RankedClass:
    """One ``"score:index[:label]"`` string of a classification answer. The label is all that
    follows the second colon (labels may hold colons). Raises ValueError naming the output."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    parts = text.split(":", 2)
    try:
        score, index = float(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise ValueError(f"output {output!r}: classification answer {text[:80]!r} is not "
                         f"'score:index[:label]'") from None
    return RankedClass(index=index, score=round(score, 6), label=parts[2] if len(parts) > 2 else None)


def triton_classes(answer: np.ndarray, output: str) -> list[list[RankedClass]]:
    """Each row's classes from a classification answer (BYTES, rows x k, best first as Triton
    ranked them; a 1-D answer is one row)."""
    rows = np.asarray(answer, dtype=object)
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    if rows.ndim != 2:
        raise ValueError(f"output {output!r}: a classification answer of shape {list(rows.shape)}, "
                         f"expected rows x k")
    return [[parse_classification(v, output) for v in row] for row in rows]


def named(rows: list[list[RankedClass]]) -> list[list[TopClass]]:
    """Triton's ranked classes as :class:`TopClass` rows (an unlabelled one named by its index,
    as :func:`top_k` names a class past its labels)."""
    return [[TopClass(index=c.index, label=c.label if c.label is not None else str(c.index),
                      score=c.score) for c in row] for row in rows]


def has_labels(rows: list[list[RankedClass]]) -> bool:
    """True when the server named any class (its output has a label file)."""
    return any(c.label is not None for row in rows for c in row)


def ask_triton(call: Invoker, k: int) -> tuple[dict[str, np.ndarray], dict[str, list[list[TopClass]]]]:
    """Invoke asking Triton for the top ``k`` classes of :data:`CLASS_OUTPUT` (its
    classification extension; the served ``label_filename`` names them, so a caller with no
    build folder still gets labels); return the other outputs and Triton's classes by output.
    When the server cannot name them (no label file on the output: ``"score:index"`` only),
    has no such output, or answers the scores anyway, invoke again plainly (or keep its
    scores) and return no classes: the caller ranks the scores itself (:func:`top_k`)."""
    from botocore.exceptions import ClientError

    try:
        out = call(classify={CLASS_OUTPUT: k})
    except ClientError as e:
        if f"output '{CLASS_OUTPUT}'" not in str(e):  # only "the model has no such output"
            raise
        return call(), {}
    answer = out.get(CLASS_OUTPUT)
    if answer is None or answer.dtype != object:  # the parameter was not applied: the scores
        return out, {}
    rows = triton_classes(answer, CLASS_OUTPUT)
    if not has_labels(rows):  # no label_filename on the served output: rank the scores here
        return call(), {}
    return {n: v for n, v in out.items() if n != CLASS_OUTPUT}, {CLASS_OUTPUT: named(rows)}


_LABELS_LINES: dict[str | None, str] = {
    "triton": "labels: the served model's label file (top-k by Triton's classification extension)",
    "build": "labels: this machine's build (top-k computed here from the scores)",
    "imagenet": "labels: ImageNet's class names (the served output has no label file; top-k "
                "computed here from the scores)",
    None: "labels: none known (class indices; top-k computed here from the scores)",
}


def labels_line(labels_from: LabelsFrom | None, *, fused: bool = False) -> str:
    """The line ``mme invoke`` prints to say where an answer's labels came from (a fused
    tenant's: why not from the server)."""
    why = "; a fused shard's output serves many tenants, so it has no label file" if fused else ""
    return _LABELS_LINES[labels_from] + why
