#!/usr/bin/env bash
# glance.sh - a real OpenStack Glance (Images API v2, PyPI glance 33) under Debian's uWSGI on
# 127.0.0.1, with SQLite and the file store, for kiln-openstack's tests, examples and benchmark.
#
#   glance.sh start DIR [PORT]   write config into DIR, db_sync, start uwsgi on 127.0.0.1:PORT
#                                (missing or 0: a free port), wait until GET /v2/images answers
#                                (up to GLANCE_WAIT s, default 120); prints URL=, PORT=, PID=
#   glance.sh stop DIR           stop the uwsgi started with DIR (only its process group)
#   glance.sh osc DIR ARGS...    run the real `openstack` CLI against it (auth type none)
#
# Auth in front of Glance (the tests choose):
#   default                  tools/peers/glance_kiln_noauth.py fills in the identity Keystone
#                            would; with GLANCE_TOKEN set every /v2 request needs that X-Auth-Token
#   GLANCE_TLS=1             serve HTTPS with a throwaway CA made in DIR/tls (prints CACERT=)
#   GLANCE_KEYSTONE_URL=URL  keystonemiddleware's auth_token validates tokens against that
#                            Keystone (tools/peers/keystone.sh); the service user is
#                            GLANCE_KEYSTONE_USER / _PASSWORD / _PROJECT (default admin / - / admin)
# env: KILN_OPENSTACK_VENV (/var/tmp/kiln-peers/openstack-venv, made by tools/setup.d/glance.sh)
#
# kiln-openstack's testkit runs this script, so its tests use exactly this configuration.
# Why uwsgi: glance >= 31 has no standalone server (glance-api exits 1); the app is
# glance.wsgi.api:application, and Debian's python3 plugin matches the venv's /usr/bin/python3.
set -euo pipefail
VENV=${KILN_OPENSTACK_VENV:-/var/tmp/kiln-peers/openstack-venv}
die() { echo "glance.sh: $*" >&2; exit 1; }

free_port() {
  "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

make_tls() { # DIR: a CA and a server certificate for 127.0.0.1, made once
  local t=$1/tls
  [ -s "$t/server.pem" ] && return 0
  mkdir -p "$t"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$t/ca.key" -out "$t/ca.pem" -days 7 \
    -subj /CN=kiln-test-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$t/server.key" -out "$t/server.csr" -subj /CN=127.0.0.1 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$t/ext"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial -days 7 \
    -extfile "$t/ext" -out "$t/server.pem" 2>/dev/null
}

write_config() { # DIR URL PORT
  local dir=$1 url=$2 port=$3 pipeline=kiln-noauth socket
  mkdir -p "$dir"/{etc,images,staging,log,lock}
  [ -n "${GLANCE_KEYSTONE_URL:-}" ] && pipeline=keystone
  if [ -n "${GLANCE_TLS:-}" ]; then
    make_tls "$dir"; socket="https-socket = 127.0.0.1:$port,$dir/tls/server.pem,$dir/tls/server.key"
  else
    socket="http-socket = 127.0.0.1:$port"
  fi
  cat > "$dir/etc/glance-api.conf" <<CONF
[DEFAULT]
# ListOpts need brackets: a bare a,b makes every POST /v2/images answer 500 (and still create it)
enabled_import_methods = [glance-direct,web-download]
node_staging_uri = file://$dir/staging
worker_self_reference_url = $url
image_size_cap = 10737418240
show_image_direct_url = false
log_file = $dir/log/glance-api.log
debug = false
[database]
connection = sqlite:///$dir/glance.sqlite
[glance_store]
stores = file,http
default_store = file
filesystem_store_datadir = $dir/images/
[paste_deploy]
flavor = $pipeline
config_file = $dir/etc/glance-api-paste.ini
[import_filtering_opts]
allowed_hosts = [127.0.0.1]
allowed_ports = []
[oslo_concurrency]
lock_path = $dir/lock
[oslo_policy]
enforce_new_defaults = false
enforce_scope = false
[keystone_authtoken]
# no validation cache: a revoked token is refused at once (tests re-authentication)
token_cache_time = -1
www_authenticate_uri = ${GLANCE_KEYSTONE_URL:-}
auth_url = ${GLANCE_KEYSTONE_URL:-}
auth_type = password
user_domain_name = Default
project_domain_name = Default
username = ${GLANCE_KEYSTONE_USER:-admin}
password = ${GLANCE_KEYSTONE_PASSWORD:-}
project_name = ${GLANCE_KEYSTONE_PROJECT:-admin}
CONF
  cat > "$dir/etc/glance-api-paste.ini" <<PASTE
# glance's stock paste file, reduced to the two pipelines the tests use
# glance loads composite glance-api-<flavor>, whose pipeline_factory reads the key named <flavor>
[composite:glance-api-kiln-noauth]
paste.composite_factory = glance.api:pipeline_factory
kiln-noauth = cors http_proxy_to_wsgi versionnegotiation kiln-noauth context rootapp

[composite:glance-api-keystone]
paste.composite_factory = glance.api:pipeline_factory
keystone = cors http_proxy_to_wsgi versionnegotiation authtoken context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:kiln-noauth]
paste.filter_factory = glance_kiln_noauth:filter_factory
project_id = kiln-project
user_id = kiln-user
roles = admin,member,reader
token = ${GLANCE_TOKEN:-}

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
delay_auth_decision = true

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = glance
oslo_config_program = glance-api

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
PASTE
  cat > "$dir/etc/uwsgi.ini" <<INI
[uwsgi]
plugins = python3
virtualenv = $VENV
module = glance.wsgi.api:application
env = OS_GLANCE_CONFIG_DIR=$dir/etc
$socket
master = true
processes = ${GLANCE_PROCESSES:-1}
threads = ${GLANCE_THREADS:-4}
enable-threads = true
lazy-apps = true
# exit instead of answering 500 forever when the app fails to load
need-app = true
http-auto-chunked = true
http-chunked-input = true
http-raw-body = true
buffer-size = 65535
socket-timeout = 120
die-on-term = true
thunder-lock = true
add-header = Connection: close
disable-logging = true
# uwsgi's default is 1 MiB: a chunked body with bigger chunks fails (kiln sends Content-Length)
chunked-input-limit = 67108864
INI
}

