"""Turn an extracted MME tarball into uniquely named models in a shared Triton repository.

Mirrors what SageMaker's Triton container does with a tarball (``src/sagemaker_server.cc``):
the model folders sit at the tar root; the folder whose ``config.pbtxt`` says
``platform: "ensemble"`` is the entry model; a ``config.pbtxt`` at the root means the tarball is
one single model; a repository with neither (e.g. BLS-only) is not detected. Since 23.04 each
tarball is its own namespace, so two tarballs may both hold a model named ``preprocess``. One
plain Triton server has a single namespace, so the local endpoint renames every model of a
tarball with a per-tarball prefix and rewrites the ensemble's ``model_name`` references in its
own cache copy. The user's artifact is never modified.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from infra.errors import UserError


class ModelRepoError(UserError, ValueError):
    """The tarball's content is not a Triton model repository SageMaker would accept.

    Messages name the TargetModel and the member inside the tarball (``t.tar.gz/pipe:``), never
    a host path: the endpoint answers them to clients as they are.
    """


@dataclass(frozen=True)
class NamespacedModel:
    entry: str  # internal name of the entry (ensemble or single) model
    models: tuple[str, ...]  # every internal model name, entry included
    original_entry: str


def namespace_for(target_model: str) -> str:
    """A Triton-safe, collision-free prefix for one TargetModel string."""
    stem = re.sub(r"\.tar\.gz$|\.tgz$|\.tar$", "", target_model)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:40] or "model"
    digest = hashlib.sha256(target_model.encode()).hexdigest()[:8]
    return f"{stem}-{digest}"


def _read_config(path: Path, where: str) -> mc.ModelConfig:
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except OSError as e:  # str(e) would name the host path of the extraction folder
        raise ModelRepoError(f"{where}: cannot read {path.name}: {e.strerror or type(e).__name__}") from e
    except (UnicodeDecodeError, text_format.ParseError) as e:
        raise ModelRepoError(f"{where}: cannot parse {path.name}: {e}") from e


def find_models(extracted: Path, target_model: str) -> tuple[str | None, dict[str, Path]]:
    """Return (entry model folder name or None for a root single model, {folder: path})."""
    root_cfg = extracted / "config.pbtxt"
    if root_cfg.exists():
        return None, {"": extracted}
    models = {p.name: p for p in sorted(extracted.iterdir())
              if p.is_dir() and (p / "config.pbtxt").exists()}
    if not models:
        raise ModelRepoError(f"{target_model}: no model folder with a config.pbtxt at the tarball root")
    ensembles = [name for name, p in models.items()
                 if _read_config(p / "config.pbtxt", f"{target_model}/{name}").platform == "ensemble"]
    if not ensembles:
        raise ModelRepoError(
            f"{target_model}: no ensemble model found (the entry model must say "
            f"platform: \"ensemble\", or config.pbtxt must sit at the root for a single model; "
            f"models found: {sorted(models)})")
    if len(ensembles) > 1:
        raise ModelRepoError(f"{target_model}: more than one ensemble model: {sorted(ensembles)}")
    return ensembles[0], models


def namespace_repository(extracted: Path, repo_dir: Path, target_model: str) -> NamespacedModel:
    """Move the models of ``extracted`` into ``repo_dir`` under prefixed names.

    Each ``config.pbtxt`` gets its new ``name``; the ensemble's steps point at the renamed
    composing models. ``extracted`` is consumed (its folders are moved, not copied).
    """
    ns = namespace_for(target_model)
    entry, models = find_models(extracted, target_model)
    if entry is None:
        internal = f"{ns}_model"
        cfg = _read_config(extracted / "config.pbtxt", target_model)
        cfg.name = internal
        dest = repo_dir / internal
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(extracted), dest)
        (dest / "config.pbtxt").write_text(text_format.MessageToString(cfg))
        return NamespacedModel(entry=internal, models=(internal,), original_entry=target_model)

    renames = {name: f"{ns}_{name}" for name in models}
    configs: dict[str, mc.ModelConfig] = {}
    for name, path in models.items():  # check everything before touching repo_dir
        cfg = _read_config(path / "config.pbtxt", f"{target_model}/{name}")
        cfg.name = renames[name]
        for step in cfg.ensemble_scheduling.step:
            if step.model_name not in renames:
                raise ModelRepoError(
                    f"{target_model}/{name}: ensemble step uses model {step.model_name!r}, "
                    f"which is not in the tarball (models: {sorted(models)})")
            step.model_name = renames[step.model_name]
        configs[name] = cfg
    for name, path in models.items():
        cfg = configs[name]
        dest = repo_dir / renames[name]
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(path), dest)
        (dest / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    return NamespacedModel(entry=renames[entry], models=tuple(sorted(renames.values())),
                           original_entry=entry)
