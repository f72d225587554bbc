#!/usr/bin/env python
"""Evaluate a detector on its validation roidb with COCO metrics.

  python detection_test.py --config config/quickstart.py --epoch 8 [--set Class.field=value ...]
  python detection_test.py --config config/efficientdet_b0.py --params model/d0-0000.params

Weights: experiments/<General.name>/<General.name>-EEEE.params for --epoch (the EMA weights when
training kept an EMA), or any .params file for --params (--ema takes the EMA weights of a training
checkpoint ckpt-*.params); weights that record their class names (training checkpoints and
exports do) must name the roidb's classes in its order. The roidb DatasetParam.val_roidb goes
through the eval transform and the test symbol, whose graph ends in post-processing (TestParam),
General.batch_image images per device: the path of core/validation.py, which the validation during
training shares. With TestParam.tta_flip / tta_scales every extra view (mirrored image, other input
sizes) runs too and the views are merged per image by weighted boxes fusion (core/tta.py).
Writes into experiments/<General.name>/:
  results-<tag>.json  COCO results: bbox x, y, w, h in original pixels, original category ids
  eval-<tag>.json     the 12 COCO numbers, pycocotools' summary lines and the per-class AP table
and with --analyze (core/error_analysis.py), at IoU 0.5:
  pr-<tag>.png        precision-recall curves and F1 against the score threshold, per class
  confusion-<tag>.png/.json  confusion matrix with background misses and false positives
  thresholds-<tag>.json      per-class score threshold maximising F1 (detection_infer.py --score auto)
"""
import argparse
import os
import sys

from utils.cpu import configure_cpu, cpu_devices_of

configure_cpu(devices=cpu_devices_of(sys.argv[1:]), inference=True)  # before mxnet is imported

from core.roidb import check_class_names, load_config_roidb
from core.error_analysis import analysis_paths, write_analysis
from core.evaluate import evaluate, format_per_class, to_coco_results
from core.devices import contexts
from core.validation import detect_views
from utils.checkpoint import load_weights
from utils.config import add_config_args, load_config
from utils.errors import refuse_overwrite, run_cli
from utils.fileio import write_json


def main():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--epoch", type=int, help="evaluate experiments/<name>/<name>-EPOCH.params")
    which.add_argument("--params", help="evaluate this .params file")
    parser.add_argument("--ema", action="store_true", help="use the ema: weights of a training checkpoint")
    parser.add_argument("--analyze", action="store_true", help="also write PR curves, a confusion matrix and "
                        "per-class score thresholds (IoU 0.5)")
    args = parser.parse_args()
    cfg = load_config(args.config, args.sets, is_train=False)
    name = cfg.General.name
    exp_dir = os.path.join("experiments", name)
    if args.params:
        path, tag = args.params, os.path.splitext(os.path.basename(args.params))[0]
    else:
        path, tag = os.path.join(exp_dir, "%s-%04d.params" % (name, args.epoch)), "epoch%04d" % args.epoch
    tag += "-ema" if args.ema else ""

    # data
    roidb, categories = load_config_roidb(cfg, "val")
    ctx = contexts(cfg)
    arg, aux, trained_on = load_weights(path, ema=args.ema)
    check_class_names(trained_on, [c["name"] for c in categories], path, cfg.DatasetParam.val_roidb)
    results_path = os.path.join(exp_dir, "results-%s.json" % tag)
    eval_path = os.path.join(exp_dir, "eval-%s.json" % tag)
    analysis = analysis_paths(exp_dir, tag) if args.analyze else {}
    refuse_overwrite([("the results file", results_path), ("the evaluation file", eval_path)] +
                     [("the analysis file", p) for p in analysis.values()],
                     [("--params", path), ("DatasetParam.val_roidb", cfg.DatasetParam.val_roidb)])

    # run every view (just the plain one without TTA; the time excludes binding), score, save
    detections, seconds = detect_views(cfg, roidb, arg, aux, ctx, path)
    print("%d images in %.1f s (%.2f images/s) with %s" % (len(detections), seconds,
                                                            len(detections) / max(seconds, 1e-9), path))
    results = to_coco_results(detections, roidb, categories)
    os.makedirs(exp_dir, exist_ok=True)
    write_json(results_path, results)
    report = evaluate(roidb, categories, results)
    print("\n".join(report["summary"]))
    print(format_per_class(report["per_class"]))
    test_param = {k: v for k, v in vars(cfg.TestParam).items() if not k.startswith("_")}
    write_json(eval_path, dict(report, params=os.path.abspath(path), config=os.path.abspath(args.config),
                               images=len(detections), detections=len(results), test_param=test_param))
    print("wrote %s and %s" % (results_path, eval_path))
    if args.analyze:
        print(write_analysis(roidb, categories, results, cfg.TestParam.max_det, analysis, os.path.abspath(path)))
        print("wrote %s" % ", ".join(analysis.values()))
    return 0


if __name__ == "__main__":
    run_cli(main)
