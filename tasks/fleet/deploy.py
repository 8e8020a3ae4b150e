"""Deploy a built fleet onto one or more endpoints: the parts the ``fleet-deploy`` flow composes.

The fleet's latest build (``fleet-index.json``: its ``ok`` variants) is the desired state; the
routing table (:mod:`tasks.fleet.routes`) is what is live. A variant whose sha256 (or shard)
differs from its route is published under a versioned TargetModel
(``<variant>-<sha256[:12]>.tar.gz``) to its shard's endpoint model prefix with
:func:`infra.store.sync.sync_files` (one index GET decides what is unchanged), then invoked by
that TargetModel with its manifest's sample (bounded concurrency; 429 ModelNotReady retried as
in :mod:`tasks.deploy.validate`). Unchanged variants get a sampled canary invoke. Only the variants that
passed are routed to their new version; the table is written after validation, then the objects
it no longer points to (expired retirees, versions beyond ``keep_versions``, failed new
versions) are deleted.

No SageMaker call that changes anything is made on any path here: the endpoint is an existing
MME (``mme deploy`` made it); adding, changing and removing variants is S3 plus InvokeEndpoint.
Its real model prefix and release are read first (:mod:`tasks.fleet.endpoints`, describe only).
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, cast
from urllib.parse import urlsplit
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from ensembles.fleet_spec import variant_name_problem
from infra.aws.clients import aws_clients
from infra.errors import MissingInput, UserError
from infra.records.manifest import MANIFEST_SUFFIX, load_manifest
from infra.aws.runtime_client import runtime_client_for
from infra.store.objects import TMP_PREFIX, ObjectNotFound, open_store
from infra.store.sync import INDEX_NAME, LocalObject, SyncIndex
from tasks.fleet.build import INDEX_FILE, FleetIndex, fleet_build_dir
from tasks.fleet.endpoints import ServedEndpoint
from tasks.fleet.publish import publish_fleet_task
from tasks.fleet.routes import (
    EndpointRef,
    RouteVersion,
    RoutingTable,
    expired,
    parse_time,
    promote,
    prune_versions,
    read_routes,
    remove,
    retire_missing,
    routes_location,
    unreferenced,
    unretire,
    write_routes,
)
from tasks.deploy.publish import versioned_target
from tasks.fleet.progress import LoadedBudget, Progress
from tasks.fleet.report import ExpectedFailure
from tasks.runtime.run_context import run_logger
from tasks.deploy.validate import LoadWait, invoke_when_ready
from tasks.build.verify import Sample, score


class FleetDeployFailed(ExpectedFailure):
    """Some variants did not go live (each named with its reason); the others did."""


class DeployPolicy(BaseModel):
    """How a fleet deploy treats what it finds: the flow's options (one parameter)."""

    grace_s: float = Field(default=3600.0, ge=0, description="a variant that left the fleet is "
                           "removed this long after it was first seen missing")
    keep_versions: int = Field(default=1, ge=0, description="previous versions kept per variant")
    canary: int = Field(default=0, ge=0, description="unchanged variants invoked as canaries")
    concurrency: int = Field(default=8, ge=1, description="validation invokes in flight")
    keep_loaded: int | None = Field(default=None, ge=0, description="local endpoints: validated "
                                    "variants left loaded (the oldest beyond it are unloaded as "
                                    "validation goes); default: concurrency")
    load_wait_s: float = Field(default=360.0, gt=0, description="429 ModelNotReady retried this long")
    region: str | None = None
    now: str | None = Field(default=None, description="the clock (ISO time; tests, replays): "
                            "default the current UTC time")
    seed: int | None = Field(default=None, description="seed of the canary sample")
    json_body: bool = Field(default=False, description="validate with KServe-v2 JSON bodies, not "
                            "binary+json (for runtimes that only take text, e.g. moto's)")
    verify: bool = Field(default=False, description="first check every routed object in the store "
                         "(tasks.fleet.integrity) and re-publish the missing or corrupt ones from "
                         "the build, then validate them like new versions")

    def clock(self) -> datetime:
        return parse_time(self.now) if self.now else datetime.now(UTC)


