#!/usr/bin/env bash
# qemu-setup.sh - install what kiln's qemu builder, its tests and benchmarks need on a
# Debian 12 (bookworm) host. Idempotent: installs only missing packages, never upgrades.
#
#   sudo tools/qemu-setup.sh            # qemu, qemu-img, debootstrap, extlinux, ...
#   WITH_VAGRANT=0 sudo tools/qemu-setup.sh   # skip vagrant (the .box acceptance test needs it)
#
# Why backports: the rust machine image ships qemu-utils 10.x from bookworm-backports,
# and bookworm's own qemu-system-x86 7.2 conflicts with it, so qemu-system-* and seabios
# must come from bookworm-backports as well.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

log() { printf '[qemu-setup] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root (apt-get)"; exit 1; }

WITH_VAGRANT=${WITH_VAGRANT:-1}
PLAIN=(qemu-utils openssh-client debootstrap extlinux syslinux-common fdisk e2fsprogs
       util-linux ca-certificates)
[ "$WITH_VAGRANT" = 1 ] && PLAIN+=(vagrant)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in "${PLAIN[@]}" qemu-system-x86; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} = 0 ]; then
  log "all packages present"
  exit 0
fi
log "missing: ${missing[*]}"

updated=0
apt_update() { [ "$updated" = 1 ] || { apt-get update -qq; updated=1; }; }

plain=()
for p in "${missing[@]}"; do [ "$p" = qemu-system-x86 ] || plain+=("$p"); done
if [ ${#plain[@]} -gt 0 ]; then
  apt_update
  apt-get install -y --no-install-recommends "${plain[@]}"
fi

if ! installed qemu-system-x86; then
  if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
      log "adding bookworm-backports apt source"
      cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
      updated=0
    fi
    apt_update
    # Only these come from backports; everything else (openssh-client!) stays bookworm's.
    apt-get install -y --no-install-recommends qemu-system-x86/bookworm-backports \
      qemu-system-common/bookworm-backports qemu-system-data/bookworm-backports \
      seabios/bookworm-backports
  else
    apt_update
    apt-get install -y --no-install-recommends qemu-system-x86
  fi
fi
log "done: $(qemu-system-x86_64 --version | head -1)"
