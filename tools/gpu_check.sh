#!/usr/bin/env bash
# GPU checks and measurements for a machine with CUDA and its own PyTorch but no network (a lent GPU box,
# a cluster node). Run from the repository root:
#
#   tools/gpu_check.sh prepare   # here, with network: .gpu/ gets what the GPU machine lacks (git ignores it)
#   tools/gpu_check.sh measure   # there: GPU tests, `keygrid bench model`, training throughput -> $OUT
#   tools/gpu_check.sh ablation  # there: the paper's Table 5 arms trained side by side on one GPU, scored
#   tools/gpu_check.sh restore   # here, after `prepare --hide-models`: model files tracked again
#
# prepare: fpsample's source (built there with the machine's own compiler, pybind11 and scikit-build-core;
# PyPI has no wheel of 1.0.2) and a training subset (split_medium T-shirt sequences from out/dataset_medium,
# or DATA=folder with train/ and val/). `--hide-models` also takes the model files out of git's index and
# ignores them, for copy tools that cap the tree they send (the two USEEK students are 112 MB); nothing in
# `measure` needs them. Never commit while they are hidden: `restore` puts them back.
#
# measure writes, under $OUT (default gpu_out/): env.json, pytest.log, bench.jsonl (`keygrid bench model`
# on cuda), train.jsonl (the `keygrid train` summary of short runs: clouds/s at the released batch 8 in bf16
# and fp32, and at batch 32), and each run's log.
#
# ablation trains the Table 5 arms (ARMS, default: full nogrid nosim nofps noenc; SEEDS, default 0) at once on
# one GPU, each its own process, on the released schedule (EPOCHS=100 over every frame, STRIDE=1), validating every
# VAL_EVERY=20 epochs, then scores each arm's last model on every held-out sequence with `keygrid evaluate`
# (hard and snapped keypoints). $OUT gets ablation.jsonl (one line per arm, seed and keypoint mode, plus each
# run's training summary) and ablation_logs.tar.gz (the training logs, metrics and evaluation JSONs).
# EXTRA adds settings to every run (e.g. model.warmup_epochs=0); EVALUATE=0 skips the scoring (a speed probe);
# RUNS is the run folder (default /tmp/keygrid_ablation, emptied first). test/test_gpu_check.py dry-runs it on a CPU.
# Sizes seen on an H200 (docs/results.md): 5-6 batch-8 runs at once train 88-105 clouds/s each, so STRIDE=4
# (28,800 clouds per run) ends in about 6 minutes and STRIDE=1 in about 22: more than one 10-minute device call.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
what=${1:-}
kit=${KIT:-$here/.gpu}  # what prepare made: data/train, data/val, pkgs (another folder of that layout: KIT=...)
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"

# The GPU machine's own python3 runs this checkout: fpsample built there from the source prepare fetched (when
# that python lacks it), the package on PYTHONPATH, and `keygrid` as a function.
use_checkout() {
  local site=/tmp/keygrid_site
  python3 -c 'import fpsample' 2>/dev/null || python3 -m pip install --quiet --no-index --no-deps \
    --no-build-isolation --target "$site" "$kit"/pkgs/fpsample-*.tar.gz
  export PYTHONPATH="$here:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
}
keygrid() { python3 -m keygrid_ros.cli "$@"; }

