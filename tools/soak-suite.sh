#!/usr/bin/env bash
# The whole test suite (exactly what tools/test.sh runs: `cargo test --release
# --workspace`, nothing excluded) RUNS times in a row (default 3) while `stress-ng --cpu 2`
# keeps two CPUs busy, to show the suite does not flake on a loaded machine.
# Stops at the first failing run. Each run's log goes to $KILN_SOAK_DIR (default
# /var/tmp/kiln-soak/<UTC time>/run-N.log); a summary is printed at the end.
#
#   tools/soak-suite.sh            # 3 runs
#   tools/soak-suite.sh 5          # 5 runs
#   KILN_SOAK_CPUS=4 tools/soak-suite.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-3}
cpus=${KILN_SOAK_CPUS:-2}
dir=${KILN_SOAK_DIR:-/var/tmp/kiln-soak/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$dir"

if ! command -v stress-ng >/dev/null; then
    echo "soak: installing stress-ng"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q stress-ng \
        || { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 update -q &&
             DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q stress-ng; }
fi

# What tools/test.sh does before its cargo test: peers, guests, base image.
tools/setup.sh
tools/build-guests.sh
tools/base-image.sh
tools/oci-base-image.sh

# Build first, unloaded: compile time is not what this measures.
echo "soak: building the test binaries"
cargo test --release --workspace --no-run >"$dir/build.log" 2>&1 || {
    tail -50 "$dir/build.log"
    echo "soak: the build failed (log: $dir/build.log)"
    exit 1
}

stress-ng --cpu "$cpus" --timeout 0 --quiet &
stress=$!
trap 'kill "$stress" 2>/dev/null || true; wait "$stress" 2>/dev/null || true' EXIT
echo "soak: stress-ng --cpu $cpus running (pid $stress); $runs runs, logs in $dir"

summary=()
started=$(date +%s)
for i in $(seq 1 "$runs"); do
    t0=$(date +%s)
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    if cargo test --release --workspace >"$dir/run-$i.log" 2>&1; then
        result=passed
    else
        result=FAILED
    fi
    secs=$(($(date +%s) - t0))
    counts=$(grep -E '^test result:' "$dir/run-$i.log" |
        awk '{p+=$4; f+=$6} END {printf "%d passed, %d failed", p, f}')
    line="run $i/$runs: $result in ${secs}s ($counts; load at start $load)"
    echo "soak: $line"
    summary+=("$line")
    if [ "$result" = FAILED ]; then
        grep -E '^(test .* FAILED|failures:|---- )' "$dir/run-$i.log" | head -40 || true
        echo "soak: stopped at the first failing run (log: $dir/run-$i.log)"
        exit 1
    fi
done
total=$(($(date +%s) - started))
{
    echo "soak: $runs consecutive runs of the whole suite under stress-ng --cpu $cpus, all passed"
    printf '  %s\n' "${summary[@]}"
    echo "  total ${total}s; logs in $dir"
} | tee "$dir/summary.txt"
