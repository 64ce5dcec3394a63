#!/usr/bin/env bash
# Runs examples/registry-terraform end to end: builds the web image and records it,
# promotes it to prod, serves the registry, lets Terraform 1.0.3 read it, then builds
# the app image from web@prod and shows the ancestry. The registry is this project's
# .kiln/registry.db unless KILN_REGISTRY is set (a file, or postgres://...).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
KILN=${KILN:-${CARGO_TARGET_DIR:-$root/target}/release/kiln}
TERRAFORM=${TERRAFORM:-/var/tmp/kiln-peers/terraform-1.0.3/terraform}
base_dir=${KILN_BASE_DIR:-/var/tmp/kiln-base}
port=${PORT:-8700}

"$root/tools/build-guests.sh"
mkdir -p "$here/provisioners" "$here/keys"
cp "${KILN_GUEST_TARGET_DIR:-$root/target/guests}/wasm32-wasip2/release/consul_provisioner.wasm" "$here/provisioners/"
"$root/tools/base-image.sh"
install -m 600 "$base_dir/keys/id_ed25519" "$here/keys/id_ed25519"
[ -x "$TERRAFORM" ] || "$root/tools/setup.d/terraform.sh"
cd "$here"

# 1. Build the web image; kiln records it and prints the version and the promote command.
"$KILN" build --force --only web --var base_image="$base_dir/base.qcow2" . | tee .build-web.log
fp=$(sed -n 's/.*kiln artifacts promote web \([0-9A-Z]*\) --channel prod.*/\1/p' .build-web.log | tail -1)
[ -n "$fp" ] || { echo "no version recorded" >&2; exit 1; }

# 2. Promote it, and look at it.
"$KILN" artifacts promote web "$fp" --channel prod
"$KILN" artifacts show web @prod

# 3. Serve the registry; Terraform reads it through terraform_remote_state.
"$KILN" registry serve --listen "127.0.0.1:$port" > .serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q "Serving the registry" .serve.log && break; sleep 0.2; done
export TF_CLI_CONFIG_FILE=/dev/null CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1
"$TERRAFORM" init -input=false -no-color >/dev/null
"$TERRAFORM" apply -auto-approve -input=false -no-color -var "registry=http://127.0.0.1:$port"

# 4. Build the app image from web@prod; its record names web/$fp as its parent.
"$KILN" build --force --only app --var base_image="$base_dir/base.qcow2" .
"$KILN" artifacts ancestry web "$fp"
