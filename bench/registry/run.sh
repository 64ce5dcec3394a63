#!/usr/bin/env bash
# The artifact registry benchmark: 100 000 generated versions, then channel lookup and `list`
# latency (p50/p99) through the HTTP API, and recording throughput with 8 concurrent writer
# processes, on SQLite and on PostgreSQL. Goal: channel lookup p99 <= 5 ms on both.
#
#   bench/registry/run.sh [VERSIONS] [REQUESTS]      (defaults 100000 2000)
#
# The baseline in the same run is the Store API called directly (no HTTP), so the table
# shows what the server adds. Needs PostgreSQL 15 (tools/setup.d/postgres.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
VERSIONS=${1:-100000}
REQUESTS=${2:-2000}
WRITERS=8
EACH=${WRITER_RECORDS:-250}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/kiln-target-registry}
cargo build -q --release -p kiln-registry --examples
bin=$CARGO_TARGET_DIR/release/examples
work=$(mktemp -d /var/tmp/kiln-peers/registry-bench.XXXXXX)
# Not inside $work: mktemp makes that 0700 root, and the postgres user must reach its cluster.
pgdir=$(mktemp -u /var/tmp/kiln-peers/registry-bench-pg.XXXXXX)
cleanup() { "$root/tools/peers/postgres.sh" stop "$pgdir" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work"
pgenv=$("$root/tools/peers/postgres.sh" start 0 "$pgdir")
eval "$pgenv"   # sets PORT and URL
out=$work/results.jsonl
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start" >&2

writers() { # LOCATION
  local t0 t1 pids=()
  t0=$(date +%s.%N)
  for w in $(seq 0 $((WRITERS - 1))); do
    "$bin/registry-writer" --registry "$1" --bucket writers --writer "$w" --count "$EACH" >/dev/null & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  t1=$(date +%s.%N)
  python3 -c "import sys; n=$WRITERS*$EACH; s=$t1-$t0; print('{\"measure\":\"writers\",\"backend\":\"%s\",\"records\":%d,\"seconds\":%.2f,\"per_second\":%.0f}' % (sys.argv[1], n, s, n/s))" "$2"
}

for backend in sqlite postgres; do
  if [ $backend = sqlite ]; then loc="sqlite:$work/registry.db"; else loc=$URL; fi
  echo "== $backend: generating $VERSIONS versions" >&2
  "$bin/registry-bench" generate --registry "$loc" --versions "$VERSIONS" | tee -a "$out" >&2
  echo "== $backend: HTTP latency ($REQUESTS requests each)" >&2
  "$bin/registry-bench" http --registry "$loc" --requests "$REQUESTS" | tee -a "$out" >&2
  echo "== $backend: $WRITERS writer processes x $EACH records" >&2
  writers "$loc" "$backend" | tee -a "$out" >&2
done

echo "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end" >&2
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["backend"], r["measure"]): r for r in rows}
print()
print("| measure | SQLite p50 / p99 (ms) | PostgreSQL p50 / p99 (ms) |")
print("|---|---|---|")
for m in ["channel_lookup_store", "channel_lookup_http", "terraform_state_http", "list_first_page_http", "list_deep_page_http"]:
    cells = []
    for b in ["sqlite", "postgres"]:
        r = by.get((b, m))
        cells.append(f'{r["p50_ms"]:.2f} / {r["p99_ms"]:.2f}' if r else "-")
    print(f"| {m} | {cells[0]} | {cells[1]} |")
for m, unit in [("generate", "versions/s (one process, 4 tasks)"), ("writers", "records/s (8 processes)")]:
    cells = [f'{by[(b, m)]["per_second"]:.0f}' if (b, m) in by else "-" for b in ["sqlite", "postgres"]]
    print(f"| {m} {unit} | {cells[0]} | {cells[1]} |")
print()
for b in ["sqlite", "postgres"]:
    h, s = by.get((b, "channel_lookup_http")), by.get((b, "channel_lookup_store"))
    if h and s:
        goal = "meets" if h["p99_ms"] <= 5.0 else "MISSES"
        print(f"{b}: channel lookup p99 {h['p99_ms']:.2f} ms {goal} the 5 ms goal; HTTP/store p50 ratio {h['p50_ms'] / max(s['p50_ms'], 1e-6):.2f}x")
PY
