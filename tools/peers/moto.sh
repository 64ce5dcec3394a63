#!/usr/bin/env bash
# moto.sh - moto_server (an EC2 API emulator) on 127.0.0.1 for kiln's tests, examples and benchmarks.
#
#   moto.sh install          create the venv /var/tmp/kiln-peers/moto-venv with moto[ec2,server] (idempotent)
#   moto.sh start PORT DIR   start moto_server on 127.0.0.1:PORT (PORT 0 = pick a free one), state and log
#                            in DIR; prints PORT, ENDPOINT, PID as KEY=value lines (eval-able).
#                            MOTO_AUTH=1: signature + IAM checking on. The first three calls are
#                            free (moto's INITIAL_NO_AUTH_ACTION_COUNT) and bootstrap an IAM user
#                            with an allow-all policy; its keys are written to DIR/credentials
#                            (shared-credentials format, profile [default]) and DIR/env.
#   moto.sh stop DIR         stop the moto_server started with DIR (only that process group)
#   moto.sh status DIR       exit 0 when it runs
#   moto.sh reset DIR        wipe all emulated state (POST /moto-api/reset) without restarting
#
# The crate tests do not use this script: kiln-ec2's `testkit` starts its own moto_server the
# same way so every test owns its peer. Env: KILN_PEERS (default /var/tmp/kiln-peers).
set -euo pipefail

PEERS=${KILN_PEERS:-/var/tmp/kiln-peers}
VENV=$PEERS/moto-venv
BIN=$VENV/bin/moto_server

die() { echo "moto.sh: $*" >&2; exit 1; }

install() {
  if [ -f "$VENV/.kiln-complete" ] && [ -x "$BIN" ] && "$VENV/bin/python" -c 'import moto.server, moto.ec2' 2>/dev/null; then
    echo "moto already installed in $VENV ($("$VENV/bin/python" -c 'import moto; print(moto.__version__)'))"
    return 0
  fi
  # Debian's python3 (not a pyenv shim) so the venv survives changes to the user's toolchain;
  # python3-venv provides ensurepip on Debian.
  # curl: readiness polling and the IAM bootstrap in `start`.
  local py=/usr/bin/python3 missing=()
  if [ ! -x "$py" ] || ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
    missing+=(python3 python3-venv)
  fi
  command -v curl >/dev/null || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-cache show "${missing[@]}" >/dev/null 2>&1 || apt-get -o DPkg::Lock::Timeout=900 update -q
    apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}"
  fi
  mkdir -p "$PEERS"
  # A venv cannot be moved after creation, so completeness is marked by a file written last:
  # a half-finished install (killed pip, no network) is removed and redone.
  rm -rf "$VENV"
  "$py" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'moto[ec2,server]>=5,<6'
  "$VENV/bin/python" -c 'import moto.server, moto.ec2' || die "moto installed but does not import"
  touch "$VENV/.kiln-complete"
  echo "moto $("$VENV/bin/python" -c 'import moto; print(moto.__version__)') installed in $VENV"
}

free_port() {
  "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A signed-looking request: moto routes on the SigV4 credential scope, a bare request goes to S3.
ec2_call() { # endpoint query
  curl -sf -H 'Authorization: AWS4-HMAC-SHA256 Credential=kiln/20240101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=00' \
    -d "$2&Version=2016-11-15" "$1/"
}

start() {
  local port=${1:?usage: moto.sh start PORT DIR} dir=${2:?usage: moto.sh start PORT DIR}
  [ -x "$BIN" ] || die "$BIN missing: run '$0 install'"
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  if [ -f "$dir/moto.pid" ] && kill -0 "$(cat "$dir/moto.pid")" 2>/dev/null; then
    die "already running (pid $(cat "$dir/moto.pid")); '$0 stop $dir' first"
  fi
  [ "$port" = 0 ] && port=$(free_port)
  local authenv=()
  [ "${MOTO_AUTH:-0}" = 1 ] && authenv=(INITIAL_NO_AUTH_ACTION_COUNT=3)
  # setsid: its own process group, so stop kills exactly it and its children
  env "${authenv[@]}" setsid "$BIN" -H 127.0.0.1 -p "$port" </dev/null >"$dir/moto.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$dir/moto.pid"
  local endpoint=http://127.0.0.1:$port ok=0
  for _ in $(seq 1200); do   # up to 60 s on a loaded machine
    if curl -sf -o /dev/null "$endpoint/moto-api/data.json"; then ok=1; break; fi
    kill -0 "$pid" 2>/dev/null || { cat "$dir/moto.log" >&2; die "moto_server exited during start"; }
    sleep 0.05
  done
  [ $ok = 1 ] || { kill -- "-$pid" 2>/dev/null || true; tail -20 "$dir/moto.log" >&2; die "moto_server did not answer on $endpoint within 60 s"; }
  if [ "${MOTO_AUTH:-0}" = 1 ]; then
    local iam='Authorization: AWS4-HMAC-SHA256 Credential=bootstrap/20240101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=00'
    curl -sf -o /dev/null -H "$iam" -d 'Action=CreateUser&UserName=kiln&Version=2010-05-08' "$endpoint/"
    curl -sf -o /dev/null -H "$iam" --data-urlencode 'PolicyDocument={"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}' \
      -d 'Action=PutUserPolicy&UserName=kiln&PolicyName=all&Version=2010-05-08' "$endpoint/"
    local out ak sk
    out=$(curl -sf -H "$iam" -d 'Action=CreateAccessKey&UserName=kiln&Version=2010-05-08' "$endpoint/")
    ak=$(sed -n 's:.*<AccessKeyId>\([^<]*\)</AccessKeyId>.*:\1:p' <<<"$out" | head -1)
    sk=$(sed -n 's:.*<SecretAccessKey>\([^<]*\)</SecretAccessKey>.*:\1:p' <<<"$out" | head -1)
    [ -n "$ak" ] && [ -n "$sk" ] || die "IAM bootstrap failed: $out"
    (umask 077
     printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$ak" "$sk" > "$dir/credentials"
     printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$ak" "$sk" > "$dir/env")
  fi
  echo "PORT=$port"
  echo "ENDPOINT=$endpoint"
  echo "PID=$pid"
}

stop() {
  local dir=${1:?usage: moto.sh stop DIR}
  [ -f "$dir/moto.pid" ] || { echo "not running"; return 0; }
  local pid; pid=$(cat "$dir/moto.pid")
  kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$dir/moto.pid"
  echo "stopped moto_server $pid"
}

endpoint_of() { # dir -> endpoint from the log line moto prints at start
  local port; port=$(sed -n 's/.*Running on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$1/moto.log" | head -1)
  [ -n "$port" ] || die "no port found in $1/moto.log"
  echo "http://127.0.0.1:$port"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  status) dir=${2:?usage: moto.sh status DIR}
          [ -f "$dir/moto.pid" ] && kill -0 "$(cat "$dir/moto.pid")" 2>/dev/null \
            && echo "running pid $(cat "$dir/moto.pid") at $(endpoint_of "$dir")" || { echo "not running"; exit 1; } ;;
  reset) dir=${2:?usage: moto.sh reset DIR}; curl -sf -X POST "$(endpoint_of "$dir")/moto-api/reset" >/dev/null && echo "state reset" ;;
  call) shift; ec2_call "$@" ;;   # moto.sh call ENDPOINT 'Action=DescribeInstances' (debugging aid)
  *) echo "usage: $0 install | start PORT DIR | stop DIR | status DIR | reset DIR" >&2; exit 2 ;;
esac
