# Shared by run.sh and faults.sh: peers, and one build of each tool.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
KILN=${KILN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/kiln}
PACKER=${PACKER:-/usr/bin/packer}
export CHECKPOINT_DISABLE=1 PACKER_NO_COLOR=1
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
now() { date +%s.%N; }

setup() {
  "$ROOT/tools/peers/moto.sh" install >/dev/null
  "$ROOT/tools/peers/sshd.sh" install >/dev/null
  local missing=()
  [ -x /usr/bin/packer ] || missing+=(packer)
  command -v script >/dev/null || missing+=(bsdutils)
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-cache show "${missing[@]}" >/dev/null 2>&1 || apt-get -o DPkg::Lock::Timeout=900 update -q
    apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}"
  fi
  [ -x "$KILN" ] || { echo "no kiln at $KILN: cargo build --release -p kiln (or set KILN)" >&2; exit 1; }
}

# start_peers WORK: moto + an sshd that accepts moto's key pairs; sets ENDPOINT, SSH_PORT.
start_peers() {
  WORK=$1
  mkdir -p "$WORK"
  local m s
  m=$("$ROOT/tools/peers/moto.sh" start 0 "$WORK/moto")
  ENDPOINT=$(sed -n 's/^ENDPOINT=//p' <<<"$m")
  s=$(MOTO_KEYS=$ENDPOINT "$ROOT/tools/peers/sshd.sh" start 0 "$WORK/sshd")
  SSH_PORT=$(sed -n 's/^PORT=//p' <<<"$s")
  trap stop_peers EXIT
  # moto loads its ~1300 default AMIs on the first EC2 call: not part of any build.
  python3 "$HERE/moto_state.py" "$ENDPOINT" us-east-1 eu-west-1 >/dev/null
  log "moto $ENDPOINT, sshd 127.0.0.1:$SSH_PORT"
}

stop_peers() {
  "$ROOT/tools/peers/sshd.sh" stop "$WORK/sshd" >/dev/null 2>&1 || true
  "$ROOT/tools/peers/moto.sh" stop "$WORK/moto" >/dev/null 2>&1 || true
}

reset_moto() { curl -sf -X POST "$ENDPOINT/moto-api/reset" >/dev/null; python3 "$HERE/moto_state.py" "$ENDPOINT" >/dev/null; }

# Requests moto answered so far, minus the sshd's key lookups (the same for both tools).
moto_requests() {
  local posts keys
  posts=$(grep -c '"POST / HTTP' "$WORK/moto/moto.log" || true)
  keys=$(cat "$WORK/sshd/moto-keys.calls" 2>/dev/null | wc -l)
  echo $((posts - keys))
}

# A project dir for one tool, with the recipe's file.
project() { # project DIR
  mkdir -p "$1/files"
  cp "$HERE/files/app.conf" "$1/files/"
  cp "$HERE/build.rhai" "$1/"
}


