"""``--dry-run`` of the build-side and housekeeping commands (``mme build``, ``render``,
``cache-clear``, ``profile --write``, ``demo``, ``watch``): what the command would do, read from
the same plain functions it runs, printed as "would ..." lines ending "nothing changed (dry
run)", or with ``--json`` as one document with ``"dry_run": true``.

Why plain functions and not the flows with a flag: a flow run contacts Prefect's server and a
flow's first steps already make things (artifacts, a lock, a state file); a dry run reads only.
The endpoint's dry runs are in :mod:`flows.cli.endpoint_dry_run`, the fleet's in
:mod:`flows.cli.fleet_dry_run` and :mod:`flows.cli.fleet_example`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from flows.cli.common import emit_json, exit_for, say
from infra.paths import folder_usage

if TYPE_CHECKING:
    from ensembles.spec import EnsembleSpec, Target

#: ``--dry-run`` on every command that changes state (issue 21): the plan, nothing changed
DRY_RUN_OPTION = typer.Option("--dry-run", help="print what it would do (docs/reference/cli-json.md); "
                                                "change nothing, start nothing")


def show_plan(doc: dict[str, Any], lines: list[str], summary: str, as_json: bool) -> None:
    """A dry run's result: ``doc`` with ``"dry_run": true`` first (``--json``), or ``lines``
    and the ``summary`` line, which ends "nothing changed (dry run)"."""
    if as_json:
        emit_json({"dry_run": True, **doc})
        return
    for line in lines:
        say(line)
    say(f"{summary}; nothing changed (dry run)")


def build_plans(names: list[str], target: Target, output_dir: Path | None,
                overrides: dict[str, str]) -> list[dict[str, Any]]:
    """Each ensemble's :class:`tasks.build.build_plan.EnsembleBuildPlan` as a document; an
    unknown ensemble or a bad ``--set`` is the build's own one-line error (exit 2)."""
    from ensembles.catalog import ensemble_dir, load_ensemble
    from tasks.build.build_plan import plan_ensemble_build
    from tasks.build.ensemble import build_output_dir, check_overrides

    out = build_output_dir(target, output_dir)
    try:
        if overrides:
            check_overrides([load_ensemble(name)[0] for name in names], overrides)
        return [plan_ensemble_build(ensemble_dir(name), target, out, overrides).model_dump() for name in names]
    except Exception as e:
        exit_for(e)


def build_dry_run(names: list[str], target: Target, output_dir: Path | None,
                  overrides: dict[str, str], as_json: bool) -> None:
    """``mme build --dry-run``: per ensemble, the artifacts the cache holds or the build would
    produce, where the tarball would go, and whether it is up to date."""
    plans = build_plans(names, target, output_dir, overrides)
    lines = []
    for p in plans:
        verb = "up to date" if p["status"] == "up to date" else "would build"
        lines.append(f"{p['ensemble']} ({p['target']}): {verb} -> {p['tarball']} ({p['reason']})")
        lines += [f"  artifact {name}: {status}" for name, status in p["artifacts"].items()]
    todo = sum(p["status"] == "build" for p in plans)
    show_plan({"target": target, "ensembles": plans}, lines,
              f"would build {todo}, {len(plans) - todo} up to date", as_json)


def render_dry_run(spec: EnsembleSpec, target: Target, out: Path, triton_release: str | None, as_json: bool) -> None:
    """``mme render --dry-run``: the config files it would write under ``out`` (rendered in a
    temporary folder that is removed, so the bytes are exactly the ones it would write)."""
    import errno

    from ensembles.render import render_repository

    if out.exists():  # what render_repository refuses, in its words (the command says it)
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(out))
    with tempfile.TemporaryDirectory(prefix="mme-render-") as tmp:
        repo = render_repository(spec, target, Path(tmp) / "repo", configs_only=True,
                                 triton_release=triton_release)
        files = [{"path": str(out / cfg.relative_to(repo)), "bytes": cfg.stat().st_size}
                 for cfg in sorted(repo.glob("*/config.pbtxt"))]
    show_plan({"ensemble": spec.name, "target": target, "out": str(out), "files": files},
              [f"would write {f['path']} ({f['bytes']} bytes)" for f in files],
              f"{spec.name}: would write {len(files)} config files under {out}", as_json)


def cache_clear_doc(folder: Path) -> dict[str, Any]:
    """What ``mme cache-clear`` deletes (or deleted): the folder, its file count and bytes."""
    files, size = folder_usage(folder)
    return {"path": str(folder), "exists": folder.exists(), "files": files, "bytes": size,
            "mib": round(size / 2**20, 1)}


def profile_dry_run(manifest_path: Path, tarball: Path, ensemble: str, max_batch: int,
                    write: bool, as_json: bool) -> None:
    """``mme profile --dry-run``: what it would measure (in a real Triton: not started here)
    and, with ``--write``, the manifest it would record the footprint in."""
    doc = {"ensemble": ensemble, "tarball": str(tarball), "manifest": str(manifest_path),
           "max_batch": max_batch, "write": write}
    lines = [f"would measure {ensemble}'s footprint ({tarball}, batch 1 and {max_batch}) in a real Triton"]
    if write:
        lines.append(f"would record the footprint in {manifest_path}")
    show_plan(doc, lines, f"{ensemble}: would write " + (str(manifest_path) if write else "nothing"),
              as_json)


def demo_dry_run(ensembles: list[str], endpoint: str, report: Path | None, keep_endpoint: bool,
                 as_json: bool) -> None:
    """``mme demo --dry-run``: its steps in order: the builds (each ensemble's plan), the local
    endpoint it would start and deploy to, the invokes that validate, the stop and the report."""
    from infra import paths
    from tasks.deploy.publish import model_data_url

    plans = build_plans(ensembles, "local-cpu", None, {})
    models = model_data_url(paths.store_uri(), endpoint)
    steps = [f"1/3 build {p['ensemble']} (local-cpu): "
             + ("up to date" if p["status"] == "up to date" else f"would build ({p['reason']})")
             + f" -> {p['tarball']}" for p in plans]
    steps += [f"2/3 start the local endpoint {endpoint} (or use it if it runs; models from {models}) and deploy "
              f"{', '.join(ensembles)} to it",
              f"2/3 invoke each ensemble on {endpoint} with its validation sample (cold, then p50/p99)",
              f"2/3 leave endpoint {endpoint} running" if keep_endpoint else f"2/3 stop endpoint {endpoint}",
              "3/3 print the report" + (f" and write it to {report}" if report else "")]
    show_plan({"endpoint": endpoint, "model_data_url": models, "builds": plans, "steps": steps,
               "keep_endpoint": keep_endpoint, "report": str(report) if report else None}, steps,
              f"demo: would build {sum(p['status'] == 'build' for p in plans)} of {len(plans)}, deploy "
              f"{len(ensembles)} to {endpoint}", as_json)
