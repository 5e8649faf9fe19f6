#!/usr/bin/env bash
# Train a jaxdiff config on a Cloud TPU VM (one host or a multi-host pod slice), detached from this client.
#
#   bash launch/tpu_vm.sh SUBCOMMAND [options]      (see --help)
#
# create  make the TPU VM (`gcloud compute tpus tpu-vm create`), or with --spot / --queued a queued resource
#         (`gcloud compute tpus queued-resources create ... [--spot]`), and wait until it is READY / ACTIVE.
# start   put the repo at ~/jaxdiff on every worker (copy of this checkout, or clone of --repo), install it in a
#         Python 3.11 venv with the TPU build of jax (plus the gcp extra, or gcsfs, for gs:// work directories),
#         then start `~/venv/bin/python -m jaxdiff.train ... --distributed` on every worker under nohup/setsid
#         with its output in ~/jaxdiff/train.log: it keeps running when this client disconnects. The trainer's
#         pid goes to ~/jaxdiff/train.pid and, when it ends, its exit status to ~/jaxdiff/train.exit ("stopped"
#         when it saved a checkpoint on SIGTERM and exited 0).
# logs    print the end of worker 0's train.log; attach: follow it (Ctrl-C stops following, not the run).
# status  VM / queued-resource state, the trainer on each worker, the latest checkpoint step in --workdir.
# stop    SIGTERM the trainers: jaxdiff saves a checkpoint and exits 0; `start` again resumes.
# delete  delete the VM or queued resource. Nothing else deletes it, except `run --delete-on-success`.
# run     create + start; with --follow, --retry N or --delete-on-success it then watches the run from here:
#         after a preemption (VM PREEMPTED, queued resource SUSPENDED / FAILED) it deletes the slice, makes it
#         again and starts again, up to N times; the same --workdir (gs://) makes the trainer resume from the
#         latest checkpoint. Closing or killing this client leaves the slice and the run alone.
#
# Use a gs:// work directory for multi-host slices (every worker writes its part of each checkpoint there) and
# for --retry (a worker-local work directory is lost with the slice). gcloud uses its default project; pick
# another with CLOUDSDK_CORE_PROJECT=... . Runs with bash >= 3.2 (macOS included).
set -euo pipefail

PROG=tpu_vm.sh
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec 3>&1  # --dry-run prints commands here, also from inside $(...)

