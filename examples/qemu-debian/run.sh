#!/usr/bin/env bash
# Builds examples/qemu-debian end to end: the base image (cached), then the
# provisioned image, its checksum, a Vagrant box and the manifest.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
KILN=${KILN:-${CARGO_TARGET_DIR:-$root/target}/release/kiln}
base_dir=${KILN_BASE_DIR:-/var/tmp/kiln-base}

"$root/tools/base-image.sh"
mkdir -p "$here/keys"
install -m 600 "$base_dir/keys/id_ed25519" "$here/keys/id_ed25519"

"$KILN" build --force --var base_image="$base_dir/base.qcow2" "$here"

echo
echo "Artifacts in $here/output:"
ls -l "$here/output"
