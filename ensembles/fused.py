"""The ensemble of a fused shard: the fleet's template with one more input, ``TENANT``.

A fused shard serves many tenants from one model whose head is chosen by the tenant's index
(:mod:`tasks.fleet.fusion`). Its ensemble is the template, unchanged, except that the ensemble
takes ``TENANT`` (INT32, one value per request) and hands it to the step that runs the fused
model. The class-score output loses its ``label_filename``: labels are each tenant's own, so
the router answers with the tenant's labels, never a shard-wide file. Dynamic batching stays as
the template has it (off in the catalog's templates): one request is one tenant.
"""

from __future__ import annotations

from collections.abc import Mapping

from ensembles.spec import EnsembleSpec, SpecError, StepSpec, Target, TensorSpec, validate

TENANT = "TENANT"
TENANT_TENSOR = TensorSpec(name=TENANT, dtype="TYPE_INT32", dims=[1])


def fused_spec(template: EnsembleSpec, step: str | Mapping[Target, str], name: str) -> EnsembleSpec:
    """``template`` as the ensemble ``name`` of a fused shard whose ``step`` runs the fused
    model (one step, or one per target: :attr:`ensembles.spec.FusionSpec.step`). Refuses a
    template that already has a ``TENANT`` tensor, or a step it lacks."""
    if any(t.name == TENANT for t in template.inputs):
        raise SpecError(f"ensemble {template.name!r}: already has an input named {TENANT}")
    fused = {step} if isinstance(step, str) else set(step.values())
    for one in sorted(fused):
        if one not in {s.name for s in template.steps}:
            raise SpecError(f"ensemble {template.name!r}: no step {one!r} to run the fused model")
        if any(b.dynamic_batching for b in template.step(one).backends.values()):
            raise SpecError(f"ensemble {template.name!r}: step {one!r} batches requests dynamically; "
                            "a fused step must answer one request (one tenant) at a time")
    steps = [_with_tenant(s) if s.name in fused else s for s in template.steps]
    outputs = [o.model_copy(update={"label_filename": None}) for o in template.outputs]
    spec = template.model_copy(update={"name": name, "inputs": [*template.inputs, TENANT_TENSOR],
                                       "outputs": outputs, "steps": steps, "validation": None})
    validate(spec)
    return spec


def _with_tenant(step: StepSpec) -> StepSpec:
    """The step with the ``TENANT`` input; its label files go with its ``label_filename``s (the
    tenants' labels travel in the shard's tenants sidecar, not in a model folder)."""
    label_files = {o.label_filename for o in step.outputs if o.label_filename}
    outputs = [o.model_copy(update={"label_filename": None}) for o in step.outputs]
    backends = {t: b.model_copy(update={"files": {d: f for d, f in b.files.items() if d not in label_files}})
                for t, b in step.backends.items()}
    return step.model_copy(update={"inputs": [*step.inputs, TENANT_TENSOR], "outputs": outputs,
                                    "input_map": {**step.input_map, TENANT: TENANT},
                                    "backends": backends})
