#!/usr/bin/env bash
# Multi-process JAX on one machine: N CPU processes with M virtual devices each, one coordinator on localhost.
# The same code path as a multi-host TPU or GPU run (jax.distributed.initialize, per-host data shards,
# cross-process collectives over gloo), for testing it on a laptop or CI.
#
#   bash launch/local_multiprocess.sh --config configs/quickstart.py --workdir runs/mp \
#     [--num-processes 2] [--devices-per-process 2] [--port 12355] [--extra "--config.train.steps=20"] [--dry-run]
#
# Each process i runs `$PYTHON -m jaxdiff.train --config C --workdir W --distributed EXTRA` (PYTHON defaults to
# python) with JAX_PLATFORMS=cpu, XLA_FLAGS=--xla_force_host_platform_device_count=M,
# JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT, JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i, which
# jaxdiff.training.distributed.initialize passes to jax.distributed.initialize. Output goes to
# W/logs/process_<i>.log. After the first failure the other processes are stopped (they would wait for it);
# the exit status is 1 if any process failed.
set -euo pipefail

PROG=local_multiprocess.sh

die() {  # One-line error, exit status 2.
  echo "$PROG: $*" >&2
  exit 2
}

NPROC=2 NDEV=2 PORT=12355 CONFIG="" WORKDIR="" EXTRA="" DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    -h|--help) sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    --dry-run) DRY_RUN=1; shift; continue ;;
    --num-processes|--devices-per-process|--port|--config|--workdir|--extra)
      [[ $# -ge 2 ]] || die "$1 needs a value" ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  case "$1" in
    --num-processes) NPROC=$2 ;;
    --devices-per-process) NDEV=$2 ;;
    --port) PORT=$2 ;;
    --config) CONFIG=$2 ;;
    --workdir) WORKDIR=$2 ;;
    --extra) EXTRA=$2 ;;
  esac
  shift 2
done

[[ -n $CONFIG ]] || die "missing --config (see --help)"
[[ -f $CONFIG ]] || die "config file $CONFIG: not found"
for n in "$NPROC" "$NDEV" "$PORT"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "not a positive integer: $n"
done
WORKDIR=${WORKDIR:-runs/$(basename "$CONFIG" .py)}
LOGDIR=$WORKDIR/logs
read -r -a extra <<< "$EXTRA"

process_cmd() {  # The command line of process $1, as words.
  CMD=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$NDEV${XLA_FLAGS:+ $XLA_FLAGS}"
       "JAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT" "JAX_NUM_PROCESSES=$NPROC" "JAX_PROCESS_ID=$1"
       "${PYTHON:-python}" -m jaxdiff.train --config "$CONFIG" --workdir "$WORKDIR" --distributed
       ${extra[@]+"${extra[@]}"})
}

if [[ $DRY_RUN == 1 ]]; then
  for ((i = 0; i < NPROC; i++)); do
    process_cmd "$i"
    echo "+ ${CMD[*]} > $LOGDIR/process_$i.log 2>&1 &"
  done
  exit 0
fi

mkdir -p "$LOGDIR"
PIDS=()
stop_all() {  # Stop the processes that are still running (finished ones are blanked out in PIDS).
  local pid
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    [[ -z $pid ]] || kill "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM
for ((i = 0; i < NPROC; i++)); do
  process_cmd "$i"
  "${CMD[@]}" > "$LOGDIR/process_$i.log" 2>&1 &
  PIDS+=($!)
done
echo "$PROG: started $NPROC processes (pids ${PIDS[*]}); logs in $LOGDIR/" >&2

# Poll so that the first failure, whichever process it is, stops the others at once.
FAILED=() STOPPED=0 RUNNING=$NPROC
while ((RUNNING > 0)); do
  sleep 1
  for i in "${!PIDS[@]}"; do
    pid=${PIDS[$i]}
    if [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null; then continue; fi
    if ! wait "$pid" && ((STOPPED == 0)); then
      FAILED+=("$i") STOPPED=1
      stop_all
    fi
    PIDS[i]="" RUNNING=$((RUNNING - 1))
  done
done

if ((${#FAILED[@]})); then
  for i in "${FAILED[@]}"; do
    echo "$PROG: process $i failed; last lines of $LOGDIR/process_$i.log:" >&2
    tail -n 5 "$LOGDIR/process_$i.log" >&2
  done
  exit 1
fi
echo "$PROG: all $NPROC processes finished" >&2
