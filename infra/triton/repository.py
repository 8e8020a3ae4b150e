"""The model repository of a running tritonserver: load, unload (and wait until it is really
done), readiness and the index, over gRPC when the server has a gRPC port, else HTTP.

Why gRPC when there is a port (``TritonPorts(grpc=0)`` or a number): Triton's HTTP server pins
each connection to a worker thread, and a load blocks the thread it arrived on for the whole
load; a kept-alive inference connection pinned to that thread would stall meanwhile. gRPC
repository calls run on gRPC's own threads (measured: 3 concurrent loads overlap; HTTP keeps
answering in ms during a load), which lets the local endpoint keep its inference connections
alive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict

from infra.errors import MMEError
from infra.processes.procfs import ProcessIdentity, lower_priority
from infra.triton.process import TritonProcess

if TYPE_CHECKING:
    from tritonclient.grpc import InferenceServerClient

__all__ = ["ModelIndexEntry", "TritonModelError", "TritonRepository"]

_T = TypeVar("_T")


class TritonModelError(MMEError, RuntimeError):
    """Triton refused to load (or unload) a model; carries the model name and server message."""

    def __init__(self, model: str, message: str) -> None:
        self.model = model
        self.message = message
        super().__init__(f"model {model!r}: {message}")


class ModelIndexEntry(BaseModel):
    """One row of Triton's repository index: a model folder and, once Triton has tried to
    load it, its version and state (``READY``, ``LOADING``, ``UNLOADING``, ``UNAVAILABLE``:
    Triton's own words, kept as it says them) and why (``reason``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    name: str
    version: str | None = None
    state: str | None = None
    reason: str | None = None


class TritonRepository:
    """The repository API of the tritonserver that ``process`` runs."""

    def __init__(self, process: TritonProcess) -> None:
        self.process = process
        self._http_client: httpx.Client | None = None
        self._grpc_client: tuple[str, InferenceServerClient] | None = None  # (url, client)

    def close(self) -> None:
        """Close the HTTP and gRPC connections (before a stop: a kept-alive one delays it)."""
        if self._http_client is not None:
            self._http_client.close()
            self._http_client = None
        if self._grpc_client is not None:
            try:
                self._grpc_client[1].close()
            except Exception:  # noqa: BLE001 - a channel to a dead server may fail to close
                pass
            self._grpc_client = None

    def _http(self) -> httpx.Client:
        if not self.process.running:
            raise self.process.not_running()
        url = self.process.url
        if self._http_client is None or str(self._http_client.base_url).rstrip("/") != url:
            if self._http_client is not None:
                self._http_client.close()
            self._http_client = httpx.Client(base_url=url, trust_env=False, timeout=10.0)
        return self._http_client

    @staticmethod
    def _error_text(resp: httpx.Response) -> str:
        try:
            return str(resp.json().get("error", resp.text))
        except ValueError:
            return resp.text or f"HTTP {resp.status_code}"

    def _grpc(self) -> InferenceServerClient | None:
        port = self.process.grpc_port
        if port is None:
            return None
        if not self.process.running:
            raise self.process.not_running()
        url = f"127.0.0.1:{port}"
        if self._grpc_client is None or self._grpc_client[0] != url:
            import tritonclient.grpc as grpcclient

            self._grpc_client = (url, grpcclient.InferenceServerClient(url))
        return self._grpc_client[1]

    @staticmethod
    def _grpc_call(name: str, what: str, call: Callable[[], _T], timeout: float) -> _T:
        from tritonclient.utils import InferenceServerException

        try:
            return call()
        except InferenceServerException as exc:
            if "DEADLINE_EXCEEDED" in str(exc.status()):
                raise TritonModelError(name, f"{what} did not finish within {timeout:.0f}s") from exc
            raise TritonModelError(name, exc.message() or str(exc)) from exc

    def load(self, name: str, timeout: float = 360) -> None:
        """Load (or reload) a model; for an ensemble Triton also loads its composing models.

        Blocks until Triton answers: the load API is synchronous.  Raises
        :class:`TritonModelError` with Triton's message on failure.
        """
        grpc = self._grpc()
        if grpc is not None:
            self._grpc_call(name, "load", lambda: grpc.load_model(name, client_timeout=timeout), timeout)
            return
        try:
            resp = self._http().post(f"/v2/repository/models/{quote(name, safe='')}/load", timeout=timeout)
        except httpx.TimeoutException as exc:
            raise TritonModelError(name, f"load did not finish within {timeout:.0f}s") from exc
        if resp.status_code != 200:
            raise TritonModelError(name, self._error_text(resp))

    def unload(self, name: str, *, unload_dependents: bool = True, wait: bool = True, timeout: float = 120,
               nice: int = 0) -> None:
        """Unload a model; with ``unload_dependents`` an ensemble's composing models go too.

        Triton's unload call returns as soon as the unload has *started* (2.51, measured: 2 ms,
        while the composing Python model stays UNLOADING ~1.1 s more, its stub alive and
        holding its memory). Per-model readiness (``ModelReady``) turns false at once, so it
        alone does not say the memory is free. So by default this waits, per model, until
        ``name`` and (with ``unload_dependents``) the composing models its ensemble config names
        are not ready, and the Python-backend stub processes that served them have exited.
        Nothing here reads Triton's repository index: that lists every folder in the
        repository (34 ms at 10k folders), which made each unload's wait grow with the disk
        cache and, when any model anywhere was UNLOADING, wait for that one too.

        ``nice`` > 0: the stubs leave at that CPU niceness (:func:`lower_priority`), set before
        the unload is asked for, while each is certainly alive and named by its identity: an
        unload no request waits for then yields the cores to the loads that one does.
        """
        names = self.model_family(name) if unload_dependents else [name]
        stubs = self.process.stubs(names) if wait or nice > 0 else []
        if nice > 0:
            for stub in stubs:
                lower_priority(stub, nice)
        grpc = self._grpc()
        if grpc is not None:
            self._grpc_call(name, "unload", lambda: grpc.unload_model(
                name, unload_dependents=unload_dependents, client_timeout=timeout), timeout)
        else:
            body = {"parameters": {"unload_dependents": unload_dependents}}
            resp = self._http().post(f"/v2/repository/models/{quote(name, safe='')}/unload",
                                     json=body, timeout=timeout)
            if resp.status_code != 200:
                raise TritonModelError(name, self._error_text(resp))
        if wait:
            self._wait_unloaded(name, names, stubs, timeout)

    def _wait_unloaded(self, name: str, names: list[str], stubs: list[ProcessIdentity],
                       timeout: float) -> None:
        """Until ``names`` are not ready and ``stubs`` have exited."""
        deadline = time.monotonic() + timeout
        pending = list(names)
        while time.monotonic() < deadline:
            pending = [n for n in pending if self.is_ready(n)]
            stubs = [s for s in stubs if s.alive()]
            if not pending and not stubs:
                return
            time.sleep(0.01)
        raise TritonModelError(name, f"still not unloaded after {timeout:.0f}s "
                                     f"(ready: {pending}, stub pids: {[s.pid for s in stubs]})")

    def model_family(self, name: str) -> list[str]:
        """``name`` and the models its ensemble config in the repository names, recursively
        (what ``unload_dependents`` unloads); just ``name`` when its config cannot be read."""
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as mc

        family, todo = [name], [name]
        while todo:
            path = self.process.model_repository / todo.pop() / "config.pbtxt"
            try:
                cfg = text_format.Parse(path.read_text(), mc.ModelConfig())
            except (OSError, UnicodeDecodeError, text_format.ParseError):
                continue
            for step in cfg.ensemble_scheduling.step:
                if step.model_name not in family:
                    family.append(step.model_name)
                    todo.append(step.model_name)
        return family

    def is_ready(self, name: str) -> bool:
        """True if the model (any version) is loaded and ready to serve."""
        grpc = self._grpc()
        if grpc is not None:
            return bool(self._grpc_call(name, "ready", lambda: grpc.is_model_ready(
                name, client_timeout=10), 10))
        resp = self._http().get(f"/v2/models/{quote(name, safe='')}/ready")
        return resp.status_code == 200

    def index(self) -> list[ModelIndexEntry]:
        """Triton's repository index: every model folder, with its state once loaded or tried."""
        grpc = self._grpc()
        if grpc is not None:
            doc = self._grpc_call("*", "index", lambda: grpc.get_model_repository_index(
                as_json=True, client_timeout=30), 30)
            rows = list(doc.get("models", []))
        else:
            resp = self._http().post("/v2/repository/index", json={})
            resp.raise_for_status()
            rows = list(resp.json())
        return [ModelIndexEntry.model_validate(row) for row in rows]
