#!/usr/bin/env bash
# GPU checks and measurements for a machine with CUDA and its own PyTorch but no network (a lent GPU box,
# a cluster node). Three steps, run from the repository root:
#
#   tools/gpu_check.sh prepare   # here, with network: .gpu/ gets what the GPU machine lacks (git ignores it)
#   tools/gpu_check.sh measure   # there: GPU tests, `keygrid bench model`, training throughput -> $OUT
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
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
what=${1:-}
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"

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
  cp "$data"/val/tshirt_drop_10000.npz "$data"/val/tshirt_drag_10000.npz "$data"/val/tshirt_fold_10000.npz \
    .gpu/data/val/
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
  site=/tmp/keygrid_site
  rm -rf /tmp/keygrid_runs  # a warm machine keeps the last call's runs; these are fresh ones
  python3 -c 'import fpsample' 2>/dev/null || python3 -m pip install --quiet --no-index --no-deps \
    --no-build-isolation --target "$site" .gpu/pkgs/fpsample-*.tar.gz
  export PYTHONPATH="$here:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  keygrid() { python3 -m keygrid_ros.cli "$@"; }
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
  # loading included, on the released settings (batch 8, frames in temporal order, every frame).
  train() {
    name=$1; shift
    keygrid train --config config/train_keygrid.yaml "train=[$here/.gpu/data/train/*.npz]" \
      "val=[$here/.gpu/data/val/*.npz]" device="$device" epochs=3 max_steps="${MAX_STEPS:-0}" val_every=3 progress=false \
      out_dir=/tmp/keygrid_runs run_name="$name" "$@" > "$out/train_$name.log" 2>&1 || { echo "train $name failed: \
see train_$name.log"; return 0; }
    tail -1 "$out/train_$name.log" | python3 -c "import json, sys; d = json.loads(sys.stdin.read()); \
print(json.dumps({'run': '$name', 'settings': '$*', **d}))" | tee -a "$out/train.jsonl" \
      || echo "train $name: no JSON summary, see train_$name.log"
  }
  train b8_bf16 amp=bf16
  train b8_fp32 amp=off tf32=false
  train b32_bf16 amp=bf16 batch_size=32 num_workers=4
  ;;
*)
  sed -n '2,20p' "$0"
  exit 2
  ;;
esac
