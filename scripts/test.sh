#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The service image's tests (tests/image): podman, then its image built in the background meanwhile.
bash scripts/install-podman.sh --prepare-image
bash scripts/setup.sh
# Lint, formatting and types (configured in pyproject.toml): any finding fails the run.
echo "test: ruff check" >&2
.venv/bin/ruff check .
echo "test: ruff format --check" >&2
.venv/bin/ruff format --check .
echo "test: mypy" >&2
.venv/bin/mypy
# The Lambda simulator's machines in the tests are real OpenSSH servers.
bash scripts/install-sshd.sh
bash scripts/install-chromium.sh  # the dashboard's browser tests (tests/ui) drive Debian's chromium
bash scripts/services.sh
exec .venv/bin/python -m pytest "$@"
