#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run sized for a short lease:
#   1. tests/test_cuda.py: bf16 + channels-last training step, CUDA and CPU predictions agree,
#      resume across devices, torchrun with NCCL;
#   2. benchmarks/bench_train.py --device cuda, batch 8 (all presets) and 32 (fast);
#   3. candidate nuclei models trained side by side on the DSB split with
#      benchmarks/train_default_model.sh, each sized by benchmarks/plan_epochs.py to the time
#      left before TOTAL_SECONDS (default 540) have passed since the start.
# Runs with the machine's own python3 and PyTorch: numpy, scipy, scikit-image, tifffile and tqdm
# are needed; dask, zarr and the napari stack are not.
# Usage: DSB_DIR=path/to/dsb2018 [RUNS="name preset patch lr seed"...] \
#            bash benchmarks/gpu_check.sh OUT_DIR [TOTAL_SECONDS]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/gpu}"
total="${2:-540}"
data="${DSB_DIR:-../shared/data/dsb2018}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())'
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
timeout 100 python3 benchmarks/bench_train.py --device cuda 2>&1 | tee "$out/bench_train.txt"
timeout 45 python3 benchmarks/bench_train.py --device cuda --batch 32 --presets fast 2>&1 |
    tee -a "$out/bench_train.txt"

# The trainings share the GPU and 16 cores: a few threads each, and a 1.3x margin on the plan.
export OMP_NUM_THREADS=4
budget=$((total - SECONDS - 40))
echo "training budget: ${budget} s"
# One candidate per line: name preset patch peak-lr seed (RUNS replaces the list).
runs="${RUNS:-fast_lr2e-3 fast 256 2e-3 0
unetpp_lr2e-3 unetpp 256 2e-3 0
fast_lr1e-3 fast 256 1e-3 1}"
while read -r run; do
    read -r name preset patch lr seed <<<"$run"
    (
        epochs=$(python3 benchmarks/plan_epochs.py --data "$data" --preset "$preset" \
            --patch-size "$patch" --steps-per-epoch 200 --budget $((budget - 30)) \
            --slowdown 1.3 | tee "$out/$name.plan" | tail -1)
        # SIGINT at the deadline: the CLI stops and the best epoch's model file stays.
        DSB_DIR="$data" NAPARI_UNET="python3 -m napari_unet" STAGES=1 PRESET="$preset" \
            PATCH="$patch" LR="$lr" SEED="$seed" EPOCHS="$epochs" DEVICE=cuda \
            timeout -s INT -k 15 "$budget" bash benchmarks/train_default_model.sh "$out/$name" \
            >"$out/$name.log" 2>&1
        echo "$name: exit $?, $(head -1 "$out/$name.plan")"
        tr "\r" "\n" <"$out/$name.log" | grep -a "train_loss .*val_loss\|^done" | tail -3
    ) </dev/null &
done <<<"$runs"
wait
