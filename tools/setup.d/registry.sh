#!/usr/bin/env bash
# Peers of crates/oci (kiln-oci): Debian's docker-registry (CNCF distribution 2.8), htpasswd
# (apache2-utils, bcrypt) and openssl for the TLS+auth registry, and skopeo and podman, which the
# tests use as independent readers of what kiln writes (OCI layouts, docker-archive tars loaded
# with `podman load` into a private store, pushed images).
# Idempotent: installs only what is missing; runs apt-get update only when a package is unknown.
set -euo pipefail
log() { printf '[setup registry] %s\n' "$*" >&2; }
sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo

missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v podman >/dev/null 2>&1 || missing+=(podman)

if [ ${#missing[@]} -eq 0 ]; then
  log "already installed: docker-registry, htpasswd, openssl, skopeo, podman"
  exit 0
fi
log "installing ${missing[*]}"
if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
  $sudo_ apt-get -o DPkg::Lock::Timeout=900 update -q
fi
$sudo_ env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q \
  --no-install-recommends "${missing[@]}"
# The package ships /etc/docker/registry/config.yml listening on :5000 on all interfaces;
# nothing starts it here (no systemd), and kiln's peers always pass their own config.
command -v docker-registry >/dev/null && command -v htpasswd >/dev/null && command -v skopeo >/dev/null \
  && command -v podman >/dev/null \
  || { log "install failed"; exit 1; }
log "done"
