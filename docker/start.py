"""The image's command: `trainyard db upgrade`, then `trainyard serve`, in one interpreter.

The upgrade runs first because `serve` refuses a PostgreSQL schema that is not at the head (an
upgraded image's new migrations are applied as it starts; on SQLite `serve` would migrate by
itself). One interpreter instead of `trainyard db upgrade && exec trainyard serve`: a `trainyard`
process spends a second or more importing the service before it does anything, and that is paid
once here, on every start and restart. Arguments go to `serve` (`--log-level debug`, ...).
"""

import sys

from orchestrator.cli.main import app

# standalone_mode=False: the upgrade's exit code comes back here instead of ending the process
code = app(["db", "upgrade"], prog_name="trainyard", standalone_mode=False)
if code:
    sys.exit(code)
app(["serve", *sys.argv[1:]], prog_name="trainyard")
