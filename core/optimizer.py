"""The optimiser: AdamW, the optimiser factory (lr schedule, weight-decay groups), the weight
initialiser, and the optimiser state as bytes for checkpoints."""
import math
import os
import warnings

import mxnet as mx

from utils.errors import UserError
from utils.lr_scheduler import build_lr_scheduler


@mx.optimizer.register
class AdamW(mx.optimizer.Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): w <- w (1 - lr wd), then Adam with no wd."""

    def update(self, index, weight, grad, state):
        self._update_count(index)
        lr, wd, t = self._get_lr(index), self._get_wd(index), self._index_update_count[index]
        if wd:
            weight[:] = weight * (1.0 - lr * wd)
        mean, var = state
        mx.nd.adam_update(weight, grad, mean, var, out=weight, wd=0.0, beta1=self.beta1, beta2=self.beta2,
                          lr=lr * math.sqrt(1.0 - self.beta2 ** t) / (1.0 - self.beta1 ** t),
                          epsilon=self.epsilon, rescale_grad=self.rescale_grad,
                          clip_gradient=self.clip_gradient if self.clip_gradient else -1.0)


def initializer():
    """He-normal for convs; the class/box predictors start near zero (N(0, 0.01)) as in RetinaNet, so
    the first focal loss reflects the prior bias instead of random logits."""
    he = mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2.0)
    return mx.init.Mixed([r".*_pred_weight$", ".*"], [mx.init.Normal(0.01), he])


def build_optimizer(cfg, arg_names, num_images, batch_total, iters_per_epoch, begin_num_update):
    """The optimiser object from OptimizeParam, with linear lr scaling, warmup + decay, and no
    weight decay on BN, biases and BiFPN fusion weights."""
    o = cfg.OptimizeParam
    sched = build_lr_scheduler(cfg, num_images, batch_total, iters_per_epoch)
    common = dict(learning_rate=sched.base_lr, wd=o.wd, lr_scheduler=sched, begin_num_update=begin_num_update,
                  param_idx2name=dict(enumerate(arg_names)), multi_precision=cfg.General.fp16)
    if o.optimizer == "sgd":
        opt = mx.optimizer.create("sgd", momentum=o.momentum, **common)
    elif o.optimizer in ("adam", "adamw"):
        opt = mx.optimizer.create(o.optimizer, **common)
    else:
        raise UserError("unknown OptimizeParam.optimizer '%s' (sgd | adam | adamw)" % o.optimizer)
    opt.set_wd_mult(param_groups_no_wd(arg_names))
    # The losses are already normalised by the positives in the batch, so gradients are not averaged
    # again over the batch: rescale_grad stays 1 (Module warns about that; it is intended).
    warnings.filterwarnings("ignore", message="Optimizer created manually outside Module")
    return opt


def optimizer_states(mod, folder):
    """The optimiser state of a bound Module as bytes, in MXNet's own format. Module only writes it
    to a file (through the kvstore when it updates there), so this goes through a per-process
    temporary in `folder`."""
    tmp = os.path.join(folder, ".optimizer-states-%d.tmp" % os.getpid())
    try:
        mod.save_optimizer_states(tmp)
        with open(tmp, "rb") as f:
            return f.read()
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def restore_optimizer_states(mod, states, folder):
    """Load bytes from optimizer_states() into a Module whose optimiser is initialised."""
    tmp = os.path.join(folder, ".optimizer-states-%d.tmp" % os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(states)
        mod.load_optimizer_states(tmp)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def param_groups_no_wd(arg_names):
    """{name: wd_mult} for every name: 1.0 for kernels (`*_weight`), 0.0 for everything else.

    Zero: BN gamma/beta, biases, BiFPN fusion weights (`*_edge_weight`), anything else that is not
    a kernel. Pass to `optimizer.set_wd_mult`; all names are listed because MXNet's own default
    would decay `_gamma` and `_edge_weight`.
    """
    return {name: 1.0 if name.endswith("_weight") and not name.endswith("_edge_weight") else 0.0
            for name in arg_names}
