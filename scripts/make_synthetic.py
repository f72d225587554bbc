"""Write the synthetic shapes dataset (core/synthetic.py) as JPEGs plus COCO json.

    python scripts/make_synthetic.py --out data/synthetic --num-images 1000 --seed 0
        [--val-fraction 0.2] [--size 320]

Produces OUT/images/*.jpg, OUT/train.json and OUT/val.json; the same seed gives identical bytes.
Turn a split into a roidb cache with
    python scripts/create_roidb.py --format coco --ann OUT/train.json --image-dir OUT/images --out ...
"""
import argparse
import os
import sys
import time

# Runnable as `python scripts/make_synthetic.py` from a checkout, without installing the repo.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.synthetic import CLASSES, make_synthetic  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-images", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--size", type=int, default=320, help="image side in pixels")
    args = parser.parse_args()
    if args.num_images < 1:
        raise UserError("--num-images must be at least 1, got %d" % args.num_images)
    if not 0.0 <= args.val_fraction < 1.0:
        raise UserError("--val-fraction must be in [0, 1), got %g" % args.val_fraction)
    if args.size < 64:
        raise UserError("--size must be at least 64 px, got %d" % args.size)
    if not 0 <= args.seed < 2 ** 32:
        raise UserError("--seed must be in [0, 2**32), got %d" % args.seed)
    start = time.time()
    paths = make_synthetic(args.out, args.num_images, args.seed, args.val_fraction, args.size)
    print("wrote %d images (%s) in %.1f s: %s, %s, images in %s" % (
        args.num_images, "/".join(CLASSES), time.time() - start, paths["train"], paths["val"],
        paths["image_dir"]))


if __name__ == "__main__":
    run_cli(main)
