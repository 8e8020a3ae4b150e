"""Roll an ensemble back to the version it replaced (``mme rollback``).

Why no redeploy: a deploy keeps the versions before the current one (``--keep-versions``) in the
store under their own versioned names, so going back uploads nothing and overwrites nothing.
The endpoint record points back to the newest kept version
(:func:`infra.records.endpoint.rollback_version`) and the store's ledger, its mirror that a
retire or gc on another machine reads, is changed the same way.

A rollback is what one runs when something is already wrong, so it checks before it switches:

* the kept object is still in the store with the digest we published (someone may have
  deleted or replaced it);
* the endpoint answers it: one invoke by its TargetModel with the ensemble's sample request
  (from the build's manifest), answered with every output the sample expects, each in the
  sample's shape. Not the sample's numbers: they are the current build's, and the version
  before it may rightly answer otherwise.

Either check failing leaves the record and the ledger as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra import paths
from infra.errors import InvalidInput, MissingInput
from infra.jsontypes import JsonObject
from infra.records import endpoint as record
from infra.records.endpoint import EnsembleLine, VersionLine
from infra.records.manifest import Manifest
from infra.store.objects import open_store, sha256_at
from tasks.build.package import read_manifest
from tasks.build.verify import Sample
from tasks.deploy.publish import read_ledger, write_ledger
from tasks.deploy.records import LedgerEntry
from tasks.deploy.validate import DeployValidationFailed, invoke_when_ready

if TYPE_CHECKING:
    import numpy as np

#: One invoke of the plan's kept TargetModel with a manifest's sample inputs: its outputs.
Invoke = Callable[[Manifest, "dict[str, np.ndarray]"], "dict[str, np.ndarray]"]


@dataclass(frozen=True)
class RollbackPlan:
    """What a rollback of ``ensemble`` on ``endpoint`` would do: ``current`` (serving now)
    gives way to ``back`` (the newest kept version)."""

    endpoint: str
    ensemble: str
    backend: str
    region: str | None
    store_uri: str
    current: VersionLine
    back: VersionLine

    def to_json(self) -> JsonObject:
        return {"endpoint": self.endpoint, "ensemble": self.ensemble, "backend": self.backend,
                "from": self.current.target_model, "to": self.back.target_model,
                "object": self.back.uri, "sha256": self.back.sha256}


def plan_rollback(endpoint: str, ensemble: str) -> RollbackPlan:
    """Read the endpoint record: which version serves ``ensemble`` and which one is kept.
    Refuses (one line naming why) an endpoint with no record here, an ensemble not deployed, a
    deploy in flight, or no kept version."""
    rec = record.read_record(endpoint)
    if rec is None:
        raise MissingInput(f"no record of endpoint {endpoint!r} on this machine "
                           f"({record.record_path(endpoint)}): a rollback goes by what a deploy "
                           f"from here recorded")
    entry = rec.ensembles.get(ensemble)
    record.check_rollback(endpoint, ensemble, entry)
    assert entry is not None and entry.kept_versions  # check_rollback refused otherwise
    return RollbackPlan(endpoint=endpoint, ensemble=ensemble, backend=rec.backend or "local",
                        region=rec.region, store_uri=rec.store_uri or paths.store_uri(),
                        current=record.version_line(entry), back=entry.kept_versions[0])


def check_kept_object(plan: RollbackPlan) -> None:
    """The kept version's object is in the store with the digest we published, or
    :class:`MissingInput` / :class:`InvalidInput` naming its URI."""
    back = plan.back
    if back.model_data_url is None:
        raise InvalidInput(f"version {back.target_model} names no model_data_url: its record line "
                           f"was edited by hand")
    found = sha256_at(open_store(back.model_data_url)[0], back.key)
    if found is None:
        raise MissingInput(f"cannot roll {plan.ensemble} back to {back.target_model}: its object "
                           f"{back.uri} is gone from the store")
    if found != back.sha256:
        raise InvalidInput(f"cannot roll {plan.ensemble} back to {back.target_model}: its object "
                           f"{back.uri} was replaced (sha256 {found}, we published {back.sha256})")


def sample_manifest(plan: RollbackPlan) -> Manifest:
    """The manifest whose sample request the check sends: the ensemble's build here, for the
    target the kept version (else the current one) was built for."""
    target = plan.back.build_target or plan.current.build_target or "local-cpu"
    try:
        return read_manifest(paths.artifacts_dir(target), plan.ensemble)
    except MissingInput as e:
        raise MissingInput(f"{e}; its sample request is what the kept version is checked with, "
                           f"or roll back without the check (--no-invoke)") from None


def answer_problems(sample: Sample, got: dict[str, np.ndarray]) -> list[str]:
    """How ``got`` fails to answer like ``sample`` expects: an output missing, or one in
    another shape ([] when it answers like it)."""
    problems = []
    for name, want in sample.expected.items():
        if name not in got:
            problems.append(f"no output {name} (answered {sorted(got)})")
        elif tuple(got[name].shape) != tuple(want.shape):
            problems.append(f"output {name} has shape {list(got[name].shape)}, the sample's is "
                            f"{list(want.shape)}")
    return problems


def check_kept_answers(plan: RollbackPlan, manifest: Manifest, invoke: Invoke) -> JsonObject:
    """Invoke the kept TargetModel with ``manifest``'s sample request; the outputs' shapes, or
    :class:`DeployValidationFailed` saying how the answer differs from the sample's."""
    sample = Sample.from_json(manifest.required_sample())
    kept = manifest.model_copy(update={"target_model": plan.back.target_model})
    got = invoke(kept, sample.inputs)
    problems = answer_problems(sample, got)
    if problems:
        raise DeployValidationFailed(
            f"{plan.ensemble}: the kept version {plan.back.target_model} on endpoint {plan.endpoint} "
            f"does not answer like the sample request expects: {'; '.join(problems)}; not rolled back")
    return {name: list(value.shape) for name, value in got.items()}