@dataclass(frozen=True)
class Desired:
    """A variant as the fleet's latest build made it."""

    name: str
    target_model: str  # the unversioned name the build gave it
    sha256: str
    size: int
    tarball: Path
    manifest: Path
    shard: str | None = None  # a fused tenant: served by this shard (its tarball) as ``tenant``
    tenant: int | None = None


@dataclass(frozen=True)
class Job:
    """One version of one variant to publish (unless ``canary``) and invoke on one endpoint."""

    variant: str
    endpoint: str
    target_model: str
    sha256: str
    size: int
    tarball: Path
    manifest: Path
    kind: str  # new | changed | moved | canary | repaired (the last two: invoke only)


@dataclass
class Access:
    """How to reach one endpoint: its model prefix in the store and a runtime client."""

    endpoint: str
    backend: str
    models_url: str
    runtime: Any = field(repr=False, default=None)
    region: str | None = None

    def ref(self) -> EndpointRef:
        return EndpointRef(backend=self.backend, region=self.region, models_url=self.models_url)


@dataclass(frozen=True)
class BuildRef:
    """Which build a deploy used: its fleet index and the index's digest (the build id: any
    rebuild that changes a variant changes it)."""

    index: str
    id: str
    template_key: str | None = None
    #: Every variant and shard the index names, whatever its status: a variant whose last
    #: build failed is still in the fleet, so a deploy keeps it on its current route instead
    #: of retiring it. Not part of the deploy's JSON (it can be thousands of names).
    members: Annotated[frozenset[str], Field(exclude=True)] = field(
        default=frozenset(), repr=False, compare=False)

    def describe(self) -> str:
        return f"build {self.id} ({self.index})"


def read_build(build_dir: Path, fleet: str | None = None) -> tuple[FleetIndex, BuildRef]:
    """``build_dir/fleet-index.json`` and the build's id (read once). A missing index or one of
    another fleet is refused naming the file."""
    path = build_dir / INDEX_FILE
    try:
        raw = path.read_bytes()
        index = FleetIndex.read(raw, str(path))
    except FileNotFoundError:
        raise MissingInput(f"{path}: no fleet index: build the fleet first (`mme fleet build`) "
                           f"or give --build-dir") from None
    except ValueError as exc:
        raise UserError(f"{path}: not a readable fleet index ({str(exc).splitlines()[0]})") from None
    if fleet is not None and index.fleet != fleet:
        raise UserError(f"{path} is the index of fleet {index.fleet!r}, not {fleet!r}")
    return index, BuildRef(index=str(path), id=hashlib.sha256(raw).hexdigest()[:12],
                           template_key=index.template_key,
                           members=frozenset(index.variants) | frozenset(index.shards))


def desired_of(index: FleetIndex, build_dir: Path) -> dict[str, Desired]:
    """The build's ``ok`` variants and fused shards (tarball and manifest under ``build_dir``);
    a fused tenant is desired as its shard's tarball with its ``tenant`` index (routed, never
    published on its own)."""
    desired = {}
    for name, e in [*index.variants.items(), *index.shards.items()]:
        if e.status != "ok" or not e.sha256 or e.bytes is None:
            continue
        tarball = build_dir / e.file
        desired[name] = Desired(name=name, target_model=e.target_model, sha256=e.sha256,
                                size=e.bytes, tarball=tarball,
                                manifest=tarball.with_name(e.file.removesuffix(".tar.gz") + MANIFEST_SUFFIX),
                                shard=e.shard if e.layout == "fused" else None,
                                tenant=e.tenant if e.layout == "fused" else None)
    return desired


def load_desired(build_dir: Path, fleet: str | None = None) -> tuple[str, dict[str, Desired]]:
    """(fleet name, its ``ok`` variants) from ``build_dir/fleet-index.json``."""
    index, _ = read_build(build_dir, fleet)
    return index.fleet, desired_of(index, build_dir)


