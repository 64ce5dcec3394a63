#!/usr/bin/env bash
# Cost of one `machine.exec` round trip through kiln's sandboxes, against a real
# loopback sshd, in one run: N execs of `true` from a Rhai closure step and from a WASM
# provisioner (examples/hello-provisioner with repeat=N). Each exec's SSH time is in
# the audit log (measured around the SSH call itself); the step time comes from the
# `step-end` event. Overhead per call = step time / N - mean SSH exec time.
#
#   bench/exec-overhead.sh            # N=200, 3 rounds
#   KILN=/var/tmp/kiln-old bench/exec-overhead.sh   # another kiln binary
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-200}; ROUNDS=${ROUNDS:-3}
# root's ~/.bashrc here runs `pyenv init` on every SSH command (Debian bash sources it
# for sshd); the peer user kilntest has /bin/sh, so the exec measured is the SSH cost.
BENCH_USER=${BENCH_USER:-kilntest}
cd "$root"
# KILN=/path/to/kiln measures that binary (e.g. an older build, for a same-run comparison).
if [ -z "${KILN:-}" ]; then
  cargo build --release -q
  KILN=${CARGO_TARGET_DIR:-$root/target}/release/kiln
fi
tools/build-guests.sh 2>/dev/null
work=$(mktemp -d /tmp/kiln-bench-exec-XXXXXX)
eval "$(tools/peers/sshd.sh start 0 "$work/peer")"
trap 'tools/peers/sshd.sh stop "$work/peer" >/dev/null; rm -rf "$work"' EXIT
# sshd reads authorized_keys as the logged-in user: let kilntest read the peer's.
chmod 755 "$work" "$work/peer"; chmod 644 "$work/peer/authorized_keys"
mkdir -p "$work/proj/keys" "$work/proj/provisioners"
cp "$KEY" "$work/proj/keys/id"
cp "${KILN_GUEST_TARGET_DIR:-$root/target/guests}/wasm32-wasip2/release/hello_provisioner.wasm" "$work/proj/provisioners/"
cat > "$work/proj/build.rhai" <<RHAI
source("box", ssh_host(#{ host: "127.0.0.1", ssh: #{ user: "$BENCH_USER", port: $PORT, private_key_file: "keys/id", host_key: "$FINGERPRINT" } }));
build("rhai", #{ sources: ["box"], steps: [ |m| { for i in 0..$N { m.exec("true"); } } ] });
build("wasm", #{ sources: ["box"], steps: [ wasm("provisioners/hello_provisioner.wasm", #{ command: "true", repeat: $N }) ] });
RHAI
for r in $(seq "$ROUNDS"); do
  for b in rhai wasm; do
    rm -rf "$work/proj/.kiln"
    "$KILN" build --machine-readable --only "$b" "$work/proj" > "$work/$b-$r.jsonl" \
      || { tail -5 "$work/$b-$r.jsonl" >&2; exit 1; }
    cat "$work"/proj/.kiln/runs/*/audit.jsonl > "$work/$b-$r.audit"
  done
done
python3 - "$work" "$N" "$ROUNDS" <<'PY'
import json, sys, statistics, glob
work, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = {}
for b in ("rhai", "wasm"):
    per_call, ssh, over = [], [], []
    for r in range(1, rounds + 1):
        ev = [json.loads(l) for l in open(f"{work}/{b}-{r}.jsonl")]
        step = [e for e in ev if e.get("type") == "step-end"][0]["seconds"]
        au = [json.loads(l) for l in open(f"{work}/{b}-{r}.audit")]
        ex = [a["duration_ms"] for a in au if a["capability"] == "machine" and a["object"].startswith("exec")]
        assert len(ex) == n, (b, len(ex))
        pc = step * 1000 / n; s = statistics.mean(ex)
        per_call.append(pc); ssh.append(s); over.append(pc - s)
    rows[b] = (statistics.median(per_call), statistics.median(ssh), statistics.median(over))
print(f"exec round trips: N={n} per step, {rounds} rounds, medians")
print("| caller | per exec, ms | SSH exec itself, ms | overhead per call, ms | overhead / SSH exec |")
print("|---|---|---|---|---|")
for b, (pc, s, o) in rows.items():
    print(f"| {b} | {pc:.3f} | {s:.3f} | {o:.3f} | {100*o/s:.1f}% |")
PY
