"""``mme watch`` (scan a model source once, emit ``mme.model.landed`` events) and ``mme
cache-clear`` (delete the build cache): the commands around the model source and the cache."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from flows.cli.common import JSON_OPTION, _quiet_env, _run_flow, app, console, emit_json
from flows.cli.dry_run import DRY_RUN_OPTION, cache_clear_doc, show_plan
from infra import paths


@app.command()
def watch(source_uri: str = typer.Argument(..., help="file:///models or s3://bucket/models"),
          dry_run: Annotated[bool, DRY_RUN_OPTION] = False,
          as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Scan a model source once and emit mme.model.landed for new or changed model files
    (one JSON line per event; --json: one document)."""
    _quiet_env()
    if dry_run:
        from flows.cli.common import exit_for
        from flows.cli.endpoint_dry_run import watch_dry_run

        try:
            return watch_dry_run(source_uri, as_json)
        except Exception as e:
            exit_for(e)
    from flows.watch import watch as watch_flow

    items = _run_flow(watch_flow, source_uri=source_uri)
    if as_json:
        emit_json({"source": source_uri, "dry_run": False, "events": items})
        return
    for item in items:
        print(json.dumps(item))


@app.command("cache-clear")
def cache_clear(dry_run: Annotated[bool, DRY_RUN_OPTION] = False,
                as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Delete the build cache ($MME_HOME/cache): always safe, the next build redoes the work."""
    import shutil

    doc = cache_clear_doc(paths.home() / "cache")
    what = f"{doc['path']} ({doc['files']} files, {doc['bytes']} bytes = {doc['mib']} MiB)"
    if dry_run:
        return show_plan(doc, [f"would remove {what}" if doc["exists"] else f"{doc['path']}: absent"],
                         f"would delete {doc['files']} files", as_json)
    shutil.rmtree(doc["path"], ignore_errors=True)
    if as_json:
        return emit_json({"dry_run": False, **doc})
    console.print(f"removed {what}")
