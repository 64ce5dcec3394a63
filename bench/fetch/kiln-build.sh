#!/usr/bin/env bash
# bench/fetch/kiln-build.sh - `kiln build` fetching the ~280 MiB base image by URL (the
# builder primitive ctx.fetch, as the qemu builder calls it) vs curl of the same URL to
# disk, same run, alternating rounds, from the tests' local Range server
# (tools/peers/http_range_server.py) and from nginx when it is installed
# (bench/fetch/run.sh installs it).
#
#   bench/fetch/kiln-build.sh           # ROUNDS=5
#   ROUNDS=7 bench/fetch/kiln-build.sh
#
# Per round and server, each writing a fresh file on the same filesystem (/var/tmp):
#   curl        curl -s -o FILE URL                          (the baseline)
#   kiln        kiln build of a project whose builder calls ctx.fetch(#{ urls: [URL],
#               checksum: "sha256:..." }) with a fresh KILN_CACHE_DIR: process start,
#               script evaluation, grant checks and audit, download with SHA-256 computed
#               while downloading, rename into the cache, marker
#   curl+sha    curl -o FILE URL && sha256sum FILE           (verified the shell way)
# The kiln binary is $KILN, else $CARGO_TARGET_DIR/release/kiln (built if missing).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${KILN_BENCH_DIR:-/var/tmp/kiln-bench-fetch-build}
log() { printf '[bench/fetch/kiln-build] %s\n' "$*" >&2; }
KILN=${KILN:-${CARGO_TARGET_DIR:-$root/target}/release/kiln}
if [ ! -x "$KILN" ]; then
  log "building kiln (release)"
  (cd "$root" && cargo build -q --release -p kiln)
fi

src=${KILN_BENCH_IMAGE:-/var/tmp/kiln-base/base.qcow2}
[ -f "$src" ] || { log "$src is missing: run tools/base-image.sh (or set KILN_BENCH_IMAGE)"; exit 1; }
size=$(stat -c %s "$src")
sha=$(sha256sum "$src" | cut -d' ' -f1)
log "image: $src ($size bytes)"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$work"
mkdir -p "$work/serve" "$work/out" "$work/state" "$work/project/builders"
# Serve only the image (its directory also holds the root key of the base image).
ln "$src" "$work/serve/base.qcow2" 2>/dev/null || cp "$src" "$work/serve/base.qcow2"

/usr/bin/python3 "$root/tools/peers/http_range_server.py" --root "$work/serve" --port 0 \
  --ready-file "$work/state/py.ready" 2>"$work/state/py.err" &
pids+=($!)
for _ in $(seq 600); do [ -s "$work/state/py.ready" ] && break; sleep 0.1; done
[ -s "$work/state/py.ready" ] || { log "python server did not start: $(cat "$work/state/py.err")"; exit 1; }
servers="python=$(cat "$work/state/py.ready")"

if [ -x /usr/sbin/nginx ]; then
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
  server { listen 127.0.0.1:$ngx_port; root $work/serve; }
}
CONF
  /usr/sbin/nginx -e "$work/state/nginx.err" -c "$work/state/nginx.conf" -p "$work/state" &
  pids+=($!)
  for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$ngx_port/" && break; sleep 0.1; done
  servers="$servers nginx=$ngx_port"
else
  log "nginx is not installed: python server only (bench/fetch/run.sh installs nginx-light)"
fi

cat > "$work/project/builders/fetch_only.rhai" <<'RHAI'
fn options() { #{ url: (), checksum: () } }
fn grants(cfg) { #{ net: fetch_hosts([cfg.url], cfg.checksum) } }
fn run(cfg, ctx) {
    let dl = ctx.fetch(#{ what: "image", urls: [cfg.url], checksum: cfg.checksum });
    ctx.say(`origin=${dl.origin}`);
    ctx.artifact(#{ id: dl.url })
}
RHAI

now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", (b-a)/1e9 }'; }
results=$work/state/results.tsv
: > "$results"
record() { # server round tool seconds
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$results"
  awk -v s="$1" -v r="$2" -v t="$3" -v sec="$4" -v b="$size" \
    'BEGIN { printf "  %-6s round %s  %-9s %6.3f s  %7.1f MiB/s\n", s, r, t, sec, b/sec/1048576 }'
}

for entry in $servers; do
  server=${entry%%=*}; port=${entry#*=}
  url="http://127.0.0.1:$port/base.qcow2"
  cat > "$work/project/build.rhai" <<RHAI
source("img", builder("builders/fetch_only.rhai", #{ url: "$url", checksum: "sha256:$sha" }));
build("fetch", #{ sources: ["img"], steps: [] });
RHAI
  log "$server: $url (warm-up)"
  curl -sf -o /dev/null "$url"
  for r in $(seq "$ROUNDS"); do
    out=$work/out/curl.img
    rm -f "$out"; t0=$(now); curl -sf -o "$out" "$url"; t1=$(now)
    [ "$(stat -c %s "$out")" = "$size" ] || { log "curl got a short file"; exit 1; }
    record "$server" "$r" curl "$(secs "$t0" "$t1")"

    rm -rf "$work/cache" "$work/project/.kiln"; t0=$(now)
    env -u HTTP_PROXY -u HTTPS_PROXY -u http_proxy -u https_proxy KILN_CACHE_DIR="$work/cache" \
      NO_COLOR=1 "$KILN" build "$work/project" > "$work/state/kiln.out" 2>&1
    t1=$(now)
    grep -q "origin=downloaded" "$work/state/kiln.out" || { log "kiln did not download:"; cat "$work/state/kiln.out" >&2; exit 1; }
    record "$server" "$r" kiln "$(secs "$t0" "$t1")"

    rm -f "$out"; t0=$(now); curl -sf -o "$out" "$url"; got=$(sha256sum "$out" | cut -d' ' -f1); t1=$(now)
    [ "$got" = "$sha" ] || { log "curl+sha: digest mismatch"; exit 1; }
    record "$server" "$r" curl+sha "$(secs "$t0" "$t1")"
  done
done

echo
echo "median of $ROUNDS rounds, $size bytes ($(basename "$src")), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
awk -F'\t' -v b="$size" '
  { v[$1 SUBSEP $3] = v[$1 SUBSEP $3] " " $4; seen[$1] = 1 }
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    printf "| server | tool | median s | MiB/s | kiln throughput / tool |\n|---|---|---|---|---|\n"
    split("python nginx", servers, " ")
    split("curl kiln curl+sha", tools, " ")
    for (si = 1; si <= 2; si++) {
      s = servers[si]; if (!(s in seen)) continue
      k = median(v[s SUBSEP "kiln"])
      for (ti = 1; ti <= 3; ti++) {
        t = tools[ti]; m = median(v[s SUBSEP t])
        printf "| %s | %s | %.3f | %.1f | %s |\n", s, t, m, b / m / 1048576, (t == "kiln") ? "-" : sprintf("%.2fx", m / k)
      }
    }
  }' "$results"
