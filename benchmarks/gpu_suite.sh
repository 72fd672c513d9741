#!/usr/bin/env bash
# The GPU suite: what a session with a lent GPU runs once, in under 8 minutes on one H100/H200.
#
#   bash benchmarks/gpu_suite.sh [--out DIR] [--wheels DIR] [--data DIR] [--commit SHA] [--dry-run]
#
# On the device machine (the device tool's `run`, carry [".whl"], prepared here first with
# `bash benchmarks/gpu_prepare_carry.sh`):
#   bash benchmarks/gpu_suite.sh --commit <the commit's sha>
#
# 1. Install, without the network and without touching the image's jax: the carried wheels
#    (--wheels, default .whl/: ml-collections, the one package the project imports that the
#    image lacks) with `pip install --no-index --no-deps --target /tmp/site`, then the project
#    with `pip install --no-index --no-deps --no-build-isolation -e .` (its setup.py range for
#    jax stops below 0.11; --no-deps never reads it). If the editable install fails, the repo
#    is put on PYTHONPATH instead.
# 2. Preflight: imports every package the trainer needs, reads the Fashion-MNIST files, lists
#    the devices. TensorFlow, clu and tensorflow-datasets are not needed: the trainer imports
#    clu's writers (which import TensorFlow) only inside a try and then writes metrics.jsonl
#    alone, and Fashion-MNIST is read from its IDX files. If something required is missing,
#    OUT/gpu_suite.json says what (status "cannot_run") and the suite stops with exit 1.
# 3. Throughput (benchmarks/step_overhead.py, synthetic images, no dataset): ResNet-18 with the
#    CIFAR stem at 32x32x3, global batch 256, a 50,000-row bank / 4,096-key queue: the full IR
#    Ring step (configs/ring.py:cifar10) and the full MoCo Ring step (configs/moco_ring.py:
#    cifar10), each against the backbone-only step: images/s and overhead_ratio = full /
#    backbone (--reps timed calls, median). Then the study's slowest arm, SimCLR Ring at
#    Fashion-MNIST shapes (configs/simclr_ring.py:fashion_mnist), which sizes step 4.
# 4. The negatives study (experiments/negatives_study.py) on all 60,000 Fashion-MNIST training
#    images (probes on the 10,000 test images): one seed (1337) per arm, the 7 arms at once on
#    the one GPU (--max_parallel 7), batch 256 (234 steps per epoch), at the largest of
#    20, 15, 10, 8, 6, 5, 4, 3, 2, 1 epochs that benchmarks/gpu_suite.py predicts to fit in what
#    is left of --budget-s (default 470 s from the suite's start; the rule is pessimistic: the
#    7 runs' steps add up as if run one after the other, plus 120 s per wave for start,
#    compilation and probes). The CPU study's budget is 10 epochs, so 20 epochs is 2x it. --epochs N fixes the budget instead. At the deadline the study is stopped
#    (SIGTERM: runs checkpoint and exit) and its JSON holds the runs that finished, the others
#    under `failed` with status "stopped" and the last step they logged.
#
# Outputs in --out (default $OUT, else benchmarks/results/gpu_suite/), 7 files (the device
# returns at most 8): gpu_suite.json (environment, install, preflight, the epoch plan, the
# throughput summary, the study summary, timings), gpu_suite.log, step_overhead_ir_ring.json,
# step_overhead_moco_ring.json, step_overhead_fashion_simclr_ring.json,
# negatives_study_gpu.json and negatives_study_gpu.png. Run workdirs go to --runs (default
# /tmp/gpu_suite_runs), never into --out.
#
# Options: --epochs auto|N, --seeds 1337[,1,...], --arms a,b, --max-parallel N, --budget-s S,
# --reps N (throughput repetitions, default 20), --throughput-batch N (default the presets'
# 256; smaller only for a CPU check), --no-throughput, --no-study, --no-install,
# --study-args "..." (appended to the study's command, e.g. "--set=width=8"),
# --dry-run (print every command, run nothing). On a CPU, for the plumbing only, e.g.:
#   bash benchmarks/gpu_suite.sh --out /tmp/gs --no-install --reps 1 --throughput-batch 8 \
#       --epochs 1 --arms ir_uniform,ir_ring --max-parallel 1 --budget-s 1500 \
#       --study-args "--set=width=8 --set=head_hidden=32 --set=probe_epochs=2"
set -uo pipefail

