#!/usr/bin/env bash
# Builds examples/web-oci-and-vm: both bases (cached; offline after the first time), then
# the VM image and the OCI image in parallel from one script. REGISTRY=1 also starts a
# throwaway registry on 127.0.0.1 and pushes the image there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
KILN=${KILN:-${CARGO_TARGET_DIR:-$root/target}/release/kiln}
base_dir=${KILN_BASE_DIR:-/var/tmp/kiln-base}

"$root/tools/base-image.sh"
"$root/tools/oci-base-image.sh"
mkdir -p "$here/keys"
install -m 600 "$base_dir/keys/id_ed25519" "$here/keys/id_ed25519"

vars=(--var base_image="$base_dir/base.qcow2" --var base_oci="oci-layout:$base_dir/oci:bookworm")
if [ "${REGISTRY:-0}" = 1 ]; then
  reg_dir=$(mktemp -d /var/tmp/kiln-example-registry.XXXXXX)
  eval "$("$root/tools/peers/registry.sh" start plain 0 "$reg_dir")"
  trap '"$root/tools/peers/registry.sh" stop "$reg_dir"; rm -rf "$reg_dir"' EXIT
  vars+=(--var registry="$HOST")
fi

"$KILN" build --force "${vars[@]}" "$here"

echo
echo "Artifacts in $here/output:"
ls -l "$here/output" "$here/output/vm"
echo "OCI image: $(cat "$here/output/oci/index.json")"
