#!/usr/bin/env bash
# bench/amazon/faults.sh - the fault matrix: each phase (launching, waiting, provisioning,
# stopping, imaging) x each signal (INT, TERM, KILL), for kiln and for Packer 1.6.6, against
# moto (reset before every cell): what each build left in moto (live instances, key pairs,
# security groups, this account's AMIs and snapshots, volumes), and what is left after
# `kiln cleanup` (Packer has no such command: its "after" is its "before").
#
# kiln is held at a phase with KILN_TEST_PAUSE_AT; Packer with -debug, which pauses after
# every step (under `script`, which gives it the terminal it wants for the prompt):
#   launching, waiting -> after StepRunSourceInstance (Packer waits for "running" inside it)
#   provisioning       -> after StepConnect (connected, before the provisioners)
#   stopping           -> after StepStopEBSBackedInstance
#   imaging            -> after StepCreateAMI
# INT/TERM go to the tool's process (Packer's process group, as Ctrl-C would); KILL kills
# the whole process group (Packer's builder plugin too), as a crash or an OOM kill would.
#
#   bench/amazon/faults.sh            # PHASES="..." SIGNALS="..." TOOLS="kiln packer" to narrow
. "$(dirname "$0")/lib.sh"
setup
PHASES=${PHASES:-launching waiting provisioning stopping imaging}
SIGNALS=${SIGNALS:-INT TERM KILL}
TOOLS=${TOOLS:-kiln packer}
start_peers "$(mktemp -d /var/tmp/kiln-bench-faults.XXXXXX)"

left() { python3 "$HERE/moto_state.py" "$ENDPOINT" us-east-1 eu-west-1 | awk '
  $1=="total" {t=$2; next} $2>0 {s=s sprintf("%s%s %s", (s?", ":""), $2, $1)}
  END {print (t? t " (" s ")" : "0")}'; }

wait_for() { # wait_for FILE PATTERN: up to 300 s
  for _ in $(seq 3000); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; tail -20 "$1" >&2; return 1
}

kiln_cell() { # kiln_cell PHASE SIG
  local dir="$WORK/kiln-$1-$2"; project "$dir"
  ( cd "$dir" && exec env KILN_TEST_PAUSE_AT="$1" KILN_STATE_DIR="$WORK/state" "$KILN" build \
      --var "endpoint=$ENDPOINT" --var "ssh_port=$SSH_PORT" --var "ami_name=fault-$1-$2" . ) \
      >"$dir/out.log" 2>&1 &
  local pid=$!
  wait_for "$dir/out.log" "paused at $1"
  kill -"$2" "$pid"; wait "$pid" || true
  local before; before=$(left)
  KILN_STATE_DIR="$WORK/state" "$KILN" cleanup >"$dir/cleanup.log" 2>&1 || true
  printf '| kiln   | %-12s | SIG%-4s | %-40s | %-10s |\n' "$1" "$2" "$before" "$(left)"
}

packer_cell() { # packer_cell PHASE SIG
  local dir="$WORK/packer-$1-$2" step
  case $1 in
    launching|waiting) step=StepRunSourceInstance ;;
    provisioning) step=StepConnect ;;
    stopping) step=StepStopEBSBackedInstance ;;
    imaging) step=StepCreateAMI ;;
  esac
  project "$dir"; rm -f "$dir/in"; mkfifo "$dir/in"
  local cmd
  cmd="echo \$\$ > '$dir/pid'; exec env CHECKPOINT_DISABLE=1 '$PACKER' build -debug -color=false \
    -var endpoint=$ENDPOINT -var ssh_port=$SSH_PORT -var ami_name=fault-$1-$2 '$HERE/packer.json'"
  ( cd "$dir" && exec script -qfec "$cmd" /dev/null <"$dir/in" >"$dir/out.log" 2>&1 ) &
  local spid=$!
  exec 3>"$dir/in"
  wait_for "$dir/pid" .
  local pid; pid=$(cat "$dir/pid")
  # Press enter at every pause until the one after the target step.
  local seen=0 n
  for _ in $(seq 3000); do
    n=$(grep -c "Press enter to continue" "$dir/out.log" || true)
    if [ "$n" -gt "$seen" ]; then
      seen=$n
      if tr -d '\r' <"$dir/out.log" | grep "Press enter" | tail -1 | grep -q "'$step'"; then break; fi
      printf '\n' >&3
    fi
    sleep 0.05
  done
  if [ "$2" = KILL ]; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"; else kill -"$2" -- "-$pid" 2>/dev/null || kill -"$2" "$pid"; fi
  # Packer may pause again while it cleans up: keep pressing enter until it is gone.
  for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; printf '\n' >&3 2>/dev/null || true; sleep 0.5; done
  exec 3>&-
  wait "$spid" 2>/dev/null || true
  local before; before=$(left)
  printf '| Packer | %-12s | SIG%-4s | %-40s | %-10s |\n' "$1" "$2" "$before" "(no cleanup command) $before"
}

echo "| tool   | phase        | signal  | left in moto after the fault             | after kiln cleanup |"
echo "|--------|--------------|---------|------------------------------------------|------------|"
for phase in $PHASES; do
  for sig in $SIGNALS; do
    for tool in $TOOLS; do
      reset_moto
      if [ "$tool" = kiln ]; then kiln_cell "$phase" "$sig"; else packer_cell "$phase" "$sig"; fi
    done
  done
done
echo
echo "logs: $WORK"
