"""The CLI reference, rendered from the Typer app itself at docs build time.

Why generated: a hand-kept list of commands and options drifts the day an option is added;
walking ``flows.cli.app`` through click (the library Typer is built on) gives the same usage
line, options and help text that ``mme ... --help`` prints, so the page cannot disagree with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import typer

CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)


@dataclass(frozen=True)
class Param:
    """One option or argument as ``--help`` shows it: its spelling, and its help with default."""

    spelling: str
    help: str
    kind: str  # "option" or "argument"


@dataclass(frozen=True)
class Command:
    """One command of the ``mme`` tree (a group too): its full path, usage, help and params."""

    path: str
    usage: str
    help: str
    params: list[Param] = field(default_factory=list)
    is_group: bool = False


def _params(cmd: Any, ctx: Any) -> list[Param]:
    """The params ``--help`` lists (hidden ones left out, as --help leaves them out)."""
    rows = []
    for p in cmd.get_params(ctx):
        record = p.get_help_record(ctx)
        if record is None or getattr(p, "hidden", False):
            continue
        rows.append(Param(spelling=record[0], help=record[1], kind=p.param_type_name))
    return rows


def walk(app: typer.Typer | None = None) -> list[Command]:
    """Every command of the app, depth first in ``--help`` order (the root ``mme`` first)."""
    if app is None:
        from flows.cli import app as mme_app

        app = mme_app
    root = typer.main.get_command(app)
    out: list[Command] = []

    def visit(cmd: Any, ctx: Any) -> None:
        is_group = hasattr(cmd, "list_commands")
        out.append(Command(path=ctx.command_path, usage=" ".join(cmd.collect_usage_pieces(ctx)),
                           help=(cmd.help or "").strip(), params=_params(cmd, ctx), is_group=is_group))
        if not is_group:
            return
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                visit(sub, sub.context_class(sub, info_name=name, parent=ctx))

    visit(root, root.context_class(root, info_name="mme"))
    return out


def prose(text: str) -> str:
    """Help text as Markdown prose: ``<target>`` outside code spans would be read as an HTML
    tag and vanish, so angle brackets are escaped there (code spans, single or double
    backticks, keep them as they are)."""
    out, last = [], 0
    for span in CODE_SPAN.finditer(text):
        out += [_escape(text[last:span.start()]), span.group(0)]
        last = span.end()
    return "".join(out) + _escape(text[last:])


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str) -> str:
    """Text safe inside one Markdown table cell."""
    return prose(text).replace("|", "\\|").replace("\n", " ").strip() or "&nbsp;"


def _anchor(path: str) -> str:
    return path.replace(" ", "-")


def render(commands: list[Command] | None = None) -> str:
    """The CLI reference page: a list of commands, then one section per command."""
    commands = walk() if commands is None else commands
    lines = ["# CLI reference", "",
             "Generated from the Typer app (`flows.cli.app`) when the site is built: the same usage, "
             "options and help that `mme COMMAND --help` prints. How a fleet is named, `--json` "
             "and its shapes, `--dry-run`, `--quiet`/`--verbose` and the exit codes: "
             "[CLI grammar and JSON output](cli-json.md).", ""]
    for c in commands:
        depth = c.path.count(" ")
        first = c.help.split("\n\n")[0].replace("\n", " ")
        lines.append(f"{'    ' * depth}- [`{c.path}`](#{_anchor(c.path)}): {prose(first)}")
    lines.append("")
    for c in commands:
        lines += [f"## `{c.path}` {{ #{_anchor(c.path)} }}", "", "```text", f"Usage: {c.path} {c.usage}", "```",
                  "", prose(c.help), ""]
        if c.params:
            lines += ["| option / argument | help |", "|---|---|"]
            lines += [f"| `{p.spelling}` | {_cell(p.help)} |" for p in c.params]
            lines.append("")
    return "\n".join(lines)
