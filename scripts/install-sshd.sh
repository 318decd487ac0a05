#!/usr/bin/env bash
# Makes sure OpenSSH's server (`/usr/sbin/sshd`) is installed: the Lambda simulator's "instances"
# are real sshd processes on loopback addresses, and the provision tests drive them over SSH.
# Idempotent: exits 0 at once when sshd is already there. Needs root (or sudo) and Debian's apt.
set -euo pipefail
SSHD=${SSHD:-/usr/sbin/sshd}
if [ -x "$SSHD" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-sshd: $SSHD is missing and apt-get is not available; install OpenSSH's server by hand" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install-sshd: $SSHD is missing and this needs root (or sudo) to install openssh-server" >&2
    exit 1
  fi
fi
echo "install-sshd: installing openssh-server" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
# --no-install-recommends: no systemd units or extras pulled in; the simulator starts sshd itself.
$SUDO apt-get install -y -q --no-install-recommends openssh-server >&2
if [ ! -x "$SSHD" ]; then
  echo "install-sshd: openssh-server was installed but $SSHD is still missing" >&2
  exit 1
fi
echo "install-sshd: $("$SSHD" -V 2>&1 | head -1)" >&2
