#!/usr/bin/env bash
# bench/amazon/run.sh - kiln's amazon_ebs vs Debian's Packer 1.6.6 amazon-ebs, against the
# same moto_server and the same loopback sshd (which accepts moto's key pairs), the same
# recipe (packer.json / build.rhai: temporary RSA key pair and security group, one shell
# step, one file upload, the AMI copied to eu-west-1, tags on AMIs and snapshots).
# Alternating, ROUNDS rounds in one run. Per build: wall time, EC2 API requests moto
# answered (minus the sshd's key lookups), peak RSS of the process tree.
#
#   bench/amazon/run.sh --setup     # once: packer, moto venv, sshd (apt/pip only what is missing)
#   ROUNDS=5 bench/amazon/run.sh    # KILN=/path/to/kiln to pick the binary
. "$(dirname "$0")/lib.sh"
if [ "${1:-}" = --setup ]; then setup; exit 0; fi
setup
ROUNDS=${ROUNDS:-5}
start_peers "$(mktemp -d /var/tmp/kiln-bench-amazon.XXXXXX)"
results=$WORK/results.tsv
: > "$results"

one() { # one TOOL ROUND
  local tool=$1 round=$2 dir="$WORK/$1-$2" name="bench-$1-$2-$RANDOM" before t0 t1 rc=0
  project "$dir"
  before=$(moto_requests)
  t0=$(now)
  if [ "$tool" = kiln ]; then
    (cd "$dir" && KILN_STATE_DIR="$WORK/state" python3 "$HERE/peak_rss.py" "$dir/rss" -- \
      "$KILN" build --var "endpoint=$ENDPOINT" --var "ssh_port=$SSH_PORT" --var "ami_name=$name" . \
      >"$dir/out.log" 2>&1) || rc=$?
  else
    (cd "$dir" && python3 "$HERE/peak_rss.py" "$dir/rss" -- \
      "$PACKER" build -color=false -var "endpoint=$ENDPOINT" -var "ssh_port=$SSH_PORT" \
      -var "ami_name=$name" "$HERE/packer.json" >"$dir/out.log" 2>&1) || rc=$?
  fi
  t1=$(now)
  local calls=$(( $(moto_requests) - before ))
  [ "$rc" = 0 ] || { log "$tool round $round failed (exit $rc):"; tail -20 "$dir/out.log" >&2; }
  printf '%s\t%s\t%.3f\t%s\t%s\t%s\n' "$tool" "$round" "$(echo "$t1 - $t0" | bc)" "$calls" "$(cat "$dir/rss")" "$rc" >> "$results"
  log "$tool round $round: $(echo "$t1 - $t0" | bc | cut -c1-6) s, $calls requests, $(cat "$dir/rss") KiB, exit $rc"
}

for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then one packer "$r"; one kiln "$r"; else one kiln "$r"; one packer "$r"; fi
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -F'\t' -v t="$1" -v c="$2" '$1==t && $6==0 {print $c}' "$results"; }
echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; rounds: $ROUNDS (alternating)"
echo
printf '| %-7s | %-14s | %-12s | %-13s | %-8s |\n' tool "wall s (median)" "wall s (all)" "EC2 requests" "peak RSS MiB"
printf '|---------|-----------------|--------------|---------------|----------|\n'
for t in packer kiln; do
  w=$(col $t 3 | median); c=$(col $t 4 | median); m=$(col $t 5 | median)
  printf '| %-7s | %-15s | %-12s | %-13s | %-8s |\n' "$t" "$w" "$(col $t 3 | tr '\n' ' ')" "$c" "$(echo "scale=1; $m / 1024" | bc)"
done
pw=$(col packer 3 | median); kw=$(col kiln 3 | median)
pm=$(col packer 5 | median); km=$(col kiln 5 | median)
echo
echo "kiln/Packer wall time: $(echo "scale=3; $kw / $pw" | bc)   peak RSS: $(echo "scale=3; $km / $pm" | bc)"
echo "failed builds: $(awk -F'\t' '$6!=0' "$results" | wc -l)   raw results: $results"
