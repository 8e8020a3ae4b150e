"""The local endpoint's settings and its bookkeeping records (one per TargetModel, metrics)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from infra.model_repo import NamespacedModel
from infra.request_check import ModelContract


@dataclass
class EndpointConfig:
    name: str
    model_data_url: str  # the MME's model prefix: file:///... or s3://bucket/prefix
    cache_dir: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port
    max_loaded_models: int | None = None
    memory_limit_bytes: int | None = None  # None: 70% of physical memory
    disk_cache_bytes: int = 20 * 2**30
    ready_wait_s: float = 60.0  # SageMaker answers ModelNotReadyException after 60 s
    load_timeout_s: float = 360.0  # ... and keeps loading up to 360 s
    model_cache_enabled: bool = True  # MultiModelConfig.ModelCacheSetting
    triton_log: Path | None = None
    # Triton supervision: more than max_triton_restarts deaths within triton_restart_window_s
    # and the endpoint gives up (500 InternalFailure, /ping 500) instead of looping forever;
    # the 2nd, 3rd ... rapid death waits backoff, 2x backoff ... (capped) before the restart.
    max_triton_restarts: int = 5
    triton_restart_window_s: float = 300.0
    triton_restart_backoff_s: float = 1.0
    liveness_timeout_s: float = 5.0  # GET /v2/health/live slower than this counts as dead


def settings_json(cfg: EndpointConfig) -> str:
    """``cfg`` as the one JSON document the launcher hands the endpoint process (no argv
    round trip: every field travels, typed, and a new field needs no new flag)."""
    from pydantic import TypeAdapter

    return TypeAdapter(EndpointConfig).dump_json(cfg, indent=2).decode()


def read_settings(path: Path) -> EndpointConfig:
    """The :class:`EndpointConfig` in ``path``; a bad document fails naming the file and field."""
    from pydantic import TypeAdapter, ValidationError

    from infra.schema import RecordError, field_errors

    try:
        return TypeAdapter(EndpointConfig).validate_json(path.read_text())
    except ValidationError as e:
        raise RecordError(f"{path}: not valid endpoint settings: {field_errors(e)}") from None


@dataclass
class ModelEntry:
    target: str
    state: str = "absent"  # absent | loading | loaded | unloading | failed
    ns: NamespacedModel | None = None
    disk_bytes: int = 0
    last_used: float = 0.0
    in_flight: int = 0
    loads: int = 0  # successful loads so far: tells a stale failure report from a fresh one
    contract: ModelContract | None = None  # what the entry model accepts; read once per load
    load_task: asyncio.Task | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    unloaded: asyncio.Event | None = None  # set when an unload in progress has finished

    @property
    def repo(self) -> NamespacedModel:
        """Its models in the Triton repository (there once downloaded, until discarded)."""
        if self.ns is None:
            raise RuntimeError(f"model {self.target} has no files in the repository")
        return self.ns


@dataclass
class Metrics:
    """SageMaker's MME CloudWatch metrics, kept as running counts and sums (milliseconds)."""

    invocations: int = 0
    model_cache_hit: int = 0
    loading_wait_ms: list[float] = field(default_factory=list)
    downloading_ms: list[float] = field(default_factory=list)
    loading_ms: list[float] = field(default_factory=list)
    unloading_ms: list[float] = field(default_factory=list)
    evictions: int = 0
    disk_evictions: int = 0
    triton_deaths: int = 0
    triton_restarts: int = 0
    triton_failed_starts: int = 0
    stub_failures: int = 0

    def report(self, loaded: int) -> dict:
        def stat(xs: list[float]) -> dict:
            return {"count": len(xs), "avg": (sum(xs) / len(xs)) if xs else 0.0,
                    "max": max(xs) if xs else 0.0}

        return {
            "LoadedModelCount": loaded,
            "Invocations": self.invocations,
            "ModelCacheHit": self.model_cache_hit,
            "ModelLoadingWaitTime": stat(self.loading_wait_ms),
            "ModelDownloadingTime": stat(self.downloading_ms),
            "ModelLoadingTime": stat(self.loading_ms),
            "ModelUnloadingTime": stat(self.unloading_ms),
            "MemoryEvictions": self.evictions,
            "DiskEvictions": self.disk_evictions,
            "TritonDeaths": self.triton_deaths,
            "TritonRestarts": self.triton_restarts,
            "TritonFailedStarts": self.triton_failed_starts,
            "StubFailures": self.stub_failures,
        }


