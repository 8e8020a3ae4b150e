"""One way to name a fleet on the ``mme`` command line: :func:`resolve_fleet`.

Why one resolver: a fleet used to be named three ways (a name or a file for ``show``/``build``/
``deploy``, a name only for ``routes``/``retire``/``verify``/``invoke --fleet``, the build
folder for ``plan``). Every command that takes a fleet now hands what was typed to
:func:`resolve_fleet`, which accepts any of:

- a fleet file (a path, or ``*.yaml``): its ``name`` is the fleet's name;
- a catalog name (``ensembles/fleets/<name>.yaml``);
- the fleet's build folder (a folder with a ``fleet-index.json``): the index names the fleet;
- the name of a fleet built under ``$MME_HOME/artifacts/<target>/fleets/<name>/``, or only
  routed in a store (no file here): the name as typed.

A file or folder that cannot be read is one line naming it (exit 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from infra import paths


@dataclass(frozen=True)
class FleetRef:
    """A fleet as the command line named it: its name (the routing table's key), its fleet
    file when there is one, and its build folder when one is on this machine."""

    name: str
    given: str
    file: Path | None = None
    build_dir: Path | None = None

    @property
    def source(self) -> str:
        """What a flow that takes "a fleet name or file" should get: the file when one was
        given (a file outside the catalog has no other name), else the name."""
        return str(self.file) if self.file is not None and _is_path(self.given) else self.name


def _is_path(text: str) -> bool:
    return "/" in text or text.endswith((".yaml", ".yml")) or Path(text).expanduser().exists()


def resolve_fleet(text: str) -> FleetRef:
    """The fleet ``text`` names (a file, a catalog name, a build folder, or a built/routed
    name); see the module doc. Raises a :class:`~infra.errors.UserError` naming ``text`` when
    it is a path to neither a fleet file nor a build folder."""
    from ensembles.fleet_spec import FLEETS_DIR, load_fleet
    from infra.errors import UserError
    from tasks.fleet.build import INDEX_FILE, fleet_build_dir

    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / INDEX_FILE).is_file():
            raise UserError(f"fleet {text!r}: a folder without {INDEX_FILE} (give a fleet file, a "
                            f"fleet name or a fleet's build folder)")
        return FleetRef(name=_index_fleet(path / INDEX_FILE), given=text, build_dir=path.resolve())
    if _is_path(text) or (FLEETS_DIR / f"{text}.yaml").is_file():
        spec = load_fleet(text)  # FleetError (a UserError) names the file and the field
        built = fleet_build_dir(spec)
        return FleetRef(name=spec.name, given=text, file=spec.file,
                        build_dir=built if (built / INDEX_FILE).is_file() else None)
    builds = sorted(paths.home().glob(f"artifacts/*/fleets/{text}/{INDEX_FILE}"))
    return FleetRef(name=text, given=text, build_dir=builds[0].parent if builds else None)


def _index_fleet(index: Path) -> str:
    """The fleet a build folder's index names (an unreadable index: one line naming it)."""
    from infra.errors import UserError
    from tasks.fleet.build import FleetIndex

    try:
        return FleetIndex.read(index.read_bytes(), str(index)).fleet
    except (OSError, ValueError) as e:
        raise UserError(f"{index}: not a readable fleet index ({str(e).splitlines()[0]})") from None


def fleet_name(text: str) -> str:
    """The name of the fleet ``text`` names (the routing table's key); a bad one is one
    ``error:`` line and exit 2."""
    return resolved(text).name


def resolved(text: str) -> FleetRef:
    """:func:`resolve_fleet`, with a refusal as one ``error:`` line and its exit code."""
    from flows.cli.common import exit_for

    try:
        return resolve_fleet(text)
    except Exception as e:
        exit_for(e)


def require_build_dir(ref: FleetRef) -> Path:
    """The fleet's build folder (``mme plan``'s source); none on this machine is exit 2."""
    from flows.cli.common import _fail

    if ref.build_dir is None:
        where = os.fspath(paths.home() / "artifacts")
        _fail(f"fleet {ref.given!r}: no build of fleet {ref.name!r} under {where}/*/fleets/ "
              f"(`mme fleet build {ref.given}` first, or give its build folder)")
    return ref.build_dir
