#!/usr/bin/env python
"""Merge COCO-format detection results with weighted boxes fusion, then evaluate the merge.

  python scripts/ensemble.py --inputs fold0/results.json fold1/results.json ... --roidb data/wrs/val_roidb.json \
      --out experiments/wrs_kfold/ensemble.json [--weights 2 1 ...] [--iou-thr 0.55] [--skip-box-thr 0.0]

Each input is a COCO results list (detection_test.py's results-*.json: image_id, category_id,
bbox x, y, w, h in original pixels, score) for images of the roidb: the K fold models of
scripts/wrs/kfold.sh, or test-time-augmentation views of one model. Per image, the inputs' boxes
are normalised by the image's width and height and fused by `ensemble_boxes.weighted_boxes_fusion`
(core/wbf.py; a box only some inputs found gets its score scaled down); the best --max-det stay.
Writes the merged COCO results json to --out (never one of the inputs) and prints COCOeval's table
(core/evaluate.py).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from core.dataset import load_roidb  # noqa: E402
from core.evaluate import evaluate, format_per_class, to_coco_results  # noqa: E402
from core.wbf import CONF_TYPES, fuse  # noqa: E402
from utils.errors import UserError, refuse_overwrite, run_cli  # noqa: E402
from utils.fileio import write_json  # noqa: E402


def read_results(path, images, categories):
    """COCO results json -> {image_id: (K, 6) x1, y1, x2, y2, score, class (0-based)}."""
    try:
        with open(path) as f:
            results = json.load(f)
    except FileNotFoundError:
        raise UserError("results file not found: %s" % path)
    except ValueError as e:
        raise UserError("%s is not json: %s" % (path, e))
    index = {c["id"]: i for i, c in enumerate(categories)}
    rows = {}
    try:
        for r in results:
            if r["image_id"] not in images:
                raise UserError("%s: image_id %s is not in the roidb" % (path, r["image_id"]))
            if r["category_id"] not in index:
                raise UserError("%s: category_id %s is not in the roidb's categories" % (path, r["category_id"]))
            x, y, w, h = r["bbox"]
            rows.setdefault(r["image_id"], []).append([x, y, x + w, y + h, r["score"], index[r["category_id"]]])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError("%s is not a COCO results list (image_id, category_id, bbox, score): %s" % (path, e))
    return {k: np.array(v, np.float64) for k, v in rows.items()}


def ensemble(per_input, roidb, weights=None, iou_thr=0.55, skip_box_thr=0.0, conf_type="avg", max_det=100):
    """Fuse [{image_id: (K, 6)}] (one dict per input) -> {image_id: (<= max_det, 6)} for every
    roidb image."""
    merged = {}
    for r in roidb:
        dets = [d.get(r["image_id"], np.zeros((0, 6))) for d in per_input]
        merged[r["image_id"]] = fuse(dets, (r["height"], r["width"]), weights, iou_thr, skip_box_thr,
                                     conf_type)[:max_det]
    return merged


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", required=True, help="COCO results json files")
    parser.add_argument("--roidb", required=True, help="roidb cache of the images the results are on")
    parser.add_argument("--out", required=True, help="merged COCO results json to write")
    parser.add_argument("--weights", nargs="+", type=float, help="one weight per input (default all 1)")
    parser.add_argument("--iou-thr", type=float, default=0.55, help="same-class boxes above this IoU fuse")
    parser.add_argument("--skip-box-thr", type=float, default=0.0, help="ignore input boxes scoring below this")
    parser.add_argument("--conf-type", default="avg", choices=CONF_TYPES, help="fused score rule")
    parser.add_argument("--max-det", type=int, default=100, help="detections kept per image")
    args = parser.parse_args()
    refuse_overwrite([("--out", args.out)], [("--roidb", args.roidb)] + [("--inputs", p) for p in args.inputs])
    if args.weights and len(args.weights) != len(args.inputs):
        raise UserError("%d --weights for %d --inputs" % (len(args.weights), len(args.inputs)))
    if args.max_det < 1:
        raise UserError("--max-det must be at least 1, got %d" % args.max_det)
    if not 0.0 < args.iou_thr <= 1.0:
        raise UserError("--iou-thr must be in (0, 1], got %g" % args.iou_thr)
    roidb, categories = load_roidb(args.roidb)
    images = {r["image_id"] for r in roidb}
    per_input = [read_results(p, images, categories) for p in args.inputs]
    merged = ensemble(per_input, roidb, args.weights, args.iou_thr, args.skip_box_thr, args.conf_type,
                      args.max_det)
    results = to_coco_results(merged, roidb, categories)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, results)
    print("fused %d inputs over %d images: %d detections" % (len(per_input), len(roidb), len(results)))
    report = evaluate(roidb, categories, results)
    print("\n".join(report["summary"]))
    print(format_per_class(report["per_class"]))
    print("wrote %s" % args.out)
    return 0


if __name__ == "__main__":
    run_cli(main)
