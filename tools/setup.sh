#!/usr/bin/env bash
# Installs what kiln's build, tests and examples need on a fresh Debian 12 machine of
# this kind. Idempotent: installs only what is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
log() { printf '[setup] %s\n' "$*" >&2; }

# zstd and libdeflate are C libraries built by their -sys crates.
if ! command -v cc >/dev/null 2>&1; then
  log "a C compiler (zstd-sys, libdeflate-sys)"
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq && $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev
fi

log "OpenSSH server and client (test peer, examples)"
"$root/tools/peers/sshd.sh" install

if [ "${KILN_SKIP_QEMU:-0}" != 1 ]; then
  log "QEMU, qemu-img, debootstrap (qemu builder)"
  "$root/tools/qemu-setup.sh"
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  log "rustup target add wasm32-wasip2 (WASM provisioners)"
  rustup target add wasm32-wasip2
fi
# Peers of the library crates (moto, docker-registry, Glance, PostgreSQL, Terraform, ...):
# one idempotent script each, so adding a peer never edits this file.
for f in "$root"/tools/setup.d/*.sh; do
  [ -e "$f" ] || continue
  log "$(basename "$f" .sh)"
  bash "$f"
done
log "done"
