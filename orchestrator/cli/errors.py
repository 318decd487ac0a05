"""The CLI edge of the exception tree: every failure ends as one line `error: ...` on stderr and
an exit code a script can act on. Tracebacks only with `--debug` (or TRAINYARD_DEBUG=1).

The one exception to one line: an input with several mistakes (a spec, a request the API refused
naming several fields) lists every one of them, indented under the `error:` line, each with its
field path, so that three typos take one try to fix, not three."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn, ParamSpec, TypeVar

import typer

from orchestrator.errors import (
    ConflictError,
    InvalidSpecError,
    NotFoundError,
    SchemaOutOfDateError,
    TrainyardError,
)

# exit codes (also in the README and `trainyard --help`)
OK = 0
FAILURE = 1  # anything else: a server error, an unexpected exception
BAD_INPUT = 2  # invalid spec / arguments (HTTP 422); click's usage errors use 2 as well
NOT_FOUND = 3  # HTTP 404: unknown run id
CONFLICT = 4  # HTTP 409: e.g. cancelling a run that already ended
UNREACHABLE = 5  # no service at the API URL, or it did not answer in time
SCHEMA_OUT_OF_DATE = 6  # `serve`/`worker` on a database that needs `trainyard db upgrade`
RUN_NOT_SUCCEEDED = 7  # `--watch`/quickstart: the run ended failed, cancelled or stopped
NOT_AUTHORIZED = 8  # HTTP 401/403: no token, a revoked one, or one whose scope is too low
INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 failure, 2 bad input, 3 not found, 4 conflict, 5 service unreachable, "
    "6 database schema out of date, 7 watched run did not succeed, 8 not authorized (token)."
)

_BY_ERROR: list[tuple[type[TrainyardError], int]] = [
    (InvalidSpecError, BAD_INPUT),
    (NotFoundError, NOT_FOUND),
    (ConflictError, CONFLICT),
    (SchemaOutOfDateError, SCHEMA_OUT_OF_DATE),
]


class CliError(Exception):
    """A failure with its exit code and a one-line message; `details`: more lines that belong to it
    (every mistake of an input, one per line), printed indented under it."""

    def __init__(self, message: str, exit_code: int = FAILURE, details: Sequence[str] = ()):
        super().__init__(message)
        self.exit_code = exit_code
        self.details = list(details)


def debug_enabled() -> bool:
    return os.environ.get("TRAINYARD_DEBUG", "") not in ("", "0", "false")


def fail(message: str, exit_code: int, details: Sequence[str] = ()) -> NoReturn:
    first_line = " ".join(str(message).split("\n")[0].split()) or "failed"
    print(f"error: {first_line}", file=sys.stderr)
    for line in details:
        print(f"  {' '.join(str(line).split())}", file=sys.stderr)
    raise typer.Exit(exit_code)


def mistakes(problems: Sequence[str], where: str = "") -> tuple[str, list[str]]:
    """The `error:` line and the lines under it for an input with `problems` (`field: message`):
    one problem stays one line; several are counted, then listed one per line."""
    if len(problems) == 1:
        return problems[0], []
    return f"{len(problems)} mistakes{where}:", list(problems)


P = ParamSpec("P")
R = TypeVar("R")


def cli_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command so that known errors become `error: ...` plus the matching exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise typer.Exit(INTERRUPTED) from None
        except Exception as exc:  # noqa: BLE001 - the edge: everything becomes one line and an exit code
            if debug_enabled():
                traceback.print_exc()
            if isinstance(exc, CliError):
                fail(str(exc), exc.exit_code, exc.details)
            # the spec's own account of every mistake (orchestrator.spec.SpecMistakes), if it has one
            problems = getattr(exc, "problems", None)
            if isinstance(exc, InvalidSpecError) and isinstance(problems, list) and len(problems) > 1:
                head, lines = mistakes([str(p) for p in problems], " in the spec")
                fail(head, BAD_INPUT, lines)
            for kind, code in _BY_ERROR:
                if isinstance(exc, kind):
                    fail(str(exc), code)
            hint = "" if debug_enabled() else " (run with --debug for the traceback)"
            fail(f"{type(exc).__name__}: {exc}{hint}", FAILURE)

    return wrapper
