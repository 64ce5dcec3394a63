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
# env: KILN_PEERS_CACHE (/var/tmp/kiln-peers/cache: the per-version template, see start),
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
  if [ ! -s "$dir/keystone-ready" ]; then
    # db_sync + fernet/credential setup + bootstrap cost several Python start-ups; a test peer
    # does not need them per instance. They run once per keystone version into a template
    # (under a lock: peers start in parallel), bootstrapped with a placeholder URL that each
    # instance rewrites to its own. So every instance of one version shares the admin
    # password and the fernet keys: fine for a loopback test peer, not for anything else.
    local cache=${KILN_PEERS_CACHE:-/var/tmp/kiln-peers/cache} ver tmpl placeholder=http://127.0.0.1:1
    ver=$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("keystone"))')
    tmpl=$cache/keystone-$ver
    mkdir -p "$cache"
    (
      flock 9
      if [ ! -s "$tmpl/ready" ]; then
        rm -rf "$tmpl"; mkdir -p "$tmpl"/{fernet-keys,credential-keys}
        umask 077
        "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(18), end="")' >"$tmpl/admin_password"
        sed -e "s|^connection = .*|connection = sqlite:///$tmpl/keystone.sqlite|" \
            -e "s|$dir/fernet-keys|$tmpl/fernet-keys|; s|$dir/credential-keys|$tmpl/credential-keys|" \
          "$dir/etc/keystone.conf" >"$tmpl/keystone.conf"
        local km=("$VENV/bin/keystone-manage" --config-file "$tmpl/keystone.conf")
        { "${km[@]}" db_sync &&
          "${km[@]}" fernet_setup --keystone-user root --keystone-group root &&
          "${km[@]}" credential_setup --keystone-user root --keystone-group root &&
          "${km[@]}" bootstrap --bootstrap-password "$(cat "$tmpl/admin_password")" --bootstrap-username admin \
            --bootstrap-project-name admin --bootstrap-role-name admin --bootstrap-region-id RegionOne \
            --bootstrap-admin-url "$placeholder/v3" --bootstrap-internal-url "$placeholder/v3" \
            --bootstrap-public-url "$placeholder/v3"
        } >"$dir/log/setup.log" 2>&1 || { tail -20 "$dir/log/setup.log" >&2; exit 1; }
        echo ok >"$tmpl/ready"
      fi
    ) 9>"$cache/keystone.lock" || die "keystone-manage failed (log: $dir/log/setup.log)"
    cp "$tmpl/keystone.sqlite" "$dir/keystone.sqlite"
    cp "$tmpl"/fernet-keys/* "$dir/fernet-keys/"; cp "$tmpl"/credential-keys/* "$dir/credential-keys/"
    cp "$tmpl/admin_password" "$dir/admin_password"
    "$VENV/bin/python" - "$dir/keystone.sqlite" "$placeholder" "$url" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("UPDATE endpoint SET url = replace(url, ?, ?)", (sys.argv[2], sys.argv[3]))
db.commit()
PY
    echo ok >"$dir/keystone-ready"
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
  echo "ADMIN_PASSWORD=$(cat "$dir/admin_password")"
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
