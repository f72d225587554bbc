#!/usr/bin/env python
"""Median forward time per image of a config's network (random weights), after warm-up.

  python scripts/benchmark_forward.py --config config/efficientdet_b0.py [--batch 1] [--iters 20]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cpu import configure_cpu  # noqa: E402

configure_cpu(inference=True)

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

from models.efficientdet.builder import get_raw_symbol  # noqa: E402
from utils.config import add_config_args, load_config  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def bound_forward_module(cfg, batch_size):
    """(Module bound for inference with random weights, a random DataBatch) for cfg's raw network."""
    cfg.General.batch_image = batch_size      # the graph is built for its batch size
    shape = (batch_size, 3) + tuple(cfg.DatasetParam.image_size)
    mod = mx.mod.Module(get_raw_symbol(cfg), data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind([("data", shape)], for_training=False)
    mod.init_params(mx.init.Xavier())
    return mod, mx.io.DataBatch([mx.nd.random.uniform(shape=shape)])


def time_forward(mod, batch, iters, warmup):
    """Per-iteration wall times (s) of Module.forward with outputs materialised, after `warmup` runs."""
    times = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        mod.forward(batch, is_train=False)
        for out in mod.get_outputs():
            out.wait_to_read()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    cfg = load_config(args.config, args.sets, is_train=False)
    shape = (args.batch, 3) + tuple(cfg.DatasetParam.image_size)
    times = time_forward(*bound_forward_module(cfg, args.batch), args.iters, args.warmup)
    per_img = np.array(times) * 1000.0 / args.batch
    print("%s %dx%d batch %d: median %.1f ms/img (min %.1f, max %.1f, %d iters after %d warm-up)"
          % (cfg.General.name, shape[2], shape[3], args.batch, np.median(per_img), per_img.min(),
             per_img.max(), args.iters, args.warmup))
    return 0


if __name__ == "__main__":
    run_cli(main)
