#!/usr/bin/env bash
# The README's first command: install what is needed, build kiln, run an example
# build end to end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tools/setup.sh
echo "[quickstart] building kiln (the first build compiles wasmtime: ~12 min on 2 cores)" >&2
cargo build --release
examples/ssh-host/run.sh
