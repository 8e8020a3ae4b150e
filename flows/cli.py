"""The ``mme`` command line: build, deploy, retire, the local endpoint, and the demo."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infra.triton_release import DEFAULT_RELEASE

app = typer.Typer(help="Build Triton ensembles and ship them to multi-model endpoints.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
endpoint_app = typer.Typer(help="The local multi-model endpoint.", no_args_is_help=True)
app.add_typer(endpoint_app, name="endpoint")
console = Console(stderr=True)


def _quiet_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(2)


def _exit_code(e: BaseException) -> int | None:
    """What the CLI does with an error that ended a command (see infra/errors.py): 2 for the
    user's to fix (a :class:`UserError`), 1 for another :class:`MMEError` (one line either
    way), None for anything else: a bug, whose traceback is let through. An AWS error (or one
    raised from an AWS error) is classified by AWS's code (issue 8: access, credentials,
    invalid requests and quotas are the user's), before the tree."""
    from infra.aws_errors import exit_code as aws_exit_code
    from infra.aws_errors import find_aws_error
    from infra.errors import MMEError, UserError

    if find_aws_error(e) is not None:
        return aws_exit_code(e)
    if isinstance(e, UserError):
        return 2
    if isinstance(e, MMEError):
        return 1
    return None


def _report(e: BaseException) -> int | None:
    """Print the one ``error:`` line for a project or AWS error and return its exit code; None
    (nothing printed) for a bug, whose traceback the caller lets through."""
    from infra.aws_errors import find_aws_error, one_line

    code = _exit_code(e)
    if code is not None:
        # AWS said no: the call, the resource, AWS's words (markup stripped)
        line = one_line(e) if find_aws_error(e) is not None else f"{type(e).__name__}: {e}"
        console.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False,
                      soft_wrap=True)
    return code


def _run_flow(fn, **kwargs):
    from flows.retire import RetireIncomplete
    from infra.aws_errors import quiet_tracebacks
    from infra.errors import MMEError

    try:
        # AWS errors and the project's own errors are one line in the logs, not tracebacks
        with quiet_tracebacks(also=(MMEError,)):
            return fn(**kwargs)
    except RetireIncomplete as e:
        for line in e.lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        console.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False,
                      soft_wrap=True)
        raise typer.Exit(1) from None
    except Exception as e:
        code = _report(e)
        if code is None:
            raise
        raise typer.Exit(code) from None


@app.command()
def render(ensemble: str = typer.Argument("text_embedding"),
           target: str = typer.Option("local-cpu", help="local-cpu or sagemaker-gpu"),
           out: Path = typer.Option(..., help="new folder to write the configs into"),
           triton_release: Optional[str] = typer.Option(
               None, help="Triton release YY.MM the TensorRT steps are served with (decides "
                          "INT32 vs INT64 token ids); default: the spec's compile release")) -> None:
    """Render an ensemble's config.pbtxt files for a target (no build work)."""
    from ensembles.catalog import load_ensemble
    from ensembles.render import render_repository
    from infra.errors import UserError

    try:
        spec, _ = load_ensemble(ensemble)
        render_repository(spec, target, out, configs_only=True, triton_release=triton_release)
    except (UserError, FileExistsError) as e:
        _fail(str(e))
    for cfg in sorted(out.glob("*/config.pbtxt")):
        console.print(f"[bold]{cfg.relative_to(out)}[/]")
        print(cfg.read_text())


@app.command()
def build(ensembles: list[str] = typer.Argument(None, help="catalog names (default: text_embedding)"),
          target: str = typer.Option("local-cpu"),
          output_dir: Optional[Path] = typer.Option(None, help="default: $MME_HOME/artifacts/<target>"),
          set_: list[str] = typer.Option(None, "--set", help="ARTIFACT.PARAM=VALUE, e.g. "
                                         "inception_archive.source=/models/inception.tar.gz")) -> None:
    """Build, verify and package ensembles (a Prefect flow run)."""
    _quiet_env()
    from flows.build import build as build_flow

    overrides = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--set {item!r}: expected ARTIFACT.PARAM=VALUE")
        overrides[key] = value
    manifests = _run_flow(build_flow, ensembles=ensembles or None, target=target,
                          output_dir=str(output_dir) if output_dir else None,
                          overrides=overrides or None)
    _print_table("Built", [{"ensemble": m.ensemble, "sha256": m.sha256[:12],
                            "bytes": m.bytes, "artifact": m.artifact,
                            "validation": m.validation.summary()}
                           for m in manifests])


