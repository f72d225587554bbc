"""The optimiser: AdamW, the optimiser factory (lr schedule, weight-decay groups), the weight
initialiser, and the optimiser state as bytes for checkpoints."""
import math
import os
import warnings

import mxnet as mx
import numpy as np
from mxnet.ndarray.contrib import multi_adamw_update, multi_mp_adamw_update

from utils.checkpoint import json_array, json_of, save_nd
from utils.errors import UserError
from utils.lr_scheduler import build_lr_scheduler


# The most parameters one call of MXNet's multi-tensor AdamW kernels takes. MXNet 1.9.1 does not
# check the count: 50 run, 51 crash the process (tried).
MULTI_TENSOR_LIMIT = 50


@mx.optimizer.register
class AdamW(mx.optimizer.Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter):
    w <- w - lr (wd w + sqrt(1 - beta2^t) / (1 - beta1^t) m / (sqrt(v) + eps)).

    MXNet's Updater hands over up to MULTI_TENSOR_LIMIT parameters of one device at a time
    (aggregate_num), and they take one multi-tensor kernel call: one Python call per parameter cost
    more than the kernels themselves (about a sixth of a quickstart step)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.aggregate_num = MULTI_TENSOR_LIMIT

    def update(self, index, weight, grad, state):
        self._update(index, weight, grad, state, master=False)

    def update_multi_precision(self, index, weight, grad, state):
        first = weight[0] if isinstance(weight, (list, tuple)) else weight
        self._update(index, weight, grad, state, master=self.multi_precision and first.dtype == np.float16)

    def _update(self, index, weight, grad, state, master):
        """One kernel call over parameters `index` (an index or a list); with `master`, each state is
        (float32 master weight, (mean, var)) for a float16 weight."""
        if not isinstance(index, (list, tuple)):
            index, weight, grad, state = [index], [weight], [grad], [state]
        self._update_count(index)
        bias_correction = [math.sqrt(1.0 - self.beta2 ** t) / (1.0 - self.beta1 ** t)
                           for t in (self._index_update_count[i] for i in index)]
        moments = [s[1] for s in state] if master else state
        kwargs = dict(lrs=bias_correction, wds=self._get_wds(index), etas=self._get_lrs(index),
                      beta1=self.beta1, beta2=self.beta2, epsilon=self.epsilon, out=weight,
                      clip_gradient=self.clip_gradient if self.clip_gradient else -1.0)
        mean, var = [m for m, _ in moments], [v for _, v in moments]
        if master:
            multi_mp_adamw_update(weight, grad, mean, var, [s[0] for s in state], self.rescale_grad, **kwargs)
        else:
            multi_adamw_update(weight, grad, mean, var, self.rescale_grad, **kwargs)


def initializer():
    """He-normal for convs; the class/box predictors start near zero (N(0, 0.01)) as in RetinaNet, so
    the first focal loss reflects the prior bias instead of random logits."""
    he = mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2.0)
    return mx.init.Mixed([r".*_pred_weight$", ".*"], [mx.init.Normal(0.01), he])


def build_optimizer(cfg, arg_names, num_images, batch_total, iters_per_epoch, begin_num_update):
    """The optimiser object from OptimizeParam, with linear lr scaling, warmup + decay, and no
    weight decay on BN, biases and BiFPN fusion weights. `batch_total`: the images of one update
    (all devices, micro-batches and, with scale_lr_by_workers, workers); `iters_per_epoch`: updates.

    The index -> name map is left to Module.init_optimizer (attach_optimizer): updating on the
    worker, Module calls the optimiser with index i * num_devices + k for parameter i on device k,
    and only Module knows the devices. A map passed here would be kept as it is, and with several
    devices it names the wrong parameters (weight decay on BN, none on some kernels)."""
    o = cfg.OptimizeParam
    sched = build_lr_scheduler(cfg, num_images, batch_total, iters_per_epoch)
    common = dict(learning_rate=sched.base_lr, wd=o.wd, lr_scheduler=sched, begin_num_update=begin_num_update,
                  multi_precision=cfg.General.fp16)
    if o.optimizer == "sgd":
        opt = mx.optimizer.create("sgd", momentum=o.momentum, **common)
    elif o.optimizer in ("adam", "adamw"):
        opt = mx.optimizer.create(o.optimizer, **common)
    else:
        raise UserError("unknown OptimizeParam.optimizer '%s' (sgd | adam | adamw)" % o.optimizer)
    opt.set_wd_mult(param_groups_no_wd(arg_names))     # by name: every name is listed
    # The losses are normalised by the positives of the whole step, so the summed gradients of all
    # devices and workers are the step's gradient: no averaging. TrainStep sets rescale_grad per
    # step to the clipping (and fp16 unscaling) factor; Module warns that it is not 1/batch.
    warnings.filterwarnings("ignore", message="Optimizer created manually outside Module")
    return opt


