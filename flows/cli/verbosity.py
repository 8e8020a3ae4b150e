"""``mme --quiet`` and ``mme --verbose``: how much a command says besides its result.

Why a module of its own: the level must be set before Prefect is imported (its logging is
configured from ``PREFECT_LOGGING_LEVEL`` when it loads), and every command imports Prefect
lazily, after the global options are read.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import typer

from flows.cli.common import _fail, app

Verbosity = Literal["quiet", "normal", "verbose"]

#: Prefect's (and the project's) log level per verbosity; "normal" leaves Prefect's own default
LEVELS: dict[Verbosity, str | None] = {"quiet": "ERROR", "normal": None, "verbose": "DEBUG"}


def set_verbosity(mode: Verbosity) -> None:
    """quiet: results only (notes, progress and logs below ERROR silenced; ``error:`` lines
    stay); verbose: DEBUG logs of the project and of Prefect on stderr."""
    from flows.cli.common import console

    level = LEVELS[mode]
    if level is not None:
        os.environ["PREFECT_LOGGING_LEVEL"] = level
        logging.basicConfig(level=getattr(logging, level))
    for name in ("flows", "tasks", "infra", "ensembles"):  # "normal": as the loggers were
        logging.getLogger(name).setLevel(logging.NOTSET if level is None else getattr(logging, level))
    console.quiet = mode == "quiet"


@app.callback()
def _global_options(
        quiet: bool = typer.Option(False, "--quiet", "-q", help="results only: no notes, progress "
                                   "or logs on stderr (errors still are)"),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logs (the project's "
                                     "and Prefect's) on stderr")) -> None:
    """Options every command takes, before its name (``mme --quiet fleet deploy ...``)."""
    if quiet and verbose:
        _fail("give --quiet or --verbose, not both")
    set_verbosity("quiet" if quiet else "verbose" if verbose else "normal")
