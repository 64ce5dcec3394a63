#!/usr/bin/env bash
# Upload throughput to Glance: kiln-openstack's client (examples/glance_upload.rs: create →
# streamed upload → wait active → sha512 verified) vs `openstack image create --file` of the same
# file to the same Glance (tools/peers/glance.sh on 127.0.0.1), alternating, in one run.
#
#   bench/openstack/run.sh [MiB=500] [ROUNDS=3]
#
# Each sample is the wall time of the whole command (process start to exit), so both sides pay
# for startup, auth and the create call; MiB/s = file size / that time. Peak RSS is
# /usr/bin/time's maximum resident set size of the process. Needs tools/setup.d/glance.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
MIB=${1:-500}
ROUNDS=${2:-3}
VENV=${KILN_OPENSTACK_VENV:-/var/tmp/kiln-peers/openstack-venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d /var/tmp/kiln-peers/bench-openstack.XXXXXX)
cleanup() { "$root/tools/peers/glance.sh" stop "$work/glance" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

cargo build -q --release -p kiln-openstack --example glance_upload
KILN=$CARGO_TARGET_DIR/release/examples/glance_upload
OSC=$VENV/bin/openstack

echo "# making a ${MIB} MiB qcow2 of random data" >&2
head -c "$((MIB << 20))" /dev/urandom > "$work/disk.raw"
qemu-img convert -q -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
rm -f "$work/disk.raw"
FILE=$work/disk.qcow2
BYTES=$(stat -c %s "$FILE")

eval "$("$root/tools/peers/glance.sh" start "$work/glance")"
echo "# Glance at $URL (pid $PID); file $BYTES bytes; $ROUNDS rounds" >&2

run_kiln() { # prints: seconds peak_kib
  /usr/bin/time -f '%e %M' -o "$work/t" "$KILN" "$FILE" --endpoint "$URL" --disk-format qcow2 \
    --name "bench-kiln-$1" --delete > "$work/kiln.out"
  grep -q 'sha512_ok=true' "$work/kiln.out" || { cat "$work/kiln.out" >&2; exit 1; }
  cat "$work/t"
}
run_osc() {
  /usr/bin/time -f '%e %M' -o "$work/t" "$OSC" --os-auth-type none --os-endpoint "$URL" image create \
    --disk-format qcow2 --container-format bare --file "$FILE" "bench-osc-$1" -f value -c id > "$work/osc.id"
  cat "$work/t"
  "$OSC" --os-auth-type none --os-endpoint "$URL" image delete "$(cat "$work/osc.id")" >&2
}

: > "$work/samples"
for i in $(seq "$ROUNDS"); do
  if [ $((i % 2)) = 1 ]; then order="kiln osc"; else order="osc kiln"; fi
  for who in $order; do
    "run_$who" "$i" > "$work/sample"
    read -r secs kib < "$work/sample"
    echo "$who $secs $kib" >> "$work/samples"
    printf 'round %d %-4s %6.2f s  %7.1f MiB/s  peak RSS %6.1f MiB\n' "$i" "$who" "$secs" \
      "$(echo "$BYTES / 1048576 / $secs" | bc -l)" "$(echo "$kib / 1024" | bc -l)"
  done
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
k=$(awk '$1=="kiln"{print $2}' "$work/samples" | median)
o=$(awk '$1=="osc"{print $2}' "$work/samples" | median)
krss=$(awk '$1=="kiln"{print $3}' "$work/samples" | sort -n | tail -1)
orss=$(awk '$1=="osc"{print $3}' "$work/samples" | sort -n | tail -1)
echo
printf '| client | median wall s | MiB/s | peak RSS MiB |\n|---|---|---|---|\n'
printf '| kiln-openstack (glance_upload) | %.2f | %.1f | %.1f |\n' "$k" "$(echo "$BYTES/1048576/$k" | bc -l)" "$(echo "$krss/1024" | bc -l)"
printf '| openstack image create --file | %.2f | %.1f | %.1f |\n' "$o" "$(echo "$BYTES/1048576/$o" | bc -l)" "$(echo "$orss/1024" | bc -l)"
printf '\nthroughput ratio kiln/openstack: %.2fx (goal >= 1.0x); kiln peak RSS %.1f MiB (goal <= 64 MiB)\n' \
  "$(echo "$o / $k" | bc -l)" "$(echo "$krss/1024" | bc -l)"
