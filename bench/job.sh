#!/usr/bin/env bash
# The cost a user sees (issue 15 item 5): the same CI job, side by side in
# one run, with three ways of caching the Nix store between jobs:
#   nixdelta  nixdelta start --archive dir:… ; build ; nixdelta finish --to file://…
#   nixdelta-watch  the same with start --watch (the front ends' default): the
#             new paths are pushed while the build runs
#   tar       the cache-nix-action method: GC, then tar + zstd of the whole /nix
#             into the cache; on restore zstd -d | tar -x into the empty /nix
#   copy      the cachix/attic method: nix copy of the new paths to a signed
#             file:// binary cache (zstd); warm jobs substitute from it
# Every job runs on a fresh runner: a new empty chroot store (--store DIR) in a
# new directory. Cold job: miss, build the shared workload, save/push. Warm
# job: hit, restore, nix-build --max-jobs 0 (proves nothing is built), finish.
# Then the scaling run: the same warm job on stores that already hold 1k, 10k
# and 100k other valid paths. Writes job.csv and job.svg (a plot drawn here).
#
#   bench/job.sh                          # SCALE=small, 3 rounds, SIZES="1000 10000 100000"
#   SCALE=full ROUNDS=1 SIZES= bench/job.sh
#   OUT=bench/results bench/job.sh        # also copy job.csv/job.svg there
set -euo pipefail
SCALE=${SCALE:-small} ROUNDS=${ROUNDS:-3} SIZES=${SIZES-1000 10000 100000}
SIZE_ROUNDS=${SIZE_ROUNDS:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes'
export LC_ALL=C
command -v zstd >/dev/null || apt-get install -y -qq zstd >/dev/null
if [ -z "${NIXDELTA_BIN:-}" ]; then
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
  NIXDELTA_BIN=$ROOT/target/release/nixdelta
fi
ND=$NIXDELTA_BIN
W=$(mktemp -d /tmp/nixdelta-bench-job.XXXXXX)
KEEP=${KEEP:-}
cleanup() { [ -n "$KEEP" ] || { chmod -R u+w "$W" 2>/dev/null; rm -rf "$W"; }; }
trap cleanup EXIT
cd "$W"

# A chroot store forces Nix 2.8 to build in its sandbox: the workload's
# builders copy host files, so the host's directories are bound in.
SBP="/bin /usr /lib /lib64 /etc"
[ -d /root/.rustup ] && SBP="$SBP /root/.rustup"
NIXOPTS=(--option build-users-group '' --option substituters '' --option sandbox-paths "$SBP")

LIBS=$W/libs-$SCALE.nix
if [ "$SCALE" = small ]; then LIMIT=$((25 * 1000 * 1000)); else LIMIT=$((1000 * 1000 * 1000)); fi
{
  echo '['
  find /usr/lib/x86_64-linux-gnu -maxdepth 1 -type f -name '*.so.*' -size +50k -size -20M ! -name 'libLLVM*' \
    -printf '%f %s\n' | sort | awk -v lim="$LIMIT" '{ if (tot >= lim) next; tot += $2; printf "  \"%s\"\n", $1 }'
  echo ']'
} >"$LIBS"
cp "$SHARED/workload.nix" "$W/workload.nix"
"$ND" keygen bench-job-1 --out "$W/keys" >/dev/null 2>&1
KEY=$W/keys/bench-job-1.sec
PUB=$(cat "$W/keys/bench-job-1.pub")
CSV=$W/job.csv
echo "scale,method,job,round,store_paths,seconds,bytes,load1,cpu_some_avg10" >"$CSV"

now() { date +%s.%N; }
load() { printf '%s,%s' "$(cut -d' ' -f1 /proc/loadavg)" \
  "$(sed -n 's/^some avg10=\([0-9.]*\).*/\1/p' /proc/pressure/cpu 2>/dev/null || echo)"; }
du_b() { { du -sbc "$@" 2>/dev/null || true; } | tail -1 | cut -f1; }

# The job's build: evaluate and build the workload into the chroot store S.
build() { # S maxjobs
  local s=$1 drv
  drv=$(nix-instantiate --store "$s" "${NIXOPTS[@]}" "$W/workload.nix" --argstr scale "$SCALE" \
    --arg libsFile "$LIBS" --add-root "$s.drv" --indirect >/dev/null 2>>"$W/log" && readlink "$s.drv")
  # nix-store --realise, not nix-build: nix-build looks for a .drv argument
  # in the real /nix/store, which a diverted store does not fill.
  nix-store --store "$s" "${NIXOPTS[@]}" --max-jobs "$2" --cores 1 --realise "$drv" \
    --add-root "$s.result" --indirect >/dev/null 2>>"$W/log"
}
valid() { nix path-info --store "$1" --all 2>/dev/null | sort || true; }
# nix copy of the paths that are new since the list in $2 (cachix/attic push).
push_new() { # S before-file cache-dir
  valid "$1" | comm -13 "$2" - >"$1.new"
  [ -s "$1.new" ] || return 0
  xargs -a "$1.new" nix copy --store "$1" --to "file://$3?compression=zstd&secret-key=$KEY" 2>>"$W/log"
}

# One job. Cold: $R is the run's fresh dir, its caches are written in $R.
# Warm: the caches of cold run $C are read. $T: a template store copied in first
# (the scaling runs), not timed.
job() { # method kind round cold-dir template
  local m=$1 kind=$2 r=$3 C=${4:-} T=${5:-} R s t0 t1 bytes=0
  R=$W/run-$m-$kind-$r-${TAGN:-}
  mkdir -p "$R"
  s=$R/s
  [ -n "$T" ] && cp -a "$T" "$s"
  [ "$kind" = cold ] && C=$R
  t0=$(now)
  case $m-$kind in
    bare-cold) build "$s" 2 ;;
    nixdelta-*)
      local mj=2 extra=()
      [ "$kind" = warm ] && mj=0
      # nixdelta-watch: as the front ends run it by default (watch: true),
      # a background uploader pushes while the build runs.
      [ "$m" = nixdelta-watch ] && extra=(--watch --to "file://$C/bc" --secret-key-file "$KEY")
      "$ND" start --store "$s" --archive "dir:$C/arch" --key-dir "$W" --key-file workload.nix \
        --no-configure --state-dir "$R/state" "${extra[@]}" >>"$W/log" 2>&1
      build "$s" "$mj"
      "$ND" finish --store "$s" --state-dir "$R/state" --to "file://$C/bc" --secret-key-file "$KEY" >>"$W/log" 2>&1
      ;;
    tar-cold)
      build "$s" 2
      nix-store --store "$s" --gc >/dev/null 2>>"$W/log"
      tar -C "$s" -cf - nix | zstd -T0 -3 -q -o "$C/nix.tar.zst"
      ;;
    tar-warm)
      mkdir -p "$s"
      zstd -d -q -c "$C/nix.tar.zst" | tar -x -C "$s"
      build "$s" 0
      ;;
    copy-*)
      valid "$s" >"$R/before"
      if [ "$kind" = cold ]; then
        build "$s" 2
      else
        drv=$(nix-instantiate --store "$s" "${NIXOPTS[@]}" "$W/workload.nix" --argstr scale "$SCALE" \
          --arg libsFile "$LIBS" --add-root "$s.drv" --indirect >/dev/null 2>>"$W/log" && readlink "$s.drv")
        nix-store --store "$s" "${NIXOPTS[@]}" --option substituters "file://$C/bc" \
          --option trusted-public-keys "$PUB" --max-jobs 0 --realise "$drv" \
          --add-root "$s.result" --indirect >/dev/null 2>>"$W/log"
      fi
      push_new "$s" "$R/before" "$C/bc"
      ;;
  esac
  t1=$(now)
  # A warm job must not have built anything: the check build ran with
  # --max-jobs 0, and the result must be there.
  [ -e "$s$(readlink "$s.result")" ] || { echo "$m $kind: no result" >&2; tail "$W/log" >&2; exit 1; }
  [ "$kind" = cold ] && bytes=$(du_b "$R/arch" "$R/bc" "$R/nix.tar.zst")
  local n
  n=$(nix path-info --store "$s" --all 2>/dev/null | wc -l)
  printf '%s %s round %s: %.2f s, %d paths in the store, %.1f MB stored\n' "$m" "$kind" "$r" \
    "$(echo "$t1 - $t0" | bc)" "$n" "$(echo "$bytes / 1000000" | bc -l)" >&2
  echo "$SCALE,$m,$kind,$r,$n,$(echo "$t1 - $t0" | bc),$bytes,$(load)" >>"$CSV"
}

