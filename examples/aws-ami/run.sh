#!/usr/bin/env bash
# Runs examples/aws-ami end to end against moto: starts a moto_server and a loopback sshd
# that accepts moto's key pairs (both in a temp dir, stopped at exit), builds the AMI,
# lists what moto holds afterwards, and shows that `kiln cleanup` has nothing to do.
#
#   examples/aws-ami/run.sh            # KILN=path/to/kiln to use another binary
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
KILN=${KILN:-${CARGO_TARGET_DIR:-$root/target}/release/kiln}
[ -x "$KILN" ] || { echo "no kiln binary at $KILN: cargo build --release -p kiln (or set KILN)" >&2; exit 1; }
"$root/tools/peers/moto.sh" install >/dev/null
"$root/tools/peers/sshd.sh" install >/dev/null

work=$(mktemp -d /var/tmp/kiln-aws-ami.XXXXXX)
cleanup() {
  "$root/tools/peers/sshd.sh" stop "$work/sshd" >/dev/null 2>&1 || true
  "$root/tools/peers/moto.sh" stop "$work/moto" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

moto_env=$("$root/tools/peers/moto.sh" start 0 "$work/moto")
ENDPOINT=$(sed -n 's/^ENDPOINT=//p' <<<"$moto_env")
sshd_env=$(MOTO_KEYS=$ENDPOINT "$root/tools/peers/sshd.sh" start 0 "$work/sshd")
SSH_PORT=$(sed -n 's/^PORT=//p' <<<"$sshd_env")
echo "moto at $ENDPOINT, sshd on 127.0.0.1:$SSH_PORT"

# moto accepts any keys; kiln reads them from these variables (secret() handles).
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
# A private ledger for the example (the default is ~/.local/state/kiln).
export KILN_STATE_DIR=$work/state

"$KILN" build --force --var endpoint="$ENDPOINT" --var ssh_port="$SSH_PORT" "$here"

echo
echo "On the machine: $(cat /tmp/kiln-aws-ami/motd)"
echo "Manifest: $here/output/manifest.json"
echo "What moto holds now (AMIs and snapshots are the artifact; no instance runs, no key pair or group is left):"
for region in us-east-1 eu-west-1; do
  for q in "DescribeImages&Owner.1=self:<imageId>" "DescribeSnapshots&Owner.1=self&Filter.1.Name=tag-key&Filter.1.Value.1=kiln:run:<snapshotId>" \
           "DescribeInstances&Filter.1.Name=instance-state-name&Filter.1.Value.1=running:<instanceId>" \
           "DescribeKeyPairs:<keyName>"; do
    action=${q%:*} tag=${q##*:}
    n=$(curl -sf -H "Authorization: AWS4-HMAC-SHA256 Credential=x/20240101/$region/ec2/aws4_request, SignedHeaders=host, Signature=00" \
          -d "Action=$action&Version=2016-11-15" "$ENDPOINT/" | { grep -o "$tag" || true; } | wc -l)
    printf '  %-10s %-18s %s\n' "$region" "${action%%&*}" "$n"
  done
done
echo
"$KILN" cleanup --dry-run
