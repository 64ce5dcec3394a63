#!/usr/bin/env bash
# setup.sh - what bench/packer-qemu/run.sh needs on a fresh Debian 12 host, on top of
# tools/qemu-setup.sh (qemu from bookworm-backports) and tools/base-image.sh:
# Debian's packer (1.6.6, bookworm main), GNU time, openssl (to make the upload file),
# python3 (the RSS sampler and the report), bc. Idempotent: installs only what is
# missing, runs `apt-get update` only when something is, never upgrades.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
log() { printf '[packer-qemu setup] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root (apt-get)"; exit 1; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
for p in packer time openssl python3 bc openssh-client iproute2; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  # Install first; refresh the index only if the cached one no longer resolves.
  apt-get install -y --no-install-recommends "${missing[@]}" \
    || { apt-get update -qq && apt-get install -y --no-install-recommends "${missing[@]}"; }
else
  log "all packages present"
fi
log "packer: $(packer version 2>/dev/null | head -1)"
