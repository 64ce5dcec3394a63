#!/usr/bin/env bash
# terraform for the artifact registry tests (crates/registry); see tools/peers/terraform.sh
set -euo pipefail
exec bash "$(cd "$(dirname "$0")/.." && pwd)/peers/terraform.sh" install