def open_access(backend: str, endpoint: str, store_uri: str, region: str | None,
                served: ServedEndpoint | None = None) -> Access:
    """Reach ``endpoint``: local starts (or reuses) the local endpoint on its model prefix;
    SageMaker makes a runtime client only (the endpoint must exist: no control-plane call).
    ``served`` (what SageMaker said of the endpoint) gives its real model prefix and region."""
    from tasks.deploy.backends import as_backend, backend_for

    if served is not None:
        runtime = aws_clients(served.region).runtime
        return Access(endpoint, backend, served.model_data_url, runtime, region=served.region)
    be: Any = backend_for(as_backend(backend), endpoint=endpoint, store_uri=store_uri, region=region)
    if backend == "local":
        url = be.ensure_endpoint().url
        return Access(endpoint, backend, be.models_url, runtime_client_for(url))
    return Access(endpoint, backend, be.models_url, be.clients.runtime, region=be.opts.region)


def plan_jobs(desired: Mapping[str, Desired], table: RoutingTable,
              shards: Mapping[str, str]) -> tuple[list[Job], list[str]]:
    """(versions to publish and validate, unchanged variants): new, changed (sha256) or moved
    (its shard is another endpoint now) variants get a job."""
    jobs, unchanged = [], []
    for name in sorted(desired):
        d, route, shard = desired[name], table.variants.get(name), shards[name]
        if d.shard is not None:  # a fused tenant: routed with its shard (route_tenants)
            continue
        if route is not None and route.sha256 == d.sha256 and route.endpoint == shard:
            unchanged.append(name)
            continue
        kind = "new" if route is None else "changed" if route.sha256 != d.sha256 else "moved"
        jobs.append(Job(name, shard, versioned_target(d.target_model, d.sha256), d.sha256,
                        d.size, d.tarball, d.manifest, kind))
    return jobs, unchanged


def canary_jobs(desired: Mapping[str, Desired], table: RoutingTable, unchanged: Sequence[str],
                count: int, seed: int | None = None) -> list[Job]:
    """Invoke-only jobs for ``count`` unchanged variants sampled at random (their routed version)."""
    picked = random.Random(seed).sample(sorted(unchanged), min(count, len(unchanged)))
    out = []
    for name in sorted(picked):
        d, r = desired[name], table.variants[name]
        out.append(Job(name, r.endpoint, r.target_model, r.sha256, d.size, d.tarball,
                       d.manifest, "canary"))
    return out


#: An S3 object key is at most 1,024 bytes of UTF-8, the endpoint's model prefix included.
MAX_S3_KEY_BYTES = 1024
#: A file name (one path component) is at most 255 bytes on the file systems a file:// store
#: lives on (NAME_MAX of ext4, XFS, APFS); the store's longest is the temp file of an object's
#: sha256 sidecar, ``.tmp-.sha256-<name>-<8 random>``: 22 bytes more than the object's name.
MAX_FILE_NAME_BYTES = 255 - len(TMP_PREFIX) - len(".sha256-") - len("-12345678")


def key_problem(job: Job, models_url: str) -> str | None:
    """Why ``job``'s version cannot be stored under ``models_url``, or None: its variant name
    (a build older than the name rules), or its object key too long for the store. The name
    alone is capped (:data:`ensembles.fleet_spec.MAX_VARIANT_NAME`); the prefix is only known here."""
    problem = variant_name_problem(job.variant)
    if problem:
        return f"variant {job.variant!r}: {problem}; rename it and rebuild"
    where = urlsplit(models_url)
    if where.scheme == "s3":
        prefix = where.path.strip("/")
        key = f"{prefix}/{job.target_model}" if prefix else job.target_model
        size = len(key.encode("utf-8"))
        if size > MAX_S3_KEY_BYTES:
            return (f"variant {job.variant!r} on endpoint {job.endpoint}: its S3 key would be {size} "
                    f"bytes (model prefix '{prefix}/' + TargetModel of {len(job.target_model)}), "
                    f"over S3's {MAX_S3_KEY_BYTES}: shorten the name by {size - MAX_S3_KEY_BYTES} "
                    f"characters or use a shorter model prefix")
    elif len(job.target_model.encode("utf-8")) > MAX_FILE_NAME_BYTES:
        return (f"variant {job.variant!r} on endpoint {job.endpoint}: its file name "
                f"{job.target_model[:40]}... is {len(job.target_model.encode('utf-8'))} bytes, over "
                f"the {MAX_FILE_NAME_BYTES} a file store can write (255-byte file names, less its "
                f"temp-file affixes)")
    return None