def runtime_invoker(plan: RollbackPlan, url: str | None = None) -> Invoke:
    """Invoke by TargetModel on the plan's endpoint, waiting out 429 while it loads (the
    deploy's own retry): the local endpoint at ``url`` (default: the running one, else
    :class:`MissingInput`), or SageMaker's runtime in the record's region."""
    from infra.aws.clients import aws_clients
    from infra.endpoint.process import find_running

    if plan.backend == "local" and url is None:
        info = find_running(plan.endpoint)
        if info is None:
            raise MissingInput(f"endpoint {plan.endpoint!r} is not running: start it (mme endpoint "
                               f"start) to check the kept version, or roll back without the check "
                               f"(--no-invoke; invoke=False in a flow run)")
        url = info.url
    client = aws_clients(plan.region or "us-east-1", runtime_url=url).runtime
    return lambda manifest, inputs: invoke_when_ready(client, plan.endpoint, manifest, inputs)[0]


def apply_rollback(plan: RollbackPlan) -> tuple[EnsembleLine, str]:
    """Point the record back (it re-checks under its lock), then the store's ledger; the new
    current line and what became of the ledger (a line for the user)."""
    new = record.rollback_version(plan.endpoint, plan.ensemble)
    return new, mirror_in_ledger(plan, new)


def mirror_in_ledger(plan: RollbackPlan, new: EnsembleLine) -> str:
    """Make the store ledger's entry say what the record now says: ``new`` current, the version
    it replaced kept first. A ledger whose entry names another current version (a deploy from
    another machine) is left as it is, and said."""
    ledger = read_ledger(plan.store_uri, plan.endpoint)
    entry = ledger.ensembles.get(plan.ensemble)
    if entry is None:
        return f"the store's ledger has no entry for {plan.ensemble}: left as it is"
    if entry.key != plan.current.key:
        return (f"the store's ledger names another current version of {plan.ensemble} "
                f"({entry.target_model}): left as it is")
    before = entry.model_copy(update={"model_data_url": entry.model_data_url or ledger.model_data_url})
    ledger.ensembles[plan.ensemble] = LedgerEntry(
        target_model=new.target_model, key=new.key, uri=new.uri, sha256=new.sha256,
        model_data_url=new.model_data_url, deployed_at=new.deployed_at,
        kept_versions=record.kept_after(before, new.key) or None)
    write_ledger(plan.store_uri, plan.endpoint, ledger)
    return f"the store's ledger now names {new.target_model} current"


@dataclass(frozen=True)
class RollbackResult:
    """What a rollback did: the plan it carried out, the output shapes the kept version
    answered with (None: not invoked), and what became of the store's ledger."""

    plan: RollbackPlan
    answered: JsonObject | None  # output name -> shape
    ledger: str

    def to_json(self) -> JsonObject:
        return {"dry_run": False, **self.plan.to_json(), "answered": self.answered, "ledger": self.ledger}


def roll_back(endpoint: str, ensemble: str, *, invoke: bool = True, url: str | None = None) -> RollbackResult:
    """The whole rollback: plan, check the kept object, invoke it (unless ``invoke`` is
    False), switch the record and the ledger. Call it holding the endpoint's deploy lock."""
    plan = plan_rollback(endpoint, ensemble)
    check_kept_object(plan)
    answered = check_kept_answers(plan, sample_manifest(plan), runtime_invoker(plan, url)) if invoke else None
    _, ledger = apply_rollback(plan)
    return RollbackResult(plan=plan, answered=answered, ledger=ledger)


@task(name="rollback", cache_policy=NO_CACHE)
def rollback_task(endpoint: str, ensemble: str, invoke: bool = True, url: str | None = None) -> RollbackResult:
    """:func:`roll_back` as a task: one step in the flow run, its error the run's."""
    return roll_back(endpoint, ensemble, invoke=invoke, url=url)
