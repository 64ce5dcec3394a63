#!/usr/bin/env bash
# base-image.sh - build the small bootable Debian 12 (bookworm) qcow2 that kiln's qemu
# tests, examples and benchmarks boot, from Debian's archive only (debootstrap).
#
# Output (KILN_BASE_DIR, default /var/tmp/kiln-base):
#   base.qcow2            2 GiB virtual, ext4 root labelled "root", extlinux, console ttyS0
#   base.qcow2.recipe     hash of this script: a second run with the same script is a no-op
#   keys/id_ed25519{,.pub} root's SSH key (root password "kiln" too, for password tests)
#   cache/rootfs-*.tar    the debootstrap result, so FORCE=1 rebuilds the disk in seconds
#
# FORCE=1 rebuilds the disk from the cached rootfs; FORCE=2 also redoes debootstrap.
# Needs root (debootstrap, chroot, loop devices) and tools/qemu-setup.sh's packages.
set -euo pipefail

DIR=${KILN_BASE_DIR:-/var/tmp/kiln-base}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
DISK_MIB=${DISK_MIB:-2048}
FORCE=${FORCE:-0}
INCLUDE="linux-image-cloud-amd64,initramfs-tools,zstd,systemd-sysv,udev,dbus,openssh-server,openssh-sftp-server,iproute2"

