#!/usr/bin/env bash
# postgres.sh - PostgreSQL 15 (Debian `postgresql`) for kiln's registry tests and benchmark.
#
#   postgres.sh install          apt-get postgresql if initdb is missing (idempotent)
#   postgres.sh start PORT DIR   initdb (as user postgres) a private cluster in DIR and start it on
#                                127.0.0.1:PORT (PORT 0 = pick a free one); prints PORT and URL as
#                                KEY=value lines (eval-able). Database "kiln", role kiln/kiln.
#   postgres.sh stop DIR         stop the cluster started with DIR and remove DIR
#
# No systemd on this machine kind: the Debian default cluster never starts, so every user owns a
# private cluster. The integration tests do not use this script: the crate's `testkit` module
# (crates/registry/src/testkit.rs) starts its own cluster the same way and removes it on drop.
set -euo pipefail
PGV=${PG_VERSION:-15}
B=/usr/lib/postgresql/$PGV/bin
die() { echo "postgres.sh: $*" >&2; exit 1; }
as_pg() { runuser -u postgres -- "$@"; }

do_install() {
  if [ ! -x "$B/initdb" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-cache show postgresql >/dev/null 2>&1 || apt-get -o DPkg::Lock::Timeout=900 update -q
    apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends postgresql
  fi
  id postgres >/dev/null 2>&1 || die "user postgres missing after install"
  echo "postgres.sh: $("$B/postgres" --version)"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() {
  local port=${1:-0} dir=${2:?usage: postgres.sh start PORT DIR}
  [ "$port" = 0 ] && port=$(free_port)
  mkdir -p "$dir/run"
  if [ ! -s "$dir/data/PG_VERSION" ]; then
    echo kiln > "$dir/pwfile"
    chown -R postgres:postgres "$dir"; chmod 700 "$dir"
    as_pg "$B/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" --auth-local=trust \
      --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    fresh=1
  fi
  as_pg "$B/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w -t 120 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/run -c fsync=off" start >/dev/null \
    || { cat "$dir/pg.log" >&2; die "pg_ctl start failed"; }
  if [ "${fresh:-}" = 1 ]; then
    as_pg "$B/psql" -h "$dir/run" -p "$port" -U postgres -q \
      -c "CREATE ROLE kiln LOGIN PASSWORD 'kiln'" -c "CREATE DATABASE kiln OWNER kiln"
  fi
  echo "PORT=$port"
  echo "URL=postgres://kiln:kiln@127.0.0.1:$port/kiln"
}

stop() {
  local dir=${1:?usage: postgres.sh stop DIR}
  [ -f "$dir/data/postmaster.pid" ] && as_pg "$B/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  rm -rf "$dir"
}

case "${1:-}" in
  install) do_install ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 install | start PORT DIR | stop DIR" >&2; exit 2 ;;
esac
