#!/usr/bin/env bash
# oci-base-image.sh - the Debian 12 rootfs that tools/base-image.sh debootstraps, as an OCI
# image layout for the oci builder (examples/web-oci-and-vm, bench/oci): one reproducible
# layer, no internet needed (it reads base-image.sh's cached debootstrap tarball).
#
# Output (KILN_BASE_DIR, default /var/tmp/kiln-base):
#   oci/                  OCI image layout, tag "bookworm" -> use "oci-layout:/var/tmp/kiln-base/oci:bookworm"
#   oci/.recipe           hash of this script and the tarball's name: a second run is a no-op
#
# FORCE=1 rebuilds it. Needs root (the rootfs holds files of many owners and device nodes)
# and cargo (it builds kiln-oci's import_rootfs example, with CARGO_TARGET_DIR if set).
set -euo pipefail

DIR=${KILN_BASE_DIR:-/var/tmp/kiln-base}
OUT="$DIR/oci"
TAG=bookworm
# bookworm's release day: every mtime is clamped to it, so the digest is the same everywhere.
EPOCH=${SOURCE_DATE_EPOCH:-1686355200}
FORCE=${FORCE:-0}
root=$(cd "$(dirname "$0")/.." && pwd)

log() { printf '[oci-base-image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (the rootfs has files of many owners)"

tarball() { ls -t "$DIR"/cache/rootfs-*.tar 2>/dev/null | head -1; }
TAR=$(tarball)
if [ -z "$TAR" ]; then
  log "no cached debootstrap in $DIR/cache: running tools/base-image.sh first"
  "$root/tools/base-image.sh"
  TAR=$(tarball)
  [ -n "$TAR" ] || die "tools/base-image.sh left no rootfs tarball in $DIR/cache"
fi

RECIPE="$(sha256sum "$0" | cut -c1-16) $(basename "$TAR") $EPOCH"
if [ "$FORCE" = 0 ] && [ -f "$OUT/index.json" ] && [ "$(cat "$OUT/.recipe" 2>/dev/null)" = "$RECIPE" ]; then
  log "up to date: $OUT (tag $TAG)"
  exit 0
fi

log "building the importer (kiln-oci example import_rootfs)"
(cd "$root" && cargo build --release -q -p kiln-oci --example import_rootfs)
BIN=${CARGO_TARGET_DIR:-$root/target}/release/examples/import_rootfs
[ -x "$BIN" ] || die "the importer was not built at $BIN"

WORK="$DIR/oci-work"
rm -rf "$WORK" "$OUT.tmp"
mkdir -p "$WORK/rootfs"
trap 'rm -rf "$WORK" "$OUT.tmp"' EXIT
log "unpacking $(basename "$TAR")"
tar --numeric-owner --xattrs --xattrs-include='*' -C "$WORK/rootfs" -xf "$TAR"
R="$WORK/rootfs"
# A container needs no kernel, boot loader, initramfs tools' output or package caches.
rm -rf "$R"/boot/* "$R"/lib/modules/* "$R"/usr/lib/modules/* \
       "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/var/log/*.log \
       "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/info/*
: > "$R/etc/machine-id"
: > "$R/etc/resolv.conf"
echo kiln > "$R/etc/hostname"

log "importing into $OUT (tag $TAG, mtimes clamped to $EPOCH)"
digest=$("$BIN" "$R" "$OUT.tmp" "$TAG" "$EPOCH")
echo "$RECIPE" > "$OUT.tmp/.recipe"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
log "done: oci-layout:$OUT:$TAG = $digest ($(du -sh "$OUT" | cut -f1))"