log() { printf '[base-image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and loop devices need it)"
for t in debootstrap qemu-img extlinux sfdisk losetup mkfs.ext4 ssh-keygen sha256sum; do
  command -v "$t" >/dev/null || die "missing host tool: $t (run tools/qemu-setup.sh)"
done
MBR=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$MBR" ] || die "missing $MBR (run tools/qemu-setup.sh)"

mkdir -p "$DIR"/{keys,cache}
SELF_HASH=$(sha256sum "$0" | cut -c1-16)
ROOTFS_HASH=$(printf '%s|%s|%s' "$SUITE" "$MIRROR" "$INCLUDE" | sha256sum | cut -c1-16)
OUT="$DIR/base.qcow2"
KEY="$DIR/keys/id_ed25519"

if [ "$FORCE" = 0 ] && [ -f "$OUT" ] && [ -f "$KEY" ] \
   && [ "$(cat "$OUT.recipe" 2>/dev/null)" = "$SELF_HASH" ]; then
  log "up to date: $OUT (recipe $SELF_HASH)"
  exit 0
fi

# 1. root's key
if [ ! -f "$KEY" ]; then
  log "generating $KEY"
  ssh-keygen -q -t ed25519 -N '' -C kiln-base -f "$KEY"
fi

# 2. debootstrap, cached as a tarball (the slow, network-bound part: about a minute)
ROOTFS_TAR="$DIR/cache/rootfs-$ROOTFS_HASH.tar"
if [ ! -f "$ROOTFS_TAR" ] || [ "$FORCE" = 2 ]; then
  tmp="$DIR/cache/debootstrap.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp" "$DIR/cache/debs"
  log "debootstrap $SUITE (minbase + $INCLUDE) from $MIRROR"
  debootstrap --variant=minbase --include="$INCLUDE" --cache-dir="$DIR/cache/debs" \
    "$SUITE" "$tmp" "$MIRROR" > "$DIR/cache/debootstrap.log" 2>&1 \
    || { tail -20 "$DIR/cache/debootstrap.log" >&2; die "debootstrap failed (log: $DIR/cache/debootstrap.log)"; }
  tar --numeric-owner --xattrs --xattrs-include='*' -C "$tmp" -cf "$ROOTFS_TAR.part" .
  mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
  rm -rf "$tmp"
else
  log "using cached rootfs $ROOTFS_TAR"
fi

# 3. configure a fresh copy of the rootfs
WORK="$DIR/work"
MNT="$WORK/mnt"
ROOT="$WORK/rootfs"
LOOP=""
cleanup() {
  set +e
  for m in "$ROOT/dev/pts" "$ROOT/dev" "$ROOT/proc" "$ROOT/sys" "$MNT"; do
    mountpoint -q "$m" && umount "$m"
  done
  [ -n "$LOOP" ] && losetup -d "$LOOP"
}
trap cleanup EXIT

rm -rf "$WORK"; mkdir -p "$ROOT" "$MNT"
log "unpacking rootfs"
tar --numeric-owner --xattrs --xattrs-include='*' -C "$ROOT" -xf "$ROOTFS_TAR"

KVER=$(basename "$(ls -d "$ROOT"/lib/modules/* | head -1)")
[ -n "$KVER" ] || die "no kernel in the rootfs"
log "configuring (kernel $KVER)"

echo 'LABEL=root  /  ext4  rw,noatime,errors=remount-ro  0  1' > "$ROOT/etc/fstab"
echo kiln-base > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 kiln-base\n' > "$ROOT/etc/hosts"
# QEMU user networking's resolver; nothing in the tests resolves names.
printf 'nameserver 10.0.2.3\n' > "$ROOT/etc/resolv.conf"

mkdir -p "$ROOT/etc/systemd/network"
cat > "$ROOT/etc/systemd/network/10-dhcp.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
NET

mkdir -p "$ROOT/etc/ssh/sshd_config.d" "$ROOT/root/.ssh"
cat > "$ROOT/etc/ssh/sshd_config.d/10-kiln.conf" <<'SSHD'
PermitRootLogin yes
PasswordAuthentication yes
UseDNS no
SSHD
install -m 0600 "$KEY.pub" "$ROOT/root/.ssh/authorized_keys"
chmod 700 "$ROOT/root/.ssh"

# A small initramfs: a virtio/ext4 root needs nothing else, and it boots faster.
mkdir -p "$ROOT/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nCOMPRESS=zstd\n' > "$ROOT/etc/initramfs-tools/conf.d/10-kiln.conf"
printf '%s\n' virtio_pci virtio_blk virtio_scsi sd_mod ext4 > "$ROOT/etc/initramfs-tools/modules"

mkdir -p "$ROOT/etc/dpkg/dpkg.cfg.d"
cat > "$ROOT/etc/dpkg/dpkg.cfg.d/01-nodoc" <<'DPKG'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG

mount --bind /dev "$ROOT/dev"; mount --bind /dev/pts "$ROOT/dev/pts"
mount -t proc proc "$ROOT/proc"; mount -t sysfs sys "$ROOT/sys"
chroot "$ROOT" /bin/bash -euo pipefail <<CHROOT
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
echo 'root:kiln' | chpasswd
systemctl enable systemd-networkd.service ssh.service >/dev/null 2>&1
# Timers that would wake up during a short build and compete for the TCG CPU.
systemctl mask systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
  e2scrub_all.timer e2scrub_reap.service fstrim.timer dpkg-db-backup.timer \
  systemd-pstore.service >/dev/null 2>&1 || true
systemctl set-default multi-user.target >/dev/null 2>&1
update-initramfs -c -k "$KVER" >/dev/null 2>&1 || update-initramfs -u -k "$KVER"
apt-get clean
CHROOT
umount "$ROOT/sys" "$ROOT/proc" "$ROOT/dev/pts" "$ROOT/dev"
rm -rf "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
       "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log
find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
# Every copy of the image gets its own machine-id (and so its own DHCP client id).
: > "$ROOT/etc/machine-id"; rm -f "$ROOT/var/lib/dbus/machine-id"

cat > "$ROOT/boot/extlinux.conf.kiln" <<EXT
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  LINUX /boot/vmlinuz-$KVER
  INITRD /boot/initrd.img-$KVER
  APPEND root=/dev/vda1 rw console=ttyS0,115200 quiet loglevel=3 no_timer_check systemd.show_status=auto
EXT

# 4. disk: MBR + one bootable ext4 partition + extlinux, then qcow2
RAW="$WORK/disk.raw"
log "writing ${DISK_MIB} MiB disk"
truncate -s "${DISK_MIB}M" "$RAW"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$RAW"
SECTORS=$(( DISK_MIB * 2048 - 2048 ))
LOOP=$(losetup --find --show --offset $((2048 * 512)) --sizelimit $((SECTORS * 512)) "$RAW")
# extlinux 6.04 cannot read these newer ext4 features.
mkfs.ext4 -q -L root -O ^metadata_csum_seed,^orphan_file "$LOOP" 2>/dev/null \
  || mkfs.ext4 -q -L root "$LOOP"
mount "$LOOP" "$MNT"
tar --numeric-owner --xattrs --xattrs-include='*' -C "$ROOT" -cf - . | \
  tar --numeric-owner --xattrs --xattrs-include='*' -C "$MNT" -xf -
mkdir -p "$MNT/boot/extlinux"
mv "$MNT/boot/extlinux.conf.kiln" "$MNT/boot/extlinux/extlinux.conf"
extlinux --install "$MNT/boot/extlinux" >/dev/null 2>&1 || die "extlinux --install failed"
umount "$MNT"
losetup -d "$LOOP"; LOOP=""
dd if="$MBR" of="$RAW" bs=440 count=1 conv=notrunc status=none

log "converting to qcow2"
qemu-img convert -O qcow2 "$RAW" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$SELF_HASH" > "$OUT.recipe"
rm -rf "$WORK"
log "done: $OUT ($(du -h "$OUT" | cut -f1) allocated), key $KEY"
