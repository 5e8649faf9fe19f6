#!/usr/bin/env bash
# The GPU check: parity tests, one train step and DDIM per 2D model, the 3D UNet at 128^3 with remat (XLA's
# compiled peak memory against the < 16 GB goal) and `python -m benchmarks.run` against PyTorch CUDA, in at most
# 8 minutes on one NVIDIA GPU whose Python already has jax (with CUDA), flax, optax, orbax and torch.
#
#   benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--no-install]
#   GPU_CHECK_DRY_RUN=1 benchmarks/gpu_check.sh      # the same, on the CPU with tiny shapes, in under a minute
#
# Writes DIR (default benchmarks/results/gpu-check-<date>) with one log per section, models.jsonl, brain3d.json,
# bench/ (benchmarks.run's report and CSV) and summary.md, the Markdown to paste into benchmarks/PERFORMANCE.md.
# Every section has its own time limit; a section that fails or times out is recorded in the summary and the next
# one runs. The rest of the requirements come as wheels, without dependencies, from
# benchmarks/gpu_check_requirements.txt (pure-Python packages), so the machine's jax and torch stay as they are.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
INSTALL=1
OUT=""
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --no-install) INSTALL=0 ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python}
STAMP=$(date +%Y%m%d-%H%M)
OUT=${OUT:-$REPO/benchmarks/results/gpu-check-$STAMP}
mkdir -p "$OUT/status"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
echo "$(date '+%Y-%m-%d %H:%M %Z')" > "$OUT/started.txt"
echo "benchmarks/gpu_check.sh $([ "$DRY_RUN" = 1 ] && echo --dry-run)" > "$OUT/command.txt"

# Time limits per section, seconds (the sum stays under 8 minutes; env vars override them).
if [ "$DRY_RUN" = 1 ]; then
  touch "$OUT/DRY_RUN"
  INSTALL=0
  # the CPU, and XLA:CPU without its LLVM optimisation (compile time is most of a tiny model's run; timings of a
  # dry run mean nothing). The limits are generous: a shared 2-core host under load is 5x slower than a quiet one.
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0"
  T_ENV=${GPU_CHECK_T_ENV:-60} T_PARITY=${GPU_CHECK_T_PARITY:-300} T_MODELS=${GPU_CHECK_T_MODELS:-300}
  T_3D=${GPU_CHECK_T_3D:-300} T_BENCH=${GPU_CHECK_T_BENCH:-400}
  T_INSTALL=0
  PARITY_ARGS=(-k "test_port_rejects_unmapped_parameters or test_transformer_layer_parity")
  BENCH_CASES="medsegdiff_tiny" BENCH_ARGS="--quick --frameworks jax torch --repeats 1 --device cpu --timeout 300"
else  # 20 + 45 + 75 + 110 + 120 + 100 = 470 s at most
  T_ENV=${GPU_CHECK_T_ENV:-20} T_INSTALL=${GPU_CHECK_T_INSTALL:-45} T_PARITY=${GPU_CHECK_T_PARITY:-75}
  T_3D=${GPU_CHECK_T_3D:-110} T_MODELS=${GPU_CHECK_T_MODELS:-120} T_BENCH=${GPU_CHECK_T_BENCH:-100}
  PARITY_ARGS=()
  BENCH_CASES="unet2d medsegdiff_tiny" BENCH_ARGS="--frameworks jax torch --repeats 3 --device auto --timeout 45"
fi

FAILED=0
# run_section NAME LIMIT LOG CMD...: run CMD under `timeout`, its output in LOG, its outcome in status/NAME.txt.
run_section() {
  local name=$1 limit=$2 log=$3 rc=0 t0=$SECONDS
  shift 3
  echo "== $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1 || rc=$?
  local took=$((SECONDS - t0)) status
  if [ "$rc" = 0 ]; then status="ok (${took} s)"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="TIMEOUT after ${limit} s"; FAILED=$((FAILED + 1))
  else status="FAILED (exit $rc, ${took} s; last line: $(tail -n 1 "$log" | cut -c1-200))"; FAILED=$((FAILED + 1))
  fi
  echo "$status" > "$OUT/status/${name// /_}.txt"
  echo "   $status"
}

environment() {
  echo "host: $(hostname), $(nproc) CPU cores; dry run: $DRY_RUN"
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  else
    echo "nvidia-smi: not found"
  fi
  "$PY" - <<'EOF'
import importlib.metadata as md, platform
names = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "torch",
         "numpy")
print("python", platform.python_version() + "; " + ", ".join(
    f"{n} {md.version(n)}" for n in names if any(d.metadata["Name"] == n for d in md.distributions())))
import jax
print("jax backend:", jax.default_backend(), jax.devices())
import torch
print("torch cuda:", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF
}

install() {
  # Wheels only, no dependencies (each dependency is listed), only the distributions not installed yet: never
  # jax, jaxlib, flax, optax, orbax or torch.
  local missing reqs
  missing=$("$PY" - "$REPO/benchmarks/gpu_check_requirements.txt" <<'EOF'
import importlib.metadata as md, re, sys
for line in open(sys.argv[1]):
    req = line.split("#")[0].strip()
    if not req:
        continue
    try:
        md.version(re.split(r"[<>=!~; ]", req)[0])
    except md.PackageNotFoundError:
        print(req)
EOF
)
  if [ -z "$missing" ]; then
    echo "all installed"
  else
    mapfile -t reqs <<< "$missing"
    echo "installing: ${reqs[*]}"
    "$PY" -m pip install --no-deps --only-binary=:all: --disable-pip-version-check -q "${reqs[@]}"
  fi
  "$PY" -c "import ml_collections, nibabel, grain, skimage, tqdm, pytest; print('imports ok')"
}

# one benchmarks.run per case (its own report in bench/<case>/), so that a time limit keeps the finished cases
bench() {
  local case
  for case in $BENCH_CASES; do
    # shellcheck disable=SC2086
    "$PY" -m benchmarks.run --cases "$case" $BENCH_ARGS --out "$OUT/bench/$case"
  done
}

export -f environment install bench
export PY REPO DRY_RUN OUT BENCH_CASES BENCH_ARGS
run_section "Environment" "$T_ENV" "$OUT/environment.txt" bash -c environment
if [ "$INSTALL" = 1 ]; then
  run_section "Install" "$T_INSTALL" "$OUT/install.log" bash -c install
else
  echo "skipped: $([ "$DRY_RUN" = 1 ] && echo dry run || echo --no-install)" > "$OUT/status/Install.txt"
fi
# Parity at full float32 precision: XLA's GPU default lets float32 matmuls and convolutions run as TF32.
run_section "Parity tests" "$T_PARITY" "$OUT/parity.log" \
  env JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m pytest -q -p no:cacheprovider tests/test_parity.py "${PARITY_ARGS[@]}"
DRY_FLAG=()
[ "$DRY_RUN" = 1 ] && DRY_FLAG=(--dry-run)
run_section "3D UNet at 128^3 with remat" "$T_3D" "$OUT/brain3d.log" \
  "$PY" -m benchmarks.gpu_check brain3d --out "$OUT" "${DRY_FLAG[@]}"
run_section "Train step and DDIM per 2D model" "$T_MODELS" "$OUT/models.log" \
  "$PY" -m benchmarks.gpu_check models --out "$OUT" "${DRY_FLAG[@]}"
run_section "Benchmark against PyTorch" "$T_BENCH" "$OUT/bench.log" bash -c bench

"$PY" -m benchmarks.gpu_check summary --out "$OUT" > /dev/null
echo "wrote $OUT/summary.md ($FAILED section(s) failed)"
