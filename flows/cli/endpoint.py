"""``mme endpoint start|serve|stop|status``: the commands around a running endpoint (``mme
invoke`` is in :mod:`flows.cli.invoke`, ``mme watch`` and ``mme cache-clear`` in
:mod:`flows.cli.housekeeping`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flows.cli.common import JSON_OPTION, _fail, console, emit_json, endpoint_app, results
from flows.cli import housekeeping  # noqa: F401  (registers `mme watch` and `mme cache-clear` here, in --help's order)
from flows.cli.dry_run import DRY_RUN_OPTION
from flows.cli.options import takes_options
from infra import paths
from infra.endpoint.client import memory_note

if TYPE_CHECKING:
    from infra.triton.process import TritonPorts

SPARE = "places of the budget kept free by background unloads (default: derived; 0: none)"


@dataclass(frozen=True)
class EndpointOptions:
    """What ``mme endpoint start`` and ``serve`` share: the endpoint, its budget and spare room,
    and its tritonserver's ports (a free one each by default, so several endpoints coexist)."""

    name: Annotated[str, typer.Option()] = "local-mme"
    model_data_url: Annotated[str | None, typer.Option(help="default: the embedded store's models/<name>")] = None
    max_loaded_models: Annotated[int | None, typer.Option()] = None
    spare_slots: Annotated[int | None, typer.Option(help=SPARE)] = None
    triton_http_port: Annotated[int, typer.Option(
        min=0, help="tritonserver's HTTP port on 127.0.0.1 (0: a free one)")] = 0
    triton_grpc_port: Annotated[int, typer.Option(
        min=0, help="tritonserver's gRPC port on 127.0.0.1 (0: a free one)")] = 0
    triton_metrics_port: Annotated[int, typer.Option(
        min=-1, help="tritonserver's metrics port on 127.0.0.1 (0: a free one; -1: metrics off); "
                     "also served at GET /triton/metrics")] = 0

    def triton(self) -> TritonPorts:
        """The ``--triton-*-port`` options as the endpoint's Triton ports (-1 turns metrics off)."""
        return _triton_ports(self.triton_http_port, self.triton_grpc_port, self.triton_metrics_port)

    def models_url(self) -> str:
        from tasks.deploy.publish import model_data_url as default_url

        return self.model_data_url or default_url(paths.store_uri(), self.name)


@dataclass(frozen=True)
class EndpointStartOptions(EndpointOptions):
    port: Annotated[int, typer.Option(help="the endpoint's port (0: a free one)")] = 0
    dry_run: Annotated[bool, DRY_RUN_OPTION] = False
    as_json: Annotated[bool, JSON_OPTION] = False


@dataclass(frozen=True)
class EndpointServeOptions(EndpointOptions):
    host: Annotated[str, typer.Option()] = "127.0.0.1"
    port: Annotated[int, typer.Option()] = 8080


def _triton_ports(http: int, grpc: int, metrics: int) -> TritonPorts:
    """The ``--triton-*-port`` options as the endpoint's Triton ports (-1 turns metrics off)."""
    from infra.triton.process import TritonPorts

    return TritonPorts(http=http, grpc=grpc, metrics=None if metrics < 0 else metrics)


@endpoint_app.command("start")
@takes_options(EndpointStartOptions)
def endpoint_start(o: EndpointStartOptions) -> None:
    """Start the local endpoint in the background (or show the running one)."""
    from infra.endpoint.process import start_background

    if o.dry_run:
        from flows.cli.endpoint_dry_run import start_dry_run

        return start_dry_run(o)
    info = start_background(o.name, o.models_url(), port=o.port, max_loaded_models=o.max_loaded_models,
                            spare_slots=o.spare_slots, triton=o.triton())
    if o.as_json:
        return emit_json({"endpoint": o.name, "dry_run": False, "url": info.url, "pid": info.pid,
                          "model_data_url": info.model_data_url, "cache_dir": info.cache_dir})
    console.print(f"endpoint {o.name} serving on {info.url} (models from {info.model_data_url})")


