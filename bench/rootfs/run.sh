#!/usr/bin/env bash
# kiln-rootfs benchmark: container start, per-exec overhead and file throughput, each
# next to a plain baseline (unshare(1)+mount+chroot, a host spawn, `cat`) in the same run.
# Needs root, overlayfs and busybox-static (tools/setup.d/rootfs.sh).
#   bench/rootfs/run.sh [--starts N] [--execs N] [--mib N]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/kiln-target-rootfs}
bash "$root/tools/setup.d/rootfs.sh"
cd "$root"
cargo build --release -q -p kiln-rootfs --bin kiln-rootfs-init --example rootfs_bench --features testkit
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), kernel $(uname -r)"
"$CARGO_TARGET_DIR/release/examples/rootfs_bench" "$CARGO_TARGET_DIR/release/kiln-rootfs-init" "$@"
