#!/usr/bin/env bash
# The README's first command: install what is needed (qemu, the Debian base image),
# build kiln, and build examples/qemu-debian end to end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tools/setup.sh
echo "[quickstart] building kiln (the first build compiles wasmtime: ~12 min on 2 cores)" >&2
cargo build --release
examples/qemu-debian/run.sh
