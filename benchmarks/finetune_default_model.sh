#!/usr/bin/env bash
# Second stage of the bundled model: a shorter, lower one-cycle run started from stage 1
# (benchmarks/train_default_model.sh). Usage: bash benchmarks/finetune_default_model.sh STAGE1_MODEL [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
data="${DSB_DIR:-../shared/data/dsb2018}"
init="$1"
out="${2:-runs/default_model_ft}"
mkdir -p "$out"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/napari-unet train \
    --images "$data/train/images" --labels "$data/train/labels" \
    --val-images "$data/val/images" --val-labels "$data/val/labels" \
    --init "$init" --out "$out/model.pt" --loss bce+dice \
    --patch-size 128 --batch-size 8 --sampling image \
    --epochs 8 --steps-per-epoch 200 --lr 1e-3 --schedule onecycle --early-stopping 0 \
    --seed 1 --device auto --half
