"""The model of the local endpoint's loaded-model cache: exact LRU and the static optimum.

Why here, as pure functions: the endpoint evicts the least recently used idle model, so a
request sequence sent one request at a time hits exactly as an LRU cache of ``capacity``
entries would. The fleet-traffic benchmark compares the endpoint's measured warm-hit ratio with
:func:`lru_hits` of the sequence it actually sent, and the capacity planner sizes endpoints with
the same function, so both reason with one model of the endpoint.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence


def lru_hits(sequence: Iterable[Hashable], capacity: int) -> int:
    """How many requests of ``sequence`` find their model loaded in an LRU cache of ``capacity``
    models, starting empty (a miss loads the model and evicts the least recently used one).

    O(1) per request. ``capacity`` 0 means nothing is ever kept (every request misses).
    """
    if capacity < 0:
        raise ValueError(f"capacity {capacity}: must be >= 0")
    cache: OrderedDict[Hashable, None] = OrderedDict()
    hits = 0
    for key in sequence:
        if key in cache:
            hits += 1
            cache.move_to_end(key)
            continue
        if capacity == 0:
            continue
        if len(cache) >= capacity:
            cache.popitem(last=False)
        cache[key] = None
    return hits


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
