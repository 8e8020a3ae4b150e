"""The project's one error tree: what a failure means to the CLI and to the retry policy.

Every exception the project raises on purpose derives from :class:`MMEError`, on one of two
branches, so that neither the CLI nor the retry policy keeps a hand list of classes::

    MMEError                  failed, not the user's to fix   CLI: one line, exit 1; not retried
    ├── UserError             the user's to fix               CLI: one line, exit 2; not retried
    ├── TransientError        a second try may succeed        CLI: one line, exit 1; retried
    └── RetriedOut            transient, but already retried  CLI: one line, exit 1; not retried
                              by the one layer that owns it

Anything that is not an ``MMEError`` (a ``KeyError`` from a typo, an ``AttributeError``) is a
bug: the CLI lets its traceback through. A class keeps its old built-in base next to its
branch (``class SpecError(UserError, ValueError)``) where callers catch the built-in, so
adding the tree changed no ``except`` clause's meaning.

Foreign errors are translated where they enter (botocore's in ``infra/aws/errors.py`` and the
S3 store), so the retry policy decides on these classes only. Which layer retries which kind of
failure, and how often, is the table in ``docs/retries.md``: one layer per kind, never a product.

Where the policies live: the CLI's exit codes in ``flows/cli/common.py`` (``_exit_code``), which asks
:mod:`infra.aws.errors` first when an AWS error is in the cause chain (AWS's own code decides
whether it is the user's); the retry condition in ``tasks/runtime/retry.py`` (``is_transient``).

This module imports nothing, so every layer (``infra/`` included) may raise from the tree.
"""

from __future__ import annotations

from typing import Any


class MMEError(Exception):
    """A failure the project raised on purpose (not a bug), and not one the user can fix by
    changing their input: a compile that failed, Triton that refused a model, an endpoint that
    went to Failed. The CLI prints one line and exits 1; the task retry policy does not retry
    it (a second try would fail the same way and cost minutes)."""


class UserError(MMEError):
    """The user's to fix: a bad spec, option, argument or input file, a build that is missing,
    a target, instance type or release that is refused, a step refused on purpose (a
    verification that failed). The CLI prints one line and exits 2; never retried. The
    message names the file, field, option or request at fault."""


class TransientError(MMEError):
    """A second try can fix it: a connection refused or reset, a timeout, Triton losing the
    race for its ports, a store or service that is briefly unavailable. Tasks whose
    ``retry_condition_fn`` is ``tasks.runtime.retry.retry_transient`` retry it (with backoff); when
    the retries run out the CLI prints one line and exits 1."""


class RetriedOut(MMEError):
    """A transient failure that the one layer owning its retries has already retried as often
    as ``docs/retries.md`` allows: an AWS call (S3 included) that botocore's standard retry
    mode tried ``infra.aws.clients.AWS_ATTEMPTS`` times (throttling, 5xx, a dropped
    connection). Not a :class:`TransientError`: a task retry on top would multiply the attempts
    (and the wait) instead of adding one layer. The CLI prints one line and exits 1."""


class InvalidInput(UserError, ValueError):
    """A value the user gave (an option, a setting, a spec parameter, a record file) that
    cannot be used; the message names it. A ``ValueError`` too, so code that validates with
    ``except ValueError`` keeps working."""


class MissingInput(UserError, FileNotFoundError):
    """A file the user's command needs is not there (a build that was never made, an archive
    or model that is gone); the message names it and, where there is one, the command that
    makes it. A ``FileNotFoundError`` too, for callers that catch that."""


def validation_problems(error: Any, limit: int | None = None) -> str:
    """A pydantic ``ValidationError`` as one line, ``field.path: message; ...`` (the first
    ``limit`` problems): every loader names the field at fault the same way."""
    problems = error.errors()[:limit] if limit else error.errors()
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}"
                     for err in problems)
