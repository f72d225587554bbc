#!/usr/bin/env python
"""Median inference time per image of the deploy graph (normalisation, network and
post-processing), in MXNet or onnxruntime, after warm-up. Random weights unless --onnx is given:
the post-processing does the same work whatever the scores (top-k over every logit, then a
fixed number of NMS passes).

  python detection_infer_speed.py --config config/efficientdet_b0.py [--batch 1] [--iters 20]
      [--backend mxnet|onnxruntime] [--onnx model.onnx] [--warmup 3] [--set Class.field=value ...]

onnxruntime runs --onnx (scripts/export.py --onnx; its batch must equal --batch) or, without it,
the config's graph with random weights exported to a temporary folder. It uses one intra-op thread
per core available to this process. Times cover the forward pass with the detections copied
back to numpy; the input is already resized (see detection_infer.py for the whole pipeline).
"""
import argparse
import os
import tempfile
import time

from utils.cpu import configure_cpu

configure_cpu(inference=True)  # before mxnet is imported

import mxnet as mx
import numpy as np

from models.efficientdet.deploy import export_deploy_onnx, get_deploy_symbol
from utils.config import add_config_args, load_config
from utils.errors import UserError, run_cli
from utils.onnx_export import ort_session


def random_model(cfg, shapes):
    """Module of the deploy graph bound to `shapes` with Xavier-initialised weights."""
    sym = get_deploy_symbol(cfg)
    mod = mx.mod.Module(sym, data_names=list(shapes), label_names=None, context=mx.cpu())
    mod.bind(list(shapes.items()), for_training=False)
    mx.random.seed(0)
    mod.init_params(mx.init.Xavier())
    return mod


def timed(run, iters, warmup):
    """Wall times (s) of `run()` over `iters` calls after `warmup` untimed ones."""
    times = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        run()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def mxnet_runner(mod, inputs):
    batch = mx.io.DataBatch([mx.nd.array(v) for v in inputs.values()])

    def run():
        mod.forward(batch, is_train=False)
        return mod.get_outputs()[0].asnumpy()
    return run


def onnx_runner(path, inputs):
    session = ort_session(path)
    want = {i.name: tuple(i.shape) for i in session.get_inputs()}
    have = {k: v.shape for k, v in inputs.items()}
    if want != have:
        raise UserError("%s takes inputs %s, not %s: export it with the same config and --batch"
                        % (path, want, have))
    return lambda: session.run(None, inputs)[0]


def main():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--backend", choices=("mxnet", "onnxruntime"), default="mxnet")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--onnx", help="ONNX file to time (onnxruntime only; default: export random weights)")
    args = parser.parse_args()
    if args.batch < 1 or args.iters < 1 or args.warmup < 0:
        raise UserError("--batch and --iters must be at least 1 and --warmup at least 0")
    if args.onnx and args.backend != "onnxruntime":
        raise UserError("--onnx needs --backend onnxruntime")
    if args.onnx and not os.path.isfile(args.onnx):
        raise UserError("ONNX file not found: %s" % args.onnx)
    cfg = load_config(args.config, args.sets, is_train=False)
    cfg.General.batch_image = args.batch      # the MXNet graph is built for its batch size
    H, W = cfg.DatasetParam.image_size
    rng = np.random.RandomState(0)
    inputs = {"data": rng.uniform(0, 255, (args.batch, 3, H, W)).astype(np.float32),
              "im_scale": np.ones((args.batch, 1), np.float32)}

    if args.backend == "mxnet":
        run = mxnet_runner(random_model(cfg, {k: v.shape for k, v in inputs.items()}), inputs)
        times = timed(run, args.iters, args.warmup)
    elif args.onnx:
        times = timed(onnx_runner(args.onnx, inputs), args.iters, args.warmup)
    else:
        mod = random_model(cfg, {k: v.shape for k, v in inputs.items()})
        arg, aux = mod.get_params()
        with tempfile.TemporaryDirectory() as tmp:
            path = export_deploy_onnx(cfg, dict(arg, **aux), args.batch, os.path.join(tmp, "model.onnx"))
            times = timed(onnx_runner(path, inputs), args.iters, args.warmup)
    per_img = np.array(times) * 1000.0 / args.batch
    print("%s %dx%d %s batch %d: median %.1f ms/img (min %.1f, max %.1f; %d iters after %d warm-up; "
          "post-processing included)" % (cfg.General.name, H, W, args.backend, args.batch, np.median(per_img),
                                         per_img.min(), per_img.max(), args.iters, args.warmup))
    return 0


if __name__ == "__main__":
    run_cli(main)
