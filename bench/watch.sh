#!/usr/bin/env bash
# Push while building (issue 16): the same CI job, side by side in one run,
#   nixdelta start [--watch]; nix-build the shared workload; nixdelta finish
# with and without the background uploader, alternating (order rotates) for
# ROUNDS rounds. Each run builds all-new store paths (its own SALT) into the
# system store and pushes to a fresh file:// cache; everything it built is
# deleted at the end. Reports medians: the post step (finish), the whole job,
# the build itself, the uploader's peak RSS, the cache size, and the ratios
# against the issue's targets.
#
#   bench/watch.sh                       # SCALE=full (~870 paths, 1.4 GB), ROUNDS=1
#   SCALE=small ROUNDS=3 bench/watch.sh  # ~190 paths, 110 MB
set -euo pipefail
SCALE=${SCALE:-full} ROUNDS=${ROUNDS:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes'
export LC_ALL=C
if [ -z "${NIXDELTA_BIN:-}" ]; then
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
  NIXDELTA_BIN=$ROOT/target/release/nixdelta
fi
ND=$NIXDELTA_BIN
W=$(mktemp -d /tmp/nixdelta-bench-watch.XXXXXX)
ROOTS=()
cleanup() {
  for r in "${ROOTS[@]}"; do rm -f "$r" "$r.drv"; done
  for f in "$W"/all-*.txt; do [ -f "$f" ] && xargs -a "$f" nix-store --delete >/dev/null 2>&1 || true; done
  rm -rf "$W"
}
trap cleanup EXIT
NIXOPTS=(--option build-users-group '' --option substituters '' --option sandbox false)

# The workload's library list, as make-workload.sh writes it.
LIBS=$W/libs-$SCALE.nix
if [ "$SCALE" = small ]; then LIMIT=$((25 * 1000 * 1000)); else LIMIT=$((1000 * 1000 * 1000)); fi
{
  echo '['
  find /usr/lib/x86_64-linux-gnu -maxdepth 1 -type f -name '*.so.*' -size +50k -size -20M ! -name 'libLLVM*' \
    -printf '%f %s\n' | sort | awk -v lim="$LIMIT" '{ if (tot >= lim) next; tot += $2; printf "  \"%s\"\n", $1 }'
  echo ']'
} >"$LIBS"
cp "$SHARED/workload.nix" "$W/workload.nix"
"$ND" keygen bench-watch-1 --out "$W/keys" >/dev/null 2>&1
KEY=$W/keys/bench-watch-1.sec

now() { date +%s.%N; }
# Highest VmHWM (peak RSS, kB) of the uploader while it lives.
sample_rss() {
  local pidfile=$1 out=$2 pid="" max=0
  for _ in $(seq 100); do [ -f "$pidfile" ] && break; sleep 0.05; done
  pid=$(cat "$pidfile" 2>/dev/null || true)
  while [ -n "$pid" ] && [ -d "/proc/$pid" ]; do
    v=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${v:-0}" -gt "$max" ] && max=$v
    echo "$max" >"$out"
    sleep 0.2
  done
}

run_job() { # mode round
  local mode=$1 r=$2 salt="bw$$-$2-$1"
  local cache=$W/cache-$salt state=$W/state-$salt root=$W/result-$salt
  ROOTS+=("$root")
  local watch=()
  [ "$mode" = watch ] && watch=(--watch --to "file://$cache" --secret-key-file "$KEY")
  local t0 t1 t2 t3 drv
  t0=$(now)
  "$ND" start --archive none --no-configure --state-dir "$state" "${watch[@]}" 2>>"$W/log"
  [ "$mode" = watch ] && { sample_rss "$state/watch.pid" "$W/rss-$salt" & }
  t1=$(now)
  drv=$(nix-instantiate "${NIXOPTS[@]}" "$W/workload.nix" --argstr scale "$SCALE" --argstr salt "$salt" \
    --arg libsFile "$LIBS" --add-root "$root.drv" --indirect 2>>"$W/log")
  nix-build "${NIXOPTS[@]}" --max-jobs 2 --cores 1 "$drv" -o "$root" >/dev/null 2>>"$W/log"
  t2=$(now)
  "$ND" finish --state-dir "$state" --to "file://$cache" --secret-key-file "$KEY" >>"$W/log" 2>&1
  t3=$(now)
  wait
  nix-store -qR --include-outputs "$drv" >"$W/all-$salt.txt"
  local bytes rss=0
  bytes=$(du -sb "$cache" | cut -f1)
  [ -f "$W/rss-$salt" ] && rss=$(cat "$W/rss-$salt")
  local during
  during=$(sed -n 's/.*background uploader: \([0-9]*\) paths.*/\1/p' "$W/log" | tail -1)
  [ "$mode" = watch ] || during=0
  printf '%s round %d: build %.1f s, post %.1f s, job %.1f s, cache %.1f MB, uploader peak %d kB, %s paths during the build\n' \
    "$mode" "$r" "$(echo "$t2 - $t1" | bc)" "$(echo "$t3 - $t2" | bc)" "$(echo "$t3 - $t0" | bc)" \
    "$(echo "$bytes / 1000000" | bc -l)" "$rss" "${during:-0}" >&2
  echo "$mode $(echo "$t2 - $t1" | bc) $(echo "$t3 - $t2" | bc) $(echo "$t3 - $t0" | bc) $bytes $rss" >>"$W/results"
}

for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="watch nowatch"; else order="nowatch watch"; fi
  for m in $order; do run_job "$m" "$r"; done
done

median() { sort -g | awk '{a[NR]=$1} END {printf "%.3f\n", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -v m="$1" -v c="$2" '$1 == m {print $c}' "$W/results" | median; }
for m in watch nowatch; do
  eval "b_$m=$(col $m 2) p_$m=$(col $m 3) j_$m=$(col $m 4) s_$m=$(col $m 5) r_$m=$(col $m 6)"
done
echo
echo "SCALE=$SCALE ROUNDS=$ROUNDS, $(nproc) cores; CPU pressure: $(head -1 /proc/pressure/cpu 2>/dev/null || echo n/a)"
echo
echo "| job | build | post step (finish) | whole job | cache | uploader peak RSS |"
echo "|---|---|---|---|---|---|"
printf '| no watch | %.1f s | %.1f s | %.1f s | %.1f MB | – |\n' "$b_nowatch" "$p_nowatch" "$j_nowatch" "$(echo "$s_nowatch / 1000000" | bc -l)"
printf '| watch | %.1f s | %.1f s | %.1f s | %.1f MB | %.1f MiB |\n' "$b_watch" "$p_watch" "$j_watch" "$(echo "$s_watch / 1000000" | bc -l)" "$(echo "$r_watch / 1024" | bc -l)"
echo
post=$(echo "$p_watch / $p_nowatch" | bc -l)
job_target=$(echo "$j_nowatch - 0.7 * $p_nowatch" | bc -l)
build=$(echo "$b_watch / $b_nowatch" | bc -l)
printf -- '- post step: watch / no watch = %.2f (target <= 0.15)\n' "$post"
printf -- '- whole job: watch %.1f s vs no watch %.1f s; target <= %.1f s (no watch - 70%% of its post step): %s\n' \
  "$j_watch" "$j_nowatch" "$job_target" "$(echo "$j_watch <= $job_target" | bc -l | sed 's/1/met/;s/0/not met/')"
printf -- '- build under watch: %.2f x the build alone (target <= 1.10)\n' "$build"
printf -- '- uploader peak RSS: %.1f MiB (target <= 64 MiB)\n' "$(echo "$r_watch / 1024" | bc -l)"
printf -- '- cache size: watch / no watch = %.3f\n' "$(echo "$s_watch / $s_nowatch" | bc -l)"
