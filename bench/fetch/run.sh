#!/usr/bin/env bash
# bench/fetch/run.sh - kiln-fetch vs curl: one ~280 MiB download from a local HTTP server,
# same run, alternating rounds, against two servers (the tests' Python Range server and
# nginx, which is much faster and shows whether Python is the bottleneck).
#
#   bench/fetch/run.sh            # ROUNDS=5 by default
#   ROUNDS=7 bench/fetch/run.sh
#
# Per round and server, in this order (each writes a fresh file on the same filesystem):
#   curl        curl -s -o FILE URL                      (the baseline)
#   kiln        kiln-fetch example: download into a fresh cache dir, SHA-256 computed while
#               downloading, fsync, rename, marker (what a build does)
#   curl+sha    curl -o FILE URL && sha256sum FILE       (verified the shell way: a second read)
#   curl+sync   curl -o FILE URL && sync FILE            (as durable as kiln's entry)
#   curl-null   curl -o /dev/null URL                    (the network/server ceiling, no disk)
# The image is /var/tmp/kiln-base/*.qcow2 when tools/base-image.sh ran, else a generated
# 280 MiB file of mixed data (random, zero and text blocks). nginx-light is installed from
# Debian if missing. Prints every round and the medians with kiln/curl ratios.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${KILN_BENCH_DIR:-/var/tmp/kiln-bench-fetch}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/kiln-target-fetch}
log() { printf '[bench/fetch] %s\n' "$*" >&2; }
mkdir -p "$work/data" "$work/out"

log "building the kiln-fetch example (release)"
(cd "$root" && cargo build -q --release -p kiln-fetch --example kiln-fetch)
bin=$CARGO_TARGET_DIR/release/examples/kiln-fetch

src=$(ls /var/tmp/kiln-base/*.qcow2 2>/dev/null | head -n1 || true)
if [ -z "$src" ]; then
  src=$work/data/mixed-280MiB.img
  if [ "$(stat -c %s "$src" 2>/dev/null || echo 0)" != 293601280 ]; then
    log "generating $src (280 MiB of mixed data)"
    /usr/bin/python3 - "$src" <<'PY'
import os, sys
block = 1 << 20
with open(sys.argv[1], "wb") as f:
    for i in range(280):
        kind = i % 4
        if kind == 1:
            f.write(b"\0" * block)
        elif kind == 2:
            line = b"kiln-fetch benchmark block %d\n" % i
            f.write((line * (block // len(line) + 1))[:block])
        else:
            f.write(os.urandom(block))
PY
  fi
fi
size=$(stat -c %s "$src")
name=$(basename "$src")
dir=$(dirname "$src")
log "image: $src ($size bytes)"
sha=$(sha256sum "$src" | cut -d' ' -f1)

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work/out" "$work/cache" "$work/state"
}
trap cleanup EXIT
mkdir -p "$work/state"

# Python Range server (the test peer).
rm -f "$work/state/py.ready"
/usr/bin/python3 "$root/tools/peers/http_range_server.py" --root "$dir" --port 0 \
  --ready-file "$work/state/py.ready" 2>"$work/state/py.err" &
pids+=($!)
for _ in $(seq 600); do [ -s "$work/state/py.ready" ] && break; sleep 0.1; done
[ -s "$work/state/py.ready" ] || { log "python server did not start: $(cat "$work/state/py.err")"; exit 1; }
py_port=$(cat "$work/state/py.ready")

# nginx (sendfile, no access log), as a fast baseline server.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  log "installing nginx-light from Debian (benchmark only)"
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  apt-cache show nginx-light >/dev/null 2>&1 || $sudo_ apt-get -o DPkg::Lock::Timeout=900 update -q
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends nginx-light
fi
ngx_port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/state/nginx"
cat > "$work/state/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $work/state/nginx.pid;
error_log $work/state/nginx.err;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path $work/state/nginx;
  proxy_temp_path $work/state/nginx;
  fastcgi_temp_path $work/state/nginx;
  uwsgi_temp_path $work/state/nginx;
  scgi_temp_path $work/state/nginx;
  server {
    listen 127.0.0.1:$ngx_port;
    root $dir;
  }
}
CONF
/usr/sbin/nginx -e "$work/state/nginx.err" -c "$work/state/nginx.conf" -p "$work/state" &
pids+=($!)
for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$ngx_port/" && break; sleep 0.1; done

now() { date +%s%N; }
results=$work/state/results.tsv
: > "$results"
run() { # server round tool seconds
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$results"
  awk -v s="$1" -v r="$2" -v t="$3" -v sec="$4" -v b="$size" \
    'BEGIN { printf "  %-6s round %s  %-10s %6.3f s  %7.1f MiB/s\n", s, r, t, sec, b/sec/1048576 }'
}
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", (b-a)/1e9 }'; }

for server in python nginx; do
  port=$py_port; [ "$server" = nginx ] && port=$ngx_port
  url="http://127.0.0.1:$port/$name"
  log "$server: $url (warm-up)"
  curl -sf -o /dev/null "$url"
  for r in $(seq "$ROUNDS"); do
    out=$work/out/curl.img
    rm -f "$out"; t0=$(now); curl -sf -o "$out" "$url"; t1=$(now)
    [ "$(stat -c %s "$out")" = "$size" ] || { log "curl got a short file"; exit 1; }
    run "$server" "$r" curl "$(secs "$t0" "$t1")"

    rm -rf "$work/cache"; t0=$(now)
    "$bin" --no-proxy --cache "$work/cache" --checksum "sha256:$sha" "$url" > "$work/state/kiln.json"
    t1=$(now)
    grep -q '"origin":"Downloaded"' "$work/state/kiln.json" || { log "kiln did not download: $(cat "$work/state/kiln.json")"; exit 1; }
    run "$server" "$r" kiln "$(secs "$t0" "$t1")"

    rm -f "$out"; t0=$(now); curl -sf -o "$out" "$url"; got=$(sha256sum "$out" | cut -d' ' -f1); t1=$(now)
    [ "$got" = "$sha" ] || { log "curl+sha: digest mismatch"; exit 1; }
    run "$server" "$r" curl+sha "$(secs "$t0" "$t1")"

    rm -f "$out"; t0=$(now); curl -sf -o "$out" "$url"; sync "$out"; t1=$(now)
    run "$server" "$r" curl+sync "$(secs "$t0" "$t1")"

    t0=$(now); curl -sf -o /dev/null "$url"; t1=$(now)
    run "$server" "$r" curl-null "$(secs "$t0" "$t1")"
  done
done

echo
echo "median of $ROUNDS rounds, $size bytes ($(basename "$src")), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
awk -F'\t' -v b="$size" '
  { v[$1 SUBSEP $3] = v[$1 SUBSEP $3] " " $4 }
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    printf "| server | tool | median s | MiB/s | kiln/tool throughput |\n|---|---|---|---|---|\n"
    split("python nginx", servers, " ")
    split("curl kiln curl+sha curl+sync curl-null", tools, " ")
    for (si = 1; si <= 2; si++) {
      s = servers[si]; k = median(v[s SUBSEP "kiln"])
      for (ti = 1; ti <= 5; ti++) {
        t = tools[ti]; m = median(v[s SUBSEP t])
        printf "| %s | %s | %.3f | %.1f | %s |\n", s, t, m, b / m / 1048576, (t == "kiln") ? "-" : sprintf("%.2fx", m / k)
      }
    }
  }' "$results"
