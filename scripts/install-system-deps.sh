#!/usr/bin/env bash
# Install the Debian tools the tests use for real, when they are missing (needs root and apt).
# chromium, ripgrep and libkrb5-dev: the VS Code test (code-server in headless Chromium; see
# scripts/setup-code-server.sh).
set -euo pipefail
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v nvim >/dev/null || need+=(neovim)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v chromium >/dev/null || need+=(chromium)
command -v rg >/dev/null || need+=(ripgrep)
[ -f /usr/include/krb5.h ] || [ -f /usr/include/gssapi/gssapi.h ] || need+=(libkrb5-dev)
# The CPU image is built and run for real (tests/deploy/test_docker.py): a Docker engine, and
# debootstrap for its base image (no image registry is reachable). The test skips, saying why,
# where dockerd cannot run.
command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || need+=(docker.io)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing system tools: ${need[*]} (install them with your package manager)" >&2
  exit 1
fi
echo "installing ${need[*]} (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
