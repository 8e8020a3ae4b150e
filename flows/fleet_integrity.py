"""The ``fleet-verify`` flow: is every object a fleet's routing table points to in the store,
with the bytes the table records? (tasks in :mod:`tasks.fleet.integrity`)

Reads the routing table (a fleet without one is refused), checks every version it references,
current and kept, with one listing and one sync-index GET per endpoint model prefix (``deep``:
every object read and hashed), and with ``repair`` re-publishes the missing and corrupt ones
from the fleet's build(s), holding the endpoints' deploy locks. Ends Failed
(:class:`~tasks.fleet.integrity.FleetInconsistent`) when problems remain, unless
``fail_on_problems`` is off (the CLI prints the table and sets the exit code itself).
"""

import contextlib
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.common import endpoint_lock
from infra import paths
from tasks.fleet.integrity import (
    FleetInconsistent,
    build_sources_task,
    fleet_table_task,
    verify_task,
)


@flow(name="fleet-verify", log_prints=True)
def fleet_verify(fleet: str, store_uri: str | None = None, repair: bool = False,
                 deep: bool = False, build_dir: str | None = None,
                 fail_on_problems: bool = True) -> dict[str, Any]:
    """Check (and with ``repair`` restore) every routed object of ``fleet``; ``build_dir``: the
    build whose tarballs a repair uses (default: every build of the fleet under ``$MME_HOME``)."""
    store_uri = store_uri or paths.store_uri()
    table = fleet_table_task(store_uri, fleet)
    with contextlib.ExitStack() as locks:
        if repair:  # writes into the model prefixes: one deploy, retire or repair at a time
            for endpoint in sorted({r.endpoint for r in table.variants.values()}
                                   | set(table.endpoints)):
                locks.enter_context(endpoint_lock(endpoint))
            table = fleet_table_task(store_uri, fleet)  # as it is now, under the locks
        sources = build_sources_task(table.fleet, build_dir) if repair else {}
        verified, _ = verify_task(store_uri, table, sources, repair, deep)
    doc = {**verified.summary().model_dump(mode="json"), "repair": repair, "deep": deep}
    _report(doc)
    if doc["remaining"] and fail_on_problems:
        raise FleetInconsistent(f"fleet {fleet}: {len(doc['remaining'])} routed object(s) missing "
                                f"or corrupt" + ("" if repair else " (`mme fleet verify "
                                                 f"{fleet} --repair` re-publishes them)"))
    return doc


def _report(doc: dict[str, Any]) -> None:
    states = ", ".join(f"{n} {k}" for k, n in sorted(doc["states"].items()))
    lines = [f"# Fleet verify of `{doc['fleet']}`", "",
             f"- routed objects checked: {doc['checked']} ({states}) on "
             f"{len(doc['endpoints'])} endpoint(s), {doc['requests']} store requests",
             f"- repair: {doc['repair']}; deep: {doc['deep']}; problems remaining: "
             f"{len(doc['remaining'])}"]
    if doc["findings"]:
        lines += ["", "| variant | endpoint | version | TargetModel | state | detail |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {f['variant']} | {f['endpoint']} | {'current' if f['current'] else 'previous'}"
                  f" | `{f['target_model']}` | {f['state']} | {f['detail'].replace('|', '/')} |"
                  for f in doc["findings"]]
    create_markdown_artifact(key="fleet-verify", markdown="\n".join(lines) + "\n",
                             description=f"Fleet verify of {doc['fleet']}")
