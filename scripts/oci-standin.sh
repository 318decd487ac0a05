#!/usr/bin/env bash
# Builds and runs OCI images on these machines, which have no Docker engine and cannot pull from
# image registries: podman (Debian) with runc, and a stand-in for `python:3.11-slim` built from
# Debian bookworm's own packages (debootstrap), so a Dockerfile that starts FROM python:3.11-slim
# builds and runs here unchanged.
#
# From shared/tools/oci-standin.sh of the project's shared folder (CI has no shared/, so it lives
# here too). Changes: the packages come from scripts/install-podman.sh; a lock, so callers at the
# same time (scripts/test.sh starts it in the background, tests/image waits for it) build it once;
# the stand-in drops apt's caches and is configured to keep none, as Debian's official images are.
#
#   bash scripts/oci-standin.sh            # once per machine: podman, runc, the stand-in
#   PODMAN="podman --runtime runc"; FLAGS="--network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024"
#   $PODMAN build --pull=never --format docker $FLAGS -f docker/service.Dockerfile -t trainyard .
#   $PODMAN run -d $FLAGS -e TRAINYARD_PORT=18444 -e TRAINYARD_HOST=127.0.0.1 trainyard
#
# Why the flags: this sandbox's hard limits are below podman's defaults (so --ulimit), crun
# cannot use its cgroups (so runc), and containers reach the package registries through the
# host's network and pip settings (so --network host; the stand-in carries the host's pip.conf
# and CA bundle). The stand-in is Debian's python3 (3.11) with `python`/`pip` on PATH and pip
# allowed to install system-wide, as in the official image; it is a test double for the base
# image only: everything the Dockerfile does on top of it is real. tests/image/podman_helpers.py
# holds the same flags for the tests and the benchmark.
set -euo pipefail
TAG=${1:-docker.io/library/python:3.11-slim}
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/install-podman.sh"
exec 9>"${TMPDIR:-/tmp}/trainyard-podman.lock"  # tests/image/podman_helpers.py takes it too
flock 9  # another caller may be building it right now: wait for it, then find the image
P="podman --runtime runc"
if $P image exists "$TAG"; then echo "oci-standin: $TAG exists"; exit 0; fi
started=$(date +%s)
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
mirror=$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$w/rootfs" "${mirror:-http://deb.debian.org/debian}" >"$w/debootstrap.log" 2>&1 \
  || { tail -n 5 "$w/debootstrap.log" >&2; exit 1; }
# as debian:bookworm-slim under the official python image: no package lists or archives kept
rm -rf "$w"/rootfs/var/cache/apt/archives/*.deb "$w"/rootfs/var/cache/apt/*.bin "$w"/rootfs/var/lib/apt/lists/*
cat > "$w/rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
tar -C "$w/rootfs" -c . | $P import - localhost/debian-bookworm-py:base >/dev/null
mkdir -p "$w/ctx"
cp /etc/ssl/certs/ca-certificates.crt "$w/ctx/ca.crt"
if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$w/ctx/pip.conf"; else : > "$w/ctx/pip.conf"; fi
cat > "$w/ctx/Containerfile" <<'CF'
FROM localhost/debian-bookworm-py:base
COPY pip.conf /etc/pip.conf
COPY ca.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \
    && ln -sf /usr/bin/python3 /usr/local/bin/python && ln -sf /usr/bin/pip3 /usr/local/bin/pip
CF
$P build --network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 -t "$TAG" "$w/ctx" >"$w/build.log" 2>&1 \
  || { tail -n 5 "$w/build.log" >&2; exit 1; }
echo "oci-standin: built $TAG from Debian bookworm in $(($(date +%s) - started)) s"