def check_keys(access: Mapping[str, Access], jobs: Sequence[Job]) -> None:
    """Refuse the deploy, before anything is uploaded, when a version cannot be stored or
    addressed (:func:`key_problem`): one line naming the variants."""
    problems = [p for j in jobs if (p := key_problem(j, access[j.endpoint].models_url))]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{len(problems)} variant(s) cannot be published: "
                        + "; ".join(problems[:3]) + more)


def publish_jobs(access: Mapping[str, Access], jobs: Sequence[Job],
                 workers: int = 16) -> dict[str, str]:
    """Publish every job's tarball to its endpoint's model prefix (one ``publish-fleet`` task,
    i.e. one sync, per endpoint); returns ``{variant: reason}`` for failed uploads. A version
    whose name or key the store cannot take refuses the deploy first (:func:`check_keys`)."""
    check_keys(access, jobs)
    by_endpoint: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_endpoint[job.endpoint].append(job)
    failed: dict[str, str] = {}
    for endpoint, group in sorted(by_endpoint.items()):
        files = {j.target_model: LocalObject(path=j.tarball, sha256=j.sha256, size=j.size)
                 for j in group}
        report = publish_fleet_task(access[endpoint].models_url, "", files, workers=workers)
        owner = {j.target_model: j.variant for j in group}
        for key, reason in report.failed:
            if key in owner:
                failed[owner[key]] = f"publish of {key} to {endpoint} failed: {reason}"
    return failed


def validate_job(access: Access, job: Job, wait: LoadWait, binary: bool = True) -> str | None:
    """Invoke ``job``'s TargetModel with its manifest's sample and score the answer: None when
    it passed, else the reason (one line)."""
    try:
        manifest = load_manifest(job.manifest).model_copy(update={"target_model": job.target_model})
        v = manifest.validation
        if v.metric is None or v.threshold is None:
            return f"{job.manifest}: no validation metric and threshold: rebuild it"
        # a fused shard also carries samples of a few more tenants: each is invoked
        extra = (manifest.fleet or {}).get("tenant_samples") or []
        for sample in [Sample.from_json(manifest.required_sample()), *map(Sample.from_json, extra)]:
            got, _ = invoke_when_ready(access.runtime, access.endpoint, manifest, sample.inputs,
                                       binary=binary, wait=wait)
            result = score(v.metric, v.threshold, sample, got)
            if not result.passed:
                break
    except Exception as e:  # noqa: BLE001 - one variant's failure, whatever it is, is its own
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if result.passed:
        return None
    return (f"answered wrongly on {job.endpoint} as {job.target_model}: {result.metric} = "
            f"{result.value:.6f} < {result.threshold}")


@task(name="validate-fleet-versions", cache_policy=NO_CACHE)
def validate_jobs_task(access: Mapping[str, Access], jobs: Sequence[Job],
                       policy: DeployPolicy) -> tuple[dict[str, str | None], dict[str, int]]:
    """Validate ``jobs`` with at most ``policy.concurrency`` invokes in flight: ``{variant: reason or
    None}``. A failure is that variant's alone. Progress (n/N, failures) is said as it goes
    (:class:`tasks.fleet.progress.Progress`: log lines with rate and time left, and the
    ``fleet-deploy-progress`` artifact); on a local endpoint at most ``policy.keep_loaded`` of the
    validated variants stay loaded (:class:`tasks.fleet.progress.LoadedBudget`). Returns the
    results and the progress's counts (validated, failed, lines said, unloaded)."""
    progress = validation_progress(len(jobs))
    keep = policy.concurrency if policy.keep_loaded is None else policy.keep_loaded
    budget = LoadedBudget(keep, lambda endpoint, tm: _unload_local(endpoint, [tm]))
    wait = LoadWait(limit_s=policy.load_wait_s)

    def one(job: Job) -> str | None:
        reason = validate_job(access[job.endpoint], job, wait, not policy.json_body)
        progress.record(job.variant, reason)
        if access[job.endpoint].backend == "local":
            budget.validated(job.endpoint, job.target_model)
        return reason

    with ThreadPoolExecutor(max_workers=policy.concurrency, thread_name_prefix="fleet-validate") as pool:
        futures = {j.variant: pool.submit(one, j) for j in jobs}
        results = {name: fut.result() for name, fut in futures.items()}
    if budget.unloaded:
        run_logger().info("unloaded %d validated variants beyond keep_loaded=%d (they load again "
                          "on their first request)", len(budget.unloaded), keep)
    return results, {**progress.summary("validated"), "unloaded": len(budget.unloaded), "keep_loaded": keep}


