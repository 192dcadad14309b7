#!/usr/bin/env bash
# Issue #20's CPU fine-tune of the bundled model: modality-balanced sampling and stain/colour
# augmentation, on the "fit" part of DSB 2018 train; the epoch is chosen on the "selection"
# part (benchmarks/protocol_split.py, committed list benchmarks/dsb2018_train_split.tsv); val is
# never seen. Usage: bash benchmarks/finetune_modality.sh [OUT_DIR]
# EPOCHS, STEPS, PATCH, LR, SEED change the run; NAPARI_UNET names the CLI, PYTHON the interpreter.
# Then tune per modality on "selection" and score val once (model card, "Levers tried"):
#   napari-unet tune --model OUT_DIR/model.pt --images runs/split/selection/images \
#       --labels runs/split/selection/labels --per-modality --out OUT_DIR/tuned.pt ...
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/finetune_modality}"
python="${PYTHON:-.venv/bin/python}"
cli="${NAPARI_UNET:-.venv/bin/napari-unet}"
split="$out/split"
mkdir -p "$out"
"$python" benchmarks/protocol_split.py link "$split"
# One intra-op thread: leaves the second core of a 2-core machine to other work.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
$cli train --images "$split/fit/images" --labels "$split/fit/labels" \
    --val-images "$split/selection/images" --val-labels "$split/selection/labels" \
    --init default --loss bce+dice --patch-size "${PATCH:-192}" --batch-size 8 \
    --sampling modality --colour-augment --steps-per-epoch "${STEPS:-50}" \
    --epochs "${EPOCHS:-2}" --schedule onecycle --lr "${LR:-1e-4}" --early-stopping 0 \
    --seed "${SEED:-5}" --device cpu --half --out "$out/model.pt" --log "$out/log.csv"
