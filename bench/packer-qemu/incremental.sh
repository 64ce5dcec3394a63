#!/usr/bin/env bash
# incremental.sh - kiln's step cache against Packer 1.6.6 (issue 14 section 7), same
# recipe as run.sh (packer.json / build.rhai), RUNS rounds, one invocation. Per round:
#
#   packer        Packer's full build. Packer has no step cache: its rebuild after a
#                 last-step change IS this full build.
#   kiln-nocache  kiln full build with --no-cache (the baseline for the cache's cost)
#   kiln-cold     kiln full build, cache on, empty fresh KILN_CACHE_DIR (records every step)
#   kiln-mem      last step changed: restores the VM's memory after step 2 (no boot)
#   kiln-disk     last step changed again, KILN_CACHE_MEMORY=0: boots step 2's cached disk
#   kiln-same     nothing changed since kiln-mem: restores after step 3, runs no step
#
# "Last step changed" = the last shell step gets `echo last-step <round><letter>`, so
# its key (and only its key) differs from every earlier build's. Packer goes first in
# odd rounds and last in even ones; --no-cache goes before the cached builds in odd
# rounds and after them in even ones. Each round's KILN_CACHE_DIR is fresh and removed
# afterwards (~2.5 GB). Writes $BENCH_DIR/results/incr-<UTC stamp>/ and prints summary.md.
#
#   sudo bench/packer-qemu/incremental.sh     # RUNS=3, ~7 min a round on 2 cores (TCG, loaded)
#
# Env: RUNS (3), PACKER_ACCEL (tcg), KILN_ACCEL (auto), BENCH_DIR, KILN_BASE_DIR,
#      KILN_BIN, SKIP_CARGO=1: as in run.sh.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=${RUNS:-3}
PACKER_ACCEL=${PACKER_ACCEL:-tcg}
KILN_ACCEL=${KILN_ACCEL:-auto}
BENCH_DIR=${BENCH_DIR:-/var/tmp/kiln-bench/packer-qemu}
BASE_DIR=${KILN_BASE_DIR:-/var/tmp/kiln-base}
BASE="$BASE_DIR/base.qcow2"
KEY="$BASE_DIR/keys/id_ed25519"
KILN=${KILN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/kiln}
UPLOAD_BYTES=209715200

log() { printf '[incremental %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the base image and its key are root's)"
for t in packer qemu-system-x86_64 qemu-img openssl python3; do
  command -v "$t" >/dev/null || die "missing $t: run $HERE/run.sh --setup"
done
[ -f "$BASE" ] && [ -f "$KEY" ] || die "no base image $BASE: run $HERE/run.sh --setup"
if [ "${SKIP_CARGO:-0}" != 1 ] && [ -z "${KILN_BIN:-}" ]; then
  log "cargo build --release (no-op when up to date)"
  (cd "$ROOT" && cargo build --release -q -p kiln) || die "cargo build --release failed"
fi
[ -x "$KILN" ] || die "no kiln binary at $KILN"
mkdir -p "$BENCH_DIR"
cp "$KILN" "$BENCH_DIR/kiln-incr.under-test"   # a rebuild of target/ changes nothing now
KILN_SRC=$KILN
KILN="$BENCH_DIR/kiln-incr.under-test"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RES="$BENCH_DIR/results/incr-$STAMP"
PROJ="$BENCH_DIR/project-incr"
mkdir -p "$RES" "$PROJ/keys" "$BENCH_DIR/data"

# ---- inputs (the same bytes as run.sh's) ----------------------------------------------
UPLOAD="$BENCH_DIR/data/upload-200M.bin"
if [ ! -f "$UPLOAD" ] || [ "$(stat -c %s "$UPLOAD")" != "$UPLOAD_BYTES" ]; then
  log "creating $UPLOAD (deterministic AES-CTR keystream: incompressible)"
  head -c "$UPLOAD_BYTES" /dev/zero \
    | openssl enc -aes-128-ctr -pass pass:kiln-bench -nosalt -pbkdf2 -out "$UPLOAD.tmp"
  mv "$UPLOAD.tmp" "$UPLOAD"
fi
rm -f "$PROJ/upload-200M.bin"
ln "$UPLOAD" "$PROJ/upload-200M.bin" 2>/dev/null || cp "$UPLOAD" "$PROJ/upload-200M.bin"
install -m 600 "$KEY" "$PROJ/keys/id_ed25519"
grep -q '^            "sync",$' "$HERE/build.rhai" || die "build.rhai's last step has no \"sync\" line to tag"
cp "$HERE/build.rhai" "$HERE/packer.json" "$RES/"

{
  echo "date_utc: $STAMP"
  echo "host: $(uname -srm); $(nproc) cpus; $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "packer: $(packer version | head -1)"
  echo "kiln: $("$KILN" version 2>/dev/null | head -1) (copy of $KILN_SRC, built $(date -u -r "$KILN_SRC" +%FT%TZ))"
  echo "kiln git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "qemu: $(qemu-system-x86_64 --version | head -1)"
  echo "accelerator: packer=$PACKER_ACCEL kiln=$KILN_ACCEL"
} > "$RES/versions.txt"
cat "$RES/versions.txt" >&2

