"""Prefect's temporary API server, written into our ownership ledger the moment it is spawned.

Why: a command that runs a flow with no ``PREFECT_API_URL`` makes Prefect start a temporary
server (a ``uvicorn`` child process) and stop it at exit. A ``kill -9`` skips that exit, and
the server ran on for minutes. Claiming it after ``start()`` returned was not enough: the
server takes seconds to come up (database migrations), and a kill in that window leaked it
(seen in the crash suite). So the spawn itself is wrapped: Prefect's
``SubprocessASGIServer._run_uvicorn_command`` (prefect is pinned; the crash suite fails if
this hook stops firing) returns the process, and we claim it before Prefect waits for it,
also when Prefect respawns it after a port clash. If this process dies, the warden
(:mod:`infra.processes.leftovers`) kills it, proven by pid and start time.

Claiming after the spawn returned still left a window (the child runs; its identity is not yet
in the ledger): the crash suite's kill landed in it once in a clean-clone CI run. So a spawn
token is claimed first and the spawn runs with it in its environment (Prefect builds the
child's environment from ``os.environ``); a kill anywhere from there on leaves a child the
warden proves ours by that token. Once the identity is claimed the token record is released,
so at a clean exit nothing is killed by a token another thread's child might have caught.
"""

from __future__ import annotations

from typing import Any

from infra.processes.ownership import owner, spawn_tagged, spawn_token
from infra.processes.procfs import ProcessIdentity

_WHAT = "prefect temporary server"
_claimed: set[ProcessIdentity] = set()


def _claim(proc: Any) -> None:
    ident = ProcessIdentity.of(proc.pid) if proc is not None else None
    if ident is not None and ident not in _claimed:
        _claimed.add(ident)
        owner().claim(processes=[ident], what=_WHAT)


def _install_spawn_hook() -> None:
    """Wrap Prefect's spawn of the temporary server (once per process) so that every server
    process it starts is claimed before anything waits on it."""
    from prefect.server.api.server import SubprocessASGIServer

    spawn = SubprocessASGIServer._run_uvicorn_command
    if getattr(spawn, "_mme_claims", False):
        return

    def spawn_and_claim(self: Any) -> Any:
        token = spawn_token()
        pending = owner().claim(spawns=[token], what=_WHAT)  # in the ledger before the child exists
        try:
            with spawn_tagged(token):
                proc = spawn(self)
            _claim(proc)
        finally:
            owner().release(pending)
        return proc

    spawn_and_claim._mme_claims = True  # type: ignore[attr-defined]
    SubprocessASGIServer._run_uvicorn_command = spawn_and_claim  # type: ignore[method-assign]


def own_temporary_server() -> bool:
    """Start Prefect's temporary server now if this process would use one, claimed from its
    spawn on. False when a real server is configured (``PREFECT_API_URL``) or ephemeral mode
    is off."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return False
    from prefect.server.api.server import SubprocessASGIServer

    owner()  # the ledger and its warden exist before the server does
    _install_spawn_hook()
    server = SubprocessASGIServer()  # the singleton that Prefect's get_client() starts
    if server.server_process is not None and server.server_process.poll() is None:
        _claim(server.server_process)  # started before the hook was installed
    server.start()
    return True
