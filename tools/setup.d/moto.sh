#!/usr/bin/env bash
# moto_server (EC2 API emulator) for kiln-ec2's tests and the amazon_ebs builder's tests:
# a venv under /var/tmp/kiln-peers/moto-venv. Idempotent.
set -euo pipefail
exec "$(cd "$(dirname "$0")/.." && pwd)/peers/moto.sh" install
