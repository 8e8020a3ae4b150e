"""Registry of artifact producers named by ``ensemble.yaml`` (``artifacts.<name>.producer``).

A producer is a plain function ``(out_dir, **params) -> (path, metadata)``. Parameters that
are artifact references (``artifact:<name>`` in the YAML, :class:`ensembles.spec.ArtifactRef`
once validated) are replaced by the path of an artifact produced earlier in the same build, so
artifacts form a small chain (model -> tokenizer, model -> ONNX -> plan). Producing (with the
content-addressed cache) is :func:`tasks.producers.cache.produce_cached`; :data:`produce_task` is its
Prefect task (``produce-artifact``: retried on transient failures, cached on the content key).
"""

from __future__ import annotations

import inspect

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from prefect import task
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, ConfigDict

from ensembles.spec import ArtifactRef, EnsembleSpec, SpecError, Target, artifact_refs
from tasks.producers import cache
from tasks.runtime.text import short
from tasks.runtime.retry import retry_transient
from tasks.runtime.run_context import run_id, run_logger
from infra.errors import UserError
from tasks.producers.export import export_transformer_onnx
from tasks.producers.classifiers import export_squeezenet_onnx, imagenet_labels
from tasks.producers.dali import check_external_source, serialize_pipeline
from tasks.producers.fetch import fetch_model_file, packaged_hf_model, tokenizer_files


T = TypeVar("T")


class NotAvailableHere(UserError, RuntimeError):
    """The producer needs something this host lacks (a GPU, TensorRT, Docker, conda)."""


def _options(cls: Callable[..., T], params: Mapping[str, object]) -> T:
    """A producer's YAML params as its options dataclass: an unknown name is refused by the
    dataclass itself (TypeError, named by the registry), and its values are checked where the
    options check them (``__post_init__``), not here."""
    return cls(**params)


def _compile_tensorrt(out_dir: Path, **params: object) -> tuple[Path, dict]:
    from tasks.producers.compile import CompileOptions, CompileUnavailable, compile_tensorrt

    try:
        return compile_tensorrt(out_dir, _options(CompileOptions, params))
    except CompileUnavailable as e:
        raise NotAvailableHere(f"compile_tensorrt: {e}") from e


def _pack_python_env(out_dir: Path, **params: object) -> tuple[Path, dict]:
    from tasks.producers.envpack import EnvPackOptions, EnvPackUnavailable, pack_python_env

    try:
        return pack_python_env(out_dir, _options(EnvPackOptions, params))
    except EnvPackUnavailable as e:
        raise NotAvailableHere(f"pack_python_env: {e}") from e


PRODUCERS: dict[str, Callable[..., tuple[Path, dict]]] = {
    "packaged_hf_model": packaged_hf_model,
    "tokenizer_files": tokenizer_files,
    "export_transformer_onnx": export_transformer_onnx,
    "export_squeezenet_onnx": export_squeezenet_onnx,
    "imagenet_labels": imagenet_labels,
    "fetch_model_file": fetch_model_file,
    "serialize_dali_pipeline": serialize_pipeline,
    "compile_tensorrt": _compile_tensorrt,
    "pack_python_env": _pack_python_env,
}


def producer_params(producer: str) -> frozenset[str] | None:
    """The parameters ``producer`` takes by name, or None when it takes any (``**params``,
    checked by its options type) or is not registered (the spec's validation says so)."""
    fn = PRODUCERS.get(producer)
    if fn is None:
        return None
    sig = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig):
        return None
    return frozenset(p.name for p in sig if p.kind is inspect.Parameter.KEYWORD_ONLY)


def resolve_params(params: Mapping[str, object], produced: Mapping[str, Path], where: str) -> dict[str, object]:
    """``params`` with each :class:`ArtifactRef` replaced by the path of that artifact."""
    out: dict[str, object] = {}
    for k, v in params.items():
        if isinstance(v, ArtifactRef):
            if v.name not in produced:
                raise SpecError(f"{where}: parameter {k!r} needs artifact {v.name!r}, "
                                f"which is not produced before it")
            out[k] = produced[v.name]
        else:
            out[k] = v
    return out


def artifacts_for(spec: EnsembleSpec, target: Target) -> list[str]:
    """Artifacts the target needs (in declaration order), including the ones they depend on."""
    needed: set[str] = set()
    for step in spec.steps:
        be = step.backends.get(target)
        if be:
            needed |= {r.name for r in artifact_refs(be.files.values())}
    if spec.validation:
        needed |= {r.name for r in artifact_refs(spec.validation.params.values())}
    changed = True
    while changed:  # close over dependencies between artifacts
        changed = False
        for name in list(needed):
            for ref in artifact_refs(spec.artifacts[name].params.values()):
                if ref.name not in needed:
                    needed.add(ref.name)
                    changed = True
    return [n for n in spec.artifacts if n in needed]


def check_artifacts(spec: EnsembleSpec, target: Target, produced: dict[str, Path]) -> None:
    """Cross-checks between artifacts and the spec that only the built files can answer.

    A DALI pipeline's external source must be named like the input of the step that runs it
    (Triton's DALI backend feeds inputs by name): a mismatch is refused here, at build time,
    not at the first request on the endpoint.
    """
    for step in spec.steps:
        be = step.backends.get(target)
        if be is None:
            continue
        for ref in artifact_refs(be.files.values()):
            if spec.artifacts[ref.name].producer != "serialize_dali_pipeline":
                continue
            name = ref.name
            expected = [t.name for t in step.inputs]
            if len(expected) != 1:
                raise SpecError(f"ensemble {spec.name!r}, step {step.name!r}: a DALI step takes "
                                f"exactly one input (encoded images), not {expected}")
            check_external_source(produced[name], expected[0],
                                  pipeline_name=f"{spec.name}/{step.name} ({name})")


class ProducedArtifact(BaseModel):
    """What ``produce-artifact`` returns: the artifact's ``path``, its producer's ``meta``
    (the manifest's ``sources`` entry), whether it was a cache ``hit``, its content ``key`` and
    how long the producer took (``seconds``). A pydantic model because Prefect persists it: a
    result persisted by an older version (a dict of these fields, under the same cache key)
    reads back through :meth:`of`."""

    model_config = ConfigDict(frozen=True)

    path: Path
    meta: dict[str, Any]
    hit: bool
    key: str
    seconds: float

    @classmethod
    def of(cls, result: ProducedArtifact | Mapping[str, Any]) -> ProducedArtifact:
        """The task's result, whether this version returned it or an older one persisted it."""
        return result if isinstance(result, ProducedArtifact) else cls.model_validate(result)


def _artifact_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    key = cache.artifact_key(parameters["spec"], parameters["name"], parameters["produced"],
                             parameters["target"])
    return cache.prefect_cache_key("artifact", key, cache.artifact_nonce(key), context.task_run.id)


@task(name="produce-artifact", cache_key_fn=_artifact_cache_key, persist_result=True,
      retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=retry_transient, timeout_seconds=4 * 3600)
def produce_task(spec: EnsembleSpec, name: str, produced: dict[str, Path], target: Target) -> ProducedArtifact:
    """The artifact from the content-addressed cache, produced into it on a miss."""
    art = cache.produce_cached(spec, name, produced, target, nonce=run_id())
    if art.hit:
        run_logger().info("%s: artifact %s cached (key %s)", spec.name, name, short(art.key))
    else:
        run_logger().info("%s: artifact %s ready in %.1f s (key %s)", spec.name, name, art.seconds,
                          short(art.key))
    return ProducedArtifact(path=art.path, meta=art.meta, hit=art.hit, key=art.key, seconds=art.seconds)
