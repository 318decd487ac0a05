#!/usr/bin/env bash
# The README's main command: sets up everything on a fresh machine, then trains a small GPT-2 on
# this machine end to end (live progress, test loss, cost, the dashboard's address).
# Arguments go to `trainyard quickstart`, e.g. --keep-serving to leave the service running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/trainyard quickstart "$@"
