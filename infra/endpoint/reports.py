"""The local endpoint's admin documents (``GET /models``, ``GET /metrics``) as typed models.

Why one module for both sides: the endpoint builds these (its HTTP layer serializes them with
``model_dump(by_alias=True)``) and :class:`~infra.endpoint.client.LocalEndpointClient` parses
the same classes back, so the wire shape is written once. The field aliases are the wire keys
(SageMaker's CloudWatch metric names where there is one); the field order is the key order.
A client ignores keys it does not know (a newer endpoint) and leaves the memory figures None
when an older endpoint does not report them.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_pascal


class ModelState(StrEnum):
    """Where a TargetModel is: ``absent -> preparing -> loading -> loaded -> unloading ->
    absent``, or ``failed`` (its last load failed; the next request tries again)."""

    ABSENT = "absent"
    PREPARING = "preparing"  # downloading/extracting: no place in Triton yet
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


#: States in which a model holds (or is about to hold, or still holds) memory in Triton.
OCCUPYING = frozenset({ModelState.LOADING, ModelState.LOADED, ModelState.UNLOADING})
#: States in which a model has no place in Triton and no load under way: its files may go.
AT_REST = frozenset({ModelState.ABSENT, ModelState.FAILED})


class TritonState(StrEnum):
    """The supervised Triton: serving, being restarted after a death, or given up on."""

    LIVE = "live"
    RESTARTING = "restarting"
    FAILED = "failed"


class _Doc(BaseModel):
    """Frozen, built by field name or wire key, written by wire key."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)


class _WireDoc(_Doc):
    """Wire keys in PascalCase, CloudWatch's style (``loaded_model_count``: LoadedModelCount)."""

    model_config = ConfigDict(alias_generator=to_pascal)


class StatReport(_Doc):
    """A running statistic: what SageMaker's CloudWatch statistics report."""

    count: int
    avg: float
    max: float


class PercentileReport(_Doc):
    """A bounded reservoir's percentiles (the last ``window`` samples of ``count``)."""

    count: int
    window: int
    p50: float
    p99: float
    max: float


class ThrashReport(_WireDoc):
    """The rolling miss rate and whether it is over the threshold."""

    miss_rate: float
    window: int
    requests: int
    threshold: float
    thrashing: bool
    warnings: int


class ModelReport(_Doc):
    """One TargetModel's counters in ``GET /metrics`` (SageMaker has none per model)."""

    state: ModelState
    invocations: int
    hits: int
    loads: int
    last_load_s: float
    total_load_s: float
    evictions: int
    errors: int
    last_used: float | None  # wall-clock seconds, None before its first load


class CountersReport(_WireDoc):
    """The endpoint's counters: SageMaker's MME metrics, then what SageMaker does not report."""

    loaded_model_count: int
    invocations: int
    model_cache_hit: int
    model_loading_wait_time: StatReport
    model_downloading_time: StatReport
    model_loading_time: StatReport
    model_unloading_time: StatReport
    memory_evictions: int
    disk_evictions: int
    triton_deaths: int
    triton_restarts: int
    triton_failed_starts: int
    stub_failures: int
    admission_time: PercentileReport
    peak_loaded_model_count: int
    triton_load_calls: int
    triton_unload_calls: int
    thrash: ThrashReport
    misses: dict[str, int]
    background_evictions: int
    load_admission: dict[str, int]
    spare_slots: int


class MemoryReport(_WireDoc):
    """Triton's memory, each figure named by its basis: the limit counts PSS
    (``MemoryLimitBasis``); RSS stays for comparison (it counts shared pages once per stub).
    None only when parsed from an endpoint too old to report it."""

    triton_memory_pss: int | None = None
    triton_memory_uss: int | None = None
    triton_memory_rss: int | None = None
    triton_page_tables: int | None = None
    triton_processes: int | None = None
    memory_limit_bytes: int | None = None
    memory_limit_basis: str = "pss"
    model_memory_pss: int | None = None
    memory_checks_read: int | None = None  # admission checks that read Triton's memory
    memory_checks_skipped: int | None = None  # ... that a recent reading answered


class EndpointMetrics(MemoryReport, CountersReport):
    """``GET /metrics``: the counters, Triton's memory, and under "models" each TargetModel's
    (the wire order: pydantic lays out the fields of CountersReport, then MemoryReport)."""

    models: dict[str, ModelReport] = Field(default_factory=dict, alias="models")


class ModelRow(_Doc):
    """One TargetModel in ``GET /models``: where it is and what Triton calls it."""

    target_model: str
    state: ModelState
    internal_name: str | None
    disk_bytes: int
    in_flight: int
    loads: int


class TritonStatus(_Doc):
    """The supervised Triton in ``GET /models``."""

    state: TritonState
    pid: int | None
    generation: int
    reason: str | None


class ModelsDoc(_Doc):
    """``GET /models``: the endpoint, its Triton, and one row per TargetModel seen."""

    endpoint: str
    triton: TritonStatus
    models: list[ModelRow]
