#!/usr/bin/env bash
# The README's second command: install what the tests need, then run the whole suite
# (unit tests, and the integration tests in tests/ against real peers they start).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tools/setup.sh
tools/build-guests.sh
tools/base-image.sh
tools/oci-base-image.sh
cargo test --release --workspace
