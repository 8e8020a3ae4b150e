"""Start, find and stop a local endpoint running as its own background process.

``mme deploy`` starts the endpoint once and later deploys reuse it (adding a model is
uploading it; the endpoint is never redeployed). Its state file records the URL and pid;
a stale file (process gone) is ignored and removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx

from infra import paths
from infra.errors import UserError
from infra.endpoint.client import LocalEndpointClient
from infra.endpoint.state import EndpointConfig, settings_json
from infra.processes.ownership import sweep_dead_owners
from infra.processes.procfs import ProcessIdentity, stat_fields
from infra.triton.server import TritonPorts, check_port_free


class EndpointStartError(UserError, RuntimeError):
    pass


@dataclass(frozen=True)
class EndpointInfo:
    name: str
    url: str
    pid: int
    model_data_url: str
    triton_url: str
    cache_dir: str
    started_at: float
    #: pid + start time + boot id of the endpoint process: what proves a pid is still ours
    owner: dict[str, Any] | None = None

    @property
    def identity(self) -> ProcessIdentity | None:
        return ProcessIdentity.from_dict(self.owner)


class StopOutcome(StrEnum):
    """What ``stop`` found: the endpoint (stopped), nothing, or a state file whose process
    is gone or is now some other process (removed, nothing signalled)."""

    STOPPED = "stopped"
    NOT_RUNNING = "was not running"
    STALE = "was not running (removed a stale state file)"


def state_file(name: str) -> Path:
    return paths.endpoint_dir(name) / "endpoint.json"


def log_file(name: str) -> Path:
    return paths.endpoint_dir(name) / "endpoint.log"


def process_alive(pid: int) -> bool:
    """True if ``pid`` is a running process; a zombie (exited, not yet reaped) counts as gone.
    Says nothing about *which* process: use :class:`ProcessIdentity` before signalling."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def read_state(name: str) -> EndpointInfo | None:
    """The state file as written, or None (absent or unreadable)."""
    try:
        return EndpointInfo(**json.loads(state_file(name).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def owned_process(info: EndpointInfo) -> ProcessIdentity | None:
    """The endpoint process the state file names, if that very process still runs. A state
    file without an identity (written by an older version) proves nothing: never ours."""
    ident = info.identity
    return ident if ident is not None and ident.pid == info.pid and ident.alive() else None


def find_running(name: str) -> EndpointInfo | None:
    """The running endpoint ``name``; a state file whose process is gone (or is now another
    process with a reused pid) is removed and None returned."""
    path = state_file(name)
    info = read_state(name)
    if info is None:
        return None
    if owned_process(info) is None:
        path.unlink(missing_ok=True)
        return None
    try:
        with LocalEndpointClient(info.url) as client:
            r = client.ping()
    except httpx.HTTPError:
        return None
    # 200: serving. A SageMaker-shaped 5xx (x-amzn-ErrorType): the endpoint runs but its Triton
    # is restarting or was given up on; it is still this endpoint, and starting a second one
    # over the same cache folder would wipe the first one's models.
    if r.status_code == 200 or (r.status_code >= 500 and "x-amzn-errortype" in r.headers):
        return info
    return None


def settings_file(name: str) -> Path:
    return paths.endpoint_dir(name) / "settings.json"


#: Triton's ports by default: free ones picked at each start, metrics on (served through the
#: endpoint at ``GET /triton/metrics``).
FREE_TRITON_PORTS = TritonPorts(http=0, grpc=0, metrics=0)


def endpoint_settings(name: str, model_data_url: str, *, host: str = "127.0.0.1", port: int = 0,
                      max_loaded_models: int | None = None, spare_slots: int | None = None,
                      triton: TritonPorts = FREE_TRITON_PORTS) -> EndpointConfig:
    """The settings of endpoint ``name``: the one typed object the CLI (foreground ``mme
    endpoint serve``) and the background launcher both hand to the server. ``triton``: its
    tritonserver's ports (0: a free one; metrics None: off)."""
    folder = paths.endpoint_dir(name)
    return EndpointConfig(name=name, model_data_url=model_data_url, cache_dir=folder / "cache",
                          host=host, port=port, max_loaded_models=max_loaded_models or None,
                          spare_slots=spare_slots, triton_log=folder / "triton.log",
                          triton_http_port=triton.http or 0, triton_grpc_port=triton.grpc or 0,
                          triton_metrics_port=triton.metrics)


def start_background(name: str, model_data_url: str, *, port: int = 0, host: str = "127.0.0.1",
                     max_loaded_models: int | None = None, timeout: float = 120,
                     spare_slots: int | None = None,
                     triton: TritonPorts = FREE_TRITON_PORTS) -> EndpointInfo:
    """Start the endpoint (or return the one already running with the same model prefix)."""
    running = find_running(name)
    if running:
        if running.model_data_url != model_data_url:
            raise EndpointStartError(
                f"endpoint {name!r} is already running with model prefix {running.model_data_url}, "
                f"not {model_data_url}; retire it first (mme retire --endpoint {name} --stop)")
        return running
    if port:
        check_port_free(host, port)
    cfg = endpoint_settings(name, model_data_url, host=host, port=port,
                            max_loaded_models=max_loaded_models, spare_slots=spare_slots,
                            triton=triton)
    cfg.log_file = log_file(name)  # the process logs there itself, rotating (stdout: crashes only)
    paths.endpoint_dir(name).mkdir(parents=True, exist_ok=True)
    state = state_file(name)
    state.unlink(missing_ok=True)
    settings_file(name).write_text(settings_json(cfg))
    cmd = [sys.executable, "-m", "infra.endpoint.local_mme", "serve", "--settings", str(settings_file(name)),
           "--state-file", str(state)]
    with open(log_file(name), "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EndpointStartError(f"endpoint {name!r} exited with code {proc.returncode}:\n"
                                     f"{_tail(log_file(name))}")
        info = find_running(name)
        if info:
            return info
        time.sleep(0.2)
    stop(name)
    proc.kill()
    raise EndpointStartError(f"endpoint {name!r} did not start within {timeout:.0f} s:\n"
                             f"{_tail(log_file(name))}")


def stop(name: str, timeout: float = 30) -> StopOutcome:
    """Stop the endpoint (and so its Triton server). Only a process proven to be the one that
    wrote the state file (pid, start time and boot id) is signalled; otherwise the stale file
    is removed, and what the dead endpoint left (stubs, shm) is swept from its ledger."""
    path = state_file(name)
    info = read_state(name)
    if info is None:
        return StopOutcome.NOT_RUNNING
    ident = owned_process(info)
    if ident is None:
        path.unlink(missing_ok=True)
        sweep_dead_owners()
        return StopOutcome.STALE
    os.kill(ident.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while ident.alive() and time.monotonic() < deadline:
        _reap(ident.pid)
        time.sleep(0.1)
    if ident.alive():  # its group is its own (start_new_session) and it is still ours
        os.killpg(ident.pid, signal.SIGKILL)
    _reap(ident.pid)
    path.unlink(missing_ok=True)
    sweep_dead_owners()  # its warden's work, done now rather than a moment later
    return StopOutcome.STOPPED


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
