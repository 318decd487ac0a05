#!/usr/bin/env bash
# Makes sure Debian's Chromium (`chromium` on the PATH) is installed: the dashboard's browser tests
# (tests/ui/) drive it through Playwright, which is told to use it and never downloads a browser.
# Idempotent: exits 0 at once when chromium is already there. Needs root (or sudo) and Debian's apt.
set -euo pipefail
if command -v chromium >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-chromium: chromium is missing and apt-get is not available; install Chromium by hand" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install-chromium: chromium is missing and this needs root (or sudo) to install it" >&2
    exit 1
  fi
fi
echo "install-chromium: installing chromium" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
# --no-install-recommends: the browser and the libraries it links, no desktop extras; the fonts
# give the screenshots legible text on a bare machine.
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >&2
if ! command -v chromium >/dev/null; then
  echo "install-chromium: the chromium package was installed but chromium is still not on the PATH" >&2
  exit 1
fi
echo "install-chromium: $(chromium --version 2>/dev/null | head -1)" >&2
