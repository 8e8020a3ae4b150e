"""The documentation site's generated reference: nothing the code has is left out of it.

Why: the reference pages are generated so that they cannot drift, but a generator that skips
a command, an option or a field drifts silently too. These tests run the generators (no
network, no mkdocs build) and check them against the code they read; and every ``mme``
command a tutorial shows exists, with options the command has.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "gen"))

import gen_cli  # noqa: E402
import gen_env  # noqa: E402
import gen_errors  # noqa: E402
import gen_schema  # noqa: E402

from ensembles.fleet_spec import FleetSpec  # noqa: E402
from flows.cli import app  # noqa: E402


def _click_tree() -> dict[str, list[str]]:
    """Command path -> every option spelling, walked straight from the click objects."""
    out: dict[str, list[str]] = {}

    def visit(cmd: Any, path: str) -> None:
        out[path] = [o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")]
        for name, sub in getattr(cmd, "commands", {}).items():
            visit(sub, f"{path} {name}")

    visit(typer.main.get_command(app), "mme")
    return out


def test_cli_page_lists_every_command_and_option() -> None:
    page = gen_cli.render()
    for path, options in _click_tree().items():
        section = page.split(f"## `{path}` ", 1)
        assert len(section) == 2, f"{path} has no section in the CLI reference"
        body = section[1].split("\n## ", 1)[0]
        for option in options:
            assert option in body, f"{path} {option} is missing from the CLI reference"


def test_fleet_page_lists_every_field_with_a_meaning() -> None:
    page = gen_schema.fleet_page()
    models = gen_schema.fields(FleetSpec)
    assert set(FleetSpec.model_fields) == set(models["FleetSpec"])
    for model, names in models.items():
        for name in names:
            assert re.search(rf"^\| `{name}` \|", page, re.M), f"{model}.{name} is missing from the fleet page"
            assert name in gen_schema.MEANINGS.get(model, {}), f"{model}.{name} has no meaning"
    for model, meanings in gen_schema.MEANINGS.items():
        assert set(meanings) <= set(models.get(model, [])), f"{model}: meanings of fields it no longer has"


def test_ensemble_page_renders_every_top_level_field() -> None:
    from ensembles.spec import EnsembleSpec

    page = gen_schema.ensemble_page()
    for name in EnsembleSpec.model_fields:
        assert f"| `{name}` |" in page


def test_every_env_var_read_is_explained() -> None:
    found = {v.name for v in gen_env.find()}
    assert "MME_HOME" in found
    assert found == set(gen_env.MEANINGS), (f"read but not explained: {sorted(found - set(gen_env.MEANINGS))}; "
                                           f"explained but not read: {sorted(set(gen_env.MEANINGS) - found)}")


def test_endpoint_http_page_lists_every_route_the_app_answers() -> None:
    """Every path ``infra/endpoint/app.py`` routes (``path == "..."`` or a ``startswith`` prefix)
    is on the endpoint HTTP API page with its method."""
    source = (ROOT / "infra" / "endpoint" / "app.py").read_text()
    page = (ROOT / "docs" / "reference" / "endpoint-http.md").read_text()
    routes = re.findall(r'path(?: ==|\.startswith\()\s*"([^"]+)"\)?(?:[^\n]*?method == "(\w+)")?', source)
    assert len(routes) >= 6, routes
    for path, method in routes:
        shown = [line for line in page.splitlines() if line.startswith("| `") and f" {path}" in line]
        assert shown, f"{path}: not on docs/reference/endpoint-http.md"
        assert not method or any(f"`{method} " in line for line in shown), (path, method)


def test_errors_page_lists_the_tree() -> None:
    from infra.errors import InvalidInput, MMEError, UserError

    page = gen_errors.render()
    for cls in (MMEError, UserError, InvalidInput):
        assert f"`{cls.__name__}`" in page
    names = {c.name for c in gen_errors.walk()}
    assert "VerificationFailed" in names and "FleetDeployFailed" in names


def _shown_commands() -> list[tuple[str, list[str]]]:
    """Every ``mme ...`` line in the hand-written pages' bash blocks, as (file, argv)."""
    pages = [ROOT / "docs" / "index.md", ROOT / "docs" / "getting-started.md",
             *sorted((ROOT / "docs" / "tutorials").glob("*.md"))]
    shown = []
    for page in pages:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("#", 1)[0].strip()
                for part in re.split(r"&&|;", line):
                    argv = shlex.split(part)
                    if argv and argv[0].endswith("mme") and len(argv) > 1:
                        shown.append((page.name, argv[1:]))
    return shown


@pytest.mark.parametrize("page,argv", _shown_commands())
def test_tutorial_commands_exist(page: str, argv: list[str]) -> None:
    tree = _click_tree()
    path = "mme"
    for word in argv:
        if f"{path} {word}" in tree:
            path = f"{path} {word}"
        else:
            break
    assert path != "mme", f"{page}: mme {' '.join(argv)}: no such command"
    for word in argv:
        if word.startswith("--"):
            assert word.split("=", 1)[0] in tree[path], f"{page}: {path} has no option {word}"
