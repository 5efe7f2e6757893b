#!/usr/bin/env bash
# Benchmark (issue 12 item 4): a non-root job restoring the shared workload's
# archive into a multi-user store, as on GitHub's hosted runners (a Nix daemon,
# passwordless sudo), in one run, methods alternated over ROUNDS rounds:
#   import   nixdelta archive restore --method import: every NAR through
#            `nix-store --import` and the daemon (the job user is trusted)
#   sudo     nixdelta archive restore --method direct: the archive piped into
#            `sudo -n nixdelta archive import-stream`, unpacked and registered
#            directly as root
#   copy     `nix copy --from file://…` of the same paths (zstd binary cache)
#            through the daemon: what a job does without an archive
# Each restore gets a new daemon on a new empty store in a new directory.
# Prints seconds per method (median) and the ratios to `sudo`.
#
#   bench/sudo-direct.sh                      # SCALE=small, 3 rounds
#   SCALE=full ROUNDS=1 bench/sudo-direct.sh
#
# Needs root (it creates the job user and a sudoers drop-in, removed at exit).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared}
SCALE=${SCALE:-small} ROUNDS=${ROUNDS:-3}
USER_NAME=${BENCH_USER:-nixdelta-job}
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes'
export LC_ALL=C
log() { printf '%s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root"; exit 1; }
if [ -n "${NIXDELTA_BIN:-}" ]; then BIN=$NIXDELTA_BIN; else
  log "building the release binary"
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
  BIN=$ROOT/target/release/nixdelta
fi
id -u "$USER_NAME" >/dev/null 2>&1 || useradd --system --no-create-home --shell /bin/sh "$USER_NAME"
T=$(mktemp -d /tmp/nixdelta-sudo-bench.XXXXXX)
chmod 755 "$T"
SUDOERS=/etc/sudoers.d/nixdelta-bench-$$
cleanup() {
  rm -f "$SUDOERS"
  for p in "$T"/*/pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true; done
  chmod -R u+w "$T" 2>/dev/null; rm -rf "$T"
}
trap cleanup EXIT
echo "$USER_NAME ALL=(root) NOPASSWD: ALL" > "$SUDOERS"; chmod 440 "$SUDOERS"

log "building the workload (SCALE=$SCALE)"
mkdir -p "$T/wl"
WORKDIR=$T/wl SCALE=$SCALE "$SHARED/bench/make-workload.sh" >&2
LIST=$T/wl/paths-$SCALE.txt
N=$(wc -l < "$LIST")
"$BIN" archive save --archive "dir:$T/arch" --key bench-1 --from-file "$LIST" > "$T/save.log" 2>&1
mapfile -t PATHS < "$LIST"
nix copy --to "file://$T/bc?compression=zstd" "${PATHS[@]}" >/dev/null 2>&1
chmod -R a+rX "$T/arch" "$T/bc" "$T/wl"

# A daemon on a new store under $1; its socket and store URL.
daemon() {
  local d=$1
  mkdir -p "$d/etc"
  printf 'sandbox = false\nbuild-users-group =\nsubstituters =\ntrusted-users = root %s\nexperimental-features = nix-command\nrequire-sigs = false\n' \
    "$USER_NAME" > "$d/etc/nix.conf"
  NIX_CONF_DIR=$d/etc NIX_DAEMON_SOCKET_PATH=$d/socket setsid nix-daemon --option store "$d/store" \
    > "$d/daemon.log" 2>&1 < /dev/null &
  echo $! > "$d/pid"
  for _ in $(seq 100); do [ -S "$d/socket" ] && break; sleep 0.1; done
  nix-store --store "$d/store" --init
}

# As the job user, on the daemon of $1.
as_job() {
  local d=$1; shift
  setpriv --reuid "$USER_NAME" --regid "$(id -g "$USER_NAME")" --clear-groups \
    env -i PATH="$PATH" HOME="$d" NIX_CONF_DIR="$d/etc" NIX_DAEMON_SOCKET_PATH="$d/socket" \
    NIX_REMOTE=daemon NIXDELTA_CI=none "$@"
}

run() {
  local m=$1 d=$T/$2 url
  daemon "$d"
  url="unix://$d/socket?root=$d/store"
  local t0 t1
  t0=$(date +%s.%N)
  case $m in
    import) as_job "$d" "$BIN" --store "$url" archive restore --archive "dir:$T/arch" --key bench-1 --method import ;;
    sudo) as_job "$d" "$BIN" --store "$url" archive restore --archive "dir:$T/arch" --key bench-1 --method direct ;;
    copy) as_job "$d" nix copy --from "file://$T/bc" "${PATHS[@]}" ;;
  esac > "$d/out.log" 2>&1 || { cat "$d/out.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  # Every path valid as the daemon sees it.
  local valid
  valid=$(as_job "$d" nix-store --check-validity --print-invalid "${PATHS[@]}" | wc -l)
  [ "$valid" = 0 ] || { log "$m: $valid paths not valid"; exit 1; }
  kill "$(cat "$d/pid")"; rm -f "$d/pid"
  echo "$m $(echo "$t1 - $t0" | bc)" >> "$T/times"
  log "$m round $2: $(echo "$t1 - $t0" | bc) s"
}

for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="import sudo copy"; else order="copy sudo import"; fi
  for m in $order; do run "$m" "$m-$r"; done
done
median() { grep "^$1 " "$T/times" | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
S=$(median sudo) I=$(median import) C=$(median copy)
printf '\n%s paths (SCALE=%s), %s rounds, median seconds\n' "$N" "$SCALE" "$ROUNDS"
printf '| method | seconds | ratio to sudo direct |\n|---|---|---|\n'
printf '| direct as root by sudo -n | %.2f | 1.00 |\n' "$S"
printf '| nix-store --import via the daemon | %.2f | %.2f |\n' "$I" "$(echo "$I / $S" | bc -l)"
printf '| nix copy from a file:// cache via the daemon | %.2f | %.2f |\n' "$C" "$(echo "$C / $S" | bc -l)"
