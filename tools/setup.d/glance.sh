#!/usr/bin/env bash
# Installs the OpenStack peers of crates/openstack (kiln-openstack): Glance 33 (Images API v2),
# Keystone 30 (Identity v3, for the password / application-credential tests) and
# python-openstackclient (the cross-check and the benchmark baseline), all from PyPI into one
# venv, run under Debian's uWSGI. Idempotent: apt-gets only what is missing, pip-installs only
# when the venv lacks a package or has another version. Safe to run twice.
#
# env: KILN_OPENSTACK_VENV (/var/tmp/kiln-peers/openstack-venv)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${KILN_OPENSTACK_VENV:-/var/tmp/kiln-peers/openstack-venv}
GLANCE_VERSION=33.0.0
KEYSTONE_VERSION=30.0.0
OSC_VERSION=${OSC_VERSION:-}   # empty: whatever pip resolves with the two services
log() { printf '[setup glance] %s\n' "$*" >&2; }

sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
need=()
command -v uwsgi >/dev/null 2>&1 || need+=(uwsgi-core)
[ -e /usr/lib/uwsgi/plugins/python3_plugin.so ] || need+=(uwsgi-plugin-python3)
command -v qemu-img >/dev/null 2>&1 && command -v qemu-io >/dev/null 2>&1 || need+=(qemu-utils)
[ -x /usr/bin/python3 ] || need+=(python3)
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)       # the TLS Glance peer's throwaway CA
command -v flock >/dev/null 2>&1 || need+=(util-linux)      # peers share a schema template
[ -x /usr/bin/time ] || need+=(time)                        # bench/openstack: peak RSS
command -v bc >/dev/null 2>&1 || need+=(bc)                 # bench/openstack: arithmetic
if [ ${#need[@]} -gt 0 ]; then
  log "apt: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only when a package is unknown to the cache
  apt-cache show "${need[@]}" >/dev/null 2>&1 || $sudo_ apt-get -o DPkg::Lock::Timeout=900 update -q
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q \
    --no-install-recommends "${need[@]}"
fi

have() { # have PACKAGE VERSION: is that exact version installed in the venv?
  [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c "from importlib.metadata import version; print(version('$1'))" 2>/dev/null)" = "$2" ]
}
if ! have glance "$GLANCE_VERSION" || ! have keystone "$KEYSTONE_VERSION" || [ ! -x "$VENV/bin/openstack" ] \
  || [ ! -x "$VENV/bin/keystone-manage" ]; then
  t0=$(date +%s)
  # /usr/bin/python3 (Debian's 3.11) on purpose: the uwsgi python3 plugin is built against it,
  # and glance 33 needs Python >= 3.11. (A pyenv `python3` earlier on PATH would not load.)
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/pip" install -q --disable-pip-version-check "glance==$GLANCE_VERSION" \
    "keystone==$KEYSTONE_VERSION" "python-openstackclient${OSC_VERSION:+==$OSC_VERSION}"
  log "pip install took $(( $(date +%s) - t0 )) s"
fi
# the identity filter that stands in for Keystone in front of Glance (see the file's docstring)
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
install -m 0644 "$root/tools/peers/glance_kiln_noauth.py" "$site/glance_kiln_noauth.py"
log "glance $("$VENV/bin/python" -c "from importlib.metadata import version; print(version('glance'))"), keystone $("$VENV/bin/python" -c "from importlib.metadata import version; print(version('keystone'))"), openstack CLI $("$VENV/bin/openstack" --version 2>&1 | awk '{print $2}') in $VENV"
