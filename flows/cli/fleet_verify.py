"""``mme fleet verify``: is every object a fleet's routing table points to in the store, with
its recorded bytes? (flows/fleet_integrity.py; ``mme fleet deploy --verify`` prints the same
findings.) Registered on ``fleet_app`` after ``deploy``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.common import JSON_OPTION, _print_table, _quiet_env, _run_flow, emit_json, say
from flows.cli.fleet import fleet_app
from flows.cli.fleet_ref import fleet_name


def print_findings(v: dict[str, Any]) -> None:
    """The routed objects that were not as the table records (a table), then one summary line."""
    _print_table(f"Fleet {v['fleet']}: routed objects not as the routing table records them",
                 [{"variant": f["variant"], "endpoint": f["endpoint"],
                   "version": "current" if f["current"] else "previous",
                   "TargetModel": f["target_model"], "state": f["state"], "detail": f["detail"]}
                  for f in v["findings"]])
    states = ", ".join(f"{n} {k}" for k, n in sorted(v["states"].items())) or "nothing routed"
    say(f"fleet {v['fleet']}: {v['checked']} routed objects checked on {len(v['endpoints'])} "
        f"endpoint(s): {states}; {len(v['remaining'])} problem(s) remain")


@fleet_app.command("verify")
def verify(fleet: str = typer.Argument(..., help="the fleet: its name, file or build folder"),
           repair: bool = typer.Option(False, "--repair", help="re-publish missing or corrupt "
                                                               "objects from the fleet's build"),
           deep: bool = typer.Option(False, "--deep", help="read and hash every object (else: "
                                                           "listing + publish index, hashing only "
                                                           "what the index does not vouch for)"),
           build_dir: Path | None = typer.Option(None, help="the build a repair takes bytes from "
                                                            "(default: every build of the fleet)"),
           store: str | None = typer.Option(None, help="default: the embedded store"),
           as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Check every routed object of a fleet in the store (exit 1 while any is missing or corrupt)."""
    from flows.fleet_integrity import fleet_verify

    _quiet_env()
    got = _run_flow(fleet_verify, fleet=fleet_name(fleet), store_uri=store, repair=repair, deep=deep,
                    build_dir=str(build_dir) if build_dir else None, fail_on_problems=False)
    if as_json:
        emit_json(got)
    else:
        print_findings(got)
    if got["remaining"]:
        raise typer.Exit(1)
