"""What every ``mme`` command shares: the Typer apps, the console, and how an error that ends a
command becomes one ``error:`` line and an exit code (2: the user's to fix, 1: another project
or AWS error; a bug keeps its traceback)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from prefect import Flow

P = ParamSpec("P")  # a flow's parameters ...
R = TypeVar("R")  # ... and its result, through _run_flow

app = typer.Typer(help="Build Triton ensembles and ship them to multi-model endpoints.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
endpoint_app = typer.Typer(help="The local multi-model endpoint.", no_args_is_help=True)
app.add_typer(endpoint_app, name="endpoint")
#: notes and progress (stderr; silenced by ``mme --quiet``); soft-wrapped: a piped line is never
#: broken mid-path at 80 columns
console = Console(stderr=True, soft_wrap=True)
#: the ``error:`` lines (stderr), which ``--quiet`` never silences
errors = Console(stderr=True, soft_wrap=True)

#: ``--json`` on every command that reports: one JSON document on stdout (its shape per command
#: is in docs/reference/cli-json.md); without it, the human summary
JSON_OPTION = typer.Option("--json", help="print the result as one JSON document on stdout "
                                          "(shapes: docs/reference/cli-json.md)")
#: wide enough that a piped table is never hard-wrapped (rich's width when stdout is no terminal)
PIPED_WIDTH = 10_000


def results() -> Console:
    """The console for results (stdout). Not a terminal: no width limit and no soft wraps, so
    piped output keeps whole lines (rich would wrap at 80 columns mid-path)."""
    if sys.stdout.isatty():
        return Console(soft_wrap=True)
    return Console(soft_wrap=True, width=PIPED_WIDTH, color_system=None)


def emit_json(doc: Any) -> None:
    """The result as one JSON document on stdout (the ``--json`` of every command)."""
    print(json.dumps(doc, indent=2, sort_keys=False, default=str))


def say(line: str) -> None:
    """A result line for people, on stdout (plain text: no markup, no wrapping)."""
    results().print(line, markup=False, highlight=False)


def _quiet_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _fail(message: str) -> NoReturn:
    """One ``error:`` line (the user's to fix) and exit 2."""
    errors.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(2)


def exit_for(e: Exception) -> NoReturn:
    """One ``error:`` line and the error tree's exit code; a bug keeps its traceback."""
    code = _report(e)
    if code is None:
        raise e
    raise typer.Exit(code) from None


def _exit_code(e: BaseException) -> int | None:
    """What the CLI does with an error that ended a command (see infra/errors.py): 2 for the
    user's to fix (a :class:`UserError`), 1 for another :class:`MMEError` (one line either
    way), None for anything else: a bug, whose traceback is let through. An AWS error (or one
    raised from an AWS error) is classified by AWS's code (issue 8: access, credentials,
    invalid requests and quotas are the user's), before the tree."""
    from infra.aws.errors import exit_code as aws_exit_code
    from infra.aws.errors import find_aws_error
    from infra.errors import MMEError, UserError

    if find_aws_error(e) is not None:
        return aws_exit_code(e)
    if isinstance(e, UserError) or _typed_path_error(e) is not None:
        return 2
    if isinstance(e, MMEError):
        return 1
    return None


def _typed_path_error(e: BaseException) -> str | None:
    """The one line for a file the user named on the command line that cannot be read (``mme
    invoke --image missing.jpg``, a directory, a file without read permission): the user's to
    fix, so one line and exit 2, not a traceback; None for any other error (an ``OSError`` on
    a path the user did not type stays a bug's traceback)."""
    import sys

    if not isinstance(e, OSError) or e.filename is None:
        return None
    name = os.path.normpath(os.fsdecode(e.filename))
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        option, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if os.path.normpath(value or arg) != name or (arg.startswith("-") and not eq):
            continue
        option = option if eq else (args[i - 1] if i and args[i - 1].startswith("--") else "")
        reason = ("is a directory, not a file" if isinstance(e, IsADirectoryError) else
                  "no such file" if isinstance(e, FileNotFoundError) else
                  "cannot be read (no permission)" if isinstance(e, PermissionError) else
                  f"cannot be read ({e.strerror or e})")
        return f"{option} {value or arg}: {reason}".strip()
    return None


def _report(e: BaseException) -> int | None:
    """Print the one ``error:`` line for a project or AWS error and return its exit code; None
    (nothing printed) for a bug, whose traceback the caller lets through."""
    from infra.aws.errors import find_aws_error, one_line

    code = _exit_code(e)
    if code is not None:
        # AWS said no: the call, the resource, AWS's words (markup stripped)
        line = (one_line(e) if find_aws_error(e) is not None else _typed_path_error(e)
                or f"{type(e).__name__}: {e}")
        errors.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False)
    return code


def _run_flow(fn: Flow[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run the flow ``fn`` for a command and return its result; an error that ends it is one
    ``error:`` line and the tree's exit code (a bug keeps its traceback)."""
    from flows.retire import RetireIncomplete
    from infra.aws.errors import quiet_tracebacks
    from infra.errors import MMEError
    from infra.log_once import said_once
    from infra.processes.prefect_server import own_temporary_server

    own_temporary_server()  # a kill -9 of this command takes Prefect's temporary server with it
    try:
        # AWS errors and the project's own errors are one line in the logs, not tracebacks,
        # and said once: by the error line below, not by every Prefect logger that saw them
        with said_once(lambda e: _exit_code(e) is not None), quiet_tracebacks(also=(MMEError,)):
            return fn(*args, **kwargs)
    except RetireIncomplete as e:
        for line in e.lines:
            errors.print(line, markup=False, highlight=False)
        errors.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False)
        raise typer.Exit(1) from None
    except Exception as e:
        code = _report(e)
        if code is None:
            raise
        raise typer.Exit(code) from None


def _print_table(title: str, rows: Sequence[Mapping[str, object]]) -> None:
    if not rows:
        return
    table = Table(title=title, title_justify="left")
    for col in rows[0]:
        table.add_column(str(col))
    for r in rows:
        table.add_row(*[str(v) for v in r.values()])
    results().print(table)


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
    for e in result["ensembles"]:  # what to invoke it by (a new name per version)
        if e.get("target_model"):
            say(f"{e['name']}: TargetModel {e['target_model']}")
    for e in result["ensembles"]:
        if "top5" in e["validation"]:
            _print_table(f"{e['name']}: top-5 on the sample image",
                         [{"label": t["label"], "prob": f"{t['prob']:.4f}"} for t in e["validation"]["top5"]])
    for line in result.get("pruned") or []:  # older versions deleted after validation
        say(line)
