"""Loader throughput with full training augmentation and real anchor targets.

    python scripts/benchmark_loader.py --config config/efficientdet_b0.py [--set ...]
        [--roidb CACHE.json] [--batches 10] [--windows 5] [--workers 2]
        [--eval]

The roidb is --roidb, else DatasetParam.train_roidb (val_roidb with --eval), else a small
synthetic dataset generated into a temporary folder at the config's input size. Prints images/s
per timed window after one warm-up window, then the median.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

# Runnable as `python scripts/benchmark_loader.py` from a checkout, without installing the repo.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.dataset import load_coco, load_roidb  # noqa: E402
from core.loader import DetectionLoader  # noqa: E402
from core.synthetic import make_synthetic  # noqa: E402
from core.targets import make_target_fn  # noqa: E402
from core.pipeline import build_transform  # noqa: E402
from utils.config import add_config_args, load_config  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def main():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--roidb", help="roidb cache (default: the config's, else synthetic)")
    parser.add_argument("--batches", type=int, default=10, help="batches per timed window")
    parser.add_argument("--windows", type=int, default=5, help="timed windows after the warm-up")
    parser.add_argument("--workers", type=int, help="loader workers (default DatasetParam.num_workers)")
    parser.add_argument("--eval", action="store_true", help="eval path: resize only, no targets")
    args = parser.parse_args()
    cfg = load_config(args.config, args.sets, is_train=not args.eval)
    d = cfg.DatasetParam
    path = args.roidb or (d.val_roidb if args.eval else d.train_roidb)
    with tempfile.TemporaryDirectory() as tmp:
        if path:
            roidb, _ = load_roidb(path)
        else:
            size = max(d.image_size)
            print("no roidb given: generating 64 synthetic %dx%d images" % (size, size))
            paths = make_synthetic(tmp, 64, seed=0, val_fraction=0.0, size=size)
            roidb = load_coco(paths["train"], paths["image_dir"])[0]
        workers = d.num_workers if args.workers is None else args.workers
        loader = DetectionLoader(roidb, build_transform(cfg, not args.eval),
                                 None if args.eval else make_target_fn(cfg),
                                 batch_size=cfg.General.batch_image, shuffle=not args.eval,
                                 num_workers=workers, prefetch=d.prefetch)
        print("input %s, batch %d, %d workers, prefetch %d, %d images" % (
            d.image_size, loader.batch_size, workers, d.prefetch, len(roidb)))
        rates = []
        batches = iter(_forever(loader))
        for window in range(args.windows + 1):
            start = time.perf_counter()
            for _ in range(args.batches):
                next(batches)
            rate = args.batches * loader.batch_size / (time.perf_counter() - start)
            print("%s %.1f images/s" % ("warm-up" if window == 0 else "window %d" % window, rate))
            if window:
                rates.append(rate)
        loader.close()
    print("median: %.1f images/s (skipped images: %d)" % (statistics.median(rates), loader.skipped))


def _forever(loader):
    while True:
        yield from loader
        loader.reset()


if __name__ == "__main__":
    run_cli(main)