# `mme deploy`'s options, declared once as data: the command takes them as one mapping and
# turns them into the objects the flow takes (BuildSource, SageMakerOptions).
DEPLOY_OPTIONS: dict[str, tuple[Any, Any]] = {
    "ensembles": (list[str], typer.Argument(None)),
    "endpoint": (str, typer.Option("local-mme")),
    "backend": (str, typer.Option("local", help="local, or sagemaker")),
    "target": (Optional[str], typer.Option(None, help="default: local-cpu (local), sagemaker-gpu (sagemaker)")),
    "store": (Optional[str], typer.Option(None, help="object store: default the embedded one; "
                                                     "s3://bucket/prefix for sagemaker")),
    "region": (str, typer.Option("us-east-1", help="sagemaker: AWS region")),
    "role_arn": (Optional[str], typer.Option(None, help="sagemaker: the endpoint's execution role")),
    "instance_type": (str, typer.Option("ml.g4dn.xlarge", help="sagemaker: GPU instance type")),
    "instance_count": (int, typer.Option(1, help="sagemaker: initial instance count")),
    "triton_release": (str, typer.Option(str(DEFAULT_RELEASE), help="sagemaker: Triton container YY.MM")),
    "autoscaling_max": (Optional[int], typer.Option(None, help="sagemaker: enable autoscaling up to N")),
    "autoscaling_min": (Optional[int], typer.Option(None)),
    "target_invocations": (float, typer.Option(200.0, help="sagemaker: invocations per instance per minute")),
    "dry_run": (bool, typer.Option(False, "--dry-run", help="print every call, make none")),
    "allow_target_mismatch": (bool, typer.Option(
        False, "--allow-target-mismatch",
        help="sagemaker: deploy builds made for another target (e.g. local-cpu) anyway")),
    "load_wait": (float, typer.Option(360.0, help="sagemaker: seconds validation retries "
                                                  "429 ModelNotReadyException per model")),
    "model_cache": (str, typer.Option("enabled", help="sagemaker: the MME's ModelCacheSetting, "
                                                      "enabled or disabled")),
    "env": (list[str], typer.Option(None, "--env", help="sagemaker: container environment "
                                    "KEY=VALUE (repeatable), e.g. SAGEMAKER_TRITON_LOG_VERBOSE=false")),
    "inference_ami": (Optional[str], typer.Option(
        None, "--inference-ami", help="sagemaker: the variant's InferenceAmiVersion "
                                      "(NVIDIA driver/CUDA of the instances)")),
    "warm_invocations": (int, typer.Option(20)),
}


def _takes(options: dict[str, tuple[Any, Any]]) -> Any:
    """Give a ``def cmd(**o)`` command the signature Typer reads its options from."""
    import inspect

    def wrap(fn: Any) -> Any:
        fn.__signature__ = inspect.Signature([
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
            for name, (kind, default) in options.items()])
        return fn
    return wrap


@app.command()
@_takes(DEPLOY_OPTIONS)
def deploy(**o: Any) -> None:
    """Publish built ensembles, create/update or reuse the endpoint, validate each by TargetModel."""
    _quiet_env()
    from flows.deploy import deploy as deploy_flow
    from tasks.records import BuildSource

    result = _run_flow(deploy_flow, ensembles=o["ensembles"] or None, endpoint=o["endpoint"],
                       backend=o["backend"], store_uri=o["store"], build=BuildSource(target=o["target"]),
                       warm_invocations=o["warm_invocations"], dry_run=o["dry_run"],
                       sagemaker=_backend_options(o))
    if not o["dry_run"]:
        _print_deploy(result)
        return
    print(f"# dry run: what deploying to {o['endpoint']} ({o['backend']}) would do, in order")
    for line in result.get("warnings") or []:
        print(f"# WARNING: {line}")
    for line in result["calls"]:
        print(line)
    if result.get("hourly_cost_usd") is not None:
        print(f"# instance cost: about ${result['hourly_cost_usd']:.2f}/hour "
              f"({o['instance_count']} x {o['instance_type']}, on-demand, before autoscaling)")


def _backend_options(o: dict[str, Any]) -> Any:
    """The options object of the chosen backend (None: the backend takes none)."""
    from tasks.backends import BACKENDS

    if o["backend"] not in BACKENDS:
        _fail(f"--backend {o['backend']!r}: expected {' or '.join(BACKENDS)}")
    return {"sagemaker": _sagemaker_options}.get(o["backend"], lambda o: None)(o)


