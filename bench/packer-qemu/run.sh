#!/usr/bin/env bash
# run.sh - kiln's qemu builder against HashiCorp Packer 1.6.6's, same base image, same
# recipe (packer.json / build.rhai), alternating, RUNS rounds, plus a plain `scp` of the
# same 200 MiB into a VM booted the same way. Prints a markdown table of kiln/Packer
# ratios and writes it, with every raw log, to $BENCH_DIR/results/<UTC stamp>/.
#
#   sudo bench/packer-qemu/run.sh --setup   # once per machine: qemu, packer, base image
#   sudo bench/packer-qemu/run.sh           # RUNS=3 takes ~10 min on 2 cores under TCG
#
# Env: RUNS (default 3), SKIP_KILN_SSH (1: skip the uploads-over-SSH kiln variant), SCP_RUNS (scp copies per mode per round, default 1), PACKER_ACCEL (tcg: Packer trusts any /dev/kvm
#      that opens and hangs on this kind of host), KILN_ACCEL (auto: kiln probes),
#      BENCH_DIR (/var/tmp/kiln-bench/packer-qemu), KILN_BASE_DIR (/var/tmp/kiln-base),
#      KILN_BIN (default: target/release/kiln, built with `cargo build --release`),
#      SKIP_CARGO=1 (use KILN_BIN as it is), SKIP_SCP=1.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=${RUNS:-3}
SCP_RUNS=${SCP_RUNS:-1}
PACKER_ACCEL=${PACKER_ACCEL:-tcg}
KILN_ACCEL=${KILN_ACCEL:-auto}
BENCH_DIR=${BENCH_DIR:-/var/tmp/kiln-bench/packer-qemu}
BASE_DIR=${KILN_BASE_DIR:-/var/tmp/kiln-base}
BASE="$BASE_DIR/base.qcow2"
KEY="$BASE_DIR/keys/id_ed25519"
KILN=${KILN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/kiln}
UPLOAD_BYTES=209715200

