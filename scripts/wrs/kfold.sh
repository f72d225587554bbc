#!/usr/bin/env bash
# K-fold fine-tuning on WRS and a WBF ensemble of the fold models: split the train roidb into K
# stratified folds, fine-tune one model per fold from the stripped COCO checkpoint (each scored
# on its own held-out fold), run every fold model on the test roidb and fuse their detections.
#
#   scripts/wrs/kfold.sh [--k 5] [--coco PARAMS] [--config FILE] [--name NAME]
#                        [--roidb JSON] [--test-roidb JSON] [--seed 0] [--iou-thr 0.55]
#                        [--set Class.field=value ...]
#
#   --k           folds (default 5)
#   --coco        COCO checkpoint, default model/efficientdet_d4_coco-0000.params
#   --config      default config/efficientdet_b4_wrs.py
#   --name        default: the config's General.name + _kfold; fold j trains as NAME_fold<j>
#   --roidb       images to split, default data/wrs/train_roidb.json
#   --test-roidb  images the ensemble is evaluated on, default data/wrs/val_roidb.json
#   --seed        split seed; --iou-thr: WBF IoU threshold
#   --set         passed to every finetune.sh run (on a CPU: --set General.fp16=false)
#
# Writes experiments/NAME/folds/ (the split), experiments/NAME_fold<j>/ (models; results-/eval-oof.json
# and results-/eval-test.json) and experiments/NAME/ensemble.json in the current directory, and prints
# COCO tables along the way. Defaults are relative to the repository root, given paths to the
# current directory.
set -euo pipefail
source "$(dirname "$0")/common.sh"

K=5
COCO=$ROOT/model/efficientdet_d4_coco-0000.params
CONFIG=$ROOT/config/efficientdet_b4_wrs.py
NAME=""
ROIDB=$ROOT/data/wrs/train_roidb.json
TEST=$ROOT/data/wrs/val_roidb.json
SEED=0
IOU=0.55
USER_SETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage "$0" 2 22; exit 0 ;;
        --k|--coco|--config|--name|--roidb|--test-roidb|--seed|--iou-thr|--set) need_value "$@" ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    case "$1" in
        --k) K=$2 ;;
        --coco) COCO=$(abs "$2") ;;
        --config) CONFIG=$(abs "$2") ;;
        --name) NAME=$2 ;;
        --roidb) ROIDB=$(abs "$2") ;;
        --test-roidb) TEST=$(abs "$2") ;;
        --seed) SEED=$2 ;;
        --iou-thr) IOU=$2 ;;
        --set) USER_SETS+=("$2") ;;
    esac
    shift 2
done

NAME=${NAME:-$(cfg_value "$CONFIG" General.name ${USER_SETS[@]+"${USER_SETS[@]}"})_kfold}
SETS=()
for s in ${USER_SETS[@]+"${USER_SETS[@]}"}; do SETS+=(--set "$s"); done
EPOCH=$(cfg_value "$CONFIG" OptimizeParam.schedule.end_epoch ${USER_SETS[@]+"${USER_SETS[@]}"})
TEST_CLASSES=$(num_classes "$TEST")     # also checks the test roidb before K trainings

echo "== split $ROIDB into $K folds"
"$PY" "$ROOT/scripts/kfold.py" --roidb "$ROIDB" --k "$K" --out "experiments/$NAME/folds" --seed "$SEED"
# keep_as NAME TAG: rename detection_test.py's results/eval files of the last epoch to *-TAG.json,
# so that the next test run of the same model does not overwrite them.
keep_as() {
    local e
    e=$(printf %04d "$EPOCH")
    mv "experiments/$1/results-epoch$e.json" "experiments/$1/results-$2.json"
    mv "experiments/$1/eval-epoch$e.json" "experiments/$1/eval-$2.json"
}
RESULTS=()
for ((j = 0; j < K; j++)); do
    FOLD=${NAME}_fold$j
    echo "== fold $j: fine-tune, score on its held-out fold"
    bash "$ROOT/scripts/wrs/finetune.sh" --coco "$COCO" --config "$CONFIG" --name "$FOLD" \
        --train-roidb "experiments/$NAME/folds/fold${j}_train.json" \
        --val-roidb "experiments/$NAME/folds/fold${j}_val.json" ${SETS[@]+"${SETS[@]}"}
    keep_as "$FOLD" oof
    echo "== fold $j: detect on $TEST"
    "$PY" "$ROOT/detection_test.py" --config "$CONFIG" --epoch "$EPOCH" --set "General.name=$FOLD" \
        --set "DatasetParam.val_roidb=$TEST" --set "DatasetParam.num_classes=$TEST_CLASSES" \
        ${SETS[@]+"${SETS[@]}"}
    keep_as "$FOLD" test
    RESULTS+=("experiments/$FOLD/results-test.json")
done
echo "== WBF ensemble of $K fold models on $TEST"
"$PY" "$ROOT/scripts/ensemble.py" --inputs "${RESULTS[@]}" --roidb "$TEST" --iou-thr "$IOU" \
    --out "experiments/$NAME/ensemble.json"
