#!/usr/bin/env bash
# The compress post-processor (multithreaded gzip, level 6) vs `gzip -6` and, when
# installed, `pigz -6` on the same file, in one run: the base image (~270 MiB qcow2).
#   bench/compress.sh [FILE]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-/var/tmp/kiln-base/base.qcow2}
KILN=${KILN:-${CARGO_TARGET_DIR:-$root/target}/release/kiln}
work=$(mktemp -d /tmp/kiln-bench-gz-XXXXXX); trap 'rm -rf "$work"' EXIT
cp "$src" "$work/big.img"
cat > "$work/b.rhai" <<'RHAI'
fn options() { #{} }
fn run(cfg, ctx) { ctx.artifact(#{ id: "input", files: ["big.img"] }) }
RHAI
cat > "$work/build.rhai" <<'RHAI'
source("s", builder("b.rhai", #{}));
build("c", #{ sources: ["s"], post: [compress(#{ output: "big.img.tar.gz", level: 6 })] });
RHAI
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
echo "input: $(du -h --apparent-size "$work/big.img" | cut -f1) ($src), $(nproc) cores"
for r in 1 2 3; do
  rm -f "$work/big.img.tar.gz"
  k=$(t "$KILN" build -q "$work")
  g=$(t sh -c "gzip -6 -c '$work/big.img' > '$work/g.gz'")
  p=-; command -v pigz >/dev/null && p=$(t sh -c "pigz -6 -c '$work/big.img' > '$work/p.gz'")
  printf 'round %s: kiln %.2f s (%s bytes)  gzip -6 %.2f s (%s bytes)  pigz -6 %s s\n' "$r" "$k" \
    "$(stat -c %s "$work/big.img.tar.gz")" "$g" "$(stat -c %s "$work/g.gz")" "$p"
done
