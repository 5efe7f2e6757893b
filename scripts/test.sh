#!/usr/bin/env bash
# The test command (README): set-up, then the whole suite against real Nix.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes'
cargo test --locked --all-targets
