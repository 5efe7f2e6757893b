#!/usr/bin/env bash
# Benchmark: restoring the shared workload into an empty chroot store with
# `nixdelta archive restore` vs `nix copy --from file://…` (zstd) vs
# `zstd -d | nix-store --import`, in one run, tools alternated over ROUNDS
# rounds; archive size vs `nix-store --export | zstd -3`. See README.md.
#
#   bench/restore.sh                      # SCALE=small, 3 rounds
#   SCALE=full ROUNDS=3 bench/restore.sh  # ~1.4 GB of NAR
#
# Env: SCALE (small|full, default small), ROUNDS (default 3), SHARED (default
# ../shared), NIXDELTA_BIN (a nixdelta binary instead of building this tree).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared}
SCALE=${SCALE:-small}
ROUNDS=${ROUNDS:-3}
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes'
export LC_ALL=C
log() { printf '%s\n' "$*" >&2; }

missing=()
command -v zstd >/dev/null || missing+=(zstd)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ -n "${NIXDELTA_BIN:-}" ]; then
  BIN=$NIXDELTA_BIN
else
  log "building the release binary"
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
  BIN=$ROOT/target/release/nixdelta
fi

# A fresh directory per run; nothing is deleted until the measurements end.
T=$(mktemp -d /tmp/nixdelta-restore-bench.XXXXXX)
trap 'chmod -R u+w "$T" 2>/dev/null; rm -rf "$T"' EXIT
mkdir -p "$T/wl"

log "building the workload (SCALE=$SCALE)"
WORKDIR=$T/wl SCALE=$SCALE "$SHARED/bench/make-workload.sh" >&2
mapfile -t PATHS < "$T/wl/paths-$SCALE.txt"   # nix-store -qR: dependencies first
N=${#PATHS[@]}
NAR=$(nix-store -q --size "${PATHS[@]}" | awk '{s += $1} END {printf "%d", s}')
cd /

log "preparing the three sources"
/usr/bin/time -f '%e %M' -o "$T/save.time" \
  "$BIN" archive save --archive "dir:$T/arch" --key bench-1 --from-file "$T/wl/paths-$SCALE.txt" >"$T/save.log" 2>&1 \
  || { cat "$T/save.log" >&2; exit 1; }
nix copy --to "file://$T/bc?compression=zstd" "${PATHS[@]}" >/dev/null 2>&1
nix-store --export "${PATHS[@]}" | zstd -3 -q -T0 -o "$T/export.zst"
ARCH_BYTES=$(stat -c %s "$T/arch/bench-1.nda")
EXPORT_BYTES=$(stat -c %s "$T/export.zst")
BC_BYTES=$(find "$T/bc" -type f -printf '%s\n' | awk '{s += $1} END {printf "%d", s}')

# One measured restore into a new empty store: wall seconds and peak RSS (KiB).
restore() {
  local tool=$1 store=$2
  nix-store --store "$store" --init
  case $tool in
    nixdelta)
      /usr/bin/time -f '%e %M' -o "$store.time" \
        "$BIN" --store "$store" archive restore --archive "dir:$T/arch" --key bench-1 >"$store.log" 2>&1 ;;
    nixdelta-import)
      /usr/bin/time -f '%e %M' -o "$store.time" \
        "$BIN" --store "$store" archive restore --method import --archive "dir:$T/arch" --key bench-1 >"$store.log" 2>&1 ;;
    nix-copy)
      /usr/bin/time -f '%e %M' -o "$store.time" \
        nix copy --no-check-sigs --from "file://$T/bc" --to "$store" "${PATHS[@]}" >"$store.log" 2>&1 ;;
    import)
      # The pipeline's wall time; the RSS is nix-store's (zstd's is small).
      local t0 t1
      t0=$(date +%s.%N)
      zstd -d -q -c "$T/export.zst" | /usr/bin/time -f '%e %M' -o "$store.time.ns" \
        nix-store --store "$store" --import >"$store.log" 2>&1
      t1=$(date +%s.%N)
      echo "$(echo "$t1 - $t0" | bc) $(cut -d' ' -f2 "$store.time.ns")" >"$store.time" ;;
  esac
  local got
  got=$(nix path-info --store "$store" --all 2>/dev/null | wc -l)
  [ "$got" -ge "$N" ] || { log "$tool restored $got of $N paths:"; cat "$store.log" >&2; exit 1; }
}

TOOLS=(nixdelta nix-copy import nixdelta-import)
for r in $(seq "$ROUNDS"); do
  # Rotate the order each round so no tool always goes first.
  for i in "${!TOOLS[@]}"; do
    tool=${TOOLS[$(( (i + r) % ${#TOOLS[@]} ))]}
    log "round $r: $tool"
    restore "$tool" "$T/s-$tool-$r"
  done
done

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
secs() { for r in $(seq "$ROUNDS"); do cut -d' ' -f1 "$T/s-$1-$r.time"; done | median; }
rss() { for r in $(seq "$ROUNDS"); do cut -d' ' -f2 "$T/s-$1-$r.time"; done | sort -n | tail -1; }

ND=$(secs nixdelta)
printf '\nRestore of SCALE=%s: %d paths, %.1f MB of NAR, into an empty chroot store; median of %d rounds\n\n' \
  "$SCALE" "$N" "$(echo "$NAR / 1000000" | bc -l)" "$ROUNDS"
printf '| tool | median s | NAR MB/s | nixdelta is × faster | peak RSS MiB |\n|---|---:|---:|---:|---:|\n'
for tool in nixdelta nixdelta-import nix-copy import; do
  s=$(secs "$tool")
  name=$tool
  case $tool in
    nixdelta) name='`nixdelta archive restore` (direct)' ;;
    nixdelta-import) name='`nixdelta archive restore --method import`' ;;
    nix-copy) name='`nix copy --from file://` (zstd)' ;;
    import) name='`zstd -d | nix-store --import`' ;;
  esac
  printf '| %s | %.2f | %.0f | %.2f | %.0f |\n' "$name" "$s" "$(echo "$NAR / $s / 1000000" | bc -l)" \
    "$(echo "$s / $ND" | bc -l)" "$(echo "$(rss "$tool") / 1024" | bc -l)"
done
printf '\n| source | MB | vs export+zstd -3 |\n|---|---:|---:|\n'
printf '| nixdelta archive (zstd -3) | %.1f | %.3f |\n' "$(echo "$ARCH_BYTES / 1000000" | bc -l)" "$(echo "$ARCH_BYTES / $EXPORT_BYTES" | bc -l)"
printf '| `nix-store --export \\| zstd -3` | %.1f | 1.000 |\n' "$(echo "$EXPORT_BYTES / 1000000" | bc -l)"
printf '| file:// binary cache (zstd) | %.1f | %.3f |\n' "$(echo "$BC_BYTES / 1000000" | bc -l)" "$(echo "$BC_BYTES / $EXPORT_BYTES" | bc -l)"
printf '\nsave (archive save): %s s, peak RSS %.0f MiB\n' "$(cut -d' ' -f1 "$T/save.time")" "$(echo "$(cut -d' ' -f2 "$T/save.time") / 1024" | bc -l)"