case "$what" in
prepare)
  data=${DATA:-out/dataset_medium}
  if [ ! -d "$data/train" ] || [ ! -d "$data/val" ]; then
    echo "no $data/train and $data/val: run keygrid simulate --split-config config/split_medium.yaml --out" \
      "out/dataset_medium first, or set DATA" >&2
    exit 2
  fi
  grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
  rm -rf .gpu && mkdir -p .gpu/pkgs .gpu/data/train .gpu/data/val
  python3 -m pip download --quiet --no-deps --no-binary :all: -d .gpu/pkgs \
    "$(grep -E '^fpsample==' constraints.txt)"
  cp "$data"/train/tshirt_*.npz .gpu/data/train/
  # Every held-out sequence (the ablation scores all of them; measure validates on the seed-10000 three).
  cp "$data"/val/tshirt_*.npz .gpu/data/val/
  if [ "${2:-}" = --hide-models ]; then
    git rm --quiet --cached models/*.safetensors
    for f in models/*.safetensors; do grep -qx "/$f" "$exclude" || echo "/$f" >> "$exclude"; done
    echo 'model files hidden from git: run tools/gpu_check.sh restore before any commit' >&2
  fi
  du -sh .gpu
  ;;
restore)
  git reset --quiet -- models/
  sed -i '\#^/models/.*\.safetensors$#d' "$exclude"
  git status --short models/
  ;;
measure)
  # DEVICE=cpu MAX_STEPS=3 REPEATS=2 tools/gpu_check.sh measure: a dry run of this script on any machine.
  device=${DEVICE:-cuda}
  out=${OUT:-$here/gpu_out}
  mkdir -p "$out"
  rm -rf /tmp/keygrid_runs  # a warm machine keeps the last call's runs; these are fresh ones
  use_checkout
  python3 - > "$out/env.json" <<'EOF'
import json, torch
props = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'gpu': props.name if props else None,
                  'gpu_mem_gb': round(props.total_memory / 2**30, 1) if props else None,
                  'bf16': torch.cuda.is_available() and torch.cuda.is_bf16_supported()}))
EOF
  cat "$out/env.json"
  # The GPU cases of the suite (every other test needs the CPU-only extras: DDS, the simulator).
  # A failing test or run is reported and the next measurement still runs: the lease is short.
  { python3 -m pytest -q -p no:cacheprovider -rs test/test_gpu.py test/test_model.py 2>&1 || echo "pytest exit $?"; } \
    | tee "$out/pytest.log" | tail -6
  for batches in '--train-batch 8 --batch 32' '--train-batch 32 --batch 128'; do
    # shellcheck disable=SC2086 - the batch options are two words each
    keygrid bench model --device "$device" $batches --repeats "${REPEATS:-15}" --json 2>> "$out/bench.err" | tail -1 \
      | tee -a "$out/bench.jsonl" || echo "bench $batches failed: see bench.err"
  done
  # Training throughput as a user gets it: the trainer's own clouds/s (steps only, last epoch), data
  # loading included, on the released settings (batch 8, frames in temporal order, every frame), with the
  # similarity loss from the first step: the released warm-up runs no decoder for 21 epochs, and a 3-epoch
  # run would time only that cheaper step, not the one 79 of the 100 epochs take.
  train() {
    name=$1; shift
    keygrid train --config config/train_keygrid.yaml "train=[$kit/data/train/*.npz]" \
      "val=[$kit/data/val/tshirt_*_10000.npz]" device="$device" epochs=3 max_steps="${MAX_STEPS:-0}" val_every=3 progress=false \
      out_dir=/tmp/keygrid_runs run_name="$name" model.warmup_epochs=0 "$@" > "$out/train_$name.log" 2>&1 || { echo "train $name failed: \
see train_$name.log"; return 0; }
    tail -1 "$out/train_$name.log" | python3 -c "import json, sys; d = json.loads(sys.stdin.read()); \
print(json.dumps({'run': '$name', 'settings': '$*', **d}))" | tee -a "$out/train.jsonl" \
      || echo "train $name: no JSON summary, see train_$name.log"
  }
  train b8_bf16 amp=bf16
  train b8_fp32 amp=off tf32=false
  train b32_bf16 amp=bf16 batch_size=32 num_workers=4
  ;;
ablation)
  device=${DEVICE:-cuda}
  out=${OUT:-$here/gpu_out}
  runs=${RUNS:-/tmp/keygrid_ablation}
  mkdir -p "$out"
  rm -rf "$runs" && mkdir -p "$runs"
  use_checkout
  arm_settings() {  # the model switches of one Table 5 arm
    case $1 in
      full) echo '' ;;
      nogrid) echo model.use_grid_heatmap=false ;;
      nosim) echo model.use_similarity_loss=false ;;
      nofps) echo model.use_fps_loss=false ;;
      noenc) echo model.use_encoder_info=false ;;
      *) echo "unknown arm $1" >&2; return 2 ;;
    esac
  }
  pids=()
  for seed in ${SEEDS:-0}; do
    for arm in ${ARMS:-full nogrid nosim nofps noenc}; do
      settings=$(arm_settings "$arm")
      # shellcheck disable=SC2086 - settings and EXTRA are zero or more words
      keygrid train --config config/train_keygrid.yaml "train=[$kit/data/train/*.npz]" \
        "val=[$kit/data/val/*.npz]" device="$device" epochs="${EPOCHS:-100}" frame_stride="${STRIDE:-1}" \
        max_steps="${MAX_STEPS:-0}" val_every="${VAL_EVERY:-20}" threads="${THREADS:-2}" seed="$seed" \
        progress=false out_dir="$runs" run_name="${arm}_s$seed" $settings ${EXTRA:-} > "$runs/${arm}_s$seed.log" 2>&1 &
      pids+=($!)
    done
  done
  for pid in "${pids[@]}"; do wait "$pid" || echo "a training run failed (exit $?): see its log" >&2; done
  score() {  # score() ARM SEED MODE: one JSON line for the arm's last model in that keypoint mode
    local run=$runs/${1}_s$2
    OMP_NUM_THREADS=2 keygrid evaluate --model "$run/model_last.safetensors" --data "$kit"/data/val/*.npz \
      --keypoints "$3" --json --device "$device" > "$run.$3.json" 2> "$run.$3.err" || return 0
    tail -1 "$run.$3.json" | python3 -c "import json, sys; d = json.loads(sys.stdin.read()); \
print(json.dumps({'arm': '$1', 'seed': $2, 'keypoints': '$3', 'das': round(d['das'], 1), \
'das_reference_frame': round(d['das_reference_frame'], 1), 'coverage': round(d['coverage'], 3), \
'by_motion': {k: round(v['das'], 1) for k, v in sorted(d['by_motion'].items())}}))" >> "$out/ablation.jsonl"
  }
  pids=()
  for seed in ${SEEDS:-0}; do
    for arm in ${ARMS:-full nogrid nosim nofps noenc}; do
      run=$runs/${arm}_s$seed
      echo "{\"arm\": \"$arm\", \"seed\": $seed, \"train\": $(tail -1 "$run.log")}" >> "$out/ablation.jsonl"
      [ -f "$run/model_last.safetensors" ] && [ "${EVALUATE:-1}" = 1 ] || continue
      # All scorings at once: each is a short GPU pass and a longer CPU one (the DAS), and the machine has cores.
      for mode in hard snapped; do score "$arm" "$seed" "$mode" & pids+=($!); done
    done
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  cat "$out/ablation.jsonl"
  tar -czf "$out/ablation_logs.tar.gz" -C "$runs" --exclude='*.safetensors' --exclude='*.pt' --exclude=tb .
  ;;
*)
  sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0"  # the header above, however long it grows
  exit 2
  ;;
esac
