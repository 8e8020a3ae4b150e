"""``mme render`` and ``mme build``: the build side of the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import JSON_OPTION, _fail, _print_table, _quiet_env, _run_flow, app, console, emit_json
from flows.cli.dry_run import DRY_RUN_OPTION, build_dry_run, render_dry_run


@app.command()
def render(ensemble: str = typer.Argument("text_embedding"),
           target: str = typer.Option("local-cpu", help="local-cpu or sagemaker-gpu"),
           out: Path = typer.Option(..., help="new folder to write the configs into"),
           triton_release: str | None = typer.Option(
               None, help="Triton release YY.MM the TensorRT steps are served with (decides "
                          "INT32 vs INT64 token ids); default: the spec's compile release"),
           dry_run: Annotated[bool, DRY_RUN_OPTION] = False,
           as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Render an ensemble's config.pbtxt files for a target (no build work)."""
    from ensembles.catalog import load_ensemble
    from ensembles.render import render_repository
    from ensembles.spec import as_target
    from infra.errors import UserError

    try:
        spec, _ = load_ensemble(ensemble)
        if dry_run:
            render_dry_run(spec, as_target(target), out, triton_release, as_json)
            return
        render_repository(spec, as_target(target), out, configs_only=True,
                          triton_release=triton_release)
    except (UserError, FileExistsError) as e:
        _fail(str(e))
    if as_json:
        emit_json({"ensemble": spec.name, "target": target, "out": str(out),
                   "files": [{"path": str(cfg), "bytes": cfg.stat().st_size}
                             for cfg in sorted(out.glob("*/config.pbtxt"))]})
        return
    for cfg in sorted(out.glob("*/config.pbtxt")):
        console.print(f"[bold]{cfg.relative_to(out)}[/]")
        print(cfg.read_text())


@app.command()
def build(ensembles: list[str] = typer.Argument(None, help="catalog names (default: text_embedding)"),
          target: str = typer.Option("local-cpu"),
          output_dir: Path | None = typer.Option(None, help="default: $MME_HOME/artifacts/<target>"),
          set_: list[str] = typer.Option(None, "--set", help="ARTIFACT.PARAM=VALUE, e.g. "
                                         "inception_archive.source=/models/inception.tar.gz"),
          profile: bool = typer.Option(False, help="also measure each ensemble's footprint "
                                                   "(memory, load/unload/service times) for mme plan"),
          dry_run: Annotated[bool, DRY_RUN_OPTION] = False,
          as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Build, verify and package ensembles (a Prefect flow run)."""
    _quiet_env()
    from ensembles.spec import SpecError, as_target
    from flows.build import build as build_flow

    try:
        checked = as_target(target)  # one line naming the known targets, before any work
    except SpecError as e:
        _fail(str(e))
    overrides = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--set {item!r}: expected ARTIFACT.PARAM=VALUE")
        overrides[key] = value
    if dry_run:
        build_dry_run(list(dict.fromkeys(ensembles or ["text_embedding"])), checked, output_dir,
                      overrides, as_json)
        return
    manifests = _run_flow(build_flow, ensembles=ensembles or None, target=checked,
                          output_dir=str(output_dir) if output_dir else None,
                          overrides=overrides or None, profile=profile)
    if as_json:
        emit_json({"manifests": [m.model_dump(mode="json") for m in manifests]})
        return
    _print_table("Built", [{"ensemble": m.ensemble, "sha256": m.sha256[:12],
                            "bytes": m.bytes, "artifact": m.artifact,
                            "validation": m.validation.summary()}
                           for m in manifests])
