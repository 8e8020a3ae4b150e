"""Prefect's temporary API server, started by us and written into our ownership ledger.

Why: a command that runs a flow with no ``PREFECT_API_URL`` makes Prefect start a temporary
server (a ``uvicorn`` child process) and stop it at exit. A ``kill -9`` skips that exit, and
the server ran on for minutes. Starting the same server a moment earlier ourselves, through
the very singleton Prefect's clients use, gives us its process to claim: if this process
dies, the warden (:mod:`infra.leftovers`) kills it, proven by pid and start time.
"""

from __future__ import annotations

from infra.ownership import owner
from infra.procfs import ProcessIdentity


def own_temporary_server() -> bool:
    """Start Prefect's temporary server now if this process would use one, and claim it.
    False when a real server is configured (``PREFECT_API_URL``) or ephemeral mode is off."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return False
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the singleton that Prefect's get_client() starts
    fresh = server.server_process is None
    server.start()
    proc = server.server_process
    ident = ProcessIdentity.of(proc.pid) if proc is not None else None
    if fresh and ident is not None:
        owner().claim(processes=[ident], what="prefect temporary server")
    return True