log() { printf '[packer-qemu %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ "${1:-}" = "--setup" ]; then
  WITH_VAGRANT=0 "$ROOT/tools/qemu-setup.sh"
  "$HERE/setup.sh"
  "$ROOT/tools/base-image.sh"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "run as root (the base image and its key are root's); see --setup"
for t in packer qemu-system-x86_64 qemu-img scp ssh ss openssl python3; do
  command -v "$t" >/dev/null || die "missing $t: run $0 --setup"
done
[ -f "$BASE" ] && [ -f "$KEY" ] || die "no base image $BASE: run $0 --setup (tools/base-image.sh)"
if [ "${SKIP_CARGO:-0}" != 1 ] && [ -z "${KILN_BIN:-}" ]; then
  log "cargo build --release (no-op when up to date)"
  (cd "$ROOT" && cargo build --release -q -p kiln) || die "cargo build --release failed"
fi
[ -x "$KILN" ] || die "no kiln binary at $KILN"
# A snapshot, so a rebuild of target/ during the rounds cannot change the tool under test.
mkdir -p "$BENCH_DIR"
cp "$KILN" "$BENCH_DIR/kiln.under-test"
KILN_SRC=$KILN
KILN="$BENCH_DIR/kiln.under-test"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RES="$BENCH_DIR/results/$STAMP"
PROJ="$BENCH_DIR/project"
mkdir -p "$RES" "$PROJ/keys" "$BENCH_DIR/data"

# ---- inputs -------------------------------------------------------------------------
UPLOAD="$BENCH_DIR/data/upload-200M.bin"
if [ ! -f "$UPLOAD" ] || [ "$(stat -c %s "$UPLOAD")" != "$UPLOAD_BYTES" ]; then
  log "creating $UPLOAD (deterministic AES-CTR keystream: incompressible)"
  head -c "$UPLOAD_BYTES" /dev/zero \
    | openssl enc -aes-128-ctr -pass pass:kiln-bench -nosalt -pbkdf2 -out "$UPLOAD.tmp"
  mv "$UPLOAD.tmp" "$UPLOAD"
fi
# kiln's file() reads only inside the project (symlinks out are refused): a hard link
# is the same inode, so both tools read the very same bytes from the page cache.
rm -f "$PROJ/upload-200M.bin"
ln "$UPLOAD" "$PROJ/upload-200M.bin" 2>/dev/null || cp "$UPLOAD" "$PROJ/upload-200M.bin"
install -m 600 "$KEY" "$PROJ/keys/id_ed25519"
cp "$HERE/build.rhai" "$PROJ/build.rhai"
cp "$HERE/build.rhai" "$HERE/packer.json" "$RES/"

{
  echo "date_utc: $STAMP"
  echo "host: $(uname -srm); $(nproc) cpus; $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "packer: $(packer version | head -1) (deb $(dpkg-query -W -f='${Version}' packer))"
  echo "kiln: $("$KILN" version 2>/dev/null | head -1) (copy of $KILN_SRC, built $(date -u -r "$KILN_SRC" +%FT%TZ))"
  echo "kiln git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' +uncommitted changes')"
  echo "qemu: $(qemu-system-x86_64 --version | head -1)"
  echo "openssh client: $(ssh -V 2>&1)"
  echo "base image: $BASE ($(stat -c %s "$BASE") bytes)"
  echo "accelerator: packer=$PACKER_ACCEL kiln=$KILN_ACCEL"
} > "$RES/versions.txt"
cat "$RES/versions.txt" >&2

SSHO=(-q -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
      -o LogLevel=ERROR -i "$KEY")

# ---- plain scp baseline (one VM per round) ------------------------------------------------
# The VM is started with the arguments both builders use (pc machine, qemu64 CPU under
# TCG, 1 vCPU, 512 MiB, virtio disk on a throw-away overlay, virtio-net user networking
# forwarding SSH on 127.0.0.1), so only the client differs.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
QPID=
stop_vm() {
  if [ -n "$QPID" ]; then kill "$QPID" 2>/dev/null || true; wait "$QPID" 2>/dev/null || true; QPID=; fi
}
trap stop_vm EXIT

scp_baseline() {
  local i=$1 PORT t0 t1 deadline mode extra n
  PORT=$(free_port)
  log "round $i: plain scp: booting base.qcow2 (-snapshot, $PACKER_ACCEL, 1 vCPU, 512M) on 127.0.0.1:$PORT"
  t0=$(date +%s.%N)
  qemu-system-x86_64 -machine "type=pc,accel=$PACKER_ACCEL" -cpu qemu64 -m 512M -smp 1 \
    -drive "file=$BASE,if=virtio,cache=writeback,format=qcow2" -snapshot \
    -netdev "user,id=user.0,hostfwd=tcp:127.0.0.1:$PORT-:22" -device virtio-net,netdev=user.0 \
    -display none -serial "file:$RES/scp-vm-$i.serial.log" -boot c > "$RES/scp-vm-$i.qemu.log" 2>&1 &
  QPID=$!
  deadline=$(( $(date +%s) + 600 ))
  until ssh "${SSHO[@]}" -o ConnectTimeout=2 -p "$PORT" root@127.0.0.1 true 2>/dev/null; do
    kill -0 "$QPID" 2>/dev/null || die "the scp VM's qemu died: $(cat "$RES/scp-vm-$i.qemu.log")"
    [ "$(date +%s)" -lt "$deadline" ] || die "the scp VM did not answer SSH in 600 s (serial: $RES/scp-vm-$i.serial.log)"
    sleep 0.1
  done
  t1=$(date +%s.%N)
  printf 'scp_vm_boot_to_ssh_s\t%s\n' "$(echo "$t1 - $t0" | bc -l)" >> "$RES/scp.tsv"
  for n in $(seq "$SCP_RUNS"); do
    # OpenSSH 9.2's default (SFTP protocol, chacha20-poly1305 here) is the baseline;
    # -O is the legacy SCP protocol Packer speaks, for reference.
    for mode in sftp legacy; do
      extra=(); [ "$mode" = legacy ] && extra=(-O)
      t0=$(date +%s.%N)
      scp "${extra[@]}" "${SSHO[@]}" -P "$PORT" "$UPLOAD" root@127.0.0.1:/root/scp.bin
      t1=$(date +%s.%N)
      printf 'scp_%s_s\t%s\n' "$mode" "$(echo "$t1 - $t0" | bc -l)" >> "$RES/scp.tsv"
      ssh "${SSHO[@]}" -p "$PORT" root@127.0.0.1 rm -f /root/scp.bin
    done
  done
  [ -f "$RES/scp-vm.guest.txt" ] || ssh "${SSHO[@]}" -p "$PORT" root@127.0.0.1 \
    'ssh -V 2>&1; grep -m1 "^flags" /proc/cpuinfo' > "$RES/scp-vm.guest.txt" 2>&1 || true
  stop_vm
}

# ---- the builds, alternating --------------------------------------------------------------
export PACKER_CACHE_DIR="$BENCH_DIR/packer_cache"   # else ./packer_cache in the CWD
export CHECKPOINT_DISABLE=1                        # no update check (offline)

packer_build() {
  local i=$1 d="$RES/packer-$i" out="$BENCH_DIR/out/packer-$i" rc=0
  rm -rf "$out"; mkdir -p "$out"   # packer wants output_directory ($out/image) absent
  log "round $i: packer build"
  (cd "$BENCH_DIR" && python3 "$HERE/monitor.py" "$d" -- packer build -color=false \
      -var "base_image=$BASE" -var "ssh_key=$KEY" -var "upload_file=$UPLOAD" \
      -var "out_dir=$out" -var "accelerator=$PACKER_ACCEL" "$HERE/packer.json") || rc=$?
  [ "$rc" = 0 ] || { tail -20 "$d/stdout.tsv" >&2; die "packer build failed (rc $rc), logs in $d"; }
  stat -c '%n %s' "$out/image/bench.qcow2" "$out/bench.qcow2.tar.gz" > "$d/outputs.txt"
  rm -rf "$out"   # ~900 MB per round
}

# kiln's default (file_transfer "auto": the 200 MiB file goes in as a hot-plugged disk)
# and, as "kiln-ssh", the same build with every upload over SSH.
kiln_build() {
  local i=$1 variant=${2:-kiln} transfer=auto rc=0
  local d="$RES/$variant-$i"
  [ "$variant" = kiln-ssh ] && transfer=ssh
  log "round $i: kiln build (file_transfer=$transfer)"
  rm -rf "$PROJ/out" "$PROJ/.kiln"
  (cd "$BENCH_DIR" && python3 "$HERE/monitor.py" "$d" -- "$KILN" build --machine-readable --force \
      --var "base_dir=$BASE_DIR" --var "accelerator=$KILN_ACCEL" --var "file_transfer=$transfer" \
      "$PROJ") || rc=$?
  [ "$rc" = 0 ] || { grep -v '"output"' "$d/stdout.tsv" | tail -20 >&2; die "kiln build failed (rc $rc), logs in $d"; }
  stat -c '%n %s' "$PROJ/out/image/bench.qcow2" "$PROJ/out/bench.qcow2.tar.gz" > "$d/outputs.txt"
  cp "$PROJ/out/manifest.json" "$d/" 2>/dev/null || true
}

: > "$RES/scp.tsv"
for i in $(seq "$RUNS"); do
  # The order rotates every round (and the scp baseline runs in every round, not once),
  # so a drift in machine load hits the two tools and the baseline alike.
  case $((i % 4)) in
    1) order=(packer kiln kiln-ssh scp) ;;
    2) order=(kiln kiln-ssh scp packer) ;;
    3) order=(kiln-ssh scp packer kiln) ;;
    0) order=(scp packer kiln kiln-ssh) ;;
  esac
  for what in "${order[@]}"; do
    case $what in
      packer) packer_build "$i" ;;
      kiln) kiln_build "$i" kiln ;;
      kiln-ssh) [ "${SKIP_KILN_SSH:-0}" = 1 ] || kiln_build "$i" kiln-ssh ;;
      scp) [ "${SKIP_SCP:-0}" = 1 ] || scp_baseline "$i" ;;
    esac
  done
done
rm -rf "$PROJ/out"

# ---- report ---------------------------------------------------------------------------------
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/versions.txt"
python3 "$HERE/report.py" "$RES" "$RUNS" > "$RES/summary.md"
cat "$RES/summary.md"
log "raw results in $RES"
