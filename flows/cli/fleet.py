"""``mme fleet``: fleets of ensembles from one template (ensembles/fleet_spec.py).

``show`` resolves a fleet file and prints its variants (no build work, no Prefect);
``example`` writes the offline example fleet (tasks/fleet/example.py); ``build`` runs the
``fleet-build`` flow (flows/fleet_build.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from flows.cli.common import _fail, _print_table, _report, app, console

if TYPE_CHECKING:
    from ensembles.fleet_spec import Layout, Resolved
    from tasks.fleet.example import ExampleKind

fleet_app = typer.Typer(help="Fleets: many ensembles from one template, declared once.",
                        no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")

SHORT = 48


def _exit_for(e: Exception) -> NoReturn:
    """One ``error:`` line and the error tree's exit code; a bug keeps its traceback."""
    code = _report(e)
    if code is None:
        raise e
    raise typer.Exit(code) from None


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
def show(fleet: str = typer.Argument(..., help="a fleet name (ensembles/fleets/<name>.yaml) or a "
                                              "fleet file"),
         as_json: bool = typer.Option(False, "--json", help="print the resolved fleet as JSON")) -> None:
    """Resolve a fleet and print its variants; exit 1 when some variants have problems."""
    from ensembles.fleet_spec import check_fleet, load_fleet, load_template, resolve_variants

    try:
        spec = load_fleet(fleet)
        template, folder = load_template(spec)
        resolved = resolve_variants(spec)
        check_fleet(spec, template, resolved.variants)
    except Exception as e:
        _exit_for(e)
    if as_json:
        print(json.dumps({"fleet": spec.name, "file": str(spec.file), "template": str(folder),
                          "target": spec.target,
                          "variants": [v.model_dump() for v in resolved.variants],
                          "problems": [{"variant": n, "reason": r} for n, r in resolved.problems]},
                         indent=2))
    else:
        prefix = spec.prefix.uri if spec.prefix else None
        _print_table(f"Fleet {spec.name} ({spec.file}): template {template.name}, target "
                     f"{spec.target}, {len(resolved.variants)} variants", _rows(resolved, prefix))
        for name, reason in resolved.problems:
            console.print(f"[bold red]problem:[/] {name}: {reason}", markup=True, highlight=False,
                          soft_wrap=True)
    if resolved.problems:
        console.print(f"{len(resolved.problems)} variant(s) cannot be built", highlight=False)
        raise typer.Exit(1)


@fleet_app.command("example")
def example(count: int = typer.Option(20, min=1, help="number of tenants"),
            out: str = typer.Option(..., help="model prefix: file:///abs/dir, s3://bucket/prefix or a path"),
            seed: int = typer.Option(0, help="seed of the tenants' class subsets (or intent heads)"),
            fleet_file: Path | None = typer.Option(
                None, help="where to write the fleet file (default: <out>/fleet.yaml for a local "
                           "prefix; none for S3)"),
            kind: str = typer.Option("image", help="image: SqueezeNet classifiers; text: intent "
                                                   "heads over one sentence encoder"),
            layout: str | None = typer.Option(None, help="the fleet file's layout: fused or "
                                                         "separate (default separate)")) -> None:
    """Write N per-customer classifiers (SqueezeNet cut to each one's classes) and their fleet file.

    With --kind text: N customers' own intent heads (3-20 intents each) over one sentence
    encoder, for the text_intent_tenant template."""
    from tasks.fleet.example import make_kind_example
    from tasks.fleet.example_text import TextExampleFleet

    kinds: dict[str, ExampleKind] = {"image": "image", "text": "text"}
    layouts: dict[str, Layout] = {"fused": "fused", "separate": "separate"}
    if kind not in kinds:
        _fail(f"--kind {kind!r}: expected image or text")
    if layout is not None and layout not in layouts:
        _fail(f"--layout {layout!r}: expected fused or separate")
    try:
        made = make_kind_example(kinds[kind], count, out, seed=seed, fleet_file=fleet_file,
                                 layout=layouts[layout] if layout else None)
    except Exception as e:
        _exit_for(e)
    if isinstance(made, TextExampleFleet):
        intents = sorted(t.intents for t in made.tenants)
        what = f"intent heads, {intents[0]}-{intents[-1]} intents each"
    else:
        what = f"{sum(t.has_cat for t in made.tenants)} with cat classes"
    console.print(f"{len(made.tenants)} tenants under {made.out_uri}/tenants/ ({what}): "
                  f"{made.written} files written, {made.unchanged} unchanged, "
                  f"{made.seconds:.1f} s", highlight=False)
    if made.fleet_file is not None:
        console.print(f"fleet file: {made.fleet_file} (mme fleet show {made.fleet_file})", highlight=False)
    else:
        console.print("no fleet file written (give --fleet-file PATH for an s3:// prefix)", highlight=False)


@fleet_app.command("build")
def build(fleet: str = typer.Argument(..., help="a fleet name (ensembles/fleets/<name>.yaml) or a "
                                                "fleet file"),
          output_dir: Path | None = typer.Option(
              None, help="default: $MME_HOME/artifacts/<target>/fleets/<fleet>"),
          triton_sample: int = typer.Option(4, min=1, help="changed variants verified in Triton "
                                                           "(the others against them)"),
          all_in_triton: bool = typer.Option(False, help="verify every changed variant in Triton"),
          publish_to: str | None = typer.Option(None, help="publish to this file:// or s3:// prefix"),
          only: list[str] = typer.Option(None, help="build only these variants (repeatable)")) -> None:
    """Build, verify and (optionally) publish every changed variant of a fleet (a Prefect flow run)."""
    from flows.cli.common import _quiet_env, _run_flow
    from flows.fleet_build import fleet_build

    _quiet_env()
    got = _run_flow(fleet_build, fleet=fleet, output_dir=str(output_dir) if output_dir else None,
                    triton_sample=triton_sample, all_in_triton=all_in_triton,
                    publish_to=publish_to, only=only or None)
    console.print(f"fleet {got['fleet']}: {got['variants']} variants, {got['built']} built, "
                  f"{got['unchanged']} unchanged, {got['failed']} failed -> {got['output_dir']}",
                  highlight=False)
