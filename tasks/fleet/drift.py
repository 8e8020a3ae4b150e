"""Does a fleet file still describe its last build? (``mme fleet deploy FILE`` asks first.)

A fleet deploy ships the fleet's latest BUILD (``fleet-index.json``), not the file: a variant
removed from the file stays in the build until ``mme fleet build`` runs again, and a deploy of
the file would route it anyway. So a deploy given a fleet file (or a catalog fleet's name,
which is its file) compares the file with the build first and refuses when they disagree,
naming the variants:

- **in the file but not built**: declared (and resolvable), but the index has no record of it;
- **built but not in the file**: the index has it, the file no longer declares it;
- **built from other sources**: its input key now (the build's template key + the variant's
  params + the fingerprints of its sources, size and mtime or ETag from the one listing) is not
  the key its tarball was built with. A variant whose sources carry no fingerprint (an
  ``https://`` URL without a declared sha256) cannot be compared without fetching it and is
  not flagged; neither is a template change (its key needs the shared artifacts built: the
  build's own job).

Resolving the file costs what ``mme fleet show`` costs (one listing of a prefix); no model
file is read. Variants the file declares but cannot resolve (a model without its labels) are
not compared: no build can make them (``mme fleet show`` lists them). Deploying by name with
``--build-dir`` deploys that build as it is, without a file to compare.
"""

from __future__ import annotations

from collections.abc import Sequence

from ensembles.fleet_spec import FleetSpec, resolve_variants
from infra.errors import UserError
from tasks.fleet.build import FleetIndex
from tasks.fleet.variant import input_key

LISTED = 10  # names per kind in the one-line message


class FleetBuildStale(UserError):
    """The fleet file and its last build disagree; the message names the variants and says to
    run ``mme fleet build FILE`` first."""


def file_vs_build(spec: FleetSpec, index: FleetIndex) -> dict[str, list[str]]:
    """``{kind: variants}`` where the file and the build disagree (empty when they agree);
    kinds: ``in the file but not built``, ``built but not in the file``, ``built from other
    sources``, ``built for another target``."""
    declared = {v.name: v for v in resolve_variants(spec).variants}
    out: dict[str, list[str]] = {}
    if index.target != spec.target:
        out[f"built for target {index.target}, not {spec.target}"] = sorted(declared)
    out["in the file but not built"] = sorted(set(declared) - set(index.variants))
    out["built but not in the file"] = sorted(set(index.variants) - set(declared))
    other = []
    for name, v in sorted(declared.items()):
        entry = index.variants.get(name)
        if entry is None or entry.status != "ok" or not entry.key or not index.template_key:
            continue
        key = input_key(index.template_key, v)
        if key is not None and key != entry.key:
            other.append(name)
    out["built from other sources"] = other
    return {kind: names for kind, names in out.items() if names}


def _names(names: Sequence[str]) -> str:
    more = f" (+{len(names) - LISTED} more)" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def refuse_stale_build(spec: FleetSpec, index: FleetIndex, index_path: str) -> None:
    """Raise :class:`FleetBuildStale` (one line) when ``spec`` and its build ``index`` disagree."""
    drift = file_vs_build(spec, index)
    if not drift:
        return
    parts = "; ".join(f"{kind}: {_names(names)}" for kind, names in drift.items())
    raise FleetBuildStale(f"{spec.where} and its last build ({index_path}) disagree: {parts}; a "
                          f"deploy ships the build, not the file: run `mme fleet build "
                          f"{spec.where}` first")
