#!/usr/bin/env bash
# keystone.sh - a real OpenStack Keystone (Identity v3, PyPI keystone 30) under Debian's uWSGI on
# 127.0.0.1 with SQLite and fernet tokens, for kiln-openstack's auth tests.
#
#   keystone.sh start DIR [PORT]   write config into DIR, db_sync + fernet/credential setup +
#                                  `keystone-manage bootstrap` (admin user, project admin, region
#                                  RegionOne, identity endpoints), start uwsgi, wait until
#                                  GET /v3 answers (up to KEYSTONE_WAIT s, default 120);
#                                  prints URL=, PORT=, PID=, ADMIN_PASSWORD=
#   keystone.sh stop DIR           stop the uwsgi started with DIR (only its process group)
#
# env: KEYSTONE_ADMIN_PASSWORD (default: random, written to DIR/admin_password),
#      KILN_OPENSTACK_VENV (/var/tmp/kiln-peers/openstack-venv, made by tools/setup.d/glance.sh)
set -euo pipefail
VENV=${KILN_OPENSTACK_VENV:-/var/tmp/kiln-peers/openstack-venv}
die() { echo "keystone.sh: $*" >&2; exit 1; }

start() {
  local dir=${1:?usage: keystone.sh start DIR [PORT]} port=${2:-0}
  [ -x "$VENV/bin/keystone-manage" ] || die "keystone is not installed in $VENV: run tools/setup.d/glance.sh"
  command -v uwsgi >/dev/null || die "uwsgi missing: run tools/setup.d/glance.sh"
  mkdir -p "$dir"/{etc,log,fernet-keys,credential-keys}; dir=$(cd "$dir" && pwd)
  if [ -f "$dir/keystone.pid" ] && kill -0 "$(cat "$dir/keystone.pid")" 2>/dev/null; then
    die "already running (pid $(cat "$dir/keystone.pid")); '$0 stop $dir' first"
  fi
  [ "$port" = 0 ] && port=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local url=http://127.0.0.1:$port
  [ -s "$dir/admin_password" ] || { umask 077; printf '%s' "${KEYSTONE_ADMIN_PASSWORD:-$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(18))')}" >"$dir/admin_password"; }
  local pw; pw=$(cat "$dir/admin_password")
  cat >"$dir/etc/keystone.conf" <<CONF
[DEFAULT]
log_file = $dir/log/keystone.log
debug = false
[database]
connection = sqlite:///$dir/keystone.sqlite
[identity]
# a test peer: cheap bcrypt so every password check does not cost half a second
password_hash_rounds = 4
[token]
provider = fernet
expiration = 7200
[fernet_tokens]
key_repository = $dir/fernet-keys
[fernet_receipts]
key_repository = $dir/fernet-keys
[credential]
key_repository = $dir/credential-keys
[oslo_policy]
enforce_new_defaults = false
enforce_scope = false
CONF
  cat >"$dir/etc/uwsgi.ini" <<INI
[uwsgi]
plugins = python3
virtualenv = $VENV
module = keystone.wsgi.api:application
env = OS_KEYSTONE_CONFIG_DIR=$dir/etc
http-socket = 127.0.0.1:$port
master = true
processes = 1
threads = 4
enable-threads = true
lazy-apps = true
need-app = true
buffer-size = 65535
die-on-term = true
add-header = Connection: close
disable-logging = true
INI
  local km=("$VENV/bin/keystone-manage" --config-file "$dir/etc/keystone.conf")
  if [ ! -s "$dir/keystone.sqlite" ]; then
    { "${km[@]}" db_sync &&
      "${km[@]}" fernet_setup --keystone-user root --keystone-group root &&
      "${km[@]}" credential_setup --keystone-user root --keystone-group root &&
      "${km[@]}" bootstrap --bootstrap-password "$pw" --bootstrap-username admin \
        --bootstrap-project-name admin --bootstrap-role-name admin --bootstrap-region-id RegionOne \
        --bootstrap-admin-url "$url/v3" --bootstrap-internal-url "$url/v3" --bootstrap-public-url "$url/v3"
    } >"$dir/log/setup.log" 2>&1 || { tail -20 "$dir/log/setup.log" >&2; rm -f "$dir/keystone.sqlite"; die "keystone-manage failed (log: $dir/log/setup.log)"; }
  fi
  setsid uwsgi --ini "$dir/etc/uwsgi.ini" >"$dir/log/uwsgi.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/keystone.pid"
  local waited=0 limit=$(( ${KEYSTONE_WAIT:-120} * 10 )) code
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url/v3" || true)
    [ "$code" = 200 ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -20 "$dir/log/uwsgi.log" >&2; rm -f "$dir/keystone.pid"
      die "uwsgi exited during start (logs: $dir/log/)"
    fi
    waited=$((waited + 1)); [ "$waited" -ge "$limit" ] && { kill -- "-$pid" 2>/dev/null || true; die "no answer from $url/v3 within ${KEYSTONE_WAIT:-120} s (last HTTP code '$code'; logs: $dir/log/)"; }
    sleep 0.1
  done
  echo "URL=$url"
  echo "PORT=$port"
  echo "PID=$pid"
  echo "ADMIN_PASSWORD=$pw"
}

stop() {
  local dir=${1:?usage: keystone.sh stop DIR}
  [ -f "$dir/keystone.pid" ] || { echo "not running"; return 0; }
  local pid; pid=$(cat "$dir/keystone.pid")
  kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { kill -9 -- "-$pid" 2>/dev/null || true; }
  rm -f "$dir/keystone.pid"
  echo "stopped keystone $pid"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
