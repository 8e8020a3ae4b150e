"""``mme demo``: the main job end to end (build both ensembles, deploy them to one local
endpoint, invoke, report)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import JSON_OPTION, _print_deploy, _quiet_env, _run_flow, app, console, emit_json
from flows.cli.dry_run import DRY_RUN_OPTION

#: what the demo builds, and deploys to one local endpoint
ENSEMBLES = ["text_embedding", "image_classifier"]


@app.command()
def demo(report: Path | None = typer.Option(None, help="also write a JSON report here"),
         endpoint: str = typer.Option("mme-demo"),
         keep_endpoint: bool = typer.Option(False, help="leave the endpoint running afterwards"),
         dry_run: Annotated[bool, DRY_RUN_OPTION] = False,
         as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """The main job: build both ensembles, deploy them to one local endpoint, invoke, report."""
    _quiet_env()
    if dry_run:
        from flows.cli.dry_run import demo_dry_run

        return demo_dry_run(ENSEMBLES, endpoint, report, keep_endpoint, as_json)
    from flows.build import build as build_flow
    from flows.deploy import deploy as deploy_flow
    from infra.endpoint.process import stop

    ensembles = ENSEMBLES
    t0 = time.perf_counter()
    console.rule("[bold]1/3 build")
    manifests = _run_flow(build_flow, ensembles=ensembles, target="local-cpu")
    build_s = time.perf_counter() - t0
    try:
        console.rule("[bold]2/3 deploy + validate")
        result = _run_flow(deploy_flow, ensembles=ensembles, endpoint=endpoint, backend="local")
    finally:
        if not keep_endpoint:
            stop(endpoint)
    console.rule("[bold]3/3 report")
    total_s = time.perf_counter() - t0
    doc = {
        "endpoint": endpoint,
        "endpoint_url": result["url"],
        "model_data_url": result["model_data_url"],
        "seconds": {"build": round(build_s, 1), "total": round(total_s, 1)},
        "ensembles": [
            {"name": e["name"], "target": e["target"], "target_model": e.get("target_model"),
             "artifact": e["artifact"],
             "sha256": e["sha256"], "bytes": e["bytes"], "validation": e["validation"],
             "latency_ms": e["latency_ms"],
             "direct_triton_latency_ms": e.get("direct_triton_latency_ms"),
             **({"top5": [{"label": t["label"], "prob": t["prob"]} for t in e["validation"]["top5"]]}
                if "top5" in e["validation"] else {})}
            for e in result["ensembles"]],
    }
    if as_json:
        emit_json(doc)
    else:
        _print_deploy(result)
    console.print(f"build {build_s:.1f} s, total {total_s:.1f} s"
                  + ("" if keep_endpoint else f"; endpoint {endpoint} stopped"))
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(doc, indent=2))
        console.print(f"report written to {report}")
    if not all(e["validation"]["passed"] for e in doc["ensembles"]):
        raise typer.Exit(1)
    del manifests
