#!/usr/bin/env bash
# bench/oci/buildah.sh's baseline: Debian's buildah (daemonless image builds, chroot
# isolation, overlay storage in a temp dir), and GNU time for the peak-RSS measurement.
# Without Recommends: the benchmark uses `--isolation chroot`, which needs no OCI runtime
# (crun/runc) and no fuse-overlayfs (native overlay as root).
# Idempotent: installs only what is missing; runs apt-get update only when a package is unknown.
set -euo pipefail
log() { printf '[setup buildah] %s\n' "$*" >&2; }
sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo

missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
[ -x /usr/bin/time ] || missing+=(time)

if [ ${#missing[@]} -eq 0 ]; then
  log "already installed: $(buildah --version), GNU time"
  exit 0
fi
log "installing ${missing[*]}"
if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
  $sudo_ apt-get -o DPkg::Lock::Timeout=900 update -q
fi
$sudo_ env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q \
  --no-install-recommends "${missing[@]}"
command -v buildah >/dev/null && [ -x /usr/bin/time ] || { log "install failed"; exit 1; }
log "done: $(buildah --version)"
