"""The ``MME_*`` environment variables page: found in the code at build time, explained by hand.

Why this split: where a variable is read is a fact of the code (so it is found, not kept by
hand); what it means and its default are not always in one expression (``env.get(...) or "2"``),
so :data:`MEANINGS` says them, and the docs test fails when the code reads a variable that
:data:`MEANINGS` does not explain (or explains one the code no longer reads).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from gen_cli import prose

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "tasks", "infra", "ensembles")
NAME = re.compile(r"MME_[A-Z0-9_]*[A-Z0-9]")

# name -> (default, meaning)
MEANINGS: dict[str, tuple[str, str]] = {
    "MME_HOME": ("`~/.mme`", "Where all local state lives: artifacts, the embedded store, endpoints, "
                 "caches, run folders."),
    "MME_TASK_RUNNER": ("`threads`", "The build's task runner: `threads` or `dask` (needs the `dask` extra)."),
    "MME_MAX_WORKERS": ("`2`", "Tasks at once (threads), or workers of the local Dask cluster."),
    "MME_DASK_ADDRESS": ("(none: a local cluster)", "An existing Dask scheduler to run the build's tasks on."),
    "MME_TRITONSERVER": ("the wheel's `tritonserver`", "Path of another `tritonserver` binary to use instead."),
    "MME_TRITON_BACKENDS": ("the wheel's backends", "The backend directory for the binary `MME_TRITONSERVER` names."),
    "MME_CACHE_DIR": ("`~/.cache/triton-mme`", "Base folder for the prepared Triton backend directories."),
    "MME_ENV_BASE_PYTHON": ("`python3` on PATH", "Inside a packed Python environment's `bin/activate`: the "
                            "base interpreter it relocates onto."),
    "MME_ENGINE_INSPECT": ("(set by the compile)", "Set by the TensorRT compile inside its container: the script "
                           "that prints the engine's tensors. Not for users."),
    "MME_SUFFIXES": ("`.safetensors,.onnx,.bin,.pt,.tar.gz,.pb,.yaml`", "Lambda: model-file suffixes that count as a "
                     "new model, comma-separated or a JSON list."),
    "MME_ENSEMBLE_MAP": ("(none: the key's first segment)", "Lambda: JSON object `{\"key prefix\": \"ensemble\"}`, "
                         "longest prefix wins."),
    "MME_SOURCE_PREFIX": ("(none)", "Lambda: key prefix of the model source inside the bucket."),
    "MME_HTTP_TIMEOUT": ("`10`", "Lambda: seconds per request to the Prefect API."),
    "MME_SPAWN_TOKEN": ("(set around one spawn)", "Set by an `mme` command in the environment of Prefect's "
                        "temporary server as it spawns it: the token its ownership ledger names, so the "
                        "server dies with the command even when it is killed right after the spawn. Not "
                        "for users."),
}


@dataclass(frozen=True)
class EnvVar:
    """One variable and every ``file:line`` where the code reads (or sets) it."""

    name: str
    where: tuple[str, ...]


def _reads(text: str) -> set[str]:
    """Names a string constant reads: the whole constant (``os.environ.get("MME_HOME")``,
    ``ENV_X = "MME_X"``) or a shell expansion in embedded shell (``${MME_X:-...}``, ``"$MME_X"``).
    A ``$MME_HOME/...`` in help or a docstring is a path, not a read."""
    if NAME.fullmatch(text):
        return {text}
    return set(re.findall(r"\$\{(MME_[A-Z0-9_]+)", text)) | set(re.findall(r'"\$(MME_[A-Z0-9_]+)"', text))


def find(root: Path = ROOT) -> list[EnvVar]:
    """Every ``MME_*`` variable the four packages read, with where, in name order."""
    where: dict[str, list[str]] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for name in _reads(node.value):
                        where.setdefault(name, []).append(f"{path.relative_to(root)}:{node.lineno}")
    return [EnvVar(name, tuple(sorted(set(w)))) for name, w in sorted(where.items())]


def render(found: list[EnvVar] | None = None) -> str:
    """The page: one row per variable."""
    found = find() if found is None else found
    lines = ["# Environment variables", "",
             "Every `MME_*` variable the code reads. The *read in* column is found in the code when the "
             "site is built; default and meaning are written by hand.", "",
             "| variable | default | meaning | read in |", "|---|---|---|---|"]
    for v in found:
        default, meaning = MEANINGS.get(v.name, ("?", "(not documented)"))
        where = "<br>".join(f"`{w}`" for w in v.where)
        lines.append(f"| `{v.name}` | {default} | {prose(meaning)} | {where} |")
    lines += ["", "Prefect's own settings (`PREFECT_API_URL`, ...) are Prefect's: see [Prefect](../prefect.md)."]
    return "\n".join(lines)
