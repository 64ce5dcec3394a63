#!/usr/bin/env bash
# postgres for the artifact registry tests (crates/registry); see tools/peers/postgres.sh
set -euo pipefail
exec bash "$(cd "$(dirname "$0")/.." && pwd)/peers/postgres.sh" install