def _sagemaker_options(o: dict[str, Any]) -> Any:
    """The SageMaker options of ``mme deploy``; a bad one fails naming the option."""
    from pydantic import ValidationError

    from tasks.backends.sagemaker import SageMakerOptions
    from infra.errors import UserError

    if not o["store"] or not o["store"].startswith("s3://"):
        _fail("--backend sagemaker needs --store s3://bucket/prefix")
    if not o["role_arn"] and not o["dry_run"]:
        _fail("--backend sagemaker needs --role-arn (see `mme iam-policy`)")
    environment = _parse_env(o["env"] or [])
    if o["model_cache"].strip().lower() not in ("enabled", "disabled"):
        _fail(f"--model-cache {o['model_cache']!r}: expected enabled or disabled")
    try:
        options = SageMakerOptions(
            region=o["region"],
            role_arn=o["role_arn"] or "arn:aws:iam::111111111111:role/YOUR-ENDPOINT-ROLE",
            instance_type=o["instance_type"], instance_count=o["instance_count"],
            triton_release=o["triton_release"],
            autoscaling_min=o["autoscaling_min"], autoscaling_max=o["autoscaling_max"],
            target_invocations_per_instance=o["target_invocations"],
            allow_target_mismatch=o["allow_target_mismatch"], load_wait_s=o["load_wait"],
            model_cache=o["model_cache"], environment=environment, inference_ami_version=o["inference_ami"])
    except (UserError, ValidationError) as e:  # pydantic's refusal of an option too
        ami = o["inference_ami"]
        _fail(f"--inference-ami {ami!r}: {e}" if ami and "AMI" in str(e) else str(e))
    return options


def _parse_env(items: list[str]) -> dict[str, str]:
    """``--env KEY=VALUE`` options -> the container Environment; a bad one fails naming it."""
    from infra.errors import UserError
    from infra.sagemaker import check_environment

    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--env {item!r}: expected KEY=VALUE, e.g. SAGEMAKER_TRITON_LOG_VERBOSE=false")
        if key in out:
            _fail(f"--env {item!r}: {key} is given twice")
        try:
            check_environment({key: value})
        except UserError as e:
            _fail(f"--env {item!r}: {e}")
        out[key] = value
    return out


@app.command("iam-policy")
def iam_policy(bucket: str = typer.Option(...), prefix: str = typer.Option(..., help="the store prefix"),
               endpoint: str = typer.Option(...), region: str = typer.Option("us-east-1"),
               account_id: str = typer.Option(..., help="your AWS account id"),
               triton_release: str = typer.Option(str(DEFAULT_RELEASE))) -> None:
    """Print the least-privilege policy (and trust policy) for the endpoint's execution role."""
    from infra import iam, sagemaker as sm
    from infra.errors import UserError

    try:
        image = sm.triton_image_uri(region, triton_release)
        policy = iam.endpoint_execution_policy(
            bucket, f"{prefix.strip('/')}/models/{endpoint}", region=region, account_id=account_id,
            ecr_repository_arns=[iam.ecr_repository_arn(image)], endpoint_name=endpoint)
    except UserError as e:
        _fail(str(e))
    print(json.dumps({"PolicyDocument": policy, "AssumeRolePolicyDocument": iam.trust_policy()}, indent=2))


