"""``mme fleet``: fleets of ensembles from one template (ensembles/fleet_spec.py).

``show`` resolves a fleet file and prints its variants (no build work, no Prefect);
``example`` writes the offline example fleet (tasks/fleet/example.py); ``build`` runs the
``fleet-build`` flow (flows/fleet_build.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flows.cli.common import (JSON_OPTION, _fail, _print_table, app, console, emit_json, exit_for,
                              say)
from flows.cli.dry_run import DRY_RUN_OPTION
from flows.cli.fleet_example import ExampleOptions, _rename_fleet, run_example  # noqa: F401  (_rename_fleet: its old home)
from flows.cli.fleet_ref import resolved
from flows.cli.options import takes_options

if TYPE_CHECKING:
    from ensembles.fleet_spec import Resolved

fleet_app = typer.Typer(help="Fleets: many ensembles from one template, declared once.",
                        no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")

SHORT = 48


_exit_for = exit_for  # the name the fleet commands used before it moved to common


def _shorten(value: str, prefix: str | None) -> str:
    """A source relative to the fleet's prefix, else its tail: the table stays readable."""
    if prefix and value.startswith(prefix):
        return value[len(prefix):]
    return value if len(value) <= SHORT else "…" + value[-(SHORT - 1):]


def _rows(resolved: Resolved, prefix: str | None) -> list[dict[str, str]]:
    return [{"variant": v.name,
             "params": "\n".join(f"{k}={_shorten(val, prefix)}" for k, val in sorted(v.params.items())),
             "labels": "\n".join(f"{k}={val}" for k, val in sorted(v.labels.items()))}
            for v in resolved.variants]


@fleet_app.command("show")
def show(fleet: str = typer.Argument(..., help="the fleet: its name (ensembles/fleets/<name>.yaml), "
                                              "file or build folder"),
         as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Resolve a fleet and print its variants; exit 1 when some variants have problems."""
    from ensembles.fleet_spec import check_fleet, load_fleet, load_template, resolve_variants

    try:
        spec = load_fleet(_fleet_file(fleet))
        template, folder = load_template(spec)
        resolved = resolve_variants(spec)
        check_fleet(spec, template, resolved.variants)
    except Exception as e:
        _exit_for(e)
    if as_json:
        emit_json({"fleet": spec.name, "file": str(spec.file), "template": str(folder),
                   "target": spec.target, "variants": [v.model_dump() for v in resolved.variants],
                   "problems": [{"variant": n, "reason": r} for n, r in resolved.problems]})
    else:
        prefix = spec.prefix.uri if spec.prefix else None
        _print_table(f"Fleet {spec.name} ({spec.file}): template {template.name}, target "
                     f"{spec.target}, {len(resolved.variants)} variants", _rows(resolved, prefix))
        for name, reason in resolved.problems:  # diagnostics: stderr, beside the exit code
            console.print(f"[bold red]problem:[/] {name}: {reason}", markup=True, highlight=False)
    if resolved.problems:
        console.print(f"{len(resolved.problems)} variant(s) cannot be built", highlight=False)
        raise typer.Exit(1)


def _fleet_file(fleet: str) -> str:
    """The fleet file behind what was typed (a name, a file, a build folder whose fleet is in
    the catalog); a fleet with no file here is one line, exit 2."""
    ref = resolved(fleet)
    if ref.file is None:
        from ensembles.fleet_spec import FLEETS_DIR

        if not (FLEETS_DIR / f"{ref.name}.yaml").is_file():
            _fail(f"fleet {fleet!r}: no fleet file for fleet {ref.name!r} (give the fleet file)")
        return ref.name
    return str(ref.file)


@fleet_app.command("example")
@takes_options(ExampleOptions)
def example(o: ExampleOptions) -> None:
    """Write N per-customer classifiers (SqueezeNet cut to each one's classes) and their fleet file.

    With --kind text: N customers' own intent heads (3-20 intents each) over one sentence
    encoder, for the text_intent_tenant template."""
    run_example(o)


@fleet_app.command("build")
def build(fleet: str = typer.Argument(..., help="the fleet: its name (ensembles/fleets/<name>.yaml), "
                                                "file or build folder"),
          output_dir: Path | None = typer.Option(
              None, help="default: $MME_HOME/artifacts/<target>/fleets/<fleet>"),
          triton_sample: int = typer.Option(4, min=1, help="changed variants verified in Triton "
                                                           "(the others against them)"),
          all_in_triton: bool = typer.Option(False, help="verify every changed variant in Triton"),
          publish_to: str | None = typer.Option(None, help="publish to this file:// or s3:// prefix"),
          only: list[str] = typer.Option(None, help="build only these variants (repeatable)"),
          dry_run: Annotated[bool, DRY_RUN_OPTION] = False,
          as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Build, verify and (optionally) publish every changed variant of a fleet (a Prefect flow run)."""
    from flows.cli.common import _quiet_env, _run_flow
    from flows.cli.fleet_dry_run import build_dry_run

    _quiet_env()
    if dry_run:
        return build_dry_run(_fleet_file(fleet), output_dir, only or None, publish_to, as_json)
    from flows.fleet_build import fleet_build

    got = _run_flow(fleet_build, fleet=_fleet_file(fleet),
                    output_dir=str(output_dir) if output_dir else None,
                    triton_sample=triton_sample, all_in_triton=all_in_triton,
                    publish_to=publish_to, only=only or None)
    if as_json:
        emit_json(got)
        return
    say(f"fleet {got['fleet']}: {got['variants']} variants, {got['built']} built, "
        f"{got['unchanged']} unchanged, {got['failed']} failed -> {got['output_dir']}")