usage() {
  cat <<EOF
usage: bash launch/$PROG SUBCOMMAND --name NAME --zone ZONE [options]
subcommands:
  create   --accelerator-type TYPE [--version V] [--spot | --queued | --on-demand]
  start    --config configs/X.py --workdir DIR [--repo GIT_URL_OR_PATH] [--extra "..."]
  logs     [--lines N]          attach: follow worker 0's log (Ctrl-C leaves the run alone)
  status   [--workdir DIR] [--spot | --queued]
  stop                          SIGTERM the trainers (they save a checkpoint and exit 0)
  delete   [--spot | --queued]  delete the VM / queued resource
  run      the options of create and start, and [--follow] [--retry N] [--delete-on-success] [--poll S]
options:
  --accelerator-type  e.g. v5litepod-16 (v5e, 16 chips), v4-32, v6e-8
  --version           TPU software version (default by type: v2-alpha-tpuv5-lite for v5e,
                      v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e, else tpu-ubuntu2204-base)
  --spot              spot capacity through a queued resource (preemptible, cheaper)
  --queued            on-demand capacity through a queued resource; --on-demand: a plain TPU VM (default)
                      (status and delete need the same --spot / --queued as create)
  --config            config file, relative to the repo root
  --workdir           gs://bucket/path, or a path on the workers (relative to ~/jaxdiff); run copies a
                      worker-local one back from worker 0 to the same path here when it watched the run to its end
  --repo              git URL cloned on every worker, or a local checkout copied with scp
                      (default: this checkout, $REPO_ROOT)
  --extra             more arguments for jaxdiff.train, e.g. "--config.train.steps=2000"
  --follow            run: print worker 0's log here while the run goes on
  --retry N           run: after a preemption delete, recreate and restart the slice up to N times (default 0)
  --delete-on-success run: delete the slice once the trainer has exited 0 (not after stop, a failure or Ctrl-C)
  --poll S            seconds between state checks (default 60)
  --lines N           logs / attach: lines of the log to print first (default 100)
  --dry-run           print every command (prefixed with "+ ") instead of running it
The slice is deleted only by \`delete\` or \`run --delete-on-success\`, never because this client stopped.
EOF
}

die() {  # One-line error, exit status 2.
  echo "$PROG: $*" >&2
  exit 2
}

say() {  # A progress line on stderr.
  echo "$PROG: $*" >&2
}

quote() {  # Print arguments as one shell-pasteable line; values with special characters go in '...'.
  local out="" a opt
  for a in "$@"; do
    opt=""
    [[ $a =~ ^--[A-Za-z0-9-]+= ]] && opt=${BASH_REMATCH[0]} && a=${a#"$opt"}
    [[ $a =~ ^[A-Za-z0-9_./:=@,+%-]*$ ]] || a="'${a//\'/\'\\\'\'}'"
    out+=" $opt$a"
  done
  echo "${out# }"
}

run() {  # Run a command, or print it with --dry-run.
  if [[ $DRY_RUN == 1 ]]; then
    echo "+ $(quote "$@")" >&3
  else
    "$@" 3>&-
  fi
}

ask() {  # ask ANSWER CMD...: the last line CMD prints (stderr kept apart); with --dry-run print CMD, give ANSWER.
  local answer=$1 out
  shift
  if [[ $DRY_RUN == 1 ]]; then
    echo "+ $(quote "$@")" >&3
    echo "$answer"
    return 0
  fi
  out=$("$@" 2>"$ERRFILE" 3>&-) || { cat "$ERRFILE" >&2; return 1; }
  printf '%s\n' "$out" | sed '/^[[:space:]]*$/d' | tail -n 1
}

default_version() {  # TPU software version for an accelerator type.
  case "$1" in
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

nap() {  # Sleep $POLL seconds (not with --dry-run); as a waited-for child, so that a signal is handled at once.
  [[ $DRY_RUN == 1 ]] && return 0
  sleep "$POLL" &
  wait $! || true
}

SUB=""
if [[ $# -gt 0 && $1 != -* ]]; then
  SUB=$1
  shift
fi
NAME="" ZONE="" ACCEL="" VERSION="" SPOT=0 QUEUED=0 CONFIG="" WORKDIR="" REPO="$REPO_ROOT" EXTRA="" DRY_RUN=0
FOLLOW=0 RETRY=0 DELETE_ON_SUCCESS=0 POLL=60 LINES=100
while [[ $# -gt 0 ]]; do
  case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    -h|--help) usage; exit 0 ;;
    --spot) SPOT=1 QUEUED=1; shift; continue ;;
    --queued) QUEUED=1; shift; continue ;;
    --on-demand) SPOT=0 QUEUED=0; shift; continue ;;
    --follow) FOLLOW=1; shift; continue ;;
    --delete-on-success) DELETE_ON_SUCCESS=1; shift; continue ;;
    --keep) shift; continue ;;  # the old default-delete opt-out: keeping is the default now
    --dry-run) DRY_RUN=1; shift; continue ;;
    --name|--zone|--accelerator-type|--version|--config|--workdir|--repo|--extra|--retry|--poll|--lines)
      [[ $# -ge 2 ]] || die "$1 needs a value" ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  case "$1" in
    --name) NAME=$2 ;;
    --zone) ZONE=$2 ;;
    --accelerator-type) ACCEL=$2 ;;
    --version) VERSION=$2 ;;
    --config) CONFIG=$2 ;;
    --workdir) WORKDIR=$2 ;;
    --repo) REPO=$2 ;;
    --extra) EXTRA=$2 ;;
    --retry) RETRY=$2 ;;
    --poll) POLL=$2 ;;
    --lines) LINES=$2 ;;
  esac
  shift 2
done

if [[ -z $SUB ]]; then  # the old interface: options only
  SUB=run FOLLOW=1
  say "no subcommand given: running \`run --follow\` (the slice is kept; see --help)"
fi
case "$SUB" in
  create) required="NAME:name ZONE:zone ACCEL:accelerator-type" ;;
  start) required="NAME:name ZONE:zone CONFIG:config WORKDIR:workdir" ;;
  run) required="NAME:name ZONE:zone ACCEL:accelerator-type CONFIG:config WORKDIR:workdir" ;;
  logs|attach|status|stop|delete) required="NAME:name ZONE:zone" ;;
  *) die "unknown subcommand $SUB (create, start, logs, attach, status, stop, delete, run; see --help)" ;;
esac
for pair in $required; do
  var=${pair%%:*}
  [[ -n ${!var} ]] || die "missing --${pair#*:} (see --help)"
done
[[ $RETRY =~ ^[0-9]+$ ]] || die "--retry: not a whole number: $RETRY"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines: not a whole number: $LINES"
[[ $POLL =~ ^[0-9]*\.?[0-9]+$ ]] || die "--poll: not a number of seconds: $POLL"
VERSION=${VERSION:-$(default_version "$ACCEL")}
if [[ -n $CONFIG && -d $REPO ]]; then
  [[ -f $REPO/$CONFIG ]] || die "config file $CONFIG: not found in $REPO"
fi
[[ $DRY_RUN == 1 ]] || command -v gcloud >/dev/null || die "gcloud not found (install the Google Cloud CLI)"
ERRFILE=$(mktemp "${TMPDIR:-/tmp}/tpu_vm.XXXXXX")
trap 'rm -f "$ERRFILE"' EXIT  # only the local scratch file: nothing on the cloud is deleted on exit

TPU=(gcloud compute tpus tpu-vm)
QR=(gcloud compute tpus queued-resources)
AT=(--zone="$ZONE")
SELF="bash launch/$PROG"
SEL="--name $(quote "$NAME") --zone $(quote "$ZONE")"
[[ $QUEUED == 1 ]] && SEL+=" --queued"

# Remote command lines, run by the login shell of every worker from the home directory. jax >= 0.7 needs
# Python >= 3.11 but the Ubuntu 22.04 TPU images have 3.10, so uv makes a Python 3.11 venv at ~/venv (once per
# VM); pip then resolves jax[tpu] together with requirements.txt, so jax stays within the repo's version range.
# gs:// work directories need gcsfs: the repo's gcp extra where pyproject.toml defines one, else gcsfs itself.
HAS_GCP='import sys, tomllib; sys.exit("gcp" not in tomllib.load(open("pyproject.toml", "rb"))'
HAS_GCP+='.get("project", {}).get("optional-dependencies", {}))'
# shellcheck disable=SC2088  # ~ is expanded by the workers' shell
PIP="~/venv/bin/python -m pip install -U \"jax[tpu]\" -r requirements.txt"
SETUP="cd jaxdiff && { [ -x ~/venv/bin/python ] || { curl -LsSf https://astral.sh/uv/install.sh | sh"
SETUP+=" && ~/.local/bin/uv venv --seed --python 3.11 ~/venv; }; }"
SETUP+=" && if ~/venv/bin/python -c $(quote "$HAS_GCP"); then $PIP -e \".[gcp]\"; else $PIP -e . gcsfs; fi"
UPLOAD=.jaxdiff-upload  # a local checkout is copied here first, then over ~/jaxdiff (scp would nest it)
# shellcheck disable=SC2016  # expanded by the workers' shell
ALIVE='[ -f jaxdiff/train.pid ] && kill -0 "$(cat jaxdiff/train.pid)" 2>/dev/null'
GUARD="if $ALIVE; then echo \"\$(hostname): a trainer is already running (pid \$(cat jaxdiff/train.pid));"
GUARD+=" stop it first\" >&2; exit 3; fi; rm -rf $UPLOAD"
# One word about the trainer: running, "exit 0" (finished), "exit stopped" (checkpoint saved on SIGTERM),
# "exit N" (failed), dead (no process and no exit status: never started, or the VM restarted), missing (no repo).
TRAINER_STATE="if [ ! -d jaxdiff ]; then echo missing; elif [ -s jaxdiff/train.exit ];"
TRAINER_STATE+=" then echo \"exit \$(cat jaxdiff/train.exit)\"; elif $ALIVE; then echo running; else echo dead; fi"
STOP="if $ALIVE; then kill -TERM \"\$(cat jaxdiff/train.pid)\" && echo \"\$(hostname): sent SIGTERM to the trainer\";"
STOP+=" else echo \"\$(hostname): no trainer running\"; fi"
# shellcheck disable=SC2088
TRAIN="~/venv/bin/python -m jaxdiff.train --config $(quote "$CONFIG") --workdir $(quote "$WORKDIR")"
TRAIN+=" --distributed${EXTRA:+ $EXTRA}"
# Runs detached in ~/jaxdiff: the trainer's pid to train.pid, then its exit status to train.exit.
WRAP="echo \"== \$(date -u +%FT%TZ) start: jaxdiff.train\"; $TRAIN & echo \$! > train.pid; wait \$!; rc=\$?;"
WRAP+=" if [ \$rc = 0 ] && tail -n 5 train.log | grep -q \"received: saved step\"; then rc=stopped; fi;"
WRAP+=" echo \$rc > train.exit; echo \"== \$(date -u +%FT%TZ) end: \$rc\""
LAUNCH="cd jaxdiff && rm -f train.exit train.pid && { nohup setsid bash -c $(quote "$WRAP") >> train.log 2>&1"
LAUNCH+=" < /dev/null & } && for i in 1 2 3 4 5 6 7 8 9 10; do [ -s train.pid ] && break; sleep 0.5; done"
LAUNCH+=" && echo \"\$(hostname): trainer started (pid \$(cat train.pid)), log in ~/jaxdiff/train.log\""

ssh_all() { run "${TPU[@]}" ssh "$NAME" "${AT[@]}" --worker=all --command="$1"; }

create() {  # Make the VM or queued resource; wait until it is ready. Status 1 if it fails to come up.
  local spot=() state
  if [[ $QUEUED == 1 ]]; then
    [[ $SPOT == 1 ]] && spot=(--spot)
    run "${QR[@]}" create "$NAME" --node-id="$NAME" "${AT[@]}" --accelerator-type="$ACCEL" \
      --runtime-version="$VERSION" ${spot[@]+"${spot[@]}"}
  else
    run "${TPU[@]}" create "$NAME" "${AT[@]}" --accelerator-type="$ACCEL" --version="$VERSION"
  fi
  while true; do
    state=$(resource_state)
    case $(classify "$state") in
      ready) say "$NAME is $state"; return 0 ;;
      lost|gone) say "$NAME did not come up (state ${state:-gone})"; return 1 ;;
    esac
    say "$NAME is ${state:-not visible yet}; waiting"
    nap
  done
}

resource_state() {  # The VM's state (READY, PREEMPTED, ...) or the queued resource's (ACTIVE, SUSPENDED, ...).
  local cmd=("${TPU[@]}" describe "$NAME" "${AT[@]}" --format="value(state)") answer=READY
  [[ $QUEUED == 1 ]] && cmd=("${QR[@]}" describe "$NAME" "${AT[@]}" --format="value(state.state)") answer=ACTIVE
  if ! ask "$answer" "${cmd[@]}"; then
    grep -qi "not.found" "$ERRFILE" && echo GONE
  fi
  return 0
}

classify() {  # ready | lost (preempted: recreate) | gone (deleted) | wait (coming up, or not known now).
  case "$1" in
    READY|ACTIVE) echo ready ;;
    PREEMPTED|TERMINATED|SUSPENDING|SUSPENDED|FAILED) echo lost ;;
    GONE) echo gone ;;
    *) echo wait ;;
  esac
}

delete() {
  if [[ $QUEUED == 1 ]]; then
    run "${QR[@]}" delete "$NAME" "${AT[@]}" --force --quiet
  else
    run "${TPU[@]}" delete "$NAME" "${AT[@]}" --quiet
  fi
}

start() {  # Put the repo at ~/jaxdiff on every worker, install it, start the trainer there, detached.
  ssh_all "$GUARD" || die "could not start on $NAME (a trainer already running, or ssh failed); see status"
  if [[ -d $REPO ]]; then
    run "${TPU[@]}" scp --recurse "$REPO" "$NAME:$UPLOAD" "${AT[@]}" --worker=all
    ssh_all "mkdir -p jaxdiff && cp -a $UPLOAD/. jaxdiff/ && rm -rf $UPLOAD && $SETUP"
  else
    ssh_all "if [ -d jaxdiff/.git ]; then git -C jaxdiff pull --ff-only; else git clone --depth 1 $(quote "$REPO") jaxdiff; fi && $SETUP"
  fi
  ssh_all "$LAUNCH"
}

trainer_state() {  # Worker 0's trainer, one word (see TRAINER_STATE); empty if ssh failed.
  ask "exit 0" "${TPU[@]}" ssh "$NAME" "${AT[@]}" --worker=0 --command="$TRAINER_STATE" || true
}

latest_step() {  # The latest checkpoint step in WORKDIR, or nothing.
  local listing
  if [[ $WORKDIR == gs://* ]]; then
    listing=$(run gcloud storage ls "${WORKDIR%/}/checkpoints/" 2>/dev/null) || true
  else
    local dir=$WORKDIR
    [[ $dir == /* ]] || dir="jaxdiff/$dir"
    listing=$(run "${TPU[@]}" ssh "$NAME" "${AT[@]}" --worker=0 \
      --command="ls $(quote "$dir/checkpoints") 2>/dev/null" 2>/dev/null) || true
  fi
  printf '%s\n' "$listing" | sed -n 's|/$||; s|.*/||; /^[0-9][0-9]*$/p' | sort -n | tail -n 1
}

fetch() {  # Copy a worker-local work directory back from worker 0 to the same path here.
  [[ $WORKDIR == gs://* ]] && return 0
  local remote=$WORKDIR
  [[ $remote == /* ]] || remote="jaxdiff/$remote"
  run mkdir -p "$(dirname "$WORKDIR")"
  run "${TPU[@]}" scp --recurse "$NAME:$remote" "$(dirname "$WORKDIR")" "${AT[@]}" --worker=0
}

FOLLOW_PID=""
follow_start() {  # Print worker 0's log here in the background (also after a restart of the slice).
  [[ $FOLLOW == 1 ]] || return 0
  if [[ -n $FOLLOW_PID ]] && kill -0 "$FOLLOW_PID" 2>/dev/null; then return 0; fi
  if [[ $DRY_RUN == 1 ]]; then
    run "${TPU[@]}" ssh "$NAME" "${AT[@]}" --worker=0 --command="tail -n +1 -F jaxdiff/train.log"
    return 0
  fi
  "${TPU[@]}" ssh "$NAME" "${AT[@]}" --worker=0 --command="tail -n +1 -F jaxdiff/train.log" 3>&- &
  FOLLOW_PID=$!
}

kill_tree() {  # SIGTERM a process this script started, and its descendants.
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$child"; done
  kill -TERM "$1" 2>/dev/null || true
}

follow_stop() {
  [[ -n $FOLLOW_PID ]] && kill_tree "$FOLLOW_PID"
  FOLLOW_PID=""
}

hints() {  # How to reach the run from any client.
  say "the run goes on on $NAME: see it with \`$SELF status $SEL${WORKDIR:+ --workdir $(quote "$WORKDIR")}\`,"
  say "  follow it with \`$SELF attach $SEL\`, stop it (checkpoint saved) with \`$SELF stop $SEL\`,"
  say "  delete the slice with \`$SELF delete $SEL\`"
}

on_signal() {  # This client was interrupted or lost its terminal: leave the slice and the run alone.
  trap - INT TERM HUP
  follow_stop
  say "interrupted ($1); nothing was deleted"
  hints
  exit "$2"
}

watch_run() {  # Poll until the trainer ends; recreate and restart after a preemption (--retry). Returns its status.
  local left=$RETRY state kind st
  while true; do
    nap
    state=$(resource_state)
    kind=$(classify "$state")
    if [[ $kind == lost || $kind == gone ]]; then
      if ((left == 0)); then
        say "$NAME was preempted (state ${state:-gone}) and no retries are left (--retry $RETRY); nothing was deleted."
        say "  Run the same \`run\` command again (after \`delete\`) to resume from the checkpoint in $WORKDIR."
        return 3
      fi
      left=$((left - 1))
      say "$NAME was preempted (state ${state:-gone}): deleting it, making it again and restarting ($left retries left)"
      follow_stop
      [[ $kind == gone ]] || delete || true
      create || return 1
      start
      follow_start
      continue
    fi
    [[ $kind == ready ]] || { say "$NAME is ${state:-not visible}; waiting"; continue; }
    st=$(trainer_state)
    case "$st" in
      running) follow_start ;;
      "exit 0") say "training finished (exit status 0)"; return 0 ;;
      "exit stopped") say "the trainer was stopped by SIGTERM and saved a checkpoint; \`start\` resumes it"; return 5 ;;
      exit\ *) say "training failed (exit status ${st#exit }); see \`$SELF logs $SEL\`"; return 1 ;;
      dead|missing)
        if ((left == 0)); then
          say "the trainer on $NAME is gone without an exit status (the VM restarted?) and no retries are left"
          return 3
        fi
        left=$((left - 1))
        say "the trainer on $NAME is gone without an exit status (the VM restarted?): starting it again ($left retries left)"
        start ;;
      *) say "could not reach $NAME's worker 0 (ssh failed); will try again" ;;
    esac
  done
}

case "$SUB" in
  create) create ;;
  start) start; hints ;;
  logs) run "${TPU[@]}" ssh "$NAME" "${AT[@]}" --worker=0 --command="tail -n $LINES jaxdiff/train.log" ;;
  attach)
    say "following worker 0's log; Ctrl-C stops following, the run goes on"
    run "${TPU[@]}" ssh "$NAME" "${AT[@]}" --worker=0 --command="tail -n $LINES -F jaxdiff/train.log" || true ;;
  status)
    state=$(resource_state)
    echo "$NAME: ${state:-not found}"
    [[ $(classify "$state") == ready ]] && { ssh_all "echo \"\$(hostname): trainer \$($TRAINER_STATE)\"" || true; }
    if [[ -n $WORKDIR ]]; then
      step=$(latest_step)
      echo "latest checkpoint in $WORKDIR: ${step:-none found}"
    fi ;;
  stop) ssh_all "$STOP" ;;
  delete) delete ;;
  run)
    trap 'on_signal SIGINT 130' INT
    trap 'on_signal SIGTERM 143' TERM
    trap 'on_signal SIGHUP 129' HUP
    if [[ $RETRY -gt 0 && $WORKDIR != gs://* ]]; then
      say "warning: --workdir $WORKDIR is on the workers: a recreated slice starts from step 0 (use gs://)"
    fi
    create || exit 1
    start
    if [[ $FOLLOW == 0 && $RETRY == 0 && $DELETE_ON_SUCCESS == 0 ]]; then
      hints
      exit 0
    fi
    follow_start
    status=0
    watch_run || status=$?
    follow_stop
    if [[ $status == 0 || $status == 5 ]]; then
      fetch
    fi
    if [[ $status == 0 && $DELETE_ON_SUCCESS == 1 ]]; then
      delete
    elif [[ $status != 3 ]]; then
      say "keeping $NAME; delete it with \`$SELF delete $SEL\`"
    fi
    exit "$status" ;;
esac
