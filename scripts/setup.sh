#!/usr/bin/env bash
# Creates .venv and installs trainyard with everything the tests and the quickstart need.
# Safe to run again: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >&2
# The CPU build of torch: a bare `torch` requirement would pull a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch ${TORCH_VERSION:-2.13.0}" >&2
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" >&2
fi
echo "setup: installing trainyard" >&2
.venv/bin/python -m pip install -q -e ".[trainer,dev]" >&2
