#!/usr/bin/env bash
# Store-diff benchmark (issue 3): a chroot store with BASE valid paths (default
# 20,000), a snapshot, NEW more paths (default 1,000); then, in one run and
# alternating over ROUNDS rounds, the time to compute the new paths with
#   nixdelta finish --dry-run      (one indexed query on ValidPaths.id > snapshot,
#                                   plus the plan: drv filter, target lookup)
#   nix path-info --all, before/after set difference  (what a tool without
#                                   the DB id trick does)
# Prints medians and the ratio. Fresh directory per run, deleted at the end.
set -euo pipefail
BASE=${BASE:-20000} NEW=${NEW:-1000} ROUNDS=${ROUNDS:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes'
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
ND=$ROOT/target/release/nixdelta
W=$(mktemp -d /tmp/nixdelta-bench-diff.XXXXXX)
trap 'rm -rf "$W"' EXIT
S=$W/store

mkfiles() { # dir count prefix
  mkdir -p "$1"; for i in $(seq 1 "$2"); do echo "$3 $i" > "$1/$3-$i"; done
}
echo "populating a store with $BASE paths..." >&2
mkfiles "$W/base" "$BASE" base
(cd "$W/base" && ls | xargs -n 2000 nix-store --store "$S" --add >/dev/null)
nix path-info --store "$S" --all | sort > "$W/before.txt"
"$ND" --store "$S" start --state-dir "$W/state" 2>/dev/null
mkfiles "$W/new" "$NEW" new
(cd "$W/new" && ls | xargs -n 2000 nix-store --store "$S" --add >/dev/null)
TOTAL=$(nix path-info --store "$S" --all | wc -l)

now() { date +%s.%N; }
t_nd=(); t_nix=(); t_step=()
for r in $(seq 1 "$ROUNDS"); do
  a=$(now)
  n1=$("$ND" --store "$S" finish --dry-run --json --state-dir "$W/state" --to "file://$W/empty" 2>"$W/err" |
    grep -c '"/nix/store/' || true)
  b=$(now)
  t_step+=("$(sed -n 's/.*store diff: [0-9]* new paths in \([0-9.]*\) ms/\1/p' "$W/err")")
  n2=$(nix path-info --store "$S" --all | sort | comm -13 "$W/before.txt" - | wc -l)
  c=$(now)
  t_nd+=("$(echo "$b - $a" | bc)"); t_nix+=("$(echo "$c - $b" | bc)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
m_nd=$(median "${t_nd[@]}"); m_nix=$(median "${t_nix[@]}"); m_step=$(median "${t_step[@]}")
echo
echo "| store | new paths | nixdelta diff step | whole \`finish --dry-run\` process | \`nix path-info --all\` + set difference | ratio (diff step) | ratio (whole process) |"
echo "|---|---|---|---|---|---|---|"
printf '| %d paths | %d (found %d / %d) | %.1f ms | %.1f ms | %.1f ms | %.0fx | %.0fx |\n' "$TOTAL" "$NEW" "$n1" "$n2" \
  "$m_step" "$(echo "$m_nd * 1000" | bc -l)" "$(echo "$m_nix * 1000" | bc -l)" \
  "$(echo "$m_nix * 1000 / $m_step" | bc -l)" "$(echo "$m_nix / $m_nd" | bc -l)"
