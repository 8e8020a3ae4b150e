"""Which models are in Triton, and the one place a model's state changes.

Why its own class: the model-count budget, the eviction choices and the memory check all
read the same set (``resident``: the models loading, loaded or unloading), and it is exact
only if every state change goes through :meth:`Residency.set_state`. All of it runs on the
serving event loop, so it needs no lock.
"""

from __future__ import annotations

import asyncio

from infra.endpoint.reports import OCCUPYING, ModelState
from infra.endpoint.state import Metrics, ModelEntry


class Residency:
    """The models in Triton (by identity) and the wake-up of loads waiting for room."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # the models in Triton (loading, loaded, unloading), by identity: the budget's count
        self.resident: dict[int, ModelEntry] = {}
        self._room = asyncio.Event()  # replaced after each wake-up (see changed)

    def set_state(self, m: ModelEntry, state: ModelState) -> None:
        """The one place a model's state changes: keeps ``resident`` (and its peak) exact."""
        m.state = state
        if state in OCCUPYING:
            self.resident[id(m)] = m
            self.metrics.peak_loaded = max(self.metrics.peak_loaded, len(self.resident))
        else:
            self.resident.pop(id(m), None)

    def loaded_count(self) -> int:
        """Models loaded and serving (not loading, not unloading)."""
        return sum(1 for m in self.resident.values() if m.state == ModelState.LOADED)

    def changed(self) -> None:
        """Wake the loads waiting for room (a model became idle, loaded, or unloaded)."""
        self._room.set()
        self._room = asyncio.Event()

    @property
    def room(self) -> asyncio.Event:
        """The event the next :meth:`changed` sets (take it before awaiting anything)."""
        return self._room
