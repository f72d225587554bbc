"""core.optimizer.AdamW: the multi-tensor update against a numpy AdamW, through MXNet's Updater as
Module calls it (lists of parameters per device, more than one kernel call's worth)."""
import math

import mxnet as mx
import numpy as np
import pytest

from config.base import make_config
from core.optimizer import MULTI_TENSOR_LIMIT, build_optimizer

SHAPES = [(3, 4), (5,), (2, 3, 3), (7,)] * 16          # 64 parameters: two kernel calls
NAMES = ["p%d_%s" % (i, "weight" if i % 2 == 0 else "bias") for i in range(len(SHAPES))]


def _numpy_adamw(w, grads, lrs, wd, rescale, clip, beta1=0.9, beta2=0.999, eps=1e-8):
    """Decoupled AdamW (Loshchilov & Hutter, with Adam's bias correction) over a list of gradients."""
    m, v = np.zeros_like(w, np.float64), np.zeros_like(w, np.float64)
    w = w.astype(np.float64)
    for t, (g, lr) in enumerate(zip(grads, lrs), 1):
        g = np.clip(g * rescale, -clip, clip)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        step = math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t) * m / (np.sqrt(v) + eps)
        w = w - lr * (wd * w + step)
    return w


@pytest.mark.parametrize("fp16", [False, True])
def test_adamw_matches_numpy_over_steps_devices_and_groups(fp16):
    """3 steps on 2 devices (Module's indices i * 2 + k), warmup lr, no weight decay on biases,
    rescaled and clipped gradients; with fp16, float16 weights over float32 master copies."""
    cfg = make_config(True, {"OptimizeParam.optimizer": "adamw", "OptimizeParam.wd": 0.05,
                             "OptimizeParam.lr_per_64": 0.64, "OptimizeParam.warmup.epochs": 1.0,
                             "OptimizeParam.warmup.init_lr_ratio": 0.1, "OptimizeParam.schedule.end_epoch": 2,
                             "General.fp16": fp16})
    opt = build_optimizer(cfg, NAMES, 40, 4, 10, 0)
    opt.idx2name = {i * 2 + k: n for i, n in enumerate(NAMES) for k in range(2)}   # as Module sets it
    opt.rescale_grad, opt.clip_gradient = 0.5, 0.3
    assert opt.aggregate_num == MULTI_TENSOR_LIMIT < len(NAMES)
    updater = mx.optimizer.get_updater(opt)
    rng = np.random.RandomState(0)
    dtype = np.float16 if fp16 else np.float32
    init = [rng.randn(*s).astype(dtype) for s in SHAPES]
    grads = [[rng.randn(*s).astype(dtype) for s in SHAPES] for _ in range(3)]
    weights = [[mx.nd.array(w, ctx=mx.cpu(k), dtype=dtype) for w in init] for k in range(2)]
    lrs = []
    for g in grads:
        lrs.append(opt.lr_scheduler(opt.num_update + 1))
        for k in range(2):          # mx.model._update_params: one call per device
            idx = [i * 2 + k for i in range(len(NAMES))]
            updater(idx, [mx.nd.array(x, ctx=mx.cpu(k), dtype=dtype) for x in g], weights[k])
    assert lrs[0] < lrs[2]          # warmup: the lr changes between steps
    for i, name in enumerate(NAMES):
        wd = 0.05 if name.endswith("_weight") else 0.0
        want = _numpy_adamw(init[i], [g[i].astype(np.float64) for g in grads], lrs, wd, 0.5, 0.3)
        for k in range(2):
            got = weights[k][i].asnumpy()
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want, rtol=2e-3 if fp16 else 1e-5, atol=2e-3 if fp16 else 1e-6,
                                       err_msg="%s on device %d" % (name, k))
        if fp16:        # the float32 master copy carries the update exactly
            np.testing.assert_allclose(updater.states[i * 2][0].asnumpy(), want, rtol=1e-5, atol=1e-6)
