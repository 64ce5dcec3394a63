#!/usr/bin/env bash
# Upload throughput to Glance, three clients of the same file and the same Glance
# (tools/peers/glance.sh on 127.0.0.1), alternating, in one run:
#   kiln  - the kiln binary: `kiln build` of a project whose artifact is the file and whose
#           post-processor is openstack_image (script, grants, qemu-img info, create,
#           streamed upload, wait active, sha512 verified, manifest);
#   crate - kiln-openstack's example (examples/glance_upload.rs), the same flow without kiln;
#   osc   - `openstack image create --file`.
#
#   bench/openstack/run.sh [MiB=500] [ROUNDS=3]
#
# Each sample is the wall time of the whole command (process start to exit), so every side pays
# for startup, auth and the create call; MiB/s = file size / that time. Peak RSS is
# /usr/bin/time's maximum resident set size of the process. Needs tools/setup.d/glance.sh and a
# built kiln (cargo build --release -p kiln; KILN overrides the binary).
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
CRATE=$CARGO_TARGET_DIR/release/examples/glance_upload
KILN=${KILN:-$CARGO_TARGET_DIR/release/kiln}
[ -x "$KILN" ] || { echo "no kiln binary at $KILN: cargo build --release -p kiln" >&2; exit 1; }
OSC=$VENV/bin/openstack

echo "# making a ${MIB} MiB qcow2 of random data" >&2
head -c "$((MIB << 20))" /dev/urandom > "$work/disk.raw"
qemu-img convert -q -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
rm -f "$work/disk.raw"
FILE=$work/disk.qcow2
BYTES=$(stat -c %s "$FILE")

eval "$("$root/tools/peers/glance.sh" start "$work/glance")"
echo "# Glance at $URL (pid $PID); file $BYTES bytes; $ROUNDS rounds" >&2

# the kiln project: a builder that hands the file over, then openstack_image and a manifest
proj=$work/proj
mkdir -p "$proj/builders" "$proj/output"
ln "$FILE" "$proj/output/disk.qcow2"
cat > "$proj/builders/file.rhai" <<'RHAI'
fn options() { #{ file: () } }
fn run(cfg, ctx) { ctx.artifact(#{ id: cfg.file, files: [cfg.file] }) }
RHAI
cat > "$proj/build.rhai" <<RHAI
let name = var("name", "bench-kiln");
source("file", builder("builders/file.rhai", #{ file: "output/disk.qcow2" }));
build("bench", #{ sources: ["file"], post: [
    openstack_image(#{ name: name, endpoint: "$URL", auth_type: "none", disk_format: "qcow2" }),
    manifest("output/manifest.json"),
]});
RHAI

run_kiln() { # prints: seconds peak_kib
  rm -f "$proj/output/manifest.json"
  /usr/bin/time -f '%e %M' -o "$work/t" "$KILN" build -q --var name="bench-kiln-$1" "$proj" > "$work/kiln.out" 2>&1 \
    || { cat "$work/kiln.out" >&2; exit 1; }
  cat "$work/t"
  id=$("$VENV/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["builds"][0]["artifact_id"])' "$proj/output/manifest.json")
  "$OSC" --os-auth-type none --os-endpoint "$URL" image delete "$id" >&2
}
run_crate() {
  /usr/bin/time -f '%e %M' -o "$work/t" "$CRATE" "$FILE" --endpoint "$URL" --disk-format qcow2 \
    --name "bench-crate-$1" --delete > "$work/crate.out"
  grep -q 'sha512_ok=true' "$work/crate.out" || { cat "$work/crate.out" >&2; exit 1; }
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
  case $((i % 3)) in 1) order="kiln crate osc";; 2) order="osc kiln crate";; *) order="crate osc kiln";; esac
  for who in $order; do
    "run_$who" "$i" > "$work/sample"
    read -r secs kib < "$work/sample"
    echo "$who $secs $kib" >> "$work/samples"
    printf 'round %d %-5s %6.2f s  %7.1f MiB/s  peak RSS %6.1f MiB\n' "$i" "$who" "$secs" \
      "$(echo "$BYTES / 1048576 / $secs" | bc -l)" "$(echo "$kib / 1024" | bc -l)"
  done
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
med() { awk -v w="$1" '$1==w{print $2}' "$work/samples" | median; }
rss() { awk -v w="$1" '$1==w{print $3}' "$work/samples" | sort -n | tail -1; }
k=$(med kiln); c=$(med crate); o=$(med osc)
mib() { echo "$BYTES/1048576/$1" | bc -l; }
echo
printf '| client | median wall s | MiB/s | peak RSS MiB |\n|---|---|---|---|\n'
printf '| kiln build (openstack_image post-processor) | %.2f | %.1f | %.1f |\n' "$k" "$(mib "$k")" "$(echo "$(rss kiln)/1024" | bc -l)"
printf '| kiln-openstack example (glance_upload) | %.2f | %.1f | %.1f |\n' "$c" "$(mib "$c")" "$(echo "$(rss crate)/1024" | bc -l)"
printf '| openstack image create --file | %.2f | %.1f | %.1f |\n' "$o" "$(mib "$o")" "$(echo "$(rss osc)/1024" | bc -l)"
printf '\nthroughput ratio kiln/openstack: %.2fx (goal >= 1.0x), kiln/crate example: %.2fx; kiln peak RSS %.1f MiB (goal <= 64 MiB)\n' \
  "$(echo "$o / $k" | bc -l)" "$(echo "$c / $k" | bc -l)" "$(echo "$(rss kiln)/1024" | bc -l)"
printf 'load average at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
