"""The house plan holds: flows/ > tasks/ > ensembles/ > infra/, each importing only below it.

The contract lives in pyproject.toml ([tool.importlinter]); this test runs the same
``lint-imports`` check (import-linter follows imports inside functions too), so a change that
makes a lower layer import a higher one fails the suite, not just a CI lint step.

The tests have a floor of their own: no test module is imported by another module (tests,
tests/fixtures, bench). What several of them share lives in tests/fixtures/, so running,
moving or deleting one test file never changes what another one does.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ("flows > tasks > ensembles > infra", "tasks import no catalog entry",
             "inside tasks: planning > fleet > deploy > build > producers > runtime",
             "inside infra: endpoint > aws > triton > records > store > processes")


def _lint_imports() -> str:
    exe = Path(sys.executable).parent / "lint-imports"
    found = str(exe) if exe.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is not installed (pip install import-linter)")
    return found


def test_layers_contract_is_kept() -> None:
    proc = subprocess.run([_lint_imports(), "--no-cache"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"a layer imports one above it:\n{out}"
    assert all(f"{name} KEPT" in out for name in CONTRACTS) and "0 broken" in out, out


def test_contract_catches_an_import_running_back_up(tmp_path: Path) -> None:
    """The same contracts, over a copy of the packages plus one ensembles/ module importing
    tasks/ inside a function (a lazy import) and a tasks/ module importing a catalog entry,
    are reported broken naming both imports."""
    for pkg in ("flows", "tasks", "ensembles", "infra"):
        shutil.copytree(PROJECT_ROOT / pkg, tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "catalog"))
    (tmp_path / "ensembles" / "upward.py").write_text(
        "def f():\n    from tasks.producers import cache\n    return cache\n")
    # and a task importing a catalog entry
    (tmp_path / "ensembles" / "catalog" / "entry").mkdir(parents=True)
    (tmp_path / "ensembles" / "catalog" / "__init__.py").write_text("")
    (tmp_path / "ensembles" / "catalog" / "entry" / "__init__.py").write_text("")
    (tmp_path / "tasks" / "reach.py").write_text("import ensembles.catalog.entry\n")
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    proc = subprocess.run([_lint_imports(), "--no-cache"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "ensembles.upward -> tasks.producers.cache" in out, out
    assert "tasks.reach -> ensembles.catalog.entry" in out, out


def _test_module_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) for each import of a test module (a ``test_*`` name) in ``source``,
    at any depth: top level or inside a function."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # ``from tests import test_x`` names it after import
            module = node.module or ""
            names = [module] + [f"{module}.{alias.name}".lstrip(".") for alias in node.names]
        else:
            continue
        hits = [n for n in names if any(part.startswith("test_") for part in n.split("."))]
        found += [(node.lineno, hits[0])] if hits else []
    return found


def test_no_module_imports_a_test_module() -> None:
    files = sorted([*(PROJECT_ROOT / "tests").rglob("*.py"), *(PROJECT_ROOT / "bench").rglob("*.py")])
    assert any(f.name == "test_layering.py" for f in files)
    bad = [f"{f.relative_to(PROJECT_ROOT)}:{line} imports {name}"
           for f in files for line, name in _test_module_imports(f.read_text())]
    assert not bad, ("a module imports a test module (move what it shares into tests/fixtures/):\n"
                     + "\n".join(bad))


def test_the_test_import_scan_sees_every_form() -> None:
    source = ("import os, test_a\nfrom test_b import x\nfrom tests.test_c import y\n"
              "from . import test_d\nfrom tests import test_f\nfrom fixtures.wait import wait_until\n"
              "def f():\n    import test_e as e\n")
    assert _test_module_imports(source) == [(1, "test_a"), (2, "test_b"), (3, "tests.test_c"),
                                            (4, "test_d"), (5, "tests.test_f"), (8, "test_e")]
