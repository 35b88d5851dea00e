#!/usr/bin/env bash
# One prepared GPU validation + benchmark run (under 9 minutes on one GPU; see README, "GPU").
#
#   scripts/gpu_check.sh [OUT_DIR]        (default: $OUT if set, else ./gpu_check_out)
#
# Stages, each in its own process under its own time limit, one line per check:
#   env 15 s | build 70 s | correct 55 s | sanitizer 2 x 30 s | kernels 75 s | sconv 60 s |
#   swrn 55 s | train 75 s | sync 40 s | ddp 30 s, only with 2+ GPUs (torchrun over all)
#   (8 min 55 s if every stage ran to its limit)
# then a final table and OUT_DIR/results.json (device, versions, date, every check).
# Needs torch with CUDA and triton. hydra-core, omegaconf, antlr4 and wandb are installed from
# the wheels in .whl/ when that folder exists (into a private folder, nothing system-wide).
# Exit status: 0 all checks passed, 1 some failed or timed out, 3 no GPU here.
set -u

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi lists none); run it on a GPU machine" >&2
  exit 3
fi

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT_DIR=${1:-${OUT:-$ROOT/gpu_check_out}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
for pkg in conf csrc; do  # a plain checkout (not pip-installed): the packages setup.py maps
  [ -e "sparse_runner/$pkg" ] || ln -s "../$pkg" "sparse_runner/$pkg"
done
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if compgen -G ".whl/*.whl" >/dev/null; then
  SITE=${TMPDIR:-/tmp}/sparse_run_gpu_check_site
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl; then
    export PYTHONPATH="$ROOT:$SITE"
    echo "[setup] wheels from .whl/: ok"
  else
    echo "[setup] wheels from .whl/: fail (continuing with what is installed)"
  fi
fi

record() {  # record NAME STATUS VALUE DETAIL: add a stage-level row to NAME's stage file
  "$PY" -m sparse_runner.bench.gpu_check record --name "$1" --status "$2" --value "$3" \
    --detail "$4" --out "$OUT_DIR"
}

check() {  # check NAME SECONDS CMD...: run one stage under its limit; record how it ended
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@"
  local rc=$?
  case $rc in
    0 | 1) ;;  # the stage recorded its own checks
    124 | 137) record "$name" timeout "$limit" "killed at its ${limit} s limit" ;;
    9) record "$name" fail 9 "compute-sanitizer reported errors (see the log above)" ;;
    *) record "$name" fail "$rc" "the stage exited with status $rc" ;;
  esac
  echo "[$name] done in $((SECONDS - t0)) s (exit $rc)"
}

stage() {  # stage NAME SECONDS [ARGS...]
  local name=$1 limit=$2
  shift 2
  check "$name" "$limit" "$PY" -m sparse_runner.bench.gpu_check "$name" --out "$OUT_DIR" "$@"
}

stage env 15
stage build 70
stage correct 55
if command -v compute-sanitizer >/dev/null 2>&1; then
  for tool in memcheck racecheck; do
    check "sanitizer_$tool" 30 compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 5 \
      "$PY" -m sparse_runner.bench.gpu_check correct --small --name "sanitizer_$tool" --out "$OUT_DIR"
  done
else
  echo "[sanitizer] compute-sanitizer: skip (not on PATH)"
  record sanitizer_memcheck skip "" "compute-sanitizer is not on PATH"
fi
stage kernels 75
stage sconv 60
stage swrn 55
stage train 75
stage sync 40
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ "$NGPU" -gt 1 ]; then
  stage ddp 30 --nproc "$NGPU"   # torchrun --nproc_per_node=$(nvidia-smi -L | wc -l)
else
  record ddp skip "" "one GPU visible: the torchrun stage needs two or more"
fi

"$PY" -m sparse_runner.bench.gpu_check table --out "$OUT_DIR"
exit $?
