#!/usr/bin/env bash
# A Debian bookworm image with Python 3.11 (python3, python3-venv) made from Debian's packages
# alone, for building the Dockerfile where no image registry can be reached:
#   deploy/docker/make-base-image.sh [TAG] [CACHE_DIR] [EXTRA_PACKAGES]
# EXTRA_PACKAGES (comma-separated Debian packages) makes the build stage's base, e.g. with the C
# compiler that compiles the kernels: make-base-image.sh code-assistant-build:bookworm "" gcc,libc6-dev
# debootstrap writes a minimal root file system from the Debian mirror apt uses here (or
# $DEBIAN_MIRROR); `docker import` makes it an image. The tarball stays in CACHE_DIR for next time.
set -euo pipefail
tag=${1:-code-assistant-base:bookworm}
cache=${2:-$HOME/.cache/code-assistant-docker}
extra=${3:-}
tarball=$cache/base-bookworm${extra:+-${extra//,/-}}.tar
docker image inspect "$tag" >/dev/null 2>&1 && exit 0
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
  mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}
  mirror=${mirror:-$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)}
  [ -n "$mirror" ] || { echo "no Debian mirror found in apt's sources; set DEBIAN_MIRROR" >&2; exit 1; }
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv${extra:+,$extra} bookworm "$root" "$mirror" >"$cache/debootstrap.log"
  # What an image never needs: downloaded packages, package lists, documentation.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
         "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/locale
  tar -C "$root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
fi
docker import --change 'CMD ["/bin/bash"]' "$tarball" "$tag" >/dev/null
