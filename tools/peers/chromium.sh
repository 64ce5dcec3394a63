#!/usr/bin/env bash
# chromium.sh - Debian's chromium for headless page tests (kiln registry web page).
#
#   chromium.sh install   apt-get chromium if missing (idempotent)
#   chromium.sh path      print the binary's path
set -euo pipefail
do_install() {
  if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-cache show chromium >/dev/null 2>&1 || apt-get -o DPkg::Lock::Timeout=900 update -q
    apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends chromium fonts-dejavu-core
  fi
  echo "chromium.sh: $(chromium --version 2>/dev/null || echo installed)"
}
case "${1:-}" in
  install) do_install ;;
  path) command -v chromium ;;
  *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
