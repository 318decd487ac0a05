#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The Lambda simulator's machines in the tests are real OpenSSH servers.
bash scripts/install-sshd.sh
bash scripts/services.sh
exec .venv/bin/python -m pytest "$@"
