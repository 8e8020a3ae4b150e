"""An error inside a flow, said once on the terminal.

A failure raised in a Prefect task is logged by the task ("Task run failed with exception"),
by its state ("Finished in state Failed(...)"), by the flow ("Encountered exception during
execution") and by the flow's state: four lines, and then the CLI prints its own ``error:``
line. While a CLI command runs a flow, :func:`said_once` puts a filter on the terminal's log
handlers that holds those records back; when the flow ends with an error the CLI reports
itself, the held records about it are dropped (the ``error:`` line says it), and every other
held record is shown. Prefect's API handler is not filtered: the UI keeps every record.

Nothing is lost: a held record is shown as soon as an unrelated record follows it (a task
failure the flow got past is delayed by one line, not hidden), and errors the CLI does not
report as one line (bugs, whose traceback the CLI lets through) are never held.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def error_key(e: BaseException) -> str:
    """What every log record about ``e`` says: its message's first line (or its class), without
    the quotes and backslashes a ``repr`` (``Failed('...')``) adds."""
    text = str(e).strip()
    return _plain(text.splitlines()[0] if text else type(e).__name__)[:200]


def _plain(text: str) -> str:
    return text.translate({ord(c): None for c in "\\'\""})


def record_error(record: logging.LogRecord) -> BaseException | None:
    """The exception a record is about: its ``exc_info``, or the one the one-line filter
    (:mod:`infra.aws.errors`) took off it when a handler before this one saw it."""
    if record.exc_info and record.exc_info[1] is not None:
        return record.exc_info[1]
    return getattr(record, "mme_error", None)


def _about(record: logging.LogRecord, key: str) -> bool:
    """Whether ``record`` is about the error whose key is ``key`` (its exception, or its words)."""
    exc = record_error(record)
    return (exc is not None and error_key(exc) == key) or key in _plain(record.getMessage())


class OnceOnTerminal(logging.Filter):
    """The filter on one terminal handler: holds the records of errors ``reportable`` says the
    CLI will print itself; :meth:`settle` drops those about the error the command ended with
    and shows the rest, in order."""

    def __init__(self, handler: logging.Handler,
                 reportable: Callable[[BaseException], bool]) -> None:
        super().__init__()
        self.handler, self.reportable = handler, reportable
        self.held: list[logging.LogRecord] = []
        self.keys: set[str] = set()
        self.lock = threading.RLock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_mme_released", False):
            return True
        exc = record_error(record)
        with self.lock:
            if exc is not None and self.reportable(exc):
                self.keys.add(error_key(exc))
            elif not any(k and k in _plain(record.getMessage()) for k in self.keys):
                self._release(lambda r: True)
                return True
            self.held.append(record)
            return False

    def _release(self, show: Callable[[logging.LogRecord], bool]) -> None:
        held, self.held, self.keys = self.held, [], set()
        for r in held:
            if show(r):
                r._mme_released = True
                self.handler.handle(r)

    def settle(self, error: BaseException | None) -> None:
        """Show the held records, less those about ``error`` (which the CLI prints once)."""
        key = error_key(error) if error is not None else None
        with self.lock:
            self._release(lambda r: key is None or not _about(r, key))


def terminal_handlers() -> list[logging.Handler]:
    """The stream handlers of the root and Prefect loggers (files and the API are not terminals)."""
    names = [""] + [n for n in logging.root.manager.loggerDict if n.startswith("prefect")]
    return list({h for n in names for h in logging.getLogger(n).handlers
                 if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)})


@contextmanager
def said_once(reportable: Callable[[BaseException], bool]) -> Iterator[list[OnceOnTerminal]]:
    """While a command runs a flow: an error ``reportable`` says the CLI prints as one line is
    said once on the terminal (by the CLI), not once per Prefect logger that saw it."""
    filters = [OnceOnTerminal(h, reportable) for h in terminal_handlers()]
    for f in filters:
        f.handler.filters.insert(0, f)  # before the one-line filter (which shortens the record)
    try:
        yield filters
    except Exception as e:
        for f in filters:
            f.settle(e if reportable(e) else None)
        raise
    else:
        for f in filters:
            f.settle(None)
    finally:
        for f in filters:
            f.handler.removeFilter(f)
