"""Where the CLI finds its API token (docs/security.md): `TRAINYARD_TOKEN`, else the first line
of `$XDG_CONFIG_HOME/trainyard/token` (default `~/.config/trainyard/token`), else none (a service
with no tokens, on loopback, needs none).

The file holds a secret, so, as ssh does with a private key, it is refused while other users may
read it: `chmod 600` it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from orchestrator.cli.errors import BAD_INPUT, CliError

ENV = "TRAINYARD_TOKEN"


def token_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "trainyard" / "token"


def find_token() -> str | None:
    token = os.environ.get(ENV, "").strip()
    if token:
        return token
    path = token_file()
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CliError(f"cannot read the token file {path}: {exc.strerror or exc}", BAD_INPUT) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CliError(
            f"the token file {path} is readable by other users (mode {mode & 0o777:o}); chmod 600 it", BAD_INPUT
        )
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else None
