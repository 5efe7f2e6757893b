#!/usr/bin/env bash
# Installs everything the examples and tests need on a fresh Debian machine
# (idempotent: skips what is there). Needs root or sudo for apt.
set -euo pipefail
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
need_apt=()
for p in nix-bin busybox-static; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust stable) is required" >&2; exit 1; }
