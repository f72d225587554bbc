#!/usr/bin/env python
"""The quickstart job: synthetic dataset -> train (validated every epoch) -> COCO evaluation -> a PNG
of detections.

  python scripts/quickstart.py [--config config/quickstart.py] [--num-images 700] [--set ...]

Each stage runs the same entry script a user would run, so this is also their smoke test.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cv2  # noqa: E402

from core.dataset import load_roidb  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.draw import draw_detections, tile  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def run(args):
    """Run `python args...` from the repo root; stop the job with its exit code if it fails."""
    print("\n$ python " + " ".join(args), flush=True)
    code = subprocess.call([sys.executable] + args, cwd=ROOT)
    if code:
        sys.exit(code)


def draw(cfg, results_path, out_path, count=12, score_thresh=0.3):
    """Tile the first `count` validation images with their detections above `score_thresh`."""
    roidb, categories = load_roidb(cfg.DatasetParam.val_roidb)
    names = [c["name"] for c in categories]
    index = {c["id"]: i for i, c in enumerate(categories)}
    by_image = {}
    for r in json.load(open(results_path)):
        by_image.setdefault(r["image_id"], []).append(r)
    images = []
    for rec in roidb[:count]:
        dets = by_image.get(rec["image_id"], [])
        boxes = [[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]] for d in dets]
        images.append(draw_detections(cv2.imread(rec["image"]), boxes, [d["score"] for d in dets],
                                      [index[d["category_id"]] for d in dets], names, score_thresh))
    cv2.imwrite(out_path, tile(images))
    return out_path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/quickstart.py")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="Class.field=value")
    parser.add_argument("--num-images", type=int, default=700)
    parser.add_argument("--val-images", type=int, default=100)
    args = parser.parse_args()
    os.chdir(ROOT)
    cfg = load_config(args.config, args.sets, is_train=False)
    sets = [a for s in args.sets for a in ("--set", s)]
    start = time.time()

    data_dir = os.path.dirname(cfg.DatasetParam.train_roidb)
    if not (os.path.isfile(cfg.DatasetParam.train_roidb) and os.path.isfile(cfg.DatasetParam.val_roidb)):
        run(["scripts/make_synthetic.py", "--out", data_dir, "--num-images", str(args.num_images), "--seed", "0",
             "--val-fraction", str(args.val_images / float(args.num_images)),
             "--size", str(max(cfg.DatasetParam.image_size))])
        for split, roidb in (("train", cfg.DatasetParam.train_roidb), ("val", cfg.DatasetParam.val_roidb)):
            run(["scripts/create_roidb.py", "--format", "coco", "--ann", os.path.join(data_dir, split + ".json"),
                 "--image-dir", os.path.join(data_dir, "images"), "--out", roidb])
    # --resume: a rerun continues (or, when finished, skips) the run instead of starting over.
    run(["detection_train.py", "--config", args.config, "--resume"] + sets)
    epoch = load_config(args.config, args.sets, is_train=True).OptimizeParam.schedule.end_epoch
    run(["detection_test.py", "--config", args.config, "--epoch", str(epoch)] + sets)

    exp_dir = os.path.join("experiments", cfg.General.name)
    report = json.load(open(os.path.join(exp_dir, "eval-epoch%04d.json" % epoch)))
    png = draw(cfg, os.path.join(exp_dir, "results-epoch%04d.json" % epoch),
               os.path.join(exp_dir, "val_detections.png"))
    print("\nquickstart done in %.1f min: mAP@[.5:.95] %.3f, mAP@.5 %.3f; detections drawn in %s"
          % ((time.time() - start) / 60.0, report["stats"]["AP"], report["stats"]["AP50"], png))
    best = os.path.join(exp_dir, "%s-best.json" % cfg.General.name)
    if os.path.isfile(best):     # TestParam.eval_every > 0: validated during training
        best = json.load(open(best))
        print("val AP per epoch in %s and %s; best AP %.3f after epoch %d: %s"
              % (os.path.join(exp_dir, "val_metrics.csv"), os.path.join(exp_dir, "val_curve.png"), best["AP"],
                 best["epoch"], os.path.join(exp_dir, best["params"])))
    return 0


if __name__ == "__main__":
    run_cli(main)