def attach_optimizer(mod, opt, kvstore="local"):
    """mod.init_optimizer(kvstore, opt) with the update on the worker, never on the kvstore: TrainStep
    sums the gradients through the kvstore itself, clips their sum, then runs the optimiser on every
    device's copy (a kvstore-side optimiser would also leave no state a worker can checkpoint)."""
    os.environ["MXNET_UPDATE_ON_KVSTORE"] = "0"   # read by Module.init_optimizer
    mod.init_optimizer(kvstore=kvstore, optimizer=opt)
    assert not mod._update_on_kvstore


LAYOUT_KEY = "meta:layout"


def optimizer_states(mod, folder):
    """The optimiser state of a bound Module as bytes: an mx.nd.save file holding every state array
    as `<index>.<position>...` and, under LAYOUT_KEY (a utils.checkpoint.json_array), how each
    index's state nests (an array key, null, or a list of those). Not MXNet's own
    Updater.get_states: that pickles, and unpickling a checkpoint can run any code. mx.nd.save only
    writes files, so this goes through a per-process temporary in `folder`."""
    arrays = {}
    layout = [[index, _flatten_state(state, str(index), arrays)] for index, state in mod._updater.states.items()]
    arrays[LAYOUT_KEY] = json_array(layout)
    tmp = os.path.join(folder, ".optimizer-states-%d.tmp" % os.getpid())
    try:
        save_nd(tmp, arrays)          # OSError when the disk fills (mx.nd.save alone may not say)
        with open(tmp, "rb") as f:
            return f.read()
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _flatten_state(state, key, arrays):
    """The layout of one optimiser state (an NDArray, None, or a tuple/list of states), its arrays
    added to `arrays` under `key` and `key.<position>`."""
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return [_flatten_state(s, "%s.%d" % (key, i), arrays) for i, s in enumerate(state)]
    arrays[key] = state
    return key


def _nest_state(layout, arrays):
    """The optimiser state that `layout` describes (tuples, as MXNet's optimisers create them)."""
    if layout is None:
        return None
    if isinstance(layout, list):
        return tuple(_nest_state(item, arrays) for item in layout)
    return arrays[layout]


def restore_optimizer_states(mod, states, folder, devices=None):
    """Load bytes from optimizer_states() into a Module whose optimiser is initialised.

    The optimiser keeps one state per parameter i and device k, at index i * devices + k. States
    saved with another number of devices (`devices`; None: inferred from the indices) are mapped
    onto this Module's devices, each device getting its own copy of the saved state of device 0
    (the copies are equal: every device takes the same update)."""
    tmp = os.path.join(folder, ".optimizer-states-%d.tmp" % os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(states)
        try:
            arrays = mx.nd.load(tmp)
        except mx.base.MXNetError:
            arrays = {}
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if not isinstance(arrays, dict) or LAYOUT_KEY not in arrays:
        raise UserError("the checkpoint's optimizer state (.states) is not in this project's format; a "
                        "checkpoint written before 2026-12-03 holds MXNet's pickled Updater state, which is "
                        "never loaded: train without --resume, starting from its .params weights")
    layout = json_of(arrays.pop(LAYOUT_KEY))
    saved = {index: _nest_state(item, arrays) for index, item in layout}
    updater, params, new = mod._updater, len(mod._exec_group.param_names), len(mod._context)
    old = devices or (max(saved) // params + 1 if saved else new)
    if old != new:
        saved = {i * new + k: _copy_state(saved[i * old])
                 for i in range(params) if i * old in saved for k in range(new)}
    updater.states = saved
    updater.states_synced = dict.fromkeys(saved, False)     # moved to each device on first use


def _copy_state(state):
    """A deep copy of an optimiser state: an NDArray, a tuple/list of states, or None."""
    if isinstance(state, (tuple, list)):
        return type(state)(_copy_state(s) for s in state)
    return state.copy() if state is not None else None


def param_groups_no_wd(arg_names):
    """{name: wd_mult} for every name: 1.0 for kernels (`*_weight`), 0.0 for everything else.

    Zero: BN gamma/beta, biases, BiFPN fusion weights (`*_edge_weight`), anything else that is not
    a kernel. Pass to `optimizer.set_wd_mult`; all names are listed because MXNet's own default
    would decay `_gamma` and `_edge_weight`.
    """
    return {name: 1.0 if name.endswith("_weight") and not name.endswith("_edge_weight") else 0.0
            for name in arg_names}
