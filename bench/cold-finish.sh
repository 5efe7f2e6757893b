#!/usr/bin/env bash
# A cold job's post step, A/B: `finish` pushing the workload to a file://
# binary cache and saving the store archive (a key miss), with two nixdelta
# binaries side by side in one run: OLD compresses every NAR twice (once for
# the cache, once for the archive), NEW splices the push's compressed NARs
# into the archive. Also measured on the same store, for scale: NEW with
# --archive none (the push alone), and the cache-nix-action save (tar | zstd
# -T0 -3 of the store).
#
# One store is built once (the start snapshot taken before its build); every
# measured finish gets a copy of that start state and fresh cache and archive
# directories, so each run does the whole cold post step.
#
#   OLD=/path/to/old/nixdelta NEW=target/release/nixdelta bench/cold-finish.sh
#   SCALE=full ROUNDS=3 OLD=… NEW=… bench/cold-finish.sh
set -euo pipefail
SCALE=${SCALE:-small} ROUNDS=${ROUNDS:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
: "${OLD:?OLD=path of the nixdelta binary to compare with}"
NEW=${NEW:-$ROOT/target/release/nixdelta}
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes'
export LC_ALL=C
command -v zstd >/dev/null || apt-get install -y -qq zstd >/dev/null
W=$(mktemp -d /tmp/nixdelta-bench-cold.XXXXXX)
trap 'chmod -R u+w "$W" 2>/dev/null; rm -rf "$W"' EXIT
cd "$W"

SBP="/bin /usr /lib /lib64 /etc"
[ -d /root/.rustup ] && SBP="$SBP /root/.rustup"
NIXOPTS=(--option build-users-group '' --option substituters '' --option sandbox-paths "$SBP")
LIBS=$W/libs.nix
if [ "$SCALE" = small ]; then LIMIT=$((25 * 1000 * 1000)); else LIMIT=$((1000 * 1000 * 1000)); fi
{
  echo '['
  find /usr/lib/x86_64-linux-gnu -maxdepth 1 -type f -name '*.so.*' -size +50k -size -20M ! -name 'libLLVM*' \
    -printf '%f %s\n' | sort | awk -v lim="$LIMIT" '{ if (tot >= lim) next; tot += $2; printf "  \"%s\"\n", $1 }'
  echo ']'
} >"$LIBS"
cp "$SHARED/workload.nix" "$W/workload.nix"
"$NEW" keygen bench-cold-1 --out "$W/keys" >/dev/null 2>&1
KEY=$W/keys/bench-cold-1.sec

S=$W/s
"$NEW" start --store "$S" --archive "dir:$W/none" --key-dir "$W" --key-file workload.nix \
  --no-configure --state-dir "$W/state0" >>"$W/log" 2>&1
nix-instantiate --store "$S" "${NIXOPTS[@]}" "$W/workload.nix" --argstr scale "$SCALE" \
  --arg libsFile "$LIBS" --add-root "$S.drv" --indirect >/dev/null 2>>"$W/log"
drv=$(readlink "$S.drv")
nix-store --store "$S" "${NIXOPTS[@]}" --max-jobs 2 --cores 1 --realise "$drv" \
  --add-root "$S.result" --indirect >/dev/null 2>>"$W/log"
paths=$(nix path-info --store "$S" --all | wc -l)
nar=$(nix path-info --store "$S" --all --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(p["narSize"] for p in (d.values() if isinstance(d, dict) else d)))')

now() { date +%s.%N; }
CSV=$W/cold-finish.csv
echo "method,round,seconds,archive_bytes,cache_bytes" >"$CSV"
run() { # method round
  local m=$1 r=$2 R t0 t1 bin=$NEW archive
  R=$W/run-$m-$r
  mkdir -p "$R"
  cp -a "$W/state0" "$R/state"
  archive="dir:$R/arch"
  case $m in old) bin=$OLD ;; push-only) archive=none ;; esac
  t0=$(now)
  if [ "$m" = tar ]; then
    tar -C "$S" -cf - nix | zstd -T0 -3 -q -o "$R/nix.tar.zst"
  else
    "$bin" finish --store "$S" --state-dir "$R/state" --archive "$archive" \
      --to "file://$R/bc" --secret-key-file "$KEY" >>"$R/log" 2>&1
  fi
  t1=$(now)
  local ab cb
  ab=$({ du -sbc "$R/arch" "$R/nix.tar.zst" 2>/dev/null || true; } | tail -1 | cut -f1)
  cb=$({ du -sbc "$R/bc" 2>/dev/null || true; } | tail -1 | cut -f1)
  echo "$m,$r,$(echo "$t1 - $t0" | bc),$ab,$cb" >>"$CSV"
  printf '%s round %s: %.2f s, archive %.1f MB, cache %.1f MB\n' "$m" "$r" "$(echo "$t1 - $t0" | bc)" \
    "$(echo "$ab / 1000000" | bc -l)" "$(echo "$cb / 1000000" | bc -l)" >&2
  chmod -R u+w "$R" 2>/dev/null || true
}

METHODS=(old new push-only tar)
for r in $(seq 1 "$ROUNDS"); do
  for i in 0 1 2 3; do run "${METHODS[$(((i + r) % 4))]}" "$r"; done
done

median() { sort -g | awk '{a[NR]=$1} END {printf "%.3f\n", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -F, -v m="$1" -v c="$2" '$1 == m {print $c}' "$CSV" | median; }
new=$(col new 3)
{
  echo "SCALE=$SCALE ($paths paths, $((nar / 1000000)) MB of NAR), $ROUNDS rounds, order rotated, medians; $(nproc) cores"
  echo
  echo "| post step | seconds | × new | archive MB | × new | cache MB |"
  echo "|---|---:|---:|---:|---:|---:|"
  for m in "${METHODS[@]}"; do
    s=$(col "$m" 3) a=$(col "$m" 4) c=$(col "$m" 5)
    na=$(col new 4)
    printf '| %s | %.2f | %.2f | %.1f | %s | %.1f |\n' "$m" "$s" "$(echo "$s / $new" | bc -l)" \
      "$(echo "$a / 1000000" | bc -l)" \
      "$( [ "${a%.*}" -gt 0 ] && printf '%.3f' "$(echo "$a / $na" | bc -l)" || echo -)" \
      "$(echo "$c / 1000000" | bc -l)"
  done
  echo
  echo "old: finish compressing twice; new: the archive takes the push's compressed NARs;"
  echo "push-only: new with --archive none; tar: tar | zstd -T0 -3 of the store (no push)."
  echo "Load (1-min) at the end: $(cut -d' ' -f1 /proc/loadavg)"
} | tee "$W/summary.md"
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp "$CSV" "$W/summary.md" "$OUT/"; fi
