"""core.optimizer: AdamW's multi-tensor update against a numpy AdamW, through MXNet's Updater as
Module calls it (lists of parameters per device, more than one kernel call's worth); the optimiser
state as checkpoint bytes without pickle."""
import math

import mxnet as mx
import numpy as np
import pytest

from config.base import make_config
from core.optimizer import (MULTI_TENSOR_LIMIT, _flatten_state, _nest_state, attach_optimizer, build_optimizer,
                            optimizer_states, param_groups_no_wd, restore_optimizer_states)
from utils.errors import UserError

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


def _module(seed=0):
    """A 2-layer Module on 2 CPU devices with AdamW (weight decay on the kernels), one update done."""
    x = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=3, name="fc1")
    loss = mx.sym.MakeLoss(mx.sym.sum(mx.sym.FullyConnected(x, num_hidden=1, name="fc2") ** 2))
    mod = mx.mod.Module(loss, data_names=["data"], label_names=None, context=[mx.cpu(0), mx.cpu(1)])
    mod.bind([("data", (4, 4))])
    mx.random.seed(seed)
    mod.init_params(mx.init.Normal(0.5))
    opt = mx.optimizer.create("adamw", learning_rate=0.1, wd=0.01)
    opt.set_wd_mult(param_groups_no_wd(mod._exec_group.param_names))
    attach_optimizer(mod, opt, "local")
    _update(mod)
    return mod


def _update(mod):
    mod.forward_backward(mx.io.DataBatch([mx.nd.array(np.arange(16).reshape(4, 4) / 16.0)]))
    mod.update()


def test_optimizer_state_round_trip_continues_exactly(tmp_path):
    """A resumed run takes the update the uninterrupted one takes: the saved moments come back."""
    mod = _module()
    states = optimizer_states(mod, str(tmp_path))
    _update(mod)
    resumed = _module()
    for state in resumed._updater.states.values():      # lose the moments, as a fresh process would
        for array in state:
            array[:] = 0
    restore_optimizer_states(resumed, states, str(tmp_path))
    _update(resumed)
    for name, value in mod.get_params()[0].items():
        np.testing.assert_array_equal(resumed.get_params()[0][name].asnumpy(), value.asnumpy(), err_msg=name)
    assert not list(tmp_path.iterdir())                  # no temporary left behind


def test_pickled_optimizer_state_is_refused(tmp_path):
    """MXNet's own Updater format is a pickle: never loaded, one clear error instead."""
    mod = _module()
    with pytest.raises(UserError, match="pickled Updater state, which is never loaded"):
        restore_optimizer_states(mod, mod._updater.get_states(), str(tmp_path))


def test_nested_states_keep_their_layout():
    """fp16 master-weight states (weight32, (mean, var)) and stateless parameters (None)."""
    arrays = {}
    state = (mx.nd.ones(2), (mx.nd.zeros(2), mx.nd.full(2, 3.0)))
    layouts = [_flatten_state(state, "7", arrays), _flatten_state(None, "8", arrays)]
    assert layouts == [["7.0", ["7.1.0", "7.1.1"]], None] and sorted(arrays) == ["7.0", "7.1.0", "7.1.1"]
    back = _nest_state(layouts[0], arrays)
    assert back[0] is state[0] and back[1][1] is state[1][1] and _nest_state(None, arrays) is None