START=$(date +%s)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-$REPO/benchmarks/results/gpu_suite}"
WHEELS="$REPO/.whl"
DATA=""
RUNS="/tmp/gpu_suite_runs"
EPOCHS=auto
SEEDS=1337
ARMS="ir_uniform,ir_ring,ir_ball,moco_uniform,moco_ring,simclr_uniform,simclr_ring"
PARALLEL=7
BUDGET_S=470
REPS=20
THROUGHPUT_BATCH=""
COMMIT="${STUDY_COMMIT:-}"
STUDY_ARGS=""
DRY=0
DO_INSTALL=1
DO_THROUGHPUT=1
DO_STUDY=1

usage() { sed -n "2,$(( $(grep -n '^set -uo pipefail' "$0" | cut -d: -f1) - 1 ))p" "$0"; }
takes_value=" --out --wheels --data --runs --epochs --seeds --arms --max-parallel --budget-s --reps --throughput-batch --commit --study-args "
while [[ $# -gt 0 ]]; do
  opt="$1"; shift
  val=""
  if [[ "$opt" == --*=* ]]; then
    val="${opt#*=}"; opt="${opt%%=*}"
  elif [[ "$takes_value" == *" $opt "* ]]; then
    if [[ $# -eq 0 ]]; then echo "gpu_suite.sh: $opt needs a value" >&2; exit 2; fi
    val="$1"; shift
  fi
  case "$opt" in
    --out) OUT_DIR="$val" ;;
    --wheels) WHEELS="$val" ;;
    --data) DATA="$val" ;;
    --runs) RUNS="$val" ;;
    --epochs) EPOCHS="$val" ;;
    --seeds) SEEDS="$val" ;;
    --arms) ARMS="$val" ;;
    --max-parallel) PARALLEL="$val" ;;
    --budget-s) BUDGET_S="$val" ;;
    --reps) REPS="$val" ;;
    --throughput-batch) THROUGHPUT_BATCH="$val" ;;
    --commit) COMMIT="$val" ;;
    --study-args) STUDY_ARGS="$val" ;;
    --dry-run) DRY=1 ;;
    --no-install) DO_INSTALL=0 ;;
    --no-throughput) DO_THROUGHPUT=0 ;;
    --no-study) DO_STUDY=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument $opt (see --help)" >&2; exit 2 ;;
  esac
done

if [[ -z "$DATA" ]]; then   # carried with the tree first, then Debian's package
  for candidate in "$WHEELS/fashion-mnist" "/usr/share/datasets/fashion-mnist"; do
    if [[ -f "$candidate/train-images-idx3-ubyte.gz" || -f "$candidate/train-images-idx3-ubyte" ]]; then
      DATA="$candidate"; break
    fi
  done
fi
if [[ -z "$COMMIT" ]]; then
  COMMIT="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
fi
export STUDY_COMMIT="$COMMIT"

run() {  # a command, echoed; only echoed with --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  if (( DRY )); then return 0; fi
  "$@"
}
elapsed() { echo $(( $(date +%s) - START )); }

if (( ! DRY )); then
  mkdir -p "$OUT_DIR"
  exec > >(tee -a "$OUT_DIR/gpu_suite.log") 2>&1
fi
echo "gpu_suite: repo $REPO, commit $COMMIT, out $OUT_DIR, data ${DATA:-none found}," \
     "python $(command -v "$PY" || echo "$PY: not found"), budget ${BUDGET_S} s"

