#!/usr/bin/env bash
# Runs examples/ssh-host end to end: starts a throwaway sshd on 127.0.0.1 (its own
# host key and client key, in .peer/), builds against it, checks the result, stops it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
KILN=${KILN:-$root/target/release/kiln}
remote=$(mktemp -d /tmp/kiln-example-XXXXXX)

eval "$("$root/tools/peers/sshd.sh" start 0 "$here/.peer")"
trap '"$root/tools/peers/sshd.sh" stop "$here/.peer" >/dev/null; rm -rf "$remote"' EXIT

"$KILN" build --force --var ssh_port="$PORT" --var remote_dir="$remote" "$here"

echo
echo "On the machine:"
for f in motd app.conf facts.txt site/index.html; do
  printf '  %-16s %s\n' "$f" "$(head -1 "$remote/$f")"
done
echo "Manifest: $here/output/manifest.json"