@endpoint_app.command("serve")
@takes_options(EndpointServeOptions)
def endpoint_serve(o: EndpointServeOptions) -> None:
    """Run the local endpoint in the foreground until Ctrl-C."""
    from infra.endpoint import local_mme
    from infra.endpoint.process import endpoint_settings

    settings = endpoint_settings(o.name, o.models_url(), host=o.host, port=o.port,
                                 max_loaded_models=o.max_loaded_models, spare_slots=o.spare_slots,
                                 triton=o.triton())
    local_mme.serve(settings, state_file=paths.endpoint_dir(o.name) / "endpoint.json")


@endpoint_app.command("stop")
def endpoint_stop(name: str = typer.Option("local-mme"),
                  dry_run: Annotated[bool, DRY_RUN_OPTION] = False,
                  as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Stop a background endpoint (its Triton server goes with it)."""
    from infra.endpoint.process import stop

    if dry_run:
        from flows.cli.endpoint_dry_run import stop_dry_run

        return stop_dry_run(name, as_json)
    outcome = stop(name)
    if as_json:
        return emit_json({"endpoint": name, "dry_run": False, "outcome": outcome.name.lower()})
    console.print(f"endpoint {name}: {outcome.value}")


@endpoint_app.command("status")
def endpoint_status(name: str = typer.Option("local-mme"),
                    as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Show the endpoint's metrics and one row per TargetModel (invocations, hits, loads...);
    --json: the raw documents, as the endpoint sent them."""
    from infra.endpoint.process import find_running, read_state
    from infra.endpoint.client import LocalEndpointClient

    stale = read_state(name)
    info = find_running(name)
    if info is None:
        ident = stale.identity if stale else None
        _fail(f"endpoint {name!r} is not running" + (
            "" if stale is None else
            f" (removed its stale state file: {ident.describe() if ident else f'pid {stale.pid}, unproven'})"))
    with LocalEndpointClient(info.url) as client:  # the raw documents, as the endpoint sent them
        doc = {"endpoint": name, "url": info.url,
               "models": [row.model_dump(mode="json") for row in client.models()],
               "metrics": client.metrics().model_dump(mode="json", exclude_unset=True)}
    if as_json:
        emit_json(doc)
        return
    results().print(status_table(doc))


def status_table(doc: dict) -> Table:
    """``mme endpoint status`` as a table: a summary line, then one row per TargetModel."""
    m = doc["metrics"]
    adm, thrash = m.get("AdmissionTime", {}), m.get("Thrash", {})
    title = (f"{doc['endpoint']} at {doc['url']}: {m.get('LoadedModelCount', 0)} loaded "
             f"(peak {m.get('PeakLoadedModelCount', 0)}), {m.get('Invocations', 0)} requests, "
             f"{m.get('ModelCacheHit', 0)} warm, {m.get('MemoryEvictions', 0)} evictions, "
             f"admission p50/p99 {adm.get('p50', 0):.3f}/{adm.get('p99', 0):.3f} ms, miss rate "
             f"{100 * thrash.get('MissRate', 0):.0f}%" + (" THRASHING" if thrash.get("Thrashing") else ""))
    table = Table(title=title + memory_note(m))
    for col in ("TargetModel", "state", "invocations", "hits", "loads", "last load s",
                "total load s", "evictions", "errors", "last used"):
        table.add_column(col, justify="left" if col in ("TargetModel", "state") else "right")
    for target, r in m.get("models", {}).items():
        used = r.get("last_used")
        table.add_row(target, r["state"], str(r["invocations"]), str(r["hits"]), str(r["loads"]),
                      f"{r['last_load_s']:.3f}", f"{r['total_load_s']:.3f}", str(r["evictions"]),
                      str(r["errors"]),
                      time.strftime("%H:%M:%S", time.localtime(used)) if used else "-")
    return table
