"""``mme fleet deploy --dry-run``, ``mme fleet retire --dry-run`` and ``mme fleet build
--dry-run``: what the run would do,
computed by the same plain functions the flows use (no Prefect run, no lock, no write).

Why in the CLI and not a flow parameter: the plan is the flows' first, read-only steps
(:func:`tasks.fleet.deploy.plan_jobs`, :func:`tasks.fleet.retire.pick_retirees`); calling them
directly shows exactly the jobs a real run would start with, and changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flows.cli.common import emit_json, exit_for, say
from infra import paths


def deploy_plan(fleet: str, endpoints: list[str], backend: str, store: str | None,
                build_dir: str | None, policy: Any) -> dict[str, Any]:
    """The jobs a fleet deploy would run: publish + validate (new, changed, moved), canaries,
    unchanged variants, and the routed variants that left the build (they would be marked
    retiring). SageMaker endpoints are described (read-only) for their model store."""
    from tasks.fleet.deploy import canary_jobs, plan_jobs, read_state_task
    from tasks.fleet.routes import assign_shards

    store_uri = store
    if backend == "sagemaker":
        from tasks.fleet.endpoints import sagemaker_endpoints_task

        store_uri, _, _ = sagemaker_endpoints_task.fn(endpoints, store, policy.region)
    store_uri = store_uri or paths.store_uri()
    name, desired, table, build = read_state_task.fn(fleet, build_dir, store_uri)
    shards = assign_shards(desired, endpoints, {v: r.endpoint for v, r in table.variants.items()})
    jobs, unchanged = plan_jobs(desired, table, shards)
    canaries = canary_jobs(desired, table, unchanged, policy.canary, policy.seed)
    return {"fleet": name, "dry_run": True, "endpoints": endpoints, "store": store_uri,
            "build": build.id, "variants": len(desired),
            "jobs": [{"variant": j.variant, "kind": j.kind, "endpoint": j.endpoint,
                      "target_model": j.target_model, "sha256": j.sha256, "bytes": j.size}
                     for j in [*jobs, *canaries]],
            "unchanged": len(unchanged),
            "leaving": sorted(v for v in table.variants if v not in desired)}


def deploy_dry_run(fleet: str, endpoints: list[str], backend: str, store: str | None,
                   build_dir: str | None, policy: Any, as_json: bool) -> None:
    """Print :func:`deploy_plan` (a table of jobs, or ``--json``); a refusal is one line."""
    try:
        plan = deploy_plan(fleet, endpoints, backend, store, build_dir, policy)
    except Exception as e:
        exit_for(e)
    if as_json:
        emit_json(plan)
        return
    from flows.cli.common import _print_table

    _print_table(f"fleet {plan['fleet']}: dry run (build {plan['build']}, store {plan['store']})",
                 [{"variant": j["variant"], "job": j["kind"], "endpoint": j["endpoint"],
                   "TargetModel": j["target_model"]} for j in plan["jobs"]])
    published = sum(j["kind"] != "canary" for j in plan["jobs"])
    say(f"fleet {plan['fleet']}: would publish and validate {published}, invoke "
        f"{len(plan['jobs']) - published} canaries, leave {plan['unchanged']} unchanged, mark "
        f"{len(plan['leaving'])} leaving variant(s) retiring; nothing changed (dry run)")


def retire_plan(fleet: str, variants: list[str], shard: str | None, everything: bool,
                now: bool, grace_s: float, store: str | None) -> dict[str, Any]:
    """What a fleet retire would do, on an in-memory copy of the routing table (not written):
    the variants it would mark retiring or remove, and the versions it would delete."""
    from tasks.fleet.retire import pick_retirees
    from tasks.fleet.routes import expired, mark_retiring, remove, require_routes, unreferenced

    table = require_routes(store or paths.store_uri(), fleet)
    names = pick_retirees(table, variants, shard, everything)
    when = datetime.now(UTC)
    marked = [] if now else mark_retiring(table, names, when)
    gone = sorted(set(names if now else []) | set(expired(table, timedelta(seconds=grace_s), when)))
    versions = unreferenced(table, remove(table, gone))
    return {"fleet": fleet, "dry_run": True, "marked": marked, "removed": gone,
            "deleted": [f"{v.endpoint or '?'}/{v.target_model}" for v in versions],
            "routed": len(table.variants)}


def build_dry_run(fleet: str, output_dir: Path | None, only: list[str] | None, publish_to: str | None,
                  as_json: bool) -> None:
    """``mme fleet build --dry-run``: the variants it would build, leave unchanged, leave for a
    later run or drop from the index, and where it writes (:mod:`tasks.fleet.build_plan`); no
    artifact made, no Triton, no Prefect."""
    from flows.cli.dry_run import show_plan
    from tasks.fleet.build_plan import plan_fleet_build

    try:
        plan = plan_fleet_build(fleet, str(output_dir) if output_dir else None, only)
    except Exception as e:
        exit_for(e)
    doc = {**plan.model_dump(), "publish_to": publish_to}
    lines = [f"fleet {plan.fleet} ({plan.target}, {plan.layout}): output {plan.output_dir}"]
    lines += [f"  shared artifact {name}: {status}" for name, status in plan.shared.items()]
    if plan.template_key is None:
        lines.append("  template key unknown until the shared artifacts are produced: every variant "
                     "would be built (unchanged ones keep their bytes)")
    if plan.note:
        lines.append(f"  {plan.note}")
    if plan.shards:
        lines.append(f"  fused shards unchanged: {', '.join(plan.shards)}")
    lines += [f"would build {name}" for name in plan.build]
    lines += [f"unchanged {name}" for name in plan.unchanged]
    lines += [f"left as built (not asked for) {name}" for name in plan.later]
    lines += [f"would drop {name} from the fleet index (no longer declared; files stay until "
              f"mme fleet gc)" for name in plan.dropped]
    lines += [f"refused {name}: {reason}" for name, reason in plan.refused.items()]
    if publish_to:
        lines.append(f"would publish what changed to {publish_to}")
    show_plan(doc, lines, f"fleet {plan.fleet}: would build {len(plan.build)}, leave "
              f"{len(plan.unchanged)} unchanged, {len(plan.later)} not asked for, drop "
              f"{len(plan.dropped)}, refuse {len(plan.refused)}", as_json)
