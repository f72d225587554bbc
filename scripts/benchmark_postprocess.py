#!/usr/bin/env python
"""Cost of the in-graph post-processing: median forward time of a config's network (random
weights, BN statistics calibrated so that the scores look real) without and with it, and of the
post-processing alone fed with the network's head outputs.

  python scripts/benchmark_postprocess.py --config config/efficientdet_b0.py [--iters 20]

The two forwards alternate within one loop so that the machine's load affects both alike.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cpu import configure_cpu  # noqa: E402

configure_cpu(inference=True)  # before mxnet is imported

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

from models.efficientdet.builder import get_raw_symbol, get_test_symbol  # noqa: E402
from models.efficientdet.postprocess import postprocess  # noqa: E402
from utils.config import add_config_args, load_config  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def timed(run):
    start = time.perf_counter()
    for out in run():
        out.wait_to_read()
    return (time.perf_counter() - start) * 1000.0


def calibrated_params(sym, data):
    """Random weights whose BN statistics are those of `data`.

    With Xavier weights and unit BN statistics D0's activations vanish: every logit comes out
    equal, and top-k over ties is much cheaper than over real scores (nothing ever enters its
    heap). One training-mode step with BN momentum 0 writes each layer's batch statistics into
    its moving statistics (MXNet updates them in backward), so inference then sees activations
    of order one; the class predictor is then scaled so that the logits spread over units.
    """
    graph = json.loads(sym.tojson())
    for node in graph["nodes"]:
        if node["op"] == "BatchNorm":
            node["attrs"]["momentum"] = "0"
    calib = mx.mod.Module(mx.sym.load_json(json.dumps(graph)), data_names=["data"], label_names=None)
    calib.bind([("data", data.shape)], for_training=True)
    calib.init_params(mx.init.Xavier())
    calib.forward(mx.io.DataBatch([data]), is_train=True)
    calib.backward([mx.nd.ones_like(o) for o in calib.get_outputs()])
    mx.nd.waitall()                       # the update is not ordered before later reads
    calib._sync_params_from_devices()     # get_params alone returns the values from before the step
    arg, aux = calib.get_params()
    arg["cls_pred_weight"] *= 50          # logits spread ~0.04 -> ~2, as a trained model's do
    return arg, aux


def main():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    cfg = load_config(args.config, args.sets, is_train=False)
    cfg.General.batch_image = args.batch      # the graphs are built for their batch size
    shape = (args.batch, 3) + tuple(cfg.DatasetParam.image_size)
    data = mx.nd.random.uniform(-2, 2, shape=shape)

    raw_sym = get_raw_symbol(cfg)
    arg, aux = calibrated_params(raw_sym, data)
    raw = mx.mod.Module(raw_sym, data_names=["data"], label_names=None)
    raw.bind([("data", shape)], for_training=False)
    raw.set_params(arg, aux)
    full = mx.mod.Module(get_test_symbol(cfg), data_names=["data", "im_scale"], label_names=None)
    full.bind([("data", shape), ("im_scale", (args.batch, 1))], for_training=False)
    full.set_params(arg, aux)

    raw_batch = mx.io.DataBatch([data])
    full_batch = mx.io.DataBatch([data, mx.nd.ones((args.batch, 1))])
    raw.forward(raw_batch, is_train=False)
    heads = [o.asnumpy() for o in raw.get_outputs()]   # cls_out_p3.. then box_out_p3..
    half = len(heads) // 2
    flat = [np.concatenate([h.transpose(0, 2, 3, 1).reshape(args.batch, -1, width) for h in hs], 1)
            for hs, width in ((heads[:half], cfg.DatasetParam.num_classes), (heads[half:], 4))]
    post_sym = postprocess(mx.sym.Variable("cls_pred"), mx.sym.Variable("box_pred"),
                           mx.sym.Variable("im_scale"), cfg)
    post = post_sym.bind(mx.cpu(), {"cls_pred": mx.nd.array(flat[0]), "box_pred": mx.nd.array(flat[1]),
                                    "im_scale": mx.nd.ones((args.batch, 1))}, grad_req="null")

    runs = {"forward": lambda: (raw.forward(raw_batch, is_train=False), raw.get_outputs())[1],
            "forward+post": lambda: (full.forward(full_batch, is_train=False), full.get_outputs())[1],
            "post alone": lambda: post.forward(is_train=False)}
    times = {k: [] for k in runs}
    for i in range(args.warmup + args.iters):
        for name, run in runs.items():
            ms = timed(run)
            if i >= args.warmup:
                times[name].append(ms / args.batch)
    med = {k: float(np.median(v)) for k, v in times.items()}
    t = cfg.TestParam
    print("%s %dx%d batch %d, top-%d, %s NMS, max_det %d; median ms/img over %d iters after %d warm-up"
          % (cfg.General.name, shape[2], shape[3], args.batch, t.topk_candidates, t.nms_type,
             t.max_det, args.iters, args.warmup))
    for name in runs:
        print("  %-13s %8.1f ms" % (name, med[name]))
    extra = med["forward+post"] - med["forward"]
    print("post-processing: %.1f ms in the graph = %.1f%% of the forward; %.1f ms alone = %.1f%%"
          % (extra, 100.0 * extra / med["forward"], med["post alone"],
             100.0 * med["post alone"] / med["forward"]))
    return 0


if __name__ == "__main__":
    run_cli(main)
