"""What ``mme invoke`` makes of an endpoint's answer: the top-k classes of a classifier's
scores, named by the model's own labels (:class:`TopClass`, :func:`top_k`).

Why here (the bottom of ``tasks/``): the answer is plain arrays and a list of labels, wherever
the labels came from (the build's manifest, a fused shard's tenants sidecar, ImageNet's names),
so the CLI and any other caller rank them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

DEFAULT_TOP_K = 5


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
