#!/usr/bin/env bash
# Train a jaxdiff config on a Cloud TPU VM (one host or a multi-host pod slice), then clean up.
#
# Steps: create the TPU VM -> put the repo on every worker and install it in a venv -> run
# `~/venv/bin/python -m jaxdiff.train ... --distributed` on every worker at once (jax.distributed.initialize() finds the
# other workers from the TPU metadata by itself) -> copy the work directory back from worker 0 (skipped for
# gs:// work directories) -> delete the TPU VM, also after a failure or Ctrl-C, unless --keep.
#
# Example (a v5e-16 spot slice):
#   bash launch/tpu_vm.sh --name jaxdiff-v5e --zone us-west4-a --accelerator-type v5litepod-16 --spot \
#     --config configs/quickstart.py --workdir gs://BUCKET/runs/quickstart --extra "--config.train.steps=2000"
#
# Use a gs:// work directory for multi-host slices: every worker writes its part of each checkpoint there.
# gcloud uses its default project; pick another with CLOUDSDK_CORE_PROJECT=... .
# Runs with bash >= 3.2 (macOS included).
set -euo pipefail

PROG=tpu_vm.sh
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<EOF
usage: bash launch/$PROG --name NAME --zone ZONE --accelerator-type TYPE --config configs/X.py --workdir DIR
                        [--version VERSION] [--spot | --on-demand] [--repo GIT_URL_OR_PATH]
                        [--extra "--config.a.b=v ..."] [--keep] [--dry-run]
  --accelerator-type  e.g. v5litepod-16 (v5e, 16 chips), v4-32, v6e-8
  --version           TPU software version (default by type: v2-alpha-tpuv5-lite for v5e,
                      v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e, else tpu-ubuntu2204-base)
  --spot|--on-demand  spot (preemptible, cheaper) or on-demand capacity (default on-demand)
  --config            config file, relative to the repo root
  --workdir           gs://bucket/path, or a path on the workers (relative to the repo checkout),
                      copied back to the same path here after training
  --repo              git URL cloned on every worker, or a local checkout copied with scp
                      (default: this checkout, $REPO_ROOT)
  --extra             more arguments for jaxdiff.train, e.g. "--config.train.steps=2000"
  --keep              do not delete the TPU VM at the end
  --dry-run           print every command (prefixed with "+ ") instead of running it
EOF
}

die() {  # One-line error, exit status 2.
  echo "$PROG: $*" >&2
  exit 2
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
    echo "+ $(quote "$@")"
  else
    "$@"
  fi
}

default_version() {  # TPU software version for an accelerator type.
  case "$1" in
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

NAME="" ZONE="" ACCEL="" VERSION="" SPOT=0 CONFIG="" WORKDIR="" REPO="$REPO_ROOT" EXTRA="" KEEP=0 DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    -h|--help) usage; exit 0 ;;
    --spot) SPOT=1; shift; continue ;;
    --on-demand) SPOT=0; shift; continue ;;
    --keep) KEEP=1; shift; continue ;;
    --dry-run) DRY_RUN=1; shift; continue ;;
    --name|--zone|--accelerator-type|--version|--config|--workdir|--repo|--extra)
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
  esac
  shift 2
done

for pair in NAME:name ZONE:zone ACCEL:accelerator-type CONFIG:config WORKDIR:workdir; do
  var=${pair%%:*}
  [[ -n ${!var} ]] || die "missing --${pair#*:} (see --help)"
done
VERSION=${VERSION:-$(default_version "$ACCEL")}
if [[ -d $REPO ]]; then
  [[ -f $REPO/$CONFIG ]] || die "config file $CONFIG: not found in $REPO"
fi
[[ $DRY_RUN == 1 ]] || command -v gcloud >/dev/null || die "gcloud not found (install the Google Cloud CLI)"

TPU=(gcloud compute tpus tpu-vm)
AT=(--zone="$ZONE")

# Remote command lines, run by bash on every worker from the home directory. jax >= 0.7 needs Python >= 3.11
# but the Ubuntu 22.04 TPU images have 3.10, so uv makes a Python 3.11 venv at ~/venv; pip then resolves
# jax[tpu] together with requirements.txt, so jax stays within the repo's version range.
SETUP="curl -LsSf https://astral.sh/uv/install.sh | sh && ~/.local/bin/uv venv --seed --python 3.11 ~/venv"
SETUP+=" && cd jaxdiff && ~/venv/bin/python -m pip install -U \"jax[tpu]\" -r requirements.txt -e ."
TRAIN="cd jaxdiff && ~/venv/bin/python -m jaxdiff.train --config $(quote "$CONFIG") --workdir $(quote "$WORKDIR")"
TRAIN+=" --distributed${EXTRA:+ $EXTRA}"

create() {
  local spot=()
  [[ $SPOT == 1 ]] && spot=(--spot)
  run "${TPU[@]}" create "$NAME" "${AT[@]}" --accelerator-type="$ACCEL" --version="$VERSION" ${spot[@]+"${spot[@]}"}
}

setup_workers() {  # Put the repo at ~/jaxdiff on every worker and pip-install it with the TPU build of jax.
  if [[ -d $REPO ]]; then
    run "${TPU[@]}" scp --recurse "$REPO" "$NAME:jaxdiff" "${AT[@]}" --worker=all
    run "${TPU[@]}" ssh "$NAME" "${AT[@]}" --worker=all --command="$SETUP"
  else
    run "${TPU[@]}" ssh "$NAME" "${AT[@]}" --worker=all \
      --command="git clone --depth 1 $(quote "$REPO") jaxdiff && $SETUP"
  fi
}

fetch() {  # Copy a worker-local work directory back from worker 0 to the same path here.
  [[ $WORKDIR == gs://* ]] && return 0
  local remote=$WORKDIR
  [[ $remote == /* ]] || remote="jaxdiff/$remote"
  run mkdir -p "$(dirname "$WORKDIR")"
  run "${TPU[@]}" scp --recurse "$NAME:$remote" "$(dirname "$WORKDIR")" "${AT[@]}" --worker=0
}

cleanup() {  # EXIT trap: delete the TPU VM unless --keep; keep the script's exit status.
  local status=$?
  trap - EXIT
  if [[ $KEEP == 1 ]]; then
    echo "$PROG: keeping TPU VM $NAME; delete it with: $(quote "${TPU[@]}" delete "$NAME" "${AT[@]}" --quiet)" >&2
  else
    run "${TPU[@]}" delete "$NAME" "${AT[@]}" --quiet || status=1
  fi
  exit "$status"
}

create
trap cleanup EXIT
trap 'exit 130' INT TERM
setup_workers
run "${TPU[@]}" ssh "$NAME" "${AT[@]}" --worker=all --command="$TRAIN"
fetch
