#!/usr/bin/env bash
# Pushing one big layer (random data, so compression cannot help) to a local docker-registry:
# kiln-oci's streaming push vs `skopeo copy oci:… docker://…` of the same OCI layout, in one
# invocation. Prints seconds, MiB/s and peak RSS per phase and the kiln/skopeo ratios; fails
# if kiln's push peaks above 64 MiB RSS.
#
#   bench/oci/push.sh [SIZE_MIB]     (default 500; needs tools/setup.d/registry.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
size=${1:-500}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/kiln-target-oci}
cd "$root"
cargo build --release -q -p kiln-oci --features testkit --example push_layer
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
"$CARGO_TARGET_DIR/release/examples/push_layer" "$size"
