#!/usr/bin/env bash
# Benchmark: `nixdelta push` vs `nix copy` vs the limit, on the shared bench
# workload, in one run, tools alternated over ROUNDS rounds. See README.md.
#
#   bench/push.sh                      # SCALE=small, 3 rounds
#   SCALE=full ROUNDS=5 bench/push.sh  # ~1.4 GB of NAR
#
# Env: SCALE (small|full, default small), ROUNDS (default 3), SALT (workload
# salt, default none), SHARED (default ../shared), JOBS (nixdelta --jobs),
# NIXDELTA_BIN (a nixdelta binary to measure instead of building this tree).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared}
SCALE=${SCALE:-small}
ROUNDS=${ROUNDS:-3}
SALT=${SALT:-}
TAG=$SCALE${SALT:+-$SALT}
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes'
export LC_ALL=C

log() { printf '%s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------
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
  VERSION="$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"
fi

# --- a fresh directory for everything this run writes, deleted at the end ----
# (deleting many files and then creating many at once is slow on these
# machines: every run gets its own directory, and nothing is deleted until
# the measurements are over)
T=$(mktemp -d /tmp/nixdelta-bench.XXXXXX)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/wl" "$T/out"

log "building the workload (SCALE=$SCALE${SALT:+ SALT=$SALT})"
WORKDIR=$T/wl SCALE=$SCALE SALT=$SALT "$SHARED/bench/make-workload.sh" >&2
mapfile -t PATHS < "$T/wl/paths-$TAG.txt"
NAR=$(nix-store -q --size "${PATHS[@]}" | awk '{s += $1} END {printf "%d", s}')
"$BIN" keygen bench-1 --out "$T/keys" >/dev/null
SEC=$T/keys/bench-1.sec

# Warm the page cache so no tool pays for the first read from disk.
nix-store --export "${PATHS[@]}" >/dev/null

# --- one measured run: wall seconds, peak RSS (KiB), compressed bytes -------
bytes_in() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {printf "%d", s}'; }

run_nixdelta() {
  local out=$1
  /usr/bin/time -f '%M %U %S' -o "$out.rss" \
    "$BIN" push ${JOBS:+--jobs "$JOBS"} --to "file://$out" --secret-key-file "$SEC" "${PATHS[@]}" \
    >"$out.log" 2>&1
  grep -q " 0 already cached, ${#PATHS[@]} uploaded" "$out.log" \
    || { log "nixdelta push did not upload everything:"; cat "$out.log" >&2; exit 1; }
}

run_nixcopy() {
  local out=$1
  /usr/bin/time -f '%M %U %S' -o "$out.rss" \
    nix copy --to "file://$out?compression=zstd&secret-key=$SEC" "${PATHS[@]}" >"$out.log" 2>&1
}

# The limit: one NAR stream (nix-store --export), zstd -3 on all cores, and
# a SHA-NI sha256 of the stream beside it. Debian's coreutils sha256sum
# (9.1, built without OpenSSL) does not use SHA-NI: ~360 MB/s a core here,
# against ~1.6 GB/s for `openssl dgst -sha256`, so openssl is used if present.
if command -v openssl >/dev/null; then SHA='openssl dgst -sha256'; else SHA=sha256sum; fi
export SHA
run_limit() {
  local out=$1
  mkdir -p "$out"
  mkfifo "$out.fifo"
  # shellcheck disable=SC2016 # the inner script expands its own arguments
  /usr/bin/time -f '%M %U %S' -o "$out.rss" bash -c '
    set -o pipefail
    out=$1
    shift
    zstd -3 -T0 -q <"$out.fifo" >"$out/export.zst" &
    z=$!
    nix-store --export "$@" | tee "$out.fifo" | $SHA >"$out.sha256"
    wait $z' _ "$out" "${PATHS[@]}" >"$out.log" 2>&1
}

TOOLS=(nixdelta nixcopy limit)
declare -A NAME=([nixdelta]='nixdelta push' [nixcopy]='nix copy' [limit]="limit: export → zstd -3 -T0 + ${SHA%% *} sha256")
printf 'round\ttool\tseconds\trss_kib\tbytes\tcpu_seconds\n' >"$T/runs.tsv"
# CPU pressure (PSI): share of the time a runnable task waited for a core
# (the tools' own threads count too, but a high value means other load)
psi() { sed -n 's/^some .*total=//p' /proc/pressure/cpu 2>/dev/null || echo 0; }
psi0=$(psi) run0=$EPOCHREALTIME
for ((r = 1; r <= ROUNDS; r++)); do
  for ((k = 0; k < ${#TOOLS[@]}; k++)); do
    # rotate the order each round so no tool always runs first
    tool=${TOOLS[$(((k + r - 1) % ${#TOOLS[@]}))]}
    out=$T/out/r$r-$tool
    t0=$EPOCHREALTIME
    "run_$tool" "$out"
    t1=$EPOCHREALTIME
    secs=$(echo "$t1 - $t0" | bc -l)
    size=$(bytes_in "$out")
    [ "$tool" = limit ] || size=$(bytes_in "$out/nar")
    read -r rss user sys < <(tail -n1 "$out.rss")
    cpu=$(echo "$user + $sys" | bc -l)
    printf '%d\t%s\t%.3f\t%d\t%d\t%.2f\n' "$r" "$tool" "$secs" "$rss" "$size" "$cpu" >>"$T/runs.tsv"
    log "$(printf 'round %d  %-9s %7.2f s  %8.1f MB/s  %6.2f s CPU  %6.1f MiB RSS  %8.1f MB out' \
      "$r" "$tool" "$secs" "$(echo "$NAR / 1000000 / $secs" | bc -l)" "$cpu" \
      "$(echo "$rss / 1024" | bc -l)" "$(echo "$size / 1000000" | bc -l)")"
  done
done

psi1=$(psi) run1=$EPOCHREALTIME

# --- report -----------------------------------------------------------------
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
col() { awk -F'\t' -v t="$1" -v c="$2" 'NR > 1 && $2 == t {print $c}' "$T/runs.tsv"; }
declare -A SECS SIZE RSS CPU
for tool in "${TOOLS[@]}"; do
  SECS[$tool]=$(col "$tool" 3 | median)
  CPU[$tool]=$(col "$tool" 6 | median)
  SIZE[$tool]=$(col "$tool" 5 | median)
  RSS[$tool]=$(col "$tool" 4 | sort -n | tail -n1)
done
mbps() { echo "$NAR / 1000000 / ${SECS[$1]}" | bc -l; }
ratio() { echo "$1 / $2" | bc -l; }

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
printf '\n### SCALE=%s: %d paths, %.1f MB of NAR, %d rounds\n\n' \
  "$TAG" "${#PATHS[@]}" "$(echo "$NAR / 1000000" | bc -l)" "$ROUNDS"
printf '%s, %d cores; %s; zstd %s; nixdelta %s\n\n' "$cpu" "$(nproc)" "$(nix --version)" \
  "$(zstd -V | grep -o 'v[0-9.]*' | head -n1)" "${VERSION:-$BIN}"
printf 'CPU pressure during the measurements (PSI some, incl. the tools themselves): %.0f %%\n\n' \
  "$(echo "($psi1 - $psi0) / 10000 / ($run1 - $run0)" | bc -l)"
printf '| tool | median wall (s) | NAR MB/s | CPU s (user+sys) | compressed MB | peak RSS (MiB) |\n'
printf '|---|---:|---:|---:|---:|---:|\n'
for tool in "${TOOLS[@]}"; do
  printf '| %s | %.2f | %.1f | %.2f | %.1f | %.1f |\n' "${NAME[$tool]}" "${SECS[$tool]}" "$(mbps "$tool")" "${CPU[$tool]}" \
    "$(echo "${SIZE[$tool]} / 1000000" | bc -l)" "$(echo "${RSS[$tool]} / 1024" | bc -l)"
done
speed=$(ratio "$(mbps nixdelta)" "$(mbps nixcopy)")
of_limit=$(ratio "$(mbps nixdelta)" "$(mbps limit)")
size=$(ratio "${SIZE[nixdelta]}" "${SIZE[nixcopy]}")
rss=$(echo "${RSS[nixdelta]} / 1024" | bc -l)
verdict() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo ok; else echo MISSED; fi; }
printf '\n| ratio | value | target |\n|---|---:|---|\n'
printf '| nixdelta / nix copy throughput | %.2f× | ≥ 2× (%s) |\n' "$speed" "$(verdict "$speed >= 2")"
printf '| nixdelta / limit throughput | %.2f | ≥ 0.9 (%s) |\n' "$of_limit" "$(verdict "$of_limit >= 0.9")"
printf '| nixdelta / nix copy compressed size | %.3f | within 5%% (%s) |\n' "$size" \
  "$(verdict "$size <= 1.05 && $size >= 0.95")"
printf '| nixdelta peak RSS | %.1f MiB | ≤ 64 MiB (%s) |\n' "$rss" "$(verdict "$rss <= 64")"
