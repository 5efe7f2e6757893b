#!/usr/bin/env bash
# The main job on the bundled example, from a fresh Debian machine:
#  1. set-up (nix-bin, busybox-static) and a release build of nixdelta;
#  2. a signing key and a local file:// binary cache under ./.nixdelta-demo/;
#  3. `nixdelta run -- nix-build examples/fib.nix` in a scratch chroot store:
#     the build's new paths (fib-0..6, build-time deps included) are pushed;
#  4. a brand-new store substitutes fib(3), fib(4) and fib(6) from that cache
#     with --max-jobs 0 (nothing may be built) and signatures required.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --quiet
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes'
ND=$PWD/target/release/nixdelta
DEMO=$PWD/.nixdelta-demo
SCRATCH=$(mktemp -d /tmp/nixdelta-demo.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
mkdir -p "$DEMO"
[ -f "$DEMO/demo-1.sec" ] || "$ND" keygen demo-1 --out "$DEMO" >/dev/null
CACHE="file://$DEMO/cache"

echo "== build under nixdelta run (store: $SCRATCH/store, cache: $CACHE)"
"$ND" --store "$SCRATCH/store" run --to "$CACHE" --secret-key-file "$DEMO/demo-1.sec" -- \
  nix-build --store "$SCRATCH/store" examples/fib.nix -A fib6 --no-out-link

echo "== a fresh store substitutes fib(3), fib(4), fib(6) with --max-jobs 0"
OUTS=$(nix-instantiate --store "$SCRATCH/store" examples/fib.nix -A fib3 -A fib4 -A fib6 2>/dev/null |
  xargs nix-store --store "$SCRATCH/store" -q --outputs)
nix-store --store "$SCRATCH/fresh" --realise $OUTS --max-jobs 0 \
  --option substituters "$CACHE" --option trusted-public-keys "$(cat "$DEMO/demo-1.pub")" >/dev/null
for p in $OUTS; do printf '%s = %s\n' "${p#/nix/store/*-}" "$(cat "$SCRATCH/fresh$p")"; done
echo "ok: cache at $DEMO/cache, public key $(cat "$DEMO/demo-1.pub")"