# One untimed build first: the first job of a run otherwise pays for a
# cold page cache (the builders copy host files), whichever method it is.
mkdir -p "$W/warmup"
build "$W/warmup/s" 2
chmod -R u+w "$W/warmup" 2>/dev/null || true

METHODS=(nixdelta nixdelta-watch tar copy)
rotate() { local k=$1; shift; local a=("$@") n=$#; for i in $(seq 0 $((n - 1))); do echo "${a[$(((i + k) % n))]}"; done; }
for r in $(seq 1 "$ROUNDS"); do
  for m in $(rotate "$r" bare "${METHODS[@]}"); do
    if [ "$m" = bare ]; then job bare cold "$r"; else job "$m" cold "$r"; fi
  done
  for m in $(rotate "$r" "${METHODS[@]}"); do job "$m" warm "$r" "$W/run-$m-cold-$r-"; done
done

# Scaling: the runner's store already holds N other valid paths (tiny-paths.py).
# nixdelta and copy start from a copy of that store; for tar the cache is the
# tar of such a store with the workload in it (what a job there would have
# saved; its save is timed once as the cold job).
for N in $SIZES; do
  T=$W/tiny-$N
  python3 "$ROOT/bench/tiny-paths.py" "$T/s" "$N" "n$N"
  T=$T/s
  for r in $(seq 1 "$SIZE_ROUNDS"); do
    for m in $(rotate "$r" "${METHODS[@]}"); do
      if [ "$m" = tar ]; then
        P=$W/tarprep-$N-$r
        mkdir -p "$P"
        cp -a "$T" "$P/s"
        "$ND" archive restore --store "$P/s" --archive "dir:$W/run-nixdelta-cold-1-/arch" \
          --key-dir "$W" --key-file workload.nix >>"$W/log" 2>&1
        t0=$(now)
        tar -C "$P/s" -cf - nix | zstd -T0 -3 -q -o "$P/nix.tar.zst"
        t1=$(now)
        echo "$SCALE,tar,save-N,$r,$(nix path-info --store "$P/s" --all | wc -l),$(echo "$t1 - $t0" | bc),$(stat -c %s "$P/nix.tar.zst"),$(load)" >>"$CSV"
        TAGN=$N job tar warm "$r" "$P" ""
        sed -i '$ s/,warm,/,warm-N,/' "$CSV"
      else
        TAGN=$N job "$m" warm "$r" "$W/run-$m-cold-1-" "$T"
        sed -i '$ s/,warm,/,warm-N,/' "$CSV"
      fi
    done
  done
done

# ---- summary ---------------------------------------------------------------
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) {print "nan"; exit} printf "%.3f\n", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -F, -v m="$1" -v j="$2" -v c="$3" '$2 == m && $3 == j {print $c}' "$CSV" | median; }
colN() { awk -F, -v m="$1" -v lo="$2" -v hi="$3" '$2 == m && $3 == "warm-N" && $5 >= lo && $5 < hi {print $6}' "$CSV" | median; }
bare=$(col bare cold 6)
declare -A cold warm bytes
for m in "${METHODS[@]}"; do
  cold[$m]=$(echo "$(col "$m" cold 6) - $bare" | bc -l)
  warm[$m]=$(col "$m" warm 6)
  bytes[$m]=$(col "$m" cold 7)