def validation_progress(total: int) -> Progress:
    """Progress of ``total`` validations: lines on the run's log (``validated n/N``, rate,
    time left; each failure as it happens) and a progress artifact."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    log = run_logger()
    progress = Progress("validated", total, emit=log.info, error=log.error,
                        fail_line="variant {item} failed validation ({done}/{total}): {reason}")
    if total:
        key = create_progress_artifact(progress=0.0, key="fleet-deploy-progress",
                                       description=f"Variants validated of {total}")

        def move(pct: float) -> None:
            update_progress_artifact(cast(UUID, key), pct)

        progress.artifact = move
    return progress


def forget_index_entries(store: Any, prefix: str, keys: set[str]) -> None:
    """Drop ``keys`` from the prefix's sync index, so a later publish of the same name uploads
    again instead of trusting an entry whose object is gone."""
    key = f"{prefix}/{INDEX_NAME}" if prefix else INDEX_NAME
    try:
        index = SyncIndex.read(store.get_bytes(key), key)
    except ObjectNotFound:
        return
    except ValueError:
        store.delete(key)  # unreadable: the next sync rebuilds it from a listing
        return
    if keys & set(index.objects):
        index.objects = {k: e for k, e in index.objects.items() if k not in keys}
        store.put_bytes(key, index.model_dump_json().encode())


def _unload_local(endpoint: str, target_models: Sequence[str]) -> None:
    """A deleted object must not go on serving from a running local endpoint's memory."""
    import httpx

    from infra.endpoint.process import find_running
    from infra.endpoint.client import LocalEndpointClient

    running = find_running(endpoint)
    if running is None:
        return
    client = LocalEndpointClient(running.url, timeout=60)
    for tm in target_models:
        try:
            client.unload(tm, check=False)
        except httpx.HTTPError:
            pass


def delete_versions(table: RoutingTable, versions: Sequence[RouteVersion],
                    refs: Mapping[str, EndpointRef]) -> list[str]:
    """Delete ``versions``' objects (never one ``table`` points to); returns their URIs."""
    keep = table.referenced()
    by_endpoint: dict[str, set[str]] = defaultdict(set)
    for v in versions:
        if (v.endpoint or "", v.target_model) not in keep:
            by_endpoint[v.endpoint or ""].add(v.target_model)
    deleted = []
    for endpoint, names in sorted(by_endpoint.items()):
        ref = refs.get(endpoint)
        if ref is None or not ref.models_url:
            raise UserError(f"endpoint {endpoint!r} has no model prefix in the routing table of "
                            f"{table.fleet}: cannot delete {sorted(names)}")
        if ref.backend == "local":
            _unload_local(endpoint, sorted(names))
        store, prefix = open_store(ref.models_url)
        for name in sorted(names):
            key = f"{prefix}/{name}" if prefix else name
            store.delete(key)
            deleted.append(store.uri_for(key))
        forget_index_entries(store, prefix, names)
    return deleted


@dataclass
class Committed:
    """What :func:`commit` changed in the table, and the versions to delete after writing it."""

    live: list[str] = field(default_factory=list)
    retiring: list[str] = field(default_factory=list)
    unretired: list[str] = field(default_factory=list)  # retiring, back in the build
    removed: list[str] = field(default_factory=list)
    doomed: list[RouteVersion] = field(default_factory=list)
    refs: dict[str, EndpointRef] = field(default_factory=dict)


