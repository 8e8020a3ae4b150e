"""Delete what deploys created for a SageMaker endpoint, resource by resource, owned only.

Candidates come from two places: the endpoint record (every resource a deploy created, even
one that died half-way) and discovery by name (the endpoint, the config it serves, configs
whose name contains the endpoint's, the models those configs use, the variant's scalable
target and our named scaling policy), so an endpoint deployed before records existed is still
found. Each candidate is deleted only when it is ours: models, configs and the endpoint must
carry ``managed-by: triton-mme`` and ``triton-mme:endpoint: <name>`` (the rule of
:mod:`infra.aws.sagemaker`); a scalable target or policy is ours when the endpoint it scales is
ours, or, the endpoint being gone already, when the record says we registered it.

Every candidate gets an :class:`Outcome`; the caller decides what is a failure (the retire
flow: anything not deleted that it was asked to delete).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from infra.aws import sagemaker as sm
from infra.aws.clients import AutoScalingClient, SageMakerClient
from infra.aws.errors import describe
from infra.records.endpoint import CREATED, DELETE_ORDER, ResourceLine

Log = Callable[[str], None]
OnDeleted = Callable[[str, str], None]

DELETED, WOULD_DELETE, MISSING, NOT_OWNED, FAILED = (
    "deleted", "would delete", "not found", "not ours, left in place", "failed")


@dataclass
class Candidate:
    kind: str  # model | endpoint_config | endpoint | scalable_target | scaling_policy
    name: str
    recorded: bool = False  # the record says a deploy created it (so "not found" is news)
    resource_id: str | None = None  # scaling policies: the variant they scale


@dataclass
class Outcome:
    kind: str
    name: str
    status: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.kind} {self.name}: {self.status}{f' ({self.detail})' if self.detail else ''}"


@dataclass
class _Seen:
    """What discovery learnt: is the endpoint ours, does it exist."""

    endpoint_exists: bool = False
    endpoint_owned: bool = False
    candidates: dict[tuple[str, str], Candidate] = field(default_factory=dict)

    def add(self, kind: str, name: str, **kw: Any) -> None:
        key = (kind, name)
        if key not in self.candidates:
            self.candidates[key] = Candidate(kind, name, **kw)
        elif kw.get("recorded"):
            self.candidates[key].recorded = True


def _owned_arn(sm_client: SageMakerClient, arn: str, endpoint: str) -> bool:
    return sm._owned(sm._tags(sm_client, arn), endpoint)


def gather(sm_client: SageMakerClient, aas_client: AutoScalingClient, endpoint: str,
           resources: list[ResourceLine],
           *, names: dict[str, list[str]] | None = None, discover: bool = True) -> _Seen:
    """Every candidate for deletion (read-only: describe/list calls only)."""
    seen = _Seen()
    for r in resources:
        seen.add(r.kind, r.name, recorded=r.state == CREATED, resource_id=r.resource_id)
    for kind, extra in (names or {}).items():
        for name in extra:
            seen.add(kind, name)
    desc = sm._describe(sm_client.describe_endpoint, EndpointName=endpoint)
    if desc is not None:
        seen.endpoint_exists = True
        seen.endpoint_owned = _owned_arn(sm_client, desc["EndpointArn"], endpoint)
    if not discover:
        return seen
    variants = ["AllTraffic"]
    if desc is not None:
        seen.add("endpoint", endpoint)
        if desc.get("EndpointConfigName"):
            seen.add("endpoint_config", desc["EndpointConfigName"])
        variants += [v["VariantName"] for v in desc.get("ProductionVariants", []) if v.get("VariantName")]
    for page in sm_client.get_paginator("list_endpoint_configs").paginate(NameContains=endpoint):
        for c in page.get("EndpointConfigs", []):
            seen.add("endpoint_config", c["EndpointConfigName"])
    for cand in [c for c in seen.candidates.values() if c.kind == "endpoint_config"]:
        config = sm._describe(sm_client.describe_endpoint_config, EndpointConfigName=cand.name)
        if config is not None and _owned_arn(sm_client, config["EndpointConfigArn"], endpoint):
            for v in config.get("ProductionVariants", []):
                if v.get("ModelName"):
                    seen.add("model", v["ModelName"])
    if aas_client is not None:
        for variant in dict.fromkeys(variants):
            resource_id = f"endpoint/{endpoint}/variant/{variant}"
            target, policy = sm.describe_scaling(aas_client, resource_id, f"{endpoint}-invocations-per-instance")
            if target is not None:
                seen.add("scalable_target", resource_id)
            if policy is not None:
                seen.add("scaling_policy", policy.name, resource_id=resource_id)
    return seen


def _exists_and_owned(sm_client: SageMakerClient, aas_client: AutoScalingClient, cand: Candidate, seen: _Seen,
                      endpoint: str) -> tuple[bool, bool]:
    """(exists, ours) for one candidate."""
    if cand.kind == "endpoint":
        return seen.endpoint_exists, seen.endpoint_owned
    if cand.kind in ("model", "endpoint_config"):
        fn, param, arn_key = {
            "model": (sm_client.describe_model, "ModelName", "ModelArn"),
            "endpoint_config": (sm_client.describe_endpoint_config, "EndpointConfigName", "EndpointConfigArn"),
        }[cand.kind]
        desc = sm._describe(fn, **{param: cand.name})
        if desc is None:
            return False, False
        return True, _owned_arn(sm_client, desc[arn_key], endpoint)
    if aas_client is None:
        return False, False
    scaling_owned = seen.endpoint_owned or (not seen.endpoint_exists and cand.recorded)
    if cand.kind == "scalable_target":
        target, _ = sm.describe_scaling(aas_client, cand.name, None)
        return target is not None, scaling_owned
    resource_id = cand.resource_id or f"endpoint/{endpoint}/variant/AllTraffic"
    _, policy = sm.describe_scaling(aas_client, resource_id, cand.name)
    return policy is not None, scaling_owned


def _delete_call(cand: Candidate, endpoint: str) -> sm.Call:
    if cand.kind == "scalable_target":
        return sm._deregister_call(cand.name)
    if cand.kind == "scaling_policy":
        return sm.Call(sm.AUTOSCALING, "delete_scaling_policy", {
            "PolicyName": cand.name, "ServiceNamespace": "sagemaker",
            "ResourceId": cand.resource_id or f"endpoint/{endpoint}/variant/AllTraffic",
            "ScalableDimension": sm.SCALABLE_DIMENSION})
    param = {"model": "ModelName", "endpoint_config": "EndpointConfigName", "endpoint": "EndpointName"}
    return sm.Call(sm.SAGEMAKER, f"delete_{cand.kind}", {param[cand.kind]: cand.name})


def delete_owned(sm_client: SageMakerClient, aas_client: AutoScalingClient, endpoint: str, seen: _Seen, *,
                 dry_run: bool = False, log: Log = print,
                 on_deleted: OnDeleted | None = None) -> list[Outcome]:
    """Delete every owned candidate (scaling, endpoint, configs, models in that order).

    Never raises for one resource: an AWS error becomes a ``failed`` outcome naming the call
    and AWS's message, and the next resource is tried (a retire that stops at the first
    error would leave the rest billing or cluttering)."""
    clients = {sm.SAGEMAKER: sm_client, sm.AUTOSCALING: aas_client}
    out: list[Outcome] = []
    ordered = sorted(seen.candidates.values(), key=lambda c: (DELETE_ORDER.index(c.kind), c.name))
    for cand in ordered:
        try:
            exists, owned = _exists_and_owned(sm_client, aas_client, cand, seen, endpoint)
        except ClientError as e:
            out.append(Outcome(cand.kind, cand.name, FAILED, str(describe(e, resource=f"{cand.kind} {cand.name}"))))
            continue
        if not exists:
            if cand.recorded:
                out.append(Outcome(cand.kind, cand.name, MISSING, "the record lists it; already gone"))
            if on_deleted is not None and not dry_run:
                on_deleted(cand.kind, cand.name)  # gone either way: the record forgets it
            continue
        if not owned:
            out.append(Outcome(cand.kind, cand.name, NOT_OWNED,
                               f"no {sm.MANAGED_BY_KEY}={sm.MANAGED_BY_VALUE} / {sm.ENDPOINT_TAG_KEY}="
                               f"{endpoint} tags on it or on its endpoint"))
            continue
        call = _delete_call(cand, endpoint)
        if dry_run:
            out.append(Outcome(cand.kind, cand.name, WOULD_DELETE, f"{call.service}.{call.operation}"))
            continue
        try:
            log(f"{call.service}.{call.operation} {cand.name}")
            getattr(clients[call.service], call.operation)(**call.params)
        except ClientError as e:
            err = describe(e, operation=f"{call.service}.{call.operation}", resource=f"{cand.kind} {cand.name}")
            out.append(Outcome(cand.kind, cand.name, FAILED, str(err)))
            continue
        out.append(Outcome(cand.kind, cand.name, DELETED))
        if on_deleted is not None:
            on_deleted(cand.kind, cand.name)
    return out
