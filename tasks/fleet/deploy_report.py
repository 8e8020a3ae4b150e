"""What a fleet deploy leaves in Prefect, under keys scoped by fleet: the
``fleet-deploy-<fleet>`` markdown (counts: published, validated, live, retiring, removed) and
the ``fleet-deploy-variants-<fleet>`` table (one row per variant, failed ones first, each with
its endpoint, what happened to it and the whole reason when it did not go live). Descriptions
carry the counts ("97 ok, 3 failed"). Progress is the ``fleet-deploy-progress`` bar that the
validation moves (:func:`tasks.fleet.deploy.validation_progress`).

A deploy in which variants did not go live ends ``Failed`` with a one-line message
(:func:`deploy_failure`), not a raised exception: the others went live, and a traceback would
read like a bug."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed, State

from tasks.fleet.deploy import Desired, FleetDeployFailed
from tasks.fleet.report import artifact_key, one_line_expected_failures
from tasks.runtime.text import short


def _outcome(variant: str, doc: Mapping[str, Any]) -> str:
    if variant in doc["failed"]:
        return "failed"
    if variant in doc["published"]:
        return "published"
    if variant in doc["canaries"]:
        return "unchanged, validated (canary)"
    return "unchanged" if variant in doc["live"] else "not live"


def deploy_rows(doc: Mapping[str, Any], desired: Mapping[str, Desired],
                shards: Mapping[str, str]) -> list[dict[str, object]]:
    """One row per variant of the build, then the ones held on their route (their last build
    failed), retiring or removed; failed first."""
    rows: list[dict[str, object]] = [
        {"variant": v, "outcome": _outcome(v, doc), "reason": doc["failed"].get(v, ""),
         "endpoint": shards.get(v, ""), "sha256": short(d.sha256), "live": v in doc["live"]}
        for v, d in desired.items()]
    gone = [(v, "held: last build failed, previous version stays routed") for v in doc.get("held", [])]
    gone += [(v, "retiring") for v in doc["retiring"] if v not in desired]
    gone += [(v, "removed") for v in doc["removed"] if v not in desired]
    rows += [{"variant": v, "outcome": what, "reason": "", "endpoint": "", "sha256": "", "live": False}
             for v, what in gone]
    return sorted(rows, key=lambda r: (r["outcome"] != "failed", str(r["variant"])))


def counts_line(doc: Mapping[str, Any]) -> str:
    failed = len(doc["failed"])
    return f"{doc['variants'] - failed} ok, {failed} failed"


def deploy_markdown(doc: Mapping[str, Any]) -> str:
    """The report, one paragraph or list per fact (blank lines between blocks render the same
    in both Prefect UIs)."""
    facts = [f"- variants in the build: {doc['variants']}; unchanged: {doc['unchanged']}",
             f"- published (new, changed or moved): {len(doc['published'])}; validated: "
             f"{len(doc['validated'])} (canaries: {len(doc['canaries'])}); validated variants "
             f"unloaded beyond keep_loaded={doc['validation']['keep_loaded']}: "
             f"{doc['validation']['unloaded']}",
             f"- live now: {len(doc['live'])}; routed: {doc['routed']}; table: `{doc['routes']}`",
             f"- marked retiring: {len(doc['retiring'])}; un-retired (in build "
             f"`{(doc['build'] or {}).get('id')}` again): {len(doc['unretired'])}; removed: "
             f"{len(doc['removed'])}; objects deleted: {len(doc['deleted'])}"]
    if doc["verify"]:
        states = doc["verify"]["states"]
        facts.append(f"- verified: {doc['verify']['checked']} routed objects ("
                     + ", ".join(f"{n} {k}" for k, n in sorted(states.items())) + ")")
    blocks = [f"# Fleet deploy of `{doc['fleet']}` to {', '.join(doc['endpoints'])}",
              f"{counts_line(doc)}.", "\n".join(facts)]
    if doc["unretired"]:
        blocks.append("\n".join(["| un-retired variant | sha256 | manifest |", "|---|---|---|",
                                 *(f"| {v} | `{u['sha256'][:12]}` | `{u['manifest']}` |"
                                   for v, u in doc["unretired"].items())]))
    if doc["failed"]:
        blocks += ["## Failed", "\n".join(["| failed variant | reason |", "|---|---|",
                                           *(f"| {v} | {r.replace('|', '/')} |"
                                             for v, r in doc["failed"].items())])]
    return "\n\n".join(blocks) + "\n"


def report_deploy(doc: Mapping[str, Any], desired: Mapping[str, Desired],
                  shards: Mapping[str, str]) -> None:
    """The markdown report and the per-variant table of one deploy."""
    fleet, said = doc["fleet"], counts_line(doc)
    create_markdown_artifact(key=artifact_key("fleet-deploy", fleet), markdown=deploy_markdown(doc),
                             description=f"Fleet deploy of {fleet}: {said}")
    create_table_artifact(key=artifact_key("fleet-deploy-variants", fleet),
                          table=deploy_rows(doc, desired, shards),
                          description=f"Fleet deploy of {fleet}, every variant: {said}")


def deploy_failure(doc: Mapping[str, Any]) -> State | None:
    """The run's end when variants did not go live: ``Failed`` with a one-line message, its
    data the :class:`FleetDeployFailed` that calling the flow raises; None when all did."""
    failed: Mapping[str, str] = doc["failed"]
    if not failed:
        return None
    message = (f"fleet {doc['fleet']}: {len(failed)} variant(s) did not go live (their previous "
               f"version stays routed): " + "; ".join(f"{v}: {r}" for v, r in list(failed.items())[:10])
               ).replace("\n", " ")
    one_line_expected_failures()  # a worker's engine says it as one line (tasks.fleet.report)
    return Failed(message=message, data=FleetDeployFailed(message))
