#!/usr/bin/env python
"""Median training throughput (images/s) of a config: forward, backward, clipping and the optimiser
update on a fixed random batch with real anchor targets, after warm-up.

  python scripts/benchmark_train.py --config config/efficientdet_b0.py [--batch 4] [--iters 5]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cpu import configure_cpu  # noqa: E402

configure_cpu()

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

from core.optimizer import attach_optimizer, build_optimizer, initializer  # noqa: E402
from core.train_step import TrainStep  # noqa: E402
from core.targets import make_target_fn  # noqa: E402
from models.efficientdet.builder import get_train_symbol, train_data_shapes  # noqa: E402
from utils.config import add_config_args, load_config  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def random_batch(cfg, batch, rng):
    """A DataBatch of noise images with 1-5 random boxes each, encoded by the real target function."""
    h, w = cfg.DatasetParam.image_size
    target_fn = make_target_fn(cfg)
    targets = []
    for _ in range(batch):
        n = rng.randint(1, 6)
        xy = rng.uniform(0, 0.7, (n, 2)) * (w, h)
        wh = rng.uniform(0.05, 0.3, (n, 2)) * (w, h)
        targets.append(target_fn(np.hstack([xy, xy + wh]).astype(np.float32),
                                 rng.randint(0, cfg.DatasetParam.num_classes, n).astype(np.int32)))
    names = sorted(targets[0])
    data = [mx.nd.array(rng.randn(batch, 3, h, w))]
    label = [mx.nd.array(np.stack([t[k] for t in targets])) for k in names]
    return mx.io.DataBatch(data, label), names


def bound_train_step(cfg, batch_size):
    """(TrainStep over a Module bound with fresh weights and the configured optimiser, a random
    DataBatch with real anchor targets)."""
    cfg.General.batch_image = batch_size      # the graph is built for its batch size
    batch, names = random_batch(cfg, batch_size, np.random.RandomState(0))
    sym = get_train_symbol(cfg)
    data_shapes = train_data_shapes(cfg, batch_size)
    data_names = [n for n, _ in data_shapes]
    mod = mx.mod.Module(sym, data_names=data_names, label_names=names, context=mx.cpu())
    mod.bind(data_shapes, [(n, l.shape) for n, l in zip(names, batch.label)])
    mod.init_params(initializer())
    arg_names = [n for n in sym.list_arguments() if n not in data_names + names]
    attach_optimizer(mod, build_optimizer(cfg, arg_names, 1000, batch_size, 100, 0))
    step = TrainStep(mod, cfg.OptimizeParam.clip_gradient, 2.0 ** 16 if cfg.General.fp16 else None)
    return step, batch


def main():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(args.config, args.sets, is_train=True)
    step, batch = bound_train_step(cfg, args.batch)
    times = []
    for i in range(args.warmup + args.iters):
        start = time.perf_counter()
        step([batch])
        mx.nd.waitall()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    t = float(np.median(times))
    h, w = cfg.DatasetParam.image_size
    print("%s %dx%d batch %d: median %.3f s/step, %.3f img/s (%d iters after %d warm-up)"
          % (cfg.General.name, h, w, args.batch, t, args.batch / t, args.iters, args.warmup))
    return 0


if __name__ == "__main__":
    run_cli(main)
