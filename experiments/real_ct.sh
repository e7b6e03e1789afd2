#!/usr/bin/env bash
# Real CT worked example (docs/experiments.md): train on 3D-IRCADb-01 patient 17 (liver + tumour),
# predict the CHAOS sample, report its liver Dice. Usage: bash experiments/real_ct.sh [OUT] [DATA]
# OUT defaults to ./real, DATA to ../shared/data/real, BUDGET (environment) to 30m. Uses the CLI only;
# every training setting comes from the plan `ahnet train` derives from the data and the time budget.
set -euo pipefail
OUT="${1:-real}"
R="${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/../shared/data/real}"
[ -f "$R/ircad_patient17/ircad17_ct.nii.gz" ] || { echo "real CT volumes not found under $R" >&2; exit 2; }
ahnet import "$OUT/ircad" --image "$R/ircad_patient17/ircad17_ct.nii.gz" \
    --label "$R/ircad_patient17/ircad17_liver_tumor_label.nii.gz" --case ircad17 --labels background,liver,lesion \
    --overwrite
ahnet import "$OUT/chaos" --image "$R/chaos_ct/chaos_ct_sample_image.nii.gz" \
    --label "$R/chaos_ct/chaos_ct_sample_liver_gt.nii.gz" --case chaos --labels background,liver,lesion --overwrite
ahnet train "$OUT/ircad" --out "$OUT/run" --time-budget "${BUDGET:-30m}"   # plan, preprocess, MC-GCN, transfer, AH-Net
ahnet predict -m "$OUT/run" -i "$OUT/chaos/imagesTr" -o "$OUT/pred" --overwrite
ahnet evaluate seg --pred "$OUT/pred" --gt "$OUT/chaos/labelsTr" --classes '{"liver": [1, 2]}' --json "$OUT/dice.json"
