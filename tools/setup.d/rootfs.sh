#!/usr/bin/env bash
# kiln-rootfs (the container machine of the OCI builder): its tests need a static busybox
# for a minimal lower layer, and a kernel with overlayfs and namespaces. Idempotent.
set -euo pipefail
log() { printf '[setup rootfs] %s\n' "$*" >&2; }
sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo

if [ ! -x /bin/busybox ] || ! dpkg -s busybox-static >/dev/null 2>&1; then
  log "busybox-static (test rootfs)"
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo_ apt-get -o DPkg::Lock::Timeout=900 install -y -qq busybox-static; then
    $sudo_ apt-get -o DPkg::Lock::Timeout=900 update -qq
    $sudo_ apt-get -o DPkg::Lock::Timeout=900 install -y -qq busybox-static
  fi
fi

# overlayfs is usually a module; load it so the first container does not fail on it.
if ! grep -qw overlay /proc/filesystems; then
  log "loading the overlay kernel module"
  $sudo_ modprobe overlay || log "WARNING: no overlayfs in this kernel; kiln-rootfs containers cannot start"
fi
log "ok: $(busybox 2>/dev/null | head -1)"