def route_tenants(table: RoutingTable, tenants: Mapping[str, Desired], now: datetime) -> list[str]:
    """Route each fused tenant to its shard's route (same endpoint and TargetModel, its own
    ``tenant`` index) once that shard serves the build's version; returns those that moved.
    A tenant whose shard failed keeps its previous route."""
    moved = []
    for name, d in sorted(tenants.items()):
        shard = table.variants.get(d.shard or "")
        if shard is None or shard.sha256 != d.sha256:
            continue
        old = table.variants.get(name)
        if old is not None and (old.endpoint, old.target_model, old.tenant) == (
                shard.endpoint, shard.target_model, d.tenant):
            continue
        promote(table, name, RouteVersion(target_model=shard.target_model, sha256=shard.sha256,
                                          since=now.isoformat(timespec="seconds"),
                                          endpoint=shard.endpoint, tenant=d.tenant), now)
        moved.append(name)
    return moved


def commit(table: RoutingTable, jobs: Sequence[Job], results: Mapping[str, str | None],
           members: Sequence[str], access: Mapping[str, Access],
           policy: DeployPolicy, now: datetime,
           tenants: Mapping[str, Desired] | None = None) -> Committed:
    """Route every job that passed to its new version; un-retire the retiring variants that are
    ``members`` of the fleet again (``unretired``); mark variants that left the fleet (not in
    ``members``: the build's index, whatever each one's status — a variant whose rebuild failed
    stays on the version it is routed by) retiring, remove those
    past ``policy.grace_s``, drop versions beyond ``policy.keep_versions``; the failed new
    versions, the removed and the dropped are returned to delete (after the table is written).
    ``now`` is the deploy's one clock reading (``policy.clock()``, read once by the caller)."""
    grace, keep = timedelta(seconds=policy.grace_s), policy.keep_versions
    done = Committed(refs={**table.endpoints, **{e: a.ref() for e, a in access.items()}})
    for job in jobs:
        if job.kind in ("canary", "repaired"):
            continue
        version = RouteVersion(target_model=job.target_model, sha256=job.sha256,
                               since=now.isoformat(timespec="seconds"), endpoint=job.endpoint)
        if results.get(job.variant) is None:
            promote(table, job.variant, version, now)
            done.live.append(job.variant)
        else:
            done.doomed.append(version)
    done.live += route_tenants(table, tenants or {}, now)
    done.unretired = unretire(table, members)
    done.retiring = retire_missing(table, members, now)
    done.removed = expired(table, grace, now)
    done.doomed += remove(table, done.removed) + prune_versions(table, keep)
    done.doomed = unreferenced(table, done.doomed)
    used = {e for e, _ in table.referenced()}
    table.endpoints = {e: r for e, r in done.refs.items() if e in used}
    return done


def is_fleet_file(fleet: str) -> bool:
    """True when ``fleet`` names a file (a path, or ``*.yaml``), not a fleet by name."""
    return "/" in fleet or fleet.endswith((".yaml", ".yml")) or Path(fleet).expanduser().is_file()


@task(name="read-fleet-state", cache_policy=NO_CACHE)
def read_state_task(fleet: str, build_dir: str | None, store_uri: str
                    ) -> tuple[str, dict[str, Desired], RoutingTable, BuildRef]:
    """(fleet name, desired variants from its latest build, the routing table: one GET, the
    build's id). A fleet file (or a catalog fleet's name without ``build_dir``) is compared with
    that build first: a build that is not the file's is refused (:mod:`tasks.fleet.drift`)."""
    from ensembles.fleet_spec import load_fleet
    from tasks.fleet.drift import refuse_stale_build

    spec = load_fleet(fleet) if is_fleet_file(fleet) or not build_dir else None
    out = (Path(build_dir).expanduser().resolve() if build_dir else
           fleet_build_dir(spec) if spec else Path())
    index, ref = read_build(out, spec.name if spec else None)
    name, desired = index.fleet, desired_of(index, out)
    if spec is None and fleet != name:
        raise UserError(f"--build-dir {build_dir} holds fleet {name!r}, not {fleet!r}")
    if spec is not None:
        refuse_stale_build(spec, index, ref.index)
    if not desired:
        raise UserError(f"fleet {name}: its build has no variant with status ok: nothing to deploy")
    return name, desired, read_routes(store_uri, name), ref


