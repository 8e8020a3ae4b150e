"""Typed options for the ``mme`` commands: :func:`takes_options` (a command's options declared
once as a frozen dataclass of Typer parameters, handed to the command as one typed object) and
the option types more than one command shares (``--backend``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Literal, TypeVar, get_args, get_type_hints

import typer

from flows.cli.common import _fail

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

OptionsT = TypeVar("OptionsT", bound="DataclassInstance")


#: the metadata that marks a field of an options dataclass as the names of the options given on
#: the command line (``given: frozenset[str] = field(default=frozenset(), metadata=GIVEN)``)
GIVEN = {"mme_cli": "given"}


def takes_options(options: type[OptionsT]) -> Callable[[Callable[[OptionsT], None]], Callable[..., None]]:
    """Declare a command's options once, as a frozen dataclass whose fields are Typer's own
    ``Annotated[type, typer.Option(...)] = default`` parameters, and hand the command one typed
    object (``opts.image``, checked by mypy) instead of a dozen loose parameters: a command with
    more options than the house's 8-parameter rule allows keeps them typed, and Typer reads
    the same parameters (so ``--help`` is what they declare, field by field, in order). A
    field marked :data:`GIVEN` is no option: it gets the names of the options given on the
    command line (or by environment), not left at their default (a plan file fills the rest)."""
    hints = get_type_hints(options, include_extras=True)
    given = [f.name for f in fields(options) if f.metadata == GIVEN]
    parameters = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
    parameters += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                     default=inspect.Parameter.empty if f.default is MISSING else f.default)
                   for f in fields(options) if f.name not in given]

    def wrap(fn: Callable[[OptionsT], None]) -> Callable[..., None]:
        def command(ctx: typer.Context, **values: object) -> None:
            fn(options(**values, **{name: _given_options(ctx) for name in given}))

        # what Typer reads: the command's name and help from fn, its parameters from the fields
        for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(command, attribute, getattr(fn, attribute))
        command.__dict__["__signature__"] = inspect.Signature(parameters)  # inspect.signature reads it
        return command
    return wrap


def _given_options(ctx: typer.Context) -> frozenset[str]:
    """The options of this command given on the command line or by environment."""
    return frozenset(name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", None)
                     in ("COMMANDLINE", "ENVIRONMENT"))


#: the deploy backends a command line may name (tasks.deploy.backends.BACKENDS, typed)
BackendName = Literal["local", "sagemaker"]
BACKEND_NAMES: tuple[BackendName, ...] = get_args(BackendName)


def checked_backend(name: str) -> BackendName:
    """``--backend NAME`` as the flows' backend type; another name fails naming the option."""
    for known in BACKEND_NAMES:
        if name == known:
            return known
    _fail(f"--backend {name!r}: expected {' or '.join(BACKEND_NAMES)}")
