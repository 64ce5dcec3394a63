#!/usr/bin/env bash
# Builds the consul provisioner component, then bakes it into a Debian image.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
KILN=${KILN:-${CARGO_TARGET_DIR:-$root/target}/release/kiln}
base_dir=${KILN_BASE_DIR:-/var/tmp/kiln-base}

"$root/tools/build-guests.sh"
mkdir -p "$here/provisioners" "$here/keys"
cp "${KILN_GUEST_TARGET_DIR:-$root/target/guests}/wasm32-wasip2/release/consul_provisioner.wasm" "$here/provisioners/"
"$root/tools/base-image.sh"
install -m 600 "$base_dir/keys/id_ed25519" "$here/keys/id_ed25519"
"$KILN" module inspect "$here/provisioners/consul_provisioner.wasm"
"$KILN" build --force --var base_image="$base_dir/base.qcow2" "$here"