@task(name="open-endpoints", cache_policy=NO_CACHE)
def open_endpoints_task(backend: str, endpoints: Sequence[str], store_uri: str, region: str | None,
                        served: Mapping[str, ServedEndpoint] | None = None) -> dict[str, Access]:
    """An :class:`Access` per endpoint (local: started or reused; SageMaker: a runtime client on
    the model prefix ``served`` read from the endpoint, see :mod:`tasks.fleet.endpoints`)."""
    return {e: open_access(backend, e, store_uri, region, (served or {}).get(e)) for e in endpoints}


class Unretired(BaseModel):
    """A retiring variant a deploy brought back: the sha256 and manifest it is routed by."""

    model_config = ConfigDict(frozen=True)

    sha256: str
    #: None: its last build failed, so it is routed by the version it had (no new manifest).
    manifest: str | None


class CommitSummary(BaseModel):
    """What committing a fleet deploy did: the table's URI, the variants live, marked
    retiring, un-retired, removed, the objects deleted, how many are routed, and the build.
    ``model_dump(mode="json")`` is the part of ``mme fleet deploy``'s JSON it always was."""

    model_config = ConfigDict(frozen=True)

    routes: str
    live: list[str]
    retiring: list[str]
    unretired: dict[str, Unretired]
    build: BuildRef | None
    removed: list[str]
    deleted: list[str]
    routed: int
    #: In the fleet, but its last build failed: kept on the version it is routed by (neither
    #: retired nor changed) until a build of it passes.
    held: list[str] = []


@task(name="commit-fleet-routes", cache_policy=NO_CACHE)
def commit_task(store_uri: str, table: RoutingTable, jobs: Sequence[Job],
                results: Mapping[str, str | None], desired: Mapping[str, Desired],
                access: Mapping[str, Access], policy: DeployPolicy,
                build: BuildRef | None = None) -> CommitSummary:
    """Route what passed, retire and prune (:func:`commit`), write the table (one PUT), then
    delete the objects it no longer points to. Returns the counts and names; ``unretired``
    names the retiring variants this deploy brought back (they are in ``build`` again), each
    with the sha256 and manifest it is routed by."""
    now = policy.clock()
    before = table.model_dump(exclude={"updated_at"})
    members = sorted(build.members | set(desired)) if build is not None else sorted(desired)
    done = commit(table, jobs, results, members, access, policy, now,
                  {n: d for n, d in desired.items() if d.shard is not None})
    held = sorted(n for n in set(members) - set(desired) if n in table.variants)
    if table.model_dump(exclude={"updated_at"}) != before:
        uri = write_routes(store_uri, table, now)
    else:  # nothing changed: no write (a no-op deploy is one GET of the table)
        store, key = routes_location(store_uri, table.fleet)
        uri = store.uri_for(key)
    deleted = delete_versions(table, done.doomed, done.refs)
    log = run_logger()
    log.info("routes %s: %d live now, %d marked retiring, %d un-retired, %d removed, %d objects "
             "deleted", uri, len(done.live), len(done.retiring), len(done.unretired),
             len(done.removed), len(deleted))
    if done.unretired:
        log.warning("%d retiring variant(s) un-retired: %s is in %s again (remove it from the "
                    "fleet file and rebuild to retire it for good)", len(done.unretired),
                    ", ".join(done.unretired[:10]), build.describe() if build else "the build")
    if held:
        log.warning("%d variant(s) of the fleet failed their last build and stay on the version "
                    "they are routed by: %s", len(held), ", ".join(held[:10]))
    unretired = {n: Unretired(sha256=table.variants[n].sha256,
                              manifest=str(desired[n].manifest) if n in desired else None)
                 for n in done.unretired}
    return CommitSummary(routes=uri, live=sorted(done.live), retiring=done.retiring,
                         unretired=unretired, build=build, removed=done.removed, deleted=deleted,
                         routed=len(table.variants), held=held)
