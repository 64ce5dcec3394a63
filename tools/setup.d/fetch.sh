#!/usr/bin/env bash
# Peers of crates/fetch (kiln-fetch) tests: Python 3 with http.server and ssl (the
# Range-capable tools/peers/http_range_server.py), the openssl CLI (the tests' throwaway
# CA), and coreutils' sha*sum/md5sum (independent digests in the tests). Idempotent: installs
# only what is missing; nothing from PyPI.
set -euo pipefail
log() { printf '[setup/fetch] %s\n' "$*" >&2; }

missing=()
if ! /usr/bin/python3 -c 'import http.server, ssl, json' >/dev/null 2>&1; then
  missing+=(python3)
fi
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
for t in sha256sum sha512sum sha1sum md5sum; do
  command -v "$t" >/dev/null 2>&1 || { missing+=(coreutils); break; }
done

if [ ${#missing[@]} -eq 0 ]; then
  log "python3, openssl and coreutils already present"
  exit 0
fi
sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
export DEBIAN_FRONTEND=noninteractive
# apt-get update only when a package is unknown to the local cache
apt-cache show "${missing[@]}" >/dev/null 2>&1 || $sudo_ apt-get -o DPkg::Lock::Timeout=900 update -q
log "installing ${missing[*]}"
$sudo_ env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}"
/usr/bin/python3 -c 'import http.server, ssl, json' \
  || { log "python3 still lacks http.server/ssl"; exit 1; }
