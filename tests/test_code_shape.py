"""The house plan's size rules, checked on every run: no function over 60 lines and no
parameter list over 8 outside tests, and each flow module under 200 lines (flows compose; the
work lives in tasks/). Small units are what keeps a change to one concern in one place."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "infra", "ensembles")
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8
MAX_FLOW_MODULE_LINES = 200


def _functions() -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node))
    return found


def _parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    return len([n for n in names if n not in ("self", "cls")])


def test_no_function_over_60_lines() -> None:
    long = [f"{where} ({fn.end_lineno - fn.lineno + 1} lines)" for where, fn in _functions()
            if fn.end_lineno is not None and fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


def test_no_parameter_list_over_8() -> None:
    wide = [f"{where} ({_parameters(fn)} parameters)" for where, fn in _functions()
            if _parameters(fn) > MAX_PARAMETERS]
    assert not wide, "parameter lists over 8:\n" + "\n".join(wide)


def test_flow_modules_stay_small() -> None:
    big = [f"{p.relative_to(ROOT)} ({n} lines)" for p in sorted((ROOT / "flows").rglob("*.py"))
           if (n := len(p.read_text().splitlines())) >= MAX_FLOW_MODULE_LINES]
    assert not big, "flow modules of 200 lines or more:\n" + "\n".join(big)


def test_the_checks_see_a_violation() -> None:
    """The scanner itself works: a made-up long, wide function is caught."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    src = f"def f(a, b, c, d, e, f, g, h, i):\n{body}\n"
    fn = ast.parse(src).body[0]
    assert isinstance(fn, ast.FunctionDef)
    assert fn.end_lineno is not None and fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES
    assert _parameters(fn) == 9