@app.command()
def retire(ensembles: list[str] = typer.Argument(None),
           endpoint: str = typer.Option("local-mme"),
           stop_endpoint: bool = typer.Option(False, "--stop", help="also stop (local) or delete "
                                              "(sagemaker) the endpoint"),
           store: Optional[str] = typer.Option(None, help="default: from the endpoint's record "
                                               "($MME_HOME/endpoints/<name>/record.json)"),
           backend: Optional[str] = typer.Option(None, help="local or sagemaker; default: from "
                                                 "the endpoint's record"),
           region: Optional[str] = typer.Option(None, help="sagemaker: default from the record"),
           missing_ok: bool = typer.Option(False, "--missing-ok", help="exit 0 when there is "
                                           "nothing (left) to delete")) -> None:
    """Remove ensembles from an endpoint (only what we deployed), or remove the endpoint.

    Exits 1 when something could not be found or deleted, or nothing was deleted."""
    _quiet_env()
    from flows.retire import retire as retire_flow

    from tasks.backends import BACKENDS

    if backend is not None and backend not in BACKENDS:
        _fail(f"--backend {backend!r}: expected {' or '.join(BACKENDS)}")
    for line in _run_flow(retire_flow, ensembles=ensembles or None, endpoint=endpoint,
                          stop_endpoint=stop_endpoint, store_uri=store, backend=backend,
                          region=region, missing_ok=missing_ok):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def invoke(text: list[str] = typer.Argument(None, help="sentences to embed (text ensembles)"),
           image: list[Path] = typer.Option(None, help="image files to classify (image ensembles)"),
           endpoint: str = typer.Option("local-mme"),
           target_model: Optional[str] = typer.Option(
               None, help="default: text_embedding.tar.gz, or image_classifier.tar.gz with --image"),
           url: Optional[str] = typer.Option(None, help="default: the running local endpoint"),
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
            for path, row in zip(image, arr):
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
                   model_data_url: Optional[str] = typer.Option(None, help="default: the embedded store's models/<name>"),
                   port: int = typer.Option(0),
                   max_loaded_models: Optional[int] = typer.Option(None)) -> None:
    """Start the local endpoint in the background (or show the running one)."""
    from infra import paths
    from infra.endpoint_process import start_background
    from tasks.publish import model_data_url as default_url

    info = start_background(name, model_data_url or default_url(paths.store_uri(), name),
                            port=port, max_loaded_models=max_loaded_models)
    console.print(f"endpoint {name} serving on {info.url} (models from {info.model_data_url})")


@endpoint_app.command("serve")
def endpoint_serve(name: str = typer.Option("local-mme"),
                   model_data_url: Optional[str] = typer.Option(None),
                   host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8080),
                   max_loaded_models: Optional[int] = typer.Option(None)) -> None:
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


@app.command()
def demo(report: Optional[Path] = typer.Option(None, help="also write a JSON report here"),
         endpoint: str = typer.Option("mme-demo"),
         keep_endpoint: bool = typer.Option(False, help="leave the endpoint running afterwards")) -> None:
    """The main job: build both ensembles, deploy them to one local endpoint, invoke, report."""
    _quiet_env()
    from flows.build import build as build_flow
    from flows.deploy import deploy as deploy_flow
    from infra.endpoint_process import stop

    ensembles = ["text_embedding", "image_classifier"]
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
            {"name": e["name"], "target": e["target"], "artifact": e["artifact"],
             "sha256": e["sha256"], "bytes": e["bytes"], "validation": e["validation"],
             "latency_ms": e["latency_ms"],
             "direct_triton_latency_ms": e.get("direct_triton_latency_ms"),
             **({"top5": [{"label": t["label"], "prob": t["prob"]} for t in e["validation"]["top5"]]}
                if "top5" in e["validation"] else {})}
            for e in result["ensembles"]],
    }
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


def _print_table(title: str, rows: list[dict]) -> None:
    if not rows:
        return
    table = Table(title=title, title_justify="left")
    for col in rows[0]:
        table.add_column(str(col))
    for r in rows:
        table.add_row(*[str(v) for v in r.values()])
    Console().print(table)


def _print_deploy(result: dict) -> None:
    rows = []
    for e in result["ensembles"]:
        v, lat = e["validation"], e["latency_ms"]
        direct = e.get("direct_triton_latency_ms") or {}
        rows.append({"ensemble": e["name"], v["metric"]: f"{v['value']:.6f}",
                     "ok": "yes" if v["passed"] else "NO",
                     "cold ms": f"{lat['cold']:.0f}", "p50 ms": f"{lat['p50']:.1f}",
                     "p99 ms": f"{lat['p99']:.1f}",
                     "Triton p50": f"{direct.get('p50', float('nan')):.1f}"})
    _print_table(f"Endpoint {result['endpoint']} ({result['url']})", rows)
    for e in result["ensembles"]:
        if "top5" in e["validation"]:
            _print_table(f"{e['name']}: top-5 on the sample image",
                         [{"label": t["label"], "prob": f"{t['prob']:.4f}"} for t in e["validation"]["top5"]])


def main() -> None:
    """The ``mme`` entry point. A project error that escapes a command outside a flow (``mme
    endpoint start`` on a taken port) is one line with the tree's exit code too."""
    try:
        app()
    except Exception as e:
        code = _report(e)
        if code is None:
            raise
        sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
