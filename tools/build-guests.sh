#!/usr/bin/env bash
# Builds every WASM guest crate (examples and the hostile-guest suite) for wasm32-wasip2.
# Idempotent: adds the rustup target only if missing; cargo rebuilds only what changed.
# Output: target/guests/wasm32-wasip2/release/*.wasm (a target dir of its own, so this
# can run while another cargo holds the lock on target/release).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${KILN_GUEST_TARGET_DIR:-$root/target/guests}"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "build-guests: adding rustup target wasm32-wasip2" >&2
    rustup target add wasm32-wasip2
fi

for dir in examples/hello-provisioner examples/consul-provisioner tests/guests; do
    echo "build-guests: $dir" >&2
    (cd "$root/$dir" && cargo build --release --target wasm32-wasip2 --quiet)
done

echo "build-guests: components in $CARGO_TARGET_DIR/wasm32-wasip2/release" >&2
