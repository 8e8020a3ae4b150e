"""The one model of an endpoint's loaded-model cache: LRU order, exact LRU hits, the static
optimum and Che's approximation.

Why one module: the local endpoint (and SageMaker) evict the least recently used idle model, so
a request sequence sent one request at a time hits exactly as an LRU cache of ``capacity``
entries would. The capacity planner's simulator keeps each instance's loaded models and files
in :class:`Recency` order, its screen uses :func:`che_hit_ratio`, and the fleet-traffic
benchmark compares the endpoint's measured warm-hit ratio with :func:`lru_hits` of the sequence
it actually sent: all reason with this one model, so a change to the LRU rule is made once.
(The endpoint's real eviction, ``infra.endpoint.eviction``, is the thing modelled, not a model.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Recency(OrderedDict[K, V]):
    """Keys in least-recently-used-first order (an OrderedDict, so every lookup stays O(1) and
    C-speed in the simulator's loop): :meth:`touch` on a use, :meth:`oldest` for a victim."""

    def touch(self, key: K) -> None:
        """``key`` was just used: it becomes the most recently used."""
        self.move_to_end(key)

    def oldest(self, where: Callable[[K], bool] | None = None) -> K | None:
        """The least recently used key (that ``where`` accepts), or None when there is none."""
        if where is None:
            return next(iter(self), None)
        return next((k for k in self if where(k)), None)


def lru_warm(sequence: Iterable[Hashable], capacity: int) -> Iterator[bool]:
    """Per request of ``sequence``: does it find its model loaded in an LRU cache of
    ``capacity`` models, starting empty (a miss loads the model and evicts the least recently
    used one). O(1) per request. ``capacity`` 0 means nothing is ever kept (every request misses).
    """
    if capacity < 0:
        raise ValueError(f"capacity {capacity}: must be >= 0")
    cache: Recency[Hashable, None] = Recency()
    for key in sequence:
        if key in cache:
            cache.touch(key)
            yield True
            continue
        yield False
        if capacity == 0:
            continue
        if len(cache) >= capacity:
            cache.popitem(last=False)
        cache[key] = None


def lru_hits(sequence: Iterable[Hashable], capacity: int) -> int:
    """How many requests of ``sequence`` hit an LRU cache of ``capacity`` models
    (:func:`lru_warm`, counted)."""
    if capacity < 0:  # before the first request: an empty sequence is refused too
        raise ValueError(f"capacity {capacity}: must be >= 0")
    return sum(lru_warm(sequence, capacity))


def lru_hit_ratio(sequence: Sequence[Hashable], capacity: int) -> float:
    """:func:`lru_hits` as a fraction of the requests (0.0 for an empty sequence)."""
    return lru_hits(sequence, capacity) / len(sequence) if sequence else 0.0


def top_k_hit_ratio(probabilities: Iterable[float], k: int) -> float:
    """The static optimum: the hit ratio of a cache that always holds the ``k`` most requested
    models (the sum of the ``k`` largest request probabilities), ignoring the first loads."""
    if k < 0:
        raise ValueError(f"k {k}: must be >= 0")
    ps = sorted((float(p) for p in probabilities), reverse=True)
    total = sum(ps)
    return sum(ps[:k]) / total if total > 0 else 0.0


def che_hit_ratio(rates: np.ndarray, sizes: np.ndarray, capacity: float) -> float:
    """Che's approximation of the hit ratio of an LRU cache of ``capacity`` (same unit as
    ``sizes``) under independent Poisson requests at ``rates``: the characteristic time T solves
    sum_i size_i (1 - exp(-rate_i T)) = capacity; hit ratio = sum_i rate_i (1 - exp(-rate_i T)) /
    sum_i rate_i. Used to screen plans before simulating them."""
    total = float(rates.sum())
    if total <= 0:
        return 1.0
    if float(sizes[rates > 0].sum()) <= capacity:
        return 1.0
    lo, hi = 0.0, 1.0
    while float((sizes * -np.expm1(-rates * hi)).sum()) < capacity:
        hi *= 2.0
        if hi > 1e12:
            return 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float((sizes * -np.expm1(-rates * mid)).sum()) < capacity:
            lo = mid
        else:
            hi = mid
    return float((rates * -np.expm1(-rates * lo)).sum() / total)
