#!/usr/bin/env bash
# Makes sure podman can build and run the service image here: podman, runc (crun cannot use this
# sandbox's cgroups) and debootstrap (for scripts/oci-standin.sh, the stand-in for the base image,
# since these machines cannot pull from image registries). tests/image needs them.
# Idempotent: exits 0 at once when all three are there. Needs root (or sudo) and Debian's apt.
#
# --prepare-image (scripts/test.sh): then, in the background, build the stand-in and the tests'
# image, which takes minutes on a fresh machine (mostly waiting on the network) while the rest of
# the suite gets ready; tests/image waits for it (a lock) and finds every layer built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
need=()
for c in podman runc debootstrap; do command -v "$c" >/dev/null || need+=("$c"); done
if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "install-podman: ${need[*]} missing and apt-get is not available; install them by hand" >&2
    exit 1
  fi
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then SUDO="sudo"; else
      echo "install-podman: ${need[*]} missing and this needs root (or sudo) to install them" >&2
      exit 1
    fi
  fi
  echo "install-podman: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >&2
  # podman's recommends (fuse-overlayfs, slirp4netns, uidmap, ...) are for rootless use; here it
  # runs as root, with host networking
  $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >&2
  for c in "${need[@]}"; do
    command -v "$c" >/dev/null || { echo "install-podman: $c was installed but is not on the PATH" >&2; exit 1; }
  done
  echo "install-podman: $(podman --version), $(runc --version | head -1)" >&2
fi
if [ "${1:-}" = "--prepare-image" ]; then
  log="${TMPDIR:-/tmp}/trainyard-prepare-image.log"
  # the standard library only: .venv may not exist yet
  nohup python3 "$here/../tests/image/podman_helpers.py" >"$log" 2>&1 </dev/null &
  echo "install-podman: building the service image in the background (log: $log)" >&2
fi
