#!/usr/bin/env bash
# Fine-tune EfficientDet-D4 on WRS from COCO weights: strip the COCO head, train with frozen
# stages, then test and evaluate (COCO AP).
#
#   scripts/wrs/finetune.sh [--coco PARAMS] [--config FILE] [--name NAME] [--train-roidb JSON]
#                           [--val-roidb JSON] [--strip "ARGS"] [--set Class.field=value ...]
#
#   --coco         COCO checkpoint (scripts/convert_weights.py output),
#                  default model/efficientdet_d4_coco-0000.params
#   --config       default config/efficientdet_b4_wrs.py
#   --name         experiment name (./experiments/NAME/), default: the config's General.name
#   --train-roidb  default data/wrs/train_roidb.json (scripts/wrs/prepare.sh)
#   --val-roidb    default data/wrs/val_roidb.json
#   --strip        extra scripts/strip_head.py arguments, e.g. "--keep-box"
#   --set          passed to detection_train.py and detection_test.py after the script's own
#                  settings, so they win (on a CPU: --set General.fp16=false)
#
# Defaults are relative to the repository root, given paths to the current directory; outputs
# go to experiments/ in the current directory, as with detection_train.py.
# DatasetParam.num_classes comes from the train roidb. PYTHON overrides the interpreter (default
# .venv/bin/python, else python3).
set -euo pipefail
source "$(dirname "$0")/common.sh"

COCO=$ROOT/model/efficientdet_d4_coco-0000.params
CONFIG=$ROOT/config/efficientdet_b4_wrs.py
NAME=""
TRAIN=$ROOT/data/wrs/train_roidb.json
VAL=$ROOT/data/wrs/val_roidb.json
STRIP=""
USER_SETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage "$0" 2 21; exit 0 ;;
        --coco|--config|--name|--train-roidb|--val-roidb|--strip|--set) need_value "$@" ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    case "$1" in
        --coco) COCO=$(abs "$2") ;;
        --config) CONFIG=$(abs "$2") ;;
        --name) NAME=$2 ;;
        --train-roidb) TRAIN=$(abs "$2") ;;
        --val-roidb) VAL=$(abs "$2") ;;
        --strip) STRIP=$2 ;;
        --set) USER_SETS+=("$2") ;;
    esac
    shift 2
done

NAME=${NAME:-$(cfg_value "$CONFIG" General.name ${USER_SETS[@]+"${USER_SETS[@]}"})}
STRIPPED=experiments/$NAME/pretrained/coco_nohead
SETS=("General.name=$NAME" "DatasetParam.train_roidb=$TRAIN" "DatasetParam.val_roidb=$VAL"
      "DatasetParam.num_classes=$(num_classes "$TRAIN")" "ModelParam.pretrain.prefix=$STRIPPED"
      "ModelParam.pretrain.epoch=0" ${USER_SETS[@]+"${USER_SETS[@]}"})
EPOCH=$(cfg_value "$CONFIG" OptimizeParam.schedule.end_epoch "${SETS[@]}")
ARGS=()
for s in "${SETS[@]}"; do ARGS+=(--set "$s"); done

echo "== strip the COCO head of $COCO"
# shellcheck disable=SC2086  # STRIP holds several words on purpose
"$PY" "$ROOT/scripts/strip_head.py" --src "$COCO" --out "$STRIPPED-0000.params" $STRIP
echo "== train $NAME for $EPOCH epochs"
"$PY" "$ROOT/detection_train.py" --config "$CONFIG" "${ARGS[@]}"
echo "== test $NAME epoch $EPOCH on $VAL"
"$PY" "$ROOT/detection_test.py" --config "$CONFIG" --epoch "$EPOCH" "${ARGS[@]}"