done
SUM=$W/summary.md
{
  echo "SCALE=$SCALE ROUNDS=$ROUNDS, $(nproc) cores; bare build (no cache) median $(printf %.2f "$bare") s"
  echo "load during the run (1-min loadavg, min/median/max): $(cut -d, -f8 "$CSV" | tail -n +2 | sort -g | awk '{a[NR]=$1} END {print a[1] " / " a[int((NR+1)/2)] " / " a[NR]}'); CPU PSI some avg10 median: $(cut -d, -f9 "$CSV" | tail -n +2 | median)"
  echo
  echo "| method | cold job: s added | × nixdelta | warm job: s added | × nixdelta | bytes stored (MB) | × nixdelta |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for m in "${METHODS[@]}"; do
    printf '| %s | %.2f | %.2f | %.2f | %.2f | %.1f | %.2f |\n' "$m" "${cold[$m]}" \
      "$(echo "${cold[$m]} / ${cold[nixdelta]}" | bc -l)" "${warm[$m]}" "$(echo "${warm[$m]} / ${warm[nixdelta]}" | bc -l)" \
      "$(echo "${bytes[$m]} / 1000000" | bc -l)" "$(echo "${bytes[$m]} / ${bytes[nixdelta]}" | bc -l)"
  done
  if [ -n "$SIZES" ]; then
    echo
    echo "Warm job (s) on a store already holding N other valid paths:"
    echo
    printf '| method | N = 0 |'; for N in $SIZES; do printf ' N = %s |' "$N"; done; echo
    printf '|---|---:|'; for N in $SIZES; do printf -- '---:|'; done; echo
    for m in "${METHODS[@]}"; do
      printf '| %s | %.2f |' "$m" "${warm[$m]}"
      for N in $SIZES; do printf ' %.2f |' "$(colN "$m" "$N" $((N * 2)))"; done
      echo
    done
    for N in $SIZES; do
      printf -- '- tar save (tar + zstd of /nix) at N = %s: %.2f s\n' "$N" \
        "$(awk -F, -v n="$N" '$3 == "save-N" && $5 >= n && $5 < 2*n {print $6}' "$CSV" | median)"
    done
  fi
} >"$SUM"
echo >&2
cat "$SUM"

