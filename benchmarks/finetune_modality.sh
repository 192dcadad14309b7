#!/usr/bin/env bash
# Issue #20's CPU fine-tune of the bundled model: modality-balanced sampling and stain/colour
# augmentation, on the "fit" part of DSB 2018 train; the epoch is chosen on the "selection"
# part (benchmarks/protocol_split.py, committed list benchmarks/dsb2018_train_split.tsv); val is
# never seen. Usage: bash benchmarks/finetune_modality.sh [OUT_DIR]
# EPOCHS, STEPS, PATCH, LR, SEED, DEVICE change the run; NAPARI_UNET names the CLI, PYTHON the interpreter.
# Then (model card, "Honest protocol and modality levers") tune per modality on "selection" and
# score val once, with the bundled post-processing and with the values tuned on selection:
#   napari-unet tune --model OUT_DIR/model.pt --images OUT_DIR/split/selection/images \
#       --labels OUT_DIR/split/selection/labels --thresholds 0.65 0.7 0.75 \
#       --seed-thresholds 0.4 0.5 --core-thresholds 0.85 0.9 --min-sizes 16 24 32 \
#       --rank-by f1_50 --per-modality --out OUT_DIR/tuned.pt
#   python benchmarks/score_postprocess.py --model OUT_DIR/model.pt --images DSB/val/images \
#       --labels DSB/val/labels --settings-from default --settings-from OUT_DIR/tuned.pt
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
    --seed "${SEED:-5}" --device "${DEVICE:-cpu}" --half --out "$out/model.pt" --log "$out/log.csv"
