"""The ``rollback`` flow: an ensemble back to the version it replaced (:mod:`tasks.deploy.rollback`).

A flow, not only a command, so a rollback can be run by hand from the Prefect UI (the
``rollback`` deployment) and leaves a flow run behind it: who went back, from which version to
which, when. It holds the endpoint's deploy lock, as a deploy or retire of it does.
"""

# (no ``from __future__ import annotations``: Prefect builds the parameter model of a flow
# started by a deployment from these annotations)
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.common import endpoint_lock
from tasks.deploy.rollback import rollback_task


@flow(name="rollback", log_prints=True)
def rollback(ensemble: str, endpoint: str = "local-mme", invoke: bool = True,
             url: str | None = None) -> dict[str, Any]:
    """Point an ensemble back to the version it replaced (kept in the store), after checking
    its object and that the endpoint answers it; then the endpoint record and the store's
    ledger name it current.

    Args:
        ensemble (str): The ensemble to roll back, e.g. text_embedding.
        endpoint (str): The endpoint it is deployed to (its record on this machine says where).
        invoke (bool): Invoke the kept version with the build's sample request before switching.
        url (str | None): A local endpoint's URL (default: the running endpoint of that name).
    """
    with endpoint_lock(endpoint):  # no deploy or retire of the endpoint meanwhile
        done = rollback_task(endpoint, ensemble, invoke, url)
    doc = done.to_json()
    create_markdown_artifact(
        key="rollback", description=f"{ensemble} on {endpoint} rolled back",
        markdown=f"**{ensemble}** on `{endpoint}`: `{doc['from']}` -> `{doc['to']}` (now current; "
                 f"the other kept)\n\n- answered: {doc['answered'] if invoke else 'not invoked'}\n"
                 f"- {doc['ledger']}\n")
    print(f"{ensemble} on {endpoint}: {doc['from']} -> {doc['to']}")
    return doc
