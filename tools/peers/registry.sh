#!/usr/bin/env bash
# registry.sh - a throwaway CNCF distribution registry (Debian docker-registry) on 127.0.0.1
# for kiln's OCI examples and benchmarks.
#
#   registry.sh start plain  PORT DIR   plain HTTP, no auth (PORT 0 = pick a free one)
#   registry.sh start secure PORT DIR   TLS with a CA generated in DIR/pki (ca.crt), and
#                                       htpasswd (bcrypt) basic auth for kiln / kiln-pw
#   registry.sh stop DIR                stop the registry started with DIR (only that pid)
#   registry.sh status DIR
#
# start prints URL=, HOST=, CA= (secure only), USER=, PASSWORD= as eval-able lines.
# The integration tests do not use this script: kiln_oci::testkit::RegistryPeer starts its
# own registry the same way so every test owns its peer. Install: tools/setup.d/registry.sh.
set -euo pipefail

die() { echo "registry.sh: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || { for p in $(shuf -i 20000-60000 -n 50); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "$p"; return; }; done; die "no free port"; }
}

start() {
  local mode=${1:?usage: registry.sh start plain|secure PORT DIR} port=${2:?PORT} dir=${3:?DIR}
  command -v docker-registry >/dev/null || die "docker-registry missing: run tools/setup.d/registry.sh"
  mkdir -p "$dir/data"
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/registry.pid" ] && kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null; then
    die "already running (pid $(cat "$dir/registry.pid")); '$0 stop $dir' first"
  fi
  [ "$port" = 0 ] && port=$(free_port)
  cat > "$dir/config.yml" <<CFG
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  secret: kiln-$port
CFG
  local scheme=http
  case "$mode" in
    plain) ;;
    secure)
      command -v htpasswd >/dev/null || die "htpasswd missing: run tools/setup.d/registry.sh"
      scheme=https
      mkdir -p "$dir/pki"
      if [ ! -f "$dir/pki/tls.crt" ]; then
        ( cd "$dir/pki"
          openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
            -subj "/CN=kiln test CA" -keyout ca.key -out ca.crt 2>/dev/null
          openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
            -keyout tls.key -out tls.csr 2>/dev/null
          printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > ext.cnf
          openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
            -extfile ext.cnf -out tls.crt 2>/dev/null )
      fi
      htpasswd -Bbn kiln kiln-pw > "$dir/htpasswd"
      cat >> "$dir/config.yml" <<CFG
  tls:
    certificate: $dir/pki/tls.crt
    key: $dir/pki/tls.key
auth:
  htpasswd:
    realm: kiln-registry
    path: $dir/htpasswd
CFG
      ;;
    *) die "mode must be plain or secure";;
  esac
  setsid docker-registry serve "$dir/config.yml" </dev/null >"$dir/registry.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$dir/registry.pid"
  for _ in $(seq 1200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$dir/registry.log" >&2; die "docker-registry exited"; }
    sleep 0.1
  done
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { cat "$dir/registry.log" >&2; die "no answer on port $port after 120 s"; }
  echo "URL=$scheme://127.0.0.1:$port"
  echo "HOST=127.0.0.1:$port"
  if [ "$mode" = secure ]; then echo "CA=$dir/pki/ca.crt"; echo "USER=kiln"; echo "PASSWORD=kiln-pw"; fi
}

stop() {
  local dir=${1:?usage: registry.sh stop DIR}
  [ -f "$dir/registry.pid" ] || { echo "not running"; return 0; }
  local pid; pid=$(cat "$dir/registry.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$dir/registry.pid"
  echo "stopped registry $pid"
}

status() {
  local dir=${1:?usage: registry.sh status DIR}
  if [ -f "$dir/registry.pid" ] && kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null; then
    echo "running pid $(cat "$dir/registry.pid")"
  else
    echo "not running"; return 1
  fi
}

case "${1:-}" in
  start) shift; start "$@";;
  stop) shift; stop "$@";;
  status) shift; status "$@";;
  *) echo "usage: $0 start plain|secure PORT DIR | stop DIR | status DIR" >&2; exit 2;;
esac