# ---- plot (SVG drawn here) -------------------------------------------------
svg() {
  local w=900 h=380
  echo "<svg xmlns='http://www.w3.org/2000/svg' width='$w' height='$h' font-family='sans-serif' font-size='12'>"
  echo "<rect width='$w' height='$h' fill='white'/>"
  echo "<text x='10' y='18' font-size='14'>bench/job.sh, SCALE=$SCALE: seconds a cache adds to a CI job (medians; cold = job − bare build)</text>"
  # left panel: grouped bars (cold, warm) per method
  local max=0 v
  for m in "${METHODS[@]}"; do for v in "${cold[$m]}" "${warm[$m]}"; do max=$(echo "if ($v > $max) $v else $max" | bc -l); done; done
  local x0=50 y0=330 ph=270 bw=36 i=0
  echo "<line x1='$x0' y1='$y0' x2='$((x0 + 360))' y2='$y0' stroke='black'/><line x1='$x0' y1='$y0' x2='$x0' y2='$((y0 - ph))' stroke='black'/>"
  echo "<text x='$x0' y='50'>s added (max $(printf %.1f "$max") s)</text>"
  for m in "${METHODS[@]}"; do
    local gx=$((x0 + 20 + i * 90)) hc hw
    hc=$(echo "${cold[$m]} / $max * $ph" | bc -l | awk '{printf "%d", ($1 < 0) ? 0 : $1}')
    hw=$(echo "${warm[$m]} / $max * $ph" | bc -l | awk '{printf "%d", $1}')
    echo "<rect x='$gx' y='$((y0 - hc))' width='$bw' height='$hc' fill='#4a7ebb'/>"
    echo "<rect x='$((gx + bw + 4))' y='$((y0 - hw))' width='$bw' height='$hw' fill='#e8963c'/>"
    printf "<text x='%d' y='%d'>%.1f</text><text x='%d' y='%d'>%.1f</text>\n" "$gx" $((y0 - hc - 3)) "${cold[$m]}" $((gx + bw + 4)) $((y0 - hw - 3)) "${warm[$m]}"
    echo "<text x='$gx' y='$((y0 + 16))'>$m</text>"
    i=$((i + 1))
  done
  echo "<rect x='300' y='40' width='10' height='10' fill='#4a7ebb'/><text x='314' y='50'>cold</text>"
  echo "<rect x='355' y='40' width='10' height='10' fill='#e8963c'/><text x='369' y='50'>warm</text>"
  [ -n "$SIZES" ] || { echo "</svg>"; return; }
  # right panel: warm job vs store size (log x)
  local X0=500 Y0=330 PW=360 colr=([0]='#4a7ebb' [1]='#9b59b6' [2]='#e8963c' [3]='#5aa55a') mx=0 Ns=(0 $SIZES)
  for m in "${METHODS[@]}"; do for N in $SIZES; do v=$(colN "$m" "$N" $((N * 2))); mx=$(echo "if ($v > $mx) $v else $mx" | bc -l); done; done
  echo "<line x1='$X0' y1='$Y0' x2='$((X0 + PW))' y2='$Y0' stroke='black'/><line x1='$X0' y1='$Y0' x2='$X0' y2='$((Y0 - ph))' stroke='black'/>"
  echo "<text x='$X0' y='50'>warm job s vs paths already in the store (max $(printf %.1f "$mx") s)</text>"
  local k=0 n=${#Ns[@]}
  for m in "${METHODS[@]}"; do
    local pts="" j=0
    for N in "${Ns[@]}"; do
      if [ "$N" = 0 ]; then v=${warm[$m]}; else v=$(colN "$m" "$N" $((N * 2))); fi
      local px=$((X0 + 20 + j * (PW - 40) / (n - 1))) py
      py=$(echo "$Y0 - $v / $mx * $ph" | bc -l | awk '{printf "%d", $1}')
      pts="$pts $px,$py"
      [ $k = 0 ] && echo "<text x='$((px - 10))' y='$((Y0 + 16))'>$N</text>"
      printf "<text x='%d' y='%d' fill='%s'>%.1f</text>\n" "$((px + 3))" "$((py - 3))" "${colr[$k]}" "$v"
      j=$((j + 1))
    done
    echo "<polyline points='$pts' fill='none' stroke='${colr[$k]}' stroke-width='2'/>"
    echo "<text x='$((X0 + 250))' y='$((70 + k * 15))' fill='${colr[$k]}'>$m</text>"
    k=$((k + 1))
  done
  echo "</svg>"
}
svg >"$W/job.svg"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$CSV" "$OUT/job.csv"
  cp "$W/job.svg" "$OUT/job.svg"
  cp "$SUM" "$OUT/job-summary.md"
  echo "wrote $OUT/job.csv $OUT/job.svg $OUT/job-summary.md" >&2
fi
