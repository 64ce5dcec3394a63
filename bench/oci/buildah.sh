#!/usr/bin/env bash
# bench/oci/buildah.sh - kiln's oci builder vs Debian's buildah on the same 5-step recipe
# (issue 11, section 8), alternating, in one invocation, both pushing to the same local
# docker-registry on 127.0.0.1 (started and stopped here).
#
#   bench/oci/buildah.sh                 # ROUNDS=3, BIG_MIB=500
#   ROUNDS=5 KILN=/path/to/kiln bench/oci/buildah.sh
#   KEEP=1 ...                           # keep the work dir (logs, results.tsv) at exit
#
# The recipe (bench/oci/build.rhai for kiln, the same commands below for buildah, and
# bench/oci/Containerfile for `buildah build`), on oci-layout:/var/tmp/kiln-base/oci:bookworm
# (tools/oci-base-image.sh):
#   (1) shell: writes 102 files, deletes one of them and /etc/issue.net (from the base)
#   (2) a 50 MiB upload of random data (generated once per invocation)
#   (3) an apt-free package: a tarball unpacked into /opt/pkg
#   (4) env / entrypoint / cmd / workdir changes
#   (5) a last small shell step (the warm rebuild changes only what it writes)
#
# Three builders, each round in this order (kiln first, then the two buildah ways):
#   kiln     `kiln build` with a fresh KILN_CACHE_DIR (cold), then the same cache (warm:
#            steps 1-3 come from kiln's layer cache), then `--no-cache` with the inputs of
#            the cold build (repro: every step runs again; same digest expected).
#   buildah  `buildah from` / `run` / `copy` / `config` / `commit --timestamp 0` / `push`,
#            `--isolation chroot`, storage in a fresh temp dir (--root/--runroot). A scripted
#            buildah build has no step cache: warm = every step again, with the base image
#            already in its storage; one commit, so one layer over the base.
#   build    `buildah build --layers --timestamp 0 --isolation chroot` of the Containerfile in
#            a fresh storage: the fair warm comparison (its layer cache keeps RUN/COPY/ADD);
#            repro with `--no-cache`.
# Every build ends with the image pushed: cold to a fresh docker-registry of its own (no
# blob of an earlier build to mount or skip), warm and repro to the same registry and
# repository, so blobs already there are skipped by both. Wall times are whole commands. Sizes
# and digests are read back from the registry (manifest + config + layers as stored).
# Then kiln's peak RSS (/usr/bin/time -v) building and pushing one 500 MiB layer (a
# random-data upload), and buildah's for the same, for comparison.
# Needs root (containers, overlayfs). Installs buildah and GNU time if missing
# (bench/oci/setup.sh) and docker-registry (tools/setup.d/registry.sh).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
BIG_MIB=${BIG_MIB:-500}
BUILDAH_DRIVER=${BUILDAH_DRIVER:-overlay}
root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/bench/oci
work=${KILN_BENCH_DIR:-/var/tmp/kiln-bench-oci}
base_dir=${KILN_BASE_DIR:-/var/tmp/kiln-base}
base_layout=$base_dir/oci:bookworm
log() { printf '[bench/oci/buildah %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (kiln's and buildah's containers, overlayfs)"
KILN=${KILN:-${CARGO_TARGET_DIR:-$root/target}/release/kiln}
if [ ! -x "$KILN" ]; then
  log "building kiln (release)"
  (cd "$root" && cargo build -q --release -p kiln)
fi
"$root/bench/oci/setup.sh"
"$root/tools/setup.d/registry.sh"
"$root/tools/oci-base-image.sh"
[ "$base_dir" = /var/tmp/kiln-base ] || die "the recipe names /var/tmp/kiln-base/oci (Containerfile): KILN_BASE_DIR must be unset"

cleanup() {
  set +e
  for s in "$work"/storage/*; do
    [ -d "$s/root" ] && buildah --root "$s/root" --runroot "$s/run" --storage-driver "$BUILDAH_DRIVER" rm --all >/dev/null 2>&1
  done
  # Whatever the storage driver left mounted under the work dir (nothing, normally).
  grep -o " $work/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
  stop_registries
  [ "${KEEP:-0}" = 1 ] && { echo "kept $work (KEEP=1)" >&2; return; }
  rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$work"
mkdir -p "$work/proj/files" "$work/big/files" "$work/storage" "$work/cache" "$work/state" "$work/reg" "$work/out"

# --- inputs, once per invocation ---------------------------------------------------------
log "generating inputs (50 MiB random upload, package tarball)"
head -c $((50 << 20)) /dev/urandom > "$work/proj/files/blob.bin"
mkdir -p "$work/pkgsrc/bin" "$work/pkgsrc/share/doc"
for i in $(seq 200); do seq 1 $((i * 50)) > "$work/pkgsrc/share/doc/f$i.txt"; done
printf '#!/bin/sh\necho "pkg 1.0 $*"\n' > "$work/pkgsrc/bin/pkg"
chmod 755 "$work/pkgsrc/bin/pkg"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/pkgsrc" -cf - . \
  | gzip -n > "$work/proj/files/pkg.tar.gz"
cp "$here/build.rhai" "$here/Containerfile" "$work/proj/"
cp "$here/big.rhai" "$work/big/build.rhai"

# --- the registries ----------------------------------------------------------------------
# Debian's docker-registry, one config. Every cold build pushes to a fresh, empty instance
# (one per builder per round): buildah remembers where it pushed each blob
# (/var/lib/containers/cache/blob-info-cache-v1.boltdb, shared by all its stores) and
# would otherwise mount a blob from an earlier round's repository instead of compressing
# and uploading it, which would make its "cold" push a warm one. Warm and repro builds push
# to the cold build's registry and repository, so both tools skip the blobs already there.
reg_pids=()
start_registry() { # name -> sets reg=127.0.0.1:PORT
  local d=$work/reg/$1 p
  p=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$d"
  cat > "$d/config.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $d/data
http:
  addr: 127.0.0.1:$p
YML
  docker-registry serve "$d/config.yml" > "$d/log" 2>&1 &
  reg_pids+=($!)
  reg=127.0.0.1:$p
  for _ in $(seq 600); do curl -sf -o /dev/null "http://$reg/v2/" && return 0; sleep 0.1; done
  die "docker-registry did not start: $(cat "$d/log")"
}
stop_registries() {
  local p
  # (wait returns 143 for a registry it was asked to stop: not an error here)
  for p in "${reg_pids[@]}"; do kill "$p" 2>/dev/null && { wait "$p" 2>/dev/null || true; }; done
  reg_pids=()
  rm -rf "$work/reg"
}

# --- helpers -----------------------------------------------------------------------------
now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b-a)/1e9 }'; }
# "DIGEST BYTES LAYERS" of REPO:TAG as the registry stores it (manifest + config + layers).
reg_info() {
  /usr/bin/python3 - "$reg" "$1" "$2" <<'PY'
import hashlib, json, sys, urllib.request
reg, repo, tag = sys.argv[1:]
req = urllib.request.Request(f"http://{reg}/v2/{repo}/manifests/{tag}", headers={"Accept": ",".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json"])})
body = urllib.request.urlopen(req, timeout=60).read()
m = json.loads(body)
size = len(body) + m["config"]["size"] + sum(l["size"] for l in m["layers"])
print("sha256:" + hashlib.sha256(body).hexdigest(), size, len(m["layers"]))
PY
}
results=$work/results.tsv   # round tool phase seconds digest bytes layers
parts=$work/parts.tsv       # round tool phase start base steps push (seconds)
: > "$results"; : > "$parts"
stamp() { while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done; }
mark() { marks+=("$EPOCHREALTIME"); }
record() { # round tool phase seconds repo tag
  local info
  info=$(reg_info "$5" "$6") || die "$2 $3: $5:$6 is not in the registry"
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${info// /$'\t'}" >> "$results"
  printf '  round %s  %-8s %-5s %8.3f s  %s\n' "$1" "$2" "$3" "$4" "$info"
}
run_logged() { # logfile cmd...: runs, shows the log if it fails
  local out=$1; shift
  if ! "$@" > "$out" 2>&1; then log "failed: $*"; tail -40 "$out" >&2; exit 1; fi
}

kiln_build() { # round phase cache repo tag last [kiln args...]
  local r=$1 phase=$2 cache=$3 repo=$4 tag=$5 last=$6; shift 6
  local t0 t1
  local t0 t1 out=$work/out/kiln-$r-$phase.log
  t0=$(now)
  if ! env -u SOURCE_DATE_EPOCH -u REGISTRY_AUTH_FILE \
    KILN_CACHE_DIR="$cache" KILN_STATE_DIR="$work/state" NO_COLOR=1 \
    "$KILN" build "$@" --var registry="$reg" --var repo="$repo" --var tag="$tag" --var last="$last" "$work/proj" \
    2>&1 | stamp > "$out"; then
    log "kiln build failed"; tail -40 "$out" >&2; exit 1
  fi
  t1=$(now)
  # Parts, from the stamped lines: base image read (and unpacked when the cache is cold),
  # steps + commit, push.
  awk -v t0="$t0" -v t1="$t1" -v r="$r" -v p="$phase" '
    /Reading base image/ { a = $1 } / Base image / { b = $1 } / Pushing sha256:/ { c = $1 }
    END { printf "%s\tkiln\t%s\t%.3f\t%.3f\t%.3f\t%.3f\n", r, p, a - t0 / 1e9, b - a, c - b, t1 / 1e9 - c }' \
    "$out" >> "$parts"
  record "$r" kiln "$phase" "$(secs "$t0" "$t1")" "$repo" "$tag"
}

ba() { # storage args...: buildah on a private storage
  local s=$1; shift
  buildah --root "$s/root" --runroot "$s/run" --storage-driver "$BUILDAH_DRIVER" "$@"
}

# The recipe as a buildah script: one working container, one commit. (Each command ends
# in `|| return`: run_logged calls this in an `if`, where `set -e` does not apply.)
buildah_steps() { # storage name repo tag last
  local s=$1 name=$2 repo=$3 tag=$4 last=$5 f=$work/proj/files
  mark
  ba "$s" from --quiet --name "$name" "oci:$base_layout" >/dev/null || return
  mark
  ba "$s" run --isolation chroot "$name" -- /bin/sh -ec '
    mkdir -p /srv/app/conf
    for i in $(seq 1 100); do echo "key$i=value$i" > /srv/app/conf/$i.conf; done
    seq 1 20000 > /srv/app/numbers.txt
    echo scratch > /srv/app/scratch.tmp
    rm /srv/app/scratch.tmp /etc/issue.net' || return
  ba "$s" copy --quiet "$name" "$f/blob.bin" /srv/blob.bin >/dev/null || return
  ba "$s" copy --quiet "$name" "$f/pkg.tar.gz" /tmp/pkg.tar.gz >/dev/null || return
  ba "$s" run --isolation chroot "$name" -- /bin/sh -ec \
    'mkdir -p /opt/pkg && tar -xzf /tmp/pkg.tar.gz -C /opt/pkg && rm /tmp/pkg.tar.gz' || return
  ba "$s" config --env APP_ENV=bench \
    --env PATH=/opt/pkg/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["--version"]' --entrypoint '["/opt/pkg/bin/pkg"]' --workingdir /srv/app "$name" || return
  ba "$s" run --isolation chroot "$name" -- /bin/sh -ec "echo build-$last > /srv/app/BUILD" || return
  ba "$s" commit --quiet --timestamp 0 --rm "$name" "localhost/bench-script:$tag" >/dev/null || return
  mark
  ba "$s" push --quiet --tls-verify=false "localhost/bench-script:$tag" "docker://$reg/$repo:$tag" || return
  mark
}
buildah_script() { # round phase storage repo tag last
  local r=$1 phase=$2 s=$3 repo=$4 tag=$5 last=$6 t0 t1
  marks=()
  t0=$(now)
  run_logged "$work/out/buildah-$r-$phase.log" buildah_steps "$s" "bench-$r-$phase" "$repo" "$tag" "$last"
  t1=$(now)
  awk -v r="$r" -v p="$phase" -v t0="$t0" -v m="${marks[*]}" 'BEGIN { split(m, x, " ")
    printf "%s\tbuildah\t%s\t%.3f\t%.3f\t%.3f\t%.3f\n", r, p, x[1] - t0 / 1e9, x[2] - x[1], x[3] - x[2], x[4] - x[3] }' >> "$parts"
  record "$r" buildah "$phase" "$(secs "$t0" "$t1")" "$repo" "$tag"
}
buildah_file_steps() { # storage repo tag last [buildah build args...]
  local s=$1 repo=$2 tag=$3 last=$4; shift 4
  mark
  ba "$s" build --quiet --isolation chroot --layers --timestamp 0 --build-arg LAST="$last" "$@" \
    -t "localhost/bench-file:$tag" -f "$work/proj/Containerfile" "$work/proj" || return
  mark
  ba "$s" push --quiet --tls-verify=false "localhost/bench-file:$tag" "docker://$reg/$repo:$tag" || return
  mark
}
buildah_file() { # round phase storage repo tag last [buildah build args...]
  local r=$1 phase=$2 s=$3 repo=$4 tag=$5 last=$6; shift 6
  local t0 t1
  marks=()
  t0=$(now)
  run_logged "$work/out/build-$r-$phase.log" buildah_file_steps "$s" "$repo" "$tag" "$last" "$@"
  t1=$(now)
  # `buildah build` imports the base inside the build: its part is in "steps".
  awk -v r="$r" -v p="$phase" -v t0="$t0" -v m="${marks[*]}" 'BEGIN { split(m, x, " ")
    printf "%s\tbuild\t%s\t%.3f\t-\t%.3f\t%.3f\n", r, p, x[1] - t0 / 1e9, x[2] - x[1], x[3] - x[2] }' >> "$parts"
  record "$r" build "$phase" "$(secs "$t0" "$t1")" "$repo" "$tag"
}

# --- the rounds --------------------------------------------------------------------------
echo "kiln $("$KILN" --version 2>/dev/null | head -1), $(buildah --version), storage driver $BUILDAH_DRIVER"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
loads=()
for r in $(seq "$ROUNDS"); do
  loads+=("$(cut -d' ' -f1 /proc/loadavg)")
  echo "round $r (load $(cut -d' ' -f1-3 /proc/loadavg))"
  kc=$work/cache/kiln-$r; sb=$work/storage/script-$r; sf=$work/storage/file-$r
  mkdir -p "$kc" "$sb" "$sf"
  start_registry "kiln-$r"; reg_k=$reg
  start_registry "buildah-$r"; reg_b=$reg
  start_registry "build-$r"; reg_f=$reg
  # Which tool goes first flips every round (odd: kiln first; even: kiln last).
  for phase in cold warm repro; do
    case $phase in
      cold) k=(v1 1); b=(v1 1); kx=(); bx=() ;;
      warm) k=(v2 2); b=(v2 2); kx=(); bx=() ;;
      repro) k=(v1r 1); b=(v1r 1); kx=(--no-cache); bx=(--no-cache) ;;
    esac
    if [ $((r % 2)) = 1 ]; then reg=$reg_k; kiln_build "$r" "$phase" "$kc" "bench/kiln-$r" "${k[@]}" "${kx[@]}"; fi
    reg=$reg_b; buildah_script "$r" "$phase" "$sb" "bench/buildah-$r" "${b[@]}"
    reg=$reg_f; buildah_file "$r" "$phase" "$sf" "bench/build-$r" "${b[@]}" "${bx[@]}"
    if [ $((r % 2)) = 0 ]; then reg=$reg_k; kiln_build "$r" "$phase" "$kc" "bench/kiln-$r" "${k[@]}" "${kx[@]}"; fi
  done
  grep -q "Using cached layer for step 3" "$work/out/kiln-$r-warm.log" \
    || die "kiln's warm build did not reuse steps 1-3: $(cat "$work/out/kiln-$r-warm.log")"
  # Free the round's storage (a buildah storage holds ~4 copies of the image).
  ba "$sb" rm --all >/dev/null 2>&1 || true
  ba "$sb" rmi --all --force >/dev/null 2>&1 || true
  ba "$sf" rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$kc" "$sb" "$sf"
  stop_registries
done

# --- peak RSS with one big layer ---------------------------------------------------------
log "peak RSS: one ${BIG_MIB} MiB random-data layer, built and pushed"
head -c $((BIG_MIB << 20)) /dev/urandom > "$work/big/files/big.bin"
start_registry big-kiln
t0=$(now)
run_logged "$work/out/kiln-big.log" /usr/bin/time -v -o "$work/out/kiln-big.time" \
  env KILN_CACHE_DIR="$work/cache/big" KILN_STATE_DIR="$work/state" NO_COLOR=1 \
  "$KILN" build --var registry="$reg" "$work/big"
t1=$(now)
grep -q "Pushed $reg/bench/big@sha256:" "$work/out/kiln-big.log" || die "kiln did not push the big image: $(cat "$work/out/kiln-big.log")"
kiln_big_s=$(secs "$t0" "$t1")
kiln_rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2/1024 }' "$work/out/kiln-big.time")
sb=$work/storage/big
mkdir -p "$sb"
start_registry big-buildah
big_steps() {
  ba "$sb" from --quiet --name big "oci:$base_layout" >/dev/null || return
  ba "$sb" copy --quiet big "$work/big/files/big.bin" /srv/big.bin >/dev/null || return
  ba "$sb" commit --quiet --timestamp 0 --rm big localhost/big:v1 >/dev/null || return
  ba "$sb" push --quiet --tls-verify=false localhost/big:v1 "docker://$reg/bench/big-buildah:v1"
}
export -f ba big_steps
export sb work base_layout reg BUILDAH_DRIVER
t0=$(now)
run_logged "$work/out/buildah-big.log" /usr/bin/time -v -o "$work/out/buildah-big.time" bash -c big_steps
t1=$(now)
buildah_big_s=$(secs "$t0" "$t1")
buildah_rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2/1024 }' "$work/out/buildah-big.time")
rm -f "$work/big/files/big.bin"
stop_registries

# --- summary -----------------------------------------------------------------------------
echo
echo "load average per round start: ${loads[*]}; at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "medians of $ROUNDS rounds (seconds; size = manifest + config + layers in the registry):"
awk -F'\t' -v rounds="$ROUNDS" '
  { t[$2 SUBSEP $3] = t[$2 SUBSEP $3] " " $4; d[$2 SUBSEP $3 SUBSEP $1] = $5
    s[$2 SUBSEP $3] = $6; l[$2 SUBSEP $3] = $7 }
  function median(list,   n, a, i, j, x) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { x = a[i]; a[i] = a[j]; a[j] = x }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  # "yes (n/n)" when every repro digest equals its round'"'"'s cold digest, and every cold digest the first.
  function same(tool,   r, ok, n, first) {
    ok = 0; n = 0; first = d[tool SUBSEP "cold" SUBSEP 1]
    for (r = 1; r <= rounds; r++) {
      n += 2
      if (d[tool SUBSEP "repro" SUBSEP r] == d[tool SUBSEP "cold" SUBSEP r]) ok++
      if (d[tool SUBSEP "cold" SUBSEP r] == first) ok++
    }
    return (ok == n ? "yes" : "NO") " (" ok "/" n ")"
  }
  END {
    kc = median(t["kiln" SUBSEP "cold"]); kw = median(t["kiln" SUBSEP "warm"]); kr = median(t["kiln" SUBSEP "repro"])
    printf "| builder | cold s | warm s (last step changed) | repro s (identical inputs, no cache) | size MiB (layers) | same digest |\n|---|---|---|---|---|---|\n"
    split("kiln buildah build", tools, " ")
    name["kiln"] = "kiln oci builder"; name["buildah"] = "buildah from/run/copy/commit"; name["build"] = "buildah build --layers"
    for (i = 1; i <= 3; i++) {
      x = tools[i]
      printf "| %s | %.2f | %.2f | %.2f | %.1f (%d) | %s |\n", name[x], median(t[x SUBSEP "cold"]), median(t[x SUBSEP "warm"]),
        median(t[x SUBSEP "repro"]), s[x SUBSEP "cold"] / 1048576, l[x SUBSEP "cold"], same(x)
    }
    for (i = 2; i <= 3; i++) {
      x = tools[i]
      printf "kiln / %s: cold %.2fx (goal <= 1.0x), warm %.2fx (goal <= 0.3x), repro %.2fx\n", name[x],
        kc / median(t[x SUBSEP "cold"]), kw / median(t[x SUBSEP "warm"]), kr / median(t[x SUBSEP "repro"])
    }
  }' "$results"
echo
echo "where the time goes (medians, seconds; base = read + unpack/import the base image, steps include the commit):"
awk -F'\t' '
  { k = $2 SUBSEP $3; for (i = 4; i <= 7; i++) v[k SUBSEP i] = v[k SUBSEP i] " " $i; seen[k] = 1 }
  function median(list,   n, a, i, j, x) {
    n = split(list, a, " "); if (a[1] == "-") return "-"
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { x = a[i]; a[i] = a[j]; a[j] = x }
    return sprintf("%.2f", (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2)
  }
  END {
    printf "| builder | phase | start | base | steps | push |\n|---|---|---|---|---|---|\n"
    split("kiln buildah build", tools, " "); split("cold warm repro", phases, " ")
    for (i = 1; i <= 3; i++) for (j = 1; j <= 3; j++) {
      k = tools[i] SUBSEP phases[j]; if (!(k in seen)) continue
      printf "| %s | %s | %s | %s | %s | %s |\n", tools[i], phases[j], median(v[k SUBSEP 4]), median(v[k SUBSEP 5]), median(v[k SUBSEP 6]), median(v[k SUBSEP 7])
    }
  }' "$parts"
echo "peak RSS, one ${BIG_MIB} MiB layer built and pushed: kiln ${kiln_rss} MiB in ${kiln_big_s} s (goal <= 64 MiB), buildah ${buildah_rss} MiB in ${buildah_big_s} s"
awk -v k="$kiln_rss" 'BEGIN { exit !(k <= 64) }' || { log "kiln's peak RSS ${kiln_rss} MiB is above 64 MiB"; exit 1; }
