"""``mme invoke``, ``mme watch``, ``mme cache-clear`` and ``mme endpoint start|serve|stop|status``:
the commands around a running endpoint and the model source."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.cli.common import _fail, _quiet_env, _run_flow, app, console, endpoint_app


@app.command()
def invoke(text: list[str] = typer.Argument(None, help="sentences to embed (text ensembles)"),
           image: list[Path] = typer.Option(None, help="image files to classify (image ensembles)"),
           endpoint: str = typer.Option("local-mme"),
           target_model: str | None = typer.Option(
               None, help="default: text_embedding.tar.gz, or image_classifier.tar.gz with --image"),
           url: str | None = typer.Option(None, help="default: the running local endpoint"),
           json_body: bool = typer.Option(False, "--json", help="send a JSON body, not binary+json")) -> None:
    """Invoke an ensemble by TargetModel through the SageMaker runtime API (boto3)."""
    import numpy as np
    from botocore.exceptions import ClientError

    from infra.endpoint_process import find_running
    from infra.runtime_client import invoke as do_invoke, pack_images, runtime_client_for

    if url is None:
        info = find_running(endpoint)
        if info is None:
            _fail(f"endpoint {endpoint!r} is not running (mme endpoint start, or mme deploy)")
        url = info.url
    if image:
        inputs = {"INPUT": pack_images([p.read_bytes() for p in image])}
        target_model = target_model or "image_classifier.tar.gz"
    elif text:
        inputs = {"INPUT0": np.array([t.encode() for t in text], dtype=object).reshape(-1, 1)}
        target_model = target_model or "text_embedding.tar.gz"
    else:
        _fail("give sentences, or --image FILE")
    try:
        out = do_invoke(runtime_client_for(url), endpoint, target_model, inputs, binary=not json_body)
    except ClientError as e:
        _fail(f"{e.response['Error'].get('Code')}: {e.response['Error'].get('Message')}")
    for name, arr in out.items():
        arr = np.asarray(arr)
        if image and arr.ndim == 2 and arr.shape[1] in (1000, 1001):
            from tasks.classifiers import imagenet_label_names

            labels = imagenet_label_names(offset=arr.shape[1] - 1000)
            for path, row in zip(image, arr, strict=False):
                top = np.argsort(-row)[:5]
                print(json.dumps({"image": str(path), "top5": [
                    {"label": labels[i], "prob": round(float(row[i]), 6)} for i in top]}))
        else:
            print(json.dumps({name: arr.round(6).tolist()}))


@app.command()
def watch(source_uri: str = typer.Argument(..., help="file:///models or s3://bucket/models")) -> None:
    """Scan a model source once and emit mme.model.landed for new or changed model files."""
    _quiet_env()
    from flows.watch import watch as watch_flow

    for item in _run_flow(watch_flow, source_uri=source_uri):
        print(json.dumps(item))


@app.command("cache-clear")
def cache_clear() -> None:
    """Delete the build cache ($MME_HOME/cache): always safe, the next build redoes the work."""
    import shutil

    from infra import paths

    folder = paths.home() / "cache"
    shutil.rmtree(folder, ignore_errors=True)
    console.print(f"removed {folder}")


@endpoint_app.command("start")
def endpoint_start(name: str = typer.Option("local-mme"),
                   model_data_url: str | None = typer.Option(None, help="default: the embedded store's models/<name>"),
                   port: int = typer.Option(0),
                   max_loaded_models: int | None = typer.Option(None)) -> None:
    """Start the local endpoint in the background (or show the running one)."""
    from infra import paths
    from infra.endpoint_process import start_background
    from tasks.publish import model_data_url as default_url

    info = start_background(name, model_data_url or default_url(paths.store_uri(), name),
                            port=port, max_loaded_models=max_loaded_models)
    console.print(f"endpoint {name} serving on {info.url} (models from {info.model_data_url})")


@endpoint_app.command("serve")
def endpoint_serve(name: str = typer.Option("local-mme"),
                   model_data_url: str | None = typer.Option(None),
                   host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8080),
                   max_loaded_models: int | None = typer.Option(None)) -> None:
    """Run the local endpoint in the foreground until Ctrl-C."""
    from infra import local_mme, paths
    from infra.endpoint_process import endpoint_settings
    from tasks.publish import model_data_url as default_url

    local_mme.serve(endpoint_settings(name, model_data_url or default_url(paths.store_uri(), name),
                                      host=host, port=port, max_loaded_models=max_loaded_models),
                    state_file=paths.endpoint_dir(name) / "endpoint.json")


@endpoint_app.command("stop")
def endpoint_stop(name: str = typer.Option("local-mme")) -> None:
    """Stop a background endpoint (its Triton server goes with it)."""
    from infra.endpoint_process import stop

    console.print(f"endpoint {name}: {'stopped' if stop(name) else 'was not running'}")


@endpoint_app.command("status")
def endpoint_status(name: str = typer.Option("local-mme")) -> None:
    """Show the endpoint's models and SageMaker-style metrics."""
    from infra.endpoint_process import find_running
    from infra.local_client import LocalEndpointClient

    info = find_running(name)
    if info is None:
        _fail(f"endpoint {name!r} is not running")
    client = LocalEndpointClient(info.url)
    print(json.dumps({"endpoint": name, "url": info.url, "models": client.models(),
                      "metrics": client.metrics()}, indent=2))
