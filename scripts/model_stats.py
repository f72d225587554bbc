#!/usr/bin/env python
"""Parameters, multiply-adds, anchors and per-stage output shapes of a config or classifier.

  python scripts/model_stats.py --config config/efficientdet_b0.py [--set ...] [--num-classes N] [--json]
  python scripts/model_stats.py --classifier efficientnet_b3 [--json]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mxnet as mx  # noqa: E402

from models.efficientdet.anchors import num_anchors  # noqa: E402
from models.efficientdet.backbone import efficientnet_classifier, efficientnet_features  # noqa: E402
from models.efficientdet.builder import build_network  # noqa: E402
from models.efficientdet.scaling import EFFICIENTNET_PARAMS  # noqa: E402
from models.efficientdet.stats import count_macs, count_params  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402


def _shape(sym, data_shape):
    return tuple(sym.infer_shape(data=data_shape)[1][0])


def detection_stats(cfg):
    size = tuple(cfg.DatasetParam.image_size)
    data_shape = (1, 3) + size
    data = mx.sym.Variable("data")
    cls, box = build_network(cfg, data)
    sym = mx.sym.Group([cls[l] for l in sorted(cls)] + [box[l] for l in sorted(box)])
    trunk = efficientnet_features(data, size, cfg.BackboneParam.name)
    rows = [("stage%d" % s, _shape(trunk["stage%d" % s][0], data_shape)) for s in range(1, 8)]
    rows += [("class P%d" % l, _shape(cls[l], data_shape)) for l in sorted(cls)]
    rows += [("box P%d" % l, _shape(box[l], data_shape)) for l in sorted(box)]
    a = cfg.AnchorParam
    return {
        "model": cfg.General.name, "params": count_params(sym, data_shape), "flops": count_macs(sym, data_shape),
        "anchors": num_anchors(size, cfg.NeckParam.min_level, cfg.NeckParam.max_level, a.num_scales,
                               len(a.aspect_ratios)),
        "image_size": list(size), "num_classes": cfg.DatasetParam.num_classes,
        "stages": [{"name": n, "shape": list(s)} for n, s in rows],
    }


def classifier_stats(variant):
    if variant not in EFFICIENTNET_PARAMS:
        raise UserError("unknown classifier '%s'; choose from %s" % (variant, ", ".join(EFFICIENTNET_PARAMS)))
    size = EFFICIENTNET_PARAMS[variant].resolution
    data_shape = (1, 3, size, size)
    sym, feats = efficientnet_classifier(variant)
    rows = [("stage%d" % s, _shape(feats["stage%d" % s][0], data_shape)) for s in range(1, 8)]
    rows.append(("logits", _shape(sym, data_shape)))
    return {"model": variant, "params": count_params(sym, data_shape), "flops": count_macs(sym, data_shape),
            "anchors": 0, "image_size": [size, size], "num_classes": 1000,
            "stages": [{"name": n, "shape": list(s)} for n, s in rows]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--config")
    group.add_argument("--classifier", help="efficientnet_b0 .. efficientnet_b7")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="Class.field=value")
    parser.add_argument("--num-classes", type=int)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.classifier:
        stats = classifier_stats(args.classifier)
    else:
        sets = args.sets + (["DatasetParam.num_classes=%d" % args.num_classes] if args.num_classes else [])
        # Statistics are per image: build the graph for batch 1, the shape they are read at.
        stats = detection_stats(load_config(args.config, sets + ["General.batch_image=1"], is_train=False))
    if args.json:
        print(json.dumps(stats))
        return 0
    print("%s  input %dx%d  classes %d" % (stats["model"], stats["image_size"][0], stats["image_size"][1],
                                          stats["num_classes"]))
    print("%-13s %17s" % ("params", format(stats["params"], ",")))
    print("%-13s %17s  (%.2f B)" % ("multiply-adds", format(stats["flops"], ","), stats["flops"] / 1e9))
    print("%-13s %17s" % ("anchors", format(stats["anchors"], ",")))
    print("%-10s %s" % ("stage", "output (N, C, H, W)"))
    for row in stats["stages"]:
        print("%-10s %s" % (row["name"], tuple(row["shape"])))
    return 0


if __name__ == "__main__":
    run_cli(main)
