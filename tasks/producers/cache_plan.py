"""What a build would do with its artifacts, read from the step cache without producing any.

Why: ``mme build --dry-run`` and ``mme fleet build --dry-run`` say which artifacts the cache
already holds (the build would skip them) and which it would produce, changing nothing. The
keys are the build's own (:func:`tasks.producers.cache.artifact_key`) and a hit is the build's
own check (:func:`tasks.producers.cache.lookup_artifact`: complete and intact); no lock is
taken and no folder is made. An artifact made from one the cache does not hold cannot be
keyed before that one is produced (its key holds the upstream's content): it is ``after``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ensembles.spec import EnsembleSpec, Target, artifact_refs
from tasks.producers import cache

#: cached: in the cache, intact (skipped); produce: the build would produce it; after: made from
#: an artifact the build would produce first, so whether it is cached is known only then
ArtifactStatus = Literal["cached", "produce", "after"]


@dataclass(frozen=True)
class ArtifactPlan:
    """One artifact's fate in a build: its status, its cache key and entry (when known)."""

    name: str
    status: ArtifactStatus
    key: str | None = None
    path: Path | None = None  # a cached artifact's files
    content: str | None = None  # a cached artifact's content hash (what keys downstream)
    meta: dict[str, Any] = field(default_factory=dict)  # a cached artifact's producer metadata


def plan_artifacts(spec: EnsembleSpec, names: Iterable[str], target: Target) -> list[ArtifactPlan]:
    """Each of ``names`` (in build order) as the cache stands: ``cached``, ``produce`` or
    ``after``. Reads the cache entries' ``done.json`` and hashes their files (as a build's
    hit check does); writes nothing."""
    produced: dict[str, Path] = {}
    pending: set[str] = set()
    plans: list[ArtifactPlan] = []
    for name in names:
        upstream = {r.name for r in artifact_refs(spec.artifacts[name].params.values())}
        if upstream & pending:
            pending.add(name)
            plans.append(ArtifactPlan(name=name, status="after"))
            continue
        key = cache.artifact_key(spec, name, produced, target)
        hit = cache.lookup_artifact(key)
        if hit is None:
            pending.add(name)
            plans.append(ArtifactPlan(name=name, status="produce", key=key))
            continue
        produced[name] = hit.path
        plans.append(ArtifactPlan(name=name, status="cached", key=key, path=hit.path,
                                  content=hit.content, meta=dict(hit.meta)))
    return plans
