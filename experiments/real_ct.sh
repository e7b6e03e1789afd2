#!/usr/bin/env bash
# Real CT worked example (docs/experiments.md): train on 3D-IRCADb-01 patient 17 (liver + tumour),
# predict the CHAOS sample, report its liver Dice. Usage: bash experiments/real_ct.sh [OUT] [DATA]
# OUT defaults to ./real, DATA to ../shared/data/real. Uses the CLI only.
set -euo pipefail
OUT="${1:-real}"
R="${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/../shared/data/real}"
[ -f "$R/ircad_patient17/ircad17_ct.nii.gz" ] || { echo "real CT volumes not found under $R" >&2; exit 2; }
ahnet import "$OUT/ircad" --image "$R/ircad_patient17/ircad17_ct.nii.gz" \
    --label "$R/ircad_patient17/ircad17_liver_tumor_label.nii.gz" --case ircad17 --labels background,liver,lesion \
    --overwrite
ahnet import "$OUT/chaos" --image "$R/chaos_ct/chaos_ct_sample_image.nii.gz" \
    --label "$R/chaos_ct/chaos_ct_sample_liver_gt.nii.gz" --case chaos --labels background,liver,lesion --overwrite
ahnet train2d --data "$OUT/ircad" --out "$OUT/mcgcn" --backbone resnet18 --patch 128x128 --inplane-spacing 1.5 \
    --epochs 8 --iters-per-epoch 25 --batch-size 8 --lr 5e-4 --val-fraction 0
ahnet transfer "$OUT/mcgcn/checkpoint_best.pt" --out "$OUT/ahnet_init.pt"
ahnet train3d --data "$OUT/ircad" --init "$OUT/ahnet_init.pt" --out "$OUT/ahnet" --backbone resnet18 \
    --patch 128x128x16 --inplane-spacing 1.5 --stage1-epochs 2 --epochs 6 --iters-per-epoch 20 --batch-size 2 \
    --val-fraction 0
ahnet predict -m "$OUT/ahnet/checkpoint_best.pt" -i "$OUT/chaos/imagesTr" -o "$OUT/pred" --overwrite
ahnet evaluate seg --pred "$OUT/pred" --gt "$OUT/chaos/labelsTr" --classes '{"liver": [1, 2]}' --json "$OUT/dice.json"
