"""The one description of the host a figure was measured on.

A measured time or size means little without where it was measured: the footprint records,
the fleet build's canary times, the planner's figures and the benches all name the host the
same way, through :func:`hardware`, so figures from two runs can be told apart (or matched).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    """This host as far as a measurement depends on it: CPU architecture and model, core
    count, and its name (two hosts of one kind are still two hosts)."""

    machine: str
    processor: str
    cores: int
    node: str

    def describe(self, *, with_node: bool = True) -> str:
        """``x86_64, 16 cores (host)``; ``with_node=False`` leaves the host's name out (for
        results committed to the repository)."""
        cpu = " ".join(x for x in (self.machine, self.processor) if x) or "unknown CPU"
        text = f"{cpu}, {self.cores} cores"
        return f"{text} ({self.node})" if with_node and self.node else text


def this_host() -> Hardware:
    """The host this process runs on."""
    return Hardware(machine=platform.machine(), processor=platform.processor(),
                    cores=os.cpu_count() or 1, node=platform.node())


def hardware(*, with_node: bool = True) -> str:
    """The one string a measured figure's ``hardware`` (or ``measured_on``) records."""
    return this_host().describe(with_node=with_node)