# ---------------------------------------------------------------------------------------------
# 1. Install (no network; the image's jax stays).
# ---------------------------------------------------------------------------------------------
INSTALL_STATUS="skipped"
if (( DO_INSTALL )); then
  INSTALL_STATUS="ok"
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  shopt -u nullglob
  if (( ${#wheels[@]} )); then
    run "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "${wheels[@]}" || INSTALL_STATUS="wheels failed"
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "no wheels in $WHEELS (bash benchmarks/gpu_prepare_carry.sh makes them)"
    INSTALL_STATUS="no wheels"
  fi
  if ! run "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e "$REPO"; then
    echo "editable install failed: the repo goes on PYTHONPATH instead"
    INSTALL_STATUS="$INSTALL_STATUS; project on PYTHONPATH"
  fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
INSTALL_S=$(elapsed)

# ---------------------------------------------------------------------------------------------
# 2. Preflight: what is there, what is missing; gpu_suite.json from the start.
# ---------------------------------------------------------------------------------------------
PREFLIGHT="/tmp/gpu_suite_preflight.json"
PLAN="/tmp/gpu_suite_plan.json"
rm -f "$PREFLIGHT" "$PLAN"
run "$PY" "$REPO/benchmarks/gpu_suite.py" preflight --out="$PREFLIGHT" --data="$DATA" \
    --install="$INSTALL_STATUS" --commit="$COMMIT"
PREFLIGHT_RC=$?

summarise() {  # OUT/gpu_suite.json from the parts written so far
  run "$PY" "$REPO/benchmarks/gpu_suite.py" summary --out_dir="$OUT_DIR" \
      --preflight="$PREFLIGHT" --plan="$PLAN" --stage="$1" --install_s="$INSTALL_S" \
      --throughput_s="${THROUGHPUT_S:-0}" --study_s="${STUDY_S:-0}" --total_s="$(elapsed)"
}

if (( PREFLIGHT_RC != 0 )); then
  echo "preflight failed: see $OUT_DIR/gpu_suite.json"
  summarise preflight
  exit 1
fi

# ---------------------------------------------------------------------------------------------
# 3. Throughput: ResNet-18, 32x32x3 synthetic images, full step vs backbone only.
# ---------------------------------------------------------------------------------------------
if (( DO_THROUGHPUT )); then
  t0=$(date +%s)
  for case in "ir_ring configs/ring.py:cifar10 $REPS" "moco_ring configs/moco_ring.py:cifar10 $REPS" \
              "fashion_simclr_ring configs/simclr_ring.py:fashion_mnist 10"; do
    set -- $case
    run timeout -k 10 150 "$PY" "$REPO/benchmarks/step_overhead.py" --config="$2" \
        --reps="$3" ${THROUGHPUT_BATCH:+--batch="$THROUGHPUT_BATCH"} \
        --output="$OUT_DIR/step_overhead_$1.json" \
        || echo "step_overhead $1 failed (exit $?)"
  done
  THROUGHPUT_S=$(( $(date +%s) - t0 ))
  summarise throughput
fi

# ---------------------------------------------------------------------------------------------
# 4. The negatives study on Fashion-MNIST, until the suite's deadline.
# ---------------------------------------------------------------------------------------------
STUDY_RC=0
if (( DO_STUDY )); then
  t0=$(date +%s)
  left=$(( BUDGET_S - $(elapsed) - 40 ))   # 40 s: stopping (30 s grace), the JSON, the summary
  if (( left < 60 )); then left=60; fi
  study_epochs="$EPOCHS"
  if [[ "$EPOCHS" == auto ]]; then
    IFS=, read -r -a arm_list <<< "$ARMS"
    IFS=, read -r -a seed_list <<< "$SEEDS"
    runs=$(( ${#arm_list[@]} * ${#seed_list[@]} ))
    if (( DRY )); then
      run "$PY" "$REPO/benchmarks/gpu_suite.py" epochs \
          --step_json="$OUT_DIR/step_overhead_fashion_simclr_ring.json" --seconds_left="$left" \
          --runs="$runs" --parallel="$PARALLEL" --plan="$PLAN"
      study_epochs=AUTO
    else
      study_epochs=$("$PY" "$REPO/benchmarks/gpu_suite.py" epochs \
          --step_json="$OUT_DIR/step_overhead_fashion_simclr_ring.json" --seconds_left="$left" \
          --runs="$runs" --parallel="$PARALLEL" --plan="$PLAN" | tail -1)
    fi
  fi
  echo "study: ${left} s left for it, ${study_epochs} epochs"
  # shellcheck disable=SC2086  # STUDY_ARGS is split into arguments on purpose
  run timeout -s TERM -k 30 "$left" "$PY" "$REPO/experiments/negatives_study.py" \
      --dataset=fashion_mnist ${DATA:+--data_dir="$DATA"} --epochs="$study_epochs" \
      --seeds="$SEEDS" --arms="$ARMS" --max_parallel="$PARALLEL" \
      --out="$OUT_DIR/negatives_study_gpu.json" --workdir_root="$RUNS" $STUDY_ARGS
  STUDY_RC=$?
  STUDY_S=$(( $(date +%s) - t0 ))
fi
summarise done
echo "gpu_suite: done in $(elapsed) s (study exit $STUDY_RC)"
exit 0