# ---- the builds ------------------------------------------------------------------------
export PACKER_CACHE_DIR="$BENCH_DIR/packer_cache"
export CHECKPOINT_DISABLE=1

packer_build() {
  local i=$1 d="$RES/packer-$i" out="$BENCH_DIR/out/packer-incr-$i" rc=0
  rm -rf "$out"; mkdir -p "$out"
  log "round $i: packer build (full: Packer has no step cache)"
  (cd "$BENCH_DIR" && python3 "$HERE/monitor.py" "$d" -- packer build -color=false \
      -var "base_image=$BASE" -var "ssh_key=$KEY" -var "upload_file=$UPLOAD" \
      -var "out_dir=$out" -var "accelerator=$PACKER_ACCEL" "$HERE/packer.json") || rc=$?
  [ "$rc" = 0 ] || { tail -20 "$d/stdout.tsv" >&2; die "packer build failed (rc $rc), logs in $d"; }
  stat -c '%n %s' "$out/image/bench.qcow2" "$out/bench.qcow2.tar.gz" > "$d/outputs.txt"
  rm -rf "$out"
}

# kiln_build ROUND VARIANT TAG [ENV=VALUE...] [-- KILN ARGS...]: the project's build.rhai
# is build.rhai with `echo last-step TAG` appended to its last shell step.
kiln_build() {
  local i=$1 variant=$2 tag=$3 rc=0; shift 3
  local d="$RES/$variant-$i" envs=() args=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  args=("$@")
  sed "s|^            \"sync\",\$|            \"sync\", \"echo last-step $tag\",|" \
    "$HERE/build.rhai" > "$PROJ/build.rhai"
  log "round $i: kiln $variant (last step tag $tag; ${envs[*]:-} ${args[*]:-})"
  rm -rf "$PROJ/out" "$PROJ/.kiln"
  (cd "$BENCH_DIR" && env "${envs[@]}" python3 "$HERE/monitor.py" "$d" -- "$KILN" build \
      --machine-readable --force "${args[@]}" \
      --var "base_dir=$BASE_DIR" --var "accelerator=$KILN_ACCEL" "$PROJ") || rc=$?
  [ "$rc" = 0 ] || { grep -v '"output"' "$d/stdout.tsv" | tail -20 >&2; die "kiln build failed (rc $rc), logs in $d"; }
  stat -c '%n %s' "$PROJ/out/image/bench.qcow2" "$PROJ/out/bench.qcow2.tar.gz" > "$d/outputs.txt"
  cp "$PROJ/build.rhai" "$d/"
  # What the cache did, for the report (and a check that it did what the variant says).
  grep -o "Using cached state after step [0-9]*\|Restored the VM's memory state after step [0-9]*\|Booting the cached disk after step [0-9]*[^\"]*" \
    "$d/stdout.tsv" > "$d/cache.txt" || true
}

# kiln's variants, in dependency order (the rebuilds need kiln-cold's entries).
kiln_cached() {
  local i=$1 c=$2
  kiln_build "$i" kiln-cold "${i}a" "KILN_CACHE_DIR=$c"
  kiln_build "$i" kiln-mem "${i}b" "KILN_CACHE_DIR=$c"
  kiln_build "$i" kiln-disk "${i}c" "KILN_CACHE_DIR=$c" KILN_CACHE_MEMORY=0
  kiln_build "$i" kiln-same "${i}b" "KILN_CACHE_DIR=$c"
  du -sm "$c" | cut -f1 > "$RES/cache-mib-$i.txt"
}

CACHE=
trap '[ -z "$CACHE" ] || rm -rf "$CACHE"' EXIT   # ~2.5 GB a round, also when a build fails
: > "$RES/load.tsv"
for i in $(seq "$RUNS"); do
  CACHE="$BENCH_DIR/cache-incr-$i"
  rm -rf "$CACHE"; mkdir -p "$CACHE"
  printf '%s\tbefore\t%s\n' "$i" "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/load.tsv"
  if [ $((i % 2)) = 1 ]; then
    packer_build "$i"
    kiln_build "$i" kiln-nocache "${i}n" "KILN_CACHE_DIR=$CACHE" -- --no-cache
    kiln_cached "$i" "$CACHE"
  else
    kiln_cached "$i" "$CACHE"
    kiln_build "$i" kiln-nocache "${i}n" "KILN_CACHE_DIR=$CACHE" -- --no-cache
    packer_build "$i"
  fi
  printf '%s\tafter\t%s\n' "$i" "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/load.tsv"
  rm -rf "$CACHE"
done
rm -rf "$PROJ/out"

python3 "$HERE/incr_report.py" "$RES" "$RUNS" > "$RES/summary.md"
cat "$RES/summary.md"
log "raw results in $RES"
