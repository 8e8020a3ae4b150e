"""Registry of artifact producers named by ``ensemble.yaml`` (``artifacts.<name>.producer``).

A producer is a plain function ``(out_dir, **params) -> (path, metadata)``. Parameters that
say ``artifact:<name>`` are replaced by the path of an artifact produced earlier in the same
build, so artifacts form a small chain (model -> tokenizer, model -> ONNX -> plan).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ensembles.spec import EnsembleSpec, SpecError
from tasks.export import export_transformer_onnx
from tasks.classifiers import export_squeezenet_onnx, imagenet_labels
from tasks.dali import check_external_source, serialize_pipeline
from tasks.fetch import fetch_model_file, packaged_hf_model, tokenizer_files


class NotAvailableHere(RuntimeError):
    """The producer needs something this host lacks (a GPU, TensorRT, Docker, conda)."""


def _compile_tensorrt(out_dir: Path, **params: object) -> tuple[Path, dict]:
    from tasks.compile import CompileUnavailable, compile_tensorrt

    try:
        return compile_tensorrt(out_dir, **params)  # type: ignore[arg-type]
    except CompileUnavailable as e:
        raise NotAvailableHere(f"compile_tensorrt: {e}") from e


def _pack_python_env(out_dir: Path, **params: object) -> tuple[Path, dict]:
    from tasks.envpack import EnvPackUnavailable, pack_python_env

    try:
        return pack_python_env(out_dir, **params)  # type: ignore[arg-type]
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


def resolve_params(params: dict[str, object], produced: dict[str, Path], where: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in params.items():
        if isinstance(v, str) and v.startswith("artifact:"):
            name = v.removeprefix("artifact:")
            if name not in produced:
                raise SpecError(f"{where}: parameter {k!r} needs artifact {name!r}, "
                                f"which is not produced before it")
            out[k] = produced[name]
        else:
            out[k] = v
    return out


def artifacts_for(spec: EnsembleSpec, target: str) -> list[str]:
    """Artifacts the target needs (in declaration order), including the ones they depend on."""
    needed: set[str] = set()
    for step in spec.steps:
        be = step.backends.get(target)  # type: ignore[call-overload]
        if be:
            needed |= {s.removeprefix("artifact:") for s in be.files.values() if s.startswith("artifact:")}
    if spec.validation:
        needed |= {str(v).removeprefix("artifact:") for v in spec.validation.params.values()
                   if isinstance(v, str) and v.startswith("artifact:")}
    changed = True
    while changed:  # close over dependencies between artifacts
        changed = False
        for name in list(needed):
            for v in spec.artifacts[name].params.values():
                if isinstance(v, str) and v.startswith("artifact:") and v[9:] not in needed:
                    needed.add(v[9:])
                    changed = True
    return [n for n in spec.artifacts if n in needed]


def produce(spec: EnsembleSpec, name: str, out_dir: Path, produced: dict[str, Path]) -> tuple[Path, dict]:
    art = spec.artifacts[name]
    where = f"ensemble {spec.name!r}, artifact {name!r}"
    fn = PRODUCERS.get(art.producer)
    if fn is None:
        raise SpecError(f"{where}: unknown producer {art.producer!r} (known: {sorted(PRODUCERS)})")
    return fn(Path(out_dir), **resolve_params(art.params, produced, where))


def check_artifacts(spec: EnsembleSpec, target: str, produced: dict[str, Path]) -> None:
    """Cross-checks between artifacts and the spec that only the built files can answer.

    A DALI pipeline's external source must be named like the input of the step that runs it
    (Triton's DALI backend feeds inputs by name): a mismatch is refused here, at build time,
    not at the first request on the endpoint.
    """
    for step in spec.steps:
        be = step.backends.get(target)  # type: ignore[call-overload]
        if be is None:
            continue
        for dest, src in be.files.items():
            name = src.removeprefix("artifact:")
            if not src.startswith("artifact:") or spec.artifacts[name].producer != "serialize_dali_pipeline":
                continue
            expected = [t.name for t in step.inputs]
            if len(expected) != 1:
                raise SpecError(f"ensemble {spec.name!r}, step {step.name!r}: a DALI step takes "
                                f"exactly one input (encoded images), not {expected}")
            check_external_source(produced[name], expected[0],
                                  pipeline_name=f"{spec.name}/{step.name} ({name})")
