"""The files ``mme fleet example`` would write, listed read-only (``--dry-run``).

Why a function of its own: the example writes each tenant's files only when their bytes differ,
which it knows only by making them (a SqueezeNet cut per tenant); a dry run makes nothing, so it
names every file the example writes (the same names and places as
:func:`tasks.fleet.example.make_example_fleet` and its text twin), each with whether an object is
there already (then it is rewritten only if its bytes differ).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from infra.store.objects import open_store
from tasks.fleet.example import SAMPLE_IMAGE, ExampleKind, fleet_file_path, prefix_uri_of, tenant_name

#: each tenant's files, by kind (the image kind keeps its ImageNet class indices too)
TENANT_FILES: dict[ExampleKind, tuple[str, ...]] = {"image": ("model.onnx", "labels.txt", "classes.txt"),
                                                    "text": ("model.onnx", "labels.txt")}


class ExampleFile(BaseModel):
    """One file the example would write, and whether an object is there already."""

    model_config = ConfigDict(frozen=True)
    uri: str
    exists: bool


class ExamplePlan(BaseModel):
    """What ``mme fleet example`` would write: the model prefix, the tenants, their files, the
    fleet file (None: none for an S3 prefix without ``--fleet-file``) and the sample photo."""

    model_config = ConfigDict(frozen=True)
    kind: ExampleKind
    out: str
    tenants: list[str]
    fleet_file: str | None
    files: list[ExampleFile]


def plan_example(kind: ExampleKind, count: int, out_uri: str, fleet_file: Path | None) -> ExamplePlan:
    """The files of an example fleet of ``count`` tenants under ``out_uri``; reads only (one
    listing of the prefix says which exist: a thousand tenants are not three thousand HEADs)."""
    store, base = open_store(out_uri)
    root = f"{base}/" if base else ""
    tenants = [tenant_name(i) for i in range(1, count + 1)]
    keys = [f"{root}tenants/{t}/{f}" for t in tenants for f in TENANT_FILES[kind]]
    if kind == "image":
        keys.append(f"{root}{SAMPLE_IMAGE}")
    present = {info.key for info in store.list(root)}
    files = [ExampleFile(uri=store.uri_for(k), exists=k in present) for k in keys]
    fleet_file = fleet_file_path(store, fleet_file)
    if fleet_file is not None:
        path = Path(fleet_file).absolute()
        files.append(ExampleFile(uri=path.as_uri(), exists=path.is_file()))
    return ExamplePlan(kind=kind, out=prefix_uri_of(store, base), tenants=tenants,
                       fleet_file=None if fleet_file is None else str(Path(fleet_file).absolute()),
                       files=files)
