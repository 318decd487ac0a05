#!/usr/bin/env bash
# Makes sure the servers the tests talk to are up. PostgreSQL comes with the dev and CI machines;
# start it if it is installed but stopped, and say so clearly if it is missing.
set -uo pipefail
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null; then
    echo "services: starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi
if ! (command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432); then
  echo "services: PostgreSQL is not reachable at 127.0.0.1:5432; PostgreSQL tests will be skipped" >&2
fi
exit 0
