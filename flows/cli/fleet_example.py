"""``mme fleet example``: write the offline example fleet (tasks/fleet/example.py), or with
``--dry-run`` list the files it would write (:func:`tasks.fleet.example_plan.plan_example`).

Its options are one typed dataclass (:class:`ExampleOptions`): nine of them, more than a
function's eight parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.cli.common import JSON_OPTION, _fail, console, emit_json, exit_for, say
from flows.cli.dry_run import DRY_RUN_OPTION, show_plan

if TYPE_CHECKING:
    from ensembles.fleet_spec import Layout
    from tasks.fleet.example import ExampleKind


@dataclass(frozen=True, kw_only=True)
class ExampleOptions:
    """``mme fleet example``'s options, typed."""

    count: Annotated[int, typer.Option(min=1, help="number of tenants")] = 20
    out: Annotated[str, typer.Option(help="model prefix: file:///abs/dir, s3://bucket/prefix or a path")]
    seed: Annotated[int, typer.Option(help="seed of the tenants' class subsets (or intent heads)")] = 0
    fleet_file: Annotated[Path | None, typer.Option(
        help="where to write the fleet file (default: <out>/fleet.yaml for a local prefix; none for S3)")] = None
    kind: Annotated[str, typer.Option(help="image: SqueezeNet classifiers; text: intent heads over one "
                                           "sentence encoder")] = "image"
    layout: Annotated[str | None, typer.Option(help="the fleet file's layout: fused or separate "
                                                    "(default separate)")] = None
    name: Annotated[str | None, typer.Option(help="the fleet's name in its file (default: "
                                                  "tenants-example; text: intents-example)")] = None
    dry_run: Annotated[bool, DRY_RUN_OPTION] = False
    as_json: Annotated[bool, JSON_OPTION] = False


def _checked(o: ExampleOptions) -> tuple[ExampleKind, Layout | None]:
    """``--kind`` and ``--layout`` typed; a bad one (or a bad ``--name``) is one line, exit 2."""
    from ensembles.fleet_spec import _FLEET_NAME

    kinds: dict[str, ExampleKind] = {"image": "image", "text": "text"}
    layouts: dict[str, Layout] = {"fused": "fused", "separate": "separate"}
    if o.kind not in kinds:
        _fail(f"--kind {o.kind!r}: expected image or text")
    if o.layout is not None and o.layout not in layouts:
        _fail(f"--layout {o.layout!r}: expected fused or separate")
    if o.name is not None and not _FLEET_NAME.match(o.name):
        _fail(f"--name {o.name!r}: a fleet name is letters, digits, '-' and '_'")
    return kinds[o.kind], layouts[o.layout] if o.layout else None


def run_example(o: ExampleOptions) -> None:
    """``mme fleet example``: write the tenants and the fleet file (or plan them: ``--dry-run``)."""
    from tasks.fleet.example import make_kind_example

    kind, layout = _checked(o)
    if o.dry_run:
        return example_dry_run(kind, o)
    try:
        made = make_kind_example(kind, o.count, o.out, seed=o.seed, fleet_file=o.fleet_file, layout=layout,
                                 say=lambda line: console.print(line, markup=False, highlight=False))
        if o.name is not None and made.fleet_file is not None:
            _rename_fleet(made.fleet_file, o.name)
    except Exception as e:
        exit_for(e)
    _print_example(made, o.as_json)


def example_dry_run(kind: ExampleKind, o: ExampleOptions) -> None:
    """``mme fleet example --dry-run``: every file it would write, and which exist already."""
    from tasks.fleet.example_plan import plan_example

    try:
        plan = plan_example(kind, o.count, o.out, o.fleet_file)
    except Exception as e:
        exit_for(e)
    there = sum(f.exists for f in plan.files)
    lines = [f"would write {f.uri}" + (" (exists: rewritten only if its bytes differ)" if f.exists else "")
             for f in plan.files]
    if plan.fleet_file is None:
        lines.append("no fleet file (give --fleet-file PATH for an s3:// prefix)")
    show_plan(plan.model_dump(), lines, f"{len(plan.tenants)} tenants under {plan.out}/tenants/: would "
              f"write {len(plan.files)} files ({there} exist already)", o.as_json)


def _rename_fleet(fleet_file: Path, name: str) -> None:
    """``mme fleet example --name``: the written fleet file, with its ``name`` replaced."""
    import yaml

    from infra.store.objects import atomic_path

    doc = yaml.safe_load(fleet_file.read_text())
    doc["name"] = name
    with atomic_path(fleet_file) as tmp:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))


def _print_example(made: Any, as_json: bool) -> None:
    """What ``mme fleet example`` wrote: one JSON document, or two lines."""
    from tasks.fleet.example_text import TextExampleFleet

    file = made.fleet_file
    fleet = None if file is None else _read_name(file)
    if as_json:
        emit_json({"fleet": fleet, "fleet_file": None if file is None else str(file),
                   "out": made.out_uri, "tenants": [t.name for t in made.tenants],
                   "written": made.written, "unchanged": made.unchanged,
                   "sample_image": getattr(made, "sample_image", None),
                   "seconds": round(made.seconds, 3)})
        return
    if isinstance(made, TextExampleFleet):
        intents = sorted(t.intents for t in made.tenants)
        what = f"intent heads, {intents[0]}-{intents[-1]} intents each"
    else:
        what = f"{sum(t.has_cat for t in made.tenants)} with cat classes"
    say(f"{len(made.tenants)} tenants under {made.out_uri}/tenants/ ({what}): "
        f"{made.written} files written, {made.unchanged} unchanged, {made.seconds:.1f} s")
    say(f"fleet {fleet}: {file} (mme fleet show {file})" if file is not None else
        "no fleet file written (give --fleet-file PATH for an s3:// prefix)")
    if getattr(made, "sample_image", None):
        say(f"a photo to classify: {made.sample_image}")


def _read_name(fleet_file: Path) -> str | None:
    import yaml

    doc = yaml.safe_load(fleet_file.read_text())
    return doc.get("name") if isinstance(doc, dict) else None
