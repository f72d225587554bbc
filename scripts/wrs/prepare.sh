#!/usr/bin/env bash
# Build the WRS roidb caches from COCO json or Pascal VOC annotations.
#
#   scripts/wrs/prepare.sh FORMAT ANNOTATIONS IMAGE_DIR [OUT_DIR] [VAL_ANNOTATIONS]
#
#   FORMAT           coco | voc
#   ANNOTATIONS      coco: the instances json; voc: the VOC root (Annotations/, ImageSets/Main/)
#   IMAGE_DIR        the images (voc: the JPEGImages folder)
#   OUT_DIR          default data/wrs (under the repository root); receives train_roidb.json and
#                    val_roidb.json, the defaults of finetune.sh and kfold.sh
#   VAL_ANNOTATIONS  coco: a second json; voc: an ImageSets list file (training then uses the
#                    root's trainval list). Without it, a stratified fifth of the images (fold 0
#                    of scripts/kfold.py --k 5) is held out for validation and the rest trains.
#
# PYTHON overrides the interpreter (default .venv/bin/python, else python3).
set -euo pipefail
source "$(dirname "$0")/common.sh"

if [ $# -lt 3 ] || [ $# -gt 5 ]; then
    usage "$0" 2 15 >&2
    exit 2
fi
FORMAT=$1 ANN=$(abs "$2") IMAGES=$(abs "$3") VAL_ANN=${5:+$(abs "$5")}
OUT=${4:+$(abs "$4")}
cd "$ROOT"
OUT=${OUT:-data/wrs}

roidb() {  # roidb ANNOTATIONS OUT_JSON [VOC_LIST]
    case "$FORMAT" in
        coco) "$PY" scripts/create_roidb.py --format coco --ann "$1" --image-dir "$IMAGES" --out "$2" ;;
        voc) "$PY" scripts/create_roidb.py --format voc --voc-root "$1" --image-dir "$IMAGES" --out "$2" \
                 ${3:+--ann "$3"} ;;
        *) echo "error: FORMAT must be coco or voc, got '$FORMAT'" >&2; exit 2 ;;
    esac
}

mkdir -p "$OUT"
if [ -n "$VAL_ANN" ]; then
    roidb "$ANN" "$OUT/train_roidb.json"
    if [ "$FORMAT" = voc ]; then
        roidb "$ANN" "$OUT/val_roidb.json" "$VAL_ANN"
    else
        roidb "$VAL_ANN" "$OUT/val_roidb.json"
    fi
else
    roidb "$ANN" "$OUT/all_roidb.json"
    "$PY" scripts/kfold.py --roidb "$OUT/all_roidb.json" --k 5 --out "$OUT/holdout"
    cp "$OUT/holdout/fold0_train.json" "$OUT/train_roidb.json"
    cp "$OUT/holdout/fold0_val.json" "$OUT/val_roidb.json"
fi
echo "WRS roidb caches: $OUT/train_roidb.json $OUT/val_roidb.json"