start() {
  local dir=${1:?usage: glance.sh start DIR [PORT]} port=${2:-0}
  [ -x "$VENV/bin/glance-manage" ] || die "glance is not installed in $VENV: run tools/setup.d/glance.sh"
  command -v uwsgi >/dev/null || die "uwsgi missing: run tools/setup.d/glance.sh"
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  if [ -f "$dir/glance.pid" ] && kill -0 "$(cat "$dir/glance.pid")" 2>/dev/null; then
    die "already running (pid $(cat "$dir/glance.pid")); '$0 stop $dir' first"
  fi
  [ "$port" = 0 ] && port=$(free_port)
  local url=http://127.0.0.1:$port curl_tls=()
  if [ -n "${GLANCE_TLS:-}" ]; then url=https://127.0.0.1:$port; curl_tls=(--cacert "$dir/tls/ca.pem"); fi
  write_config "$dir" "$url" "$port"
  export OS_GLANCE_CONFIG_DIR=$dir/etc
  if [ ! -s "$dir/glance.sqlite" ]; then
    # db_sync takes seconds; the schema does not depend on the instance, so it is made once
    # per glance version (under a lock, peers start in parallel) and copied
    local cache=${KILN_PEERS_CACHE:-/var/tmp/kiln-peers/cache} ver
    ver=$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("glance"))')
    mkdir -p "$cache"
    (
      flock 9
      if [ ! -s "$cache/glance-$ver.sqlite" ]; then
        sed "s|^connection = .*|connection = sqlite:///$cache/glance-$ver.sqlite.new|" \
          "$dir/etc/glance-api.conf" >"$dir/etc/db-template.conf"
        rm -f "$cache/glance-$ver.sqlite.new"
        "$VENV/bin/glance-manage" --config-file "$dir/etc/db-template.conf" db_sync >"$dir/log/db_sync.log" 2>&1 \
          || { tail -20 "$dir/log/db_sync.log" >&2; exit 1; }
        mv "$cache/glance-$ver.sqlite.new" "$cache/glance-$ver.sqlite"
      fi
    ) 9>"$cache/glance.lock" || die "glance-manage db_sync failed (log: $dir/log/db_sync.log)"
    cp "$cache/glance-$ver.sqlite" "$dir/glance.sqlite"
  fi
  setsid uwsgi --ini "$dir/etc/uwsgi.ini" >"$dir/log/uwsgi.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/glance.pid"
  # readiness: any HTTP answer from /v2/images (401 counts: the token check is up too)
  local waited=0 limit=$(( ${GLANCE_WAIT:-120} * 10 )) code
  while :; do
    code=$(curl -s "${curl_tls[@]}" -o /dev/null -w '%{http_code}' --max-time 5 "$url/v2/images" || true)
    case "$code" in 200|401) break ;; esac
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -20 "$dir/log/uwsgi.log" >&2; rm -f "$dir/glance.pid"
      die "uwsgi exited during start (logs: $dir/log/)"
    fi
    waited=$((waited + 1)); [ "$waited" -ge "$limit" ] && { kill -- "-$pid" 2>/dev/null || true; die "no answer from $url/v2/images within ${GLANCE_WAIT:-120} s (last HTTP code '$code'; logs: $dir/log/)"; }
    sleep 0.1
  done
  echo "URL=$url"
  echo "PORT=$port"
  echo "PID=$pid"
  [ -n "${GLANCE_TLS:-}" ] && echo "CACERT=$dir/tls/ca.pem"
  return 0
}

stop() {
  local dir=${1:?usage: glance.sh stop DIR}
  [ -f "$dir/glance.pid" ] || { echo "not running"; return 0; }
  local pid; pid=$(cat "$dir/glance.pid")
  kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { kill -9 -- "-$pid" 2>/dev/null || true; }
  rm -f "$dir/glance.pid"
  echo "stopped glance $pid"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  osc)
    shift; dir=${1:?usage: glance.sh osc DIR ARGS...}; shift
    port=$(sed -n 's/^https\{0,1\}-socket = 127.0.0.1:\([0-9]*\).*/\1/p' "$dir/etc/uwsgi.ini")
    if grep -q '^https-socket' "$dir/etc/uwsgi.ini"; then
      exec "$VENV/bin/openstack" --os-auth-type none --os-endpoint "https://127.0.0.1:$port" --os-cacert "$dir/tls/ca.pem" "$@"
    fi
    exec "$VENV/bin/openstack" --os-auth-type none --os-endpoint "http://127.0.0.1:$port" "$@" ;;
  *) echo "usage: $0 start DIR [PORT] | stop DIR | osc DIR ARGS..." >&2; exit 2 ;;
esac
