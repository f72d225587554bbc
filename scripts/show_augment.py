#!/usr/bin/env python
"""Draw a grid of augmented training samples with their boxes, to check an augmentation setup.

  python scripts/show_augment.py --config config/quickstart.py --out grid.png [--num 16] \
      [--set DatasetParam.mosaic_prob=1.0 ...]

The samples are those of training epoch 0 on one device: DetectionLoader's roidb order and
per-sample RNG (seed, 0, slot, 0) through the config's training pipeline (core/pipeline.py:
core/mixing.py when enabled, then core/transforms.py); past the roidb's end, the same order is
drawn again with new slots. Each tile is the network input, de-normalised (padding shows as the mean colour).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from core.dataset import load_roidb  # noqa: E402
from core.pipeline import build_transform  # noqa: E402
from utils.config import add_config_args, load_config  # noqa: E402
from utils.draw import draw_detections, tile  # noqa: E402
from utils.errors import UserError, refuse_overwrite, run_cli  # noqa: E402
from utils.fileio import atomic_write  # noqa: E402


def to_bgr(data, mean, std):
    """Network input float32 (3, H, W) -> BGR uint8 (H, W, 3)."""
    rgb = data.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.ascontiguousarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8)[..., ::-1])


def main():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--num", type=int, default=16, help="samples to draw")
    parser.add_argument("--columns", type=int, default=4)
    args = parser.parse_args()
    if args.num < 1 or args.columns < 1:
        raise UserError("--num and --columns must be at least 1")
    if not args.out.lower().endswith(".png"):
        raise UserError("--out must be a .png file, got %s" % args.out)
    cfg = load_config(args.config, args.sets, is_train=True)
    if not cfg.DatasetParam.train_roidb:
        raise UserError("set DatasetParam.train_roidb (a roidb cache from scripts/create_roidb.py)")
    roidb, categories = load_roidb(cfg.DatasetParam.train_roidb)
    refuse_overwrite([("--out", args.out)], [("an image of the roidb", r["image"]) for r in roidb])
    transform = build_transform(cfg, True, roidb)
    seed = cfg.General.seed
    order = np.random.RandomState([seed, 0]).permutation(len(roidb))   # DetectionLoader.epoch_plan
    names = [c["name"] for c in categories]
    tiles = []
    for slot in range(args.num):
        sample = transform(roidb[order[slot % len(roidb)]], np.random.RandomState([seed, 0, slot, 0]))
        img = to_bgr(sample["data"], cfg.NormalizeParam.mean, cfg.NormalizeParam.std)
        tiles.append(draw_detections(img, sample["boxes"], np.ones(len(sample["boxes"])), sample["classes"],
                                     names, score_thresh=0.0))
    grid = tile(tiles, columns=args.columns, cell=max(cfg.DatasetParam.image_size))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    png = cv2.imencode(".png", grid)[1]
    atomic_write(args.out, png.tofile)
    print("wrote %d samples to %s" % (len(tiles), args.out))
    return 0


if __name__ == "__main__":
    run_cli(main)
