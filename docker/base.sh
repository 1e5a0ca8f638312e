#!/usr/bin/env bash
# docker/base.sh [TAG]: build a Debian bookworm base image from Debian's packages alone
# (debootstrap + `docker import`), for machines that cannot pull python:3.11-slim-bookworm
# from a container registry. bookworm's python3 is 3.11, the same minor version as the default
# base, so the wheelhouse (docker/wheelhouse.sh) installs into it unchanged.
#
#   docker/base.sh                      # -> modelplane/bookworm:12 (skipped when present)
#   docker build --build-arg PYTHON_IMAGE=modelplane/bookworm:12 -f docker/Dockerfile ...
#
# Needs root, debootstrap and a running dockerd; the rootfs is built under build/docker/ (never
# committed) and removed after the import.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${1:-modelplane/bookworm:12}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS=build/docker/rootfs-bookworm
# What python:3.11-slim-bookworm brings that a stage or a service needs: python3 with venv and
# pip (ensurepip), CA certificates, and the passwd tools the Dockerfile's useradd needs.
PACKAGES=python3,python3-venv,ca-certificates,passwd,tzdata

if [[ -n $(docker images -q "$TAG") && -z ${REBUILD:-} ]]; then
    echo "==> base image $TAG exists (REBUILD=1 rebuilds it)"
    exit 0
fi
command -v debootstrap >/dev/null || {
    echo "==> installing debootstrap (Debian package)"
    apt-get install -y debootstrap
}

echo "==> debootstrap bookworm ($PACKAGES) into $ROOTFS from $MIRROR (about a minute)"
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS"
started=$SECONDS
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR" \
    | grep --line-buffered -E '^I: (Retrieving|Validating|Installing|Configuring|Base system)' \
    | awk 'NR % 25 == 1 || /Base system/' || true
test -x "$ROOTFS/usr/bin/python3" || { echo "debootstrap failed: no python3 in $ROOTFS" >&2; exit 1; }

# Small and reproducible: no apt lists or caches, no docs; apt inside a build fetches lists anew.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF

echo "==> docker import -> $TAG"
tar -C "$ROOTFS" --numeric-owner -c . \
    | docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' \
        --message "debootstrap bookworm minbase + $PACKAGES (docker/base.sh)" \
        - "$TAG" >/dev/null
rm -rf "$ROOTFS"
echo "==> $TAG built in $((SECONDS - started)) s: $(docker image inspect -f '{{.Size}}' "$TAG" \
    | awk '{printf "%.0f MB", $1 / 1e6}')"
