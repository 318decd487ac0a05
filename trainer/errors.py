"""The trainer's exception tree.

Every error a user can fix (a bad config key, missing or corrupt data, a checkpoint that does not
verify) is a TrainerError. The command-line entry points catch TrainerError, print one line
`error: <message>` on stderr and exit with code 2; anything else is a bug or an infrastructure
failure and exits 1 with its traceback.

    TrainerError
    ├── ConfigError        the train config or a command-line option is wrong
    ├── DataError          prepared data missing, corrupt, too small, or an unreadable source
    └── CheckpointError    a checkpoint folder is missing a file, does not match its manifest,
                           or holds weights that do not fit the model
"""

from __future__ import annotations

import sys
from typing import Callable

EXIT_BAD_INPUT = 2


class TrainerError(Exception):
    """Base class: a problem the user can fix; reported as one line, exit code 2."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(TrainerError):
    """The train config, an override, or a command-line option is invalid."""


class DataError(TrainerError):
    """Prepared data or a data source is missing, corrupt, or too small for the request."""


class CheckpointError(TrainerError):
    """A checkpoint is not committed, does not match its manifest, or does not fit the model."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a CLI main(), turning a TrainerError into `error: ...` on stderr and exit code 2."""
    try:
        return main(argv) or 0
    except TrainerError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
