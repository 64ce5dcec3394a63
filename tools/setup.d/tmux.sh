#!/usr/bin/env bash
# tmux: the terminal the pause-menu tests (--on-error=ask, --debug, breakpoint()) drive
# kiln through (tests/it/debug_build.rs: send-keys, capture-pane).
set -euo pipefail
if command -v tmux >/dev/null 2>&1; then
    echo "tmux: $(tmux -V) already installed"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show tmux >/dev/null 2>&1; then
    apt-get -o DPkg::Lock::Timeout=900 update
fi
apt-get -o DPkg::Lock::Timeout=900 install -y --no-install-recommends tmux
tmux -V
