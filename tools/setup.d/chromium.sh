#!/usr/bin/env bash
# chromium for the artifact registry tests (crates/registry); see tools/peers/chromium.sh
set -euo pipefail
exec bash "$(cd "$(dirname "$0")/.." && pwd)/peers/chromium.sh" install
