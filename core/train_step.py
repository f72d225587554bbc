"""One optimiser update of a bound mx.mod.Module over every device of the worker (and, under
dist_sync, every worker): the loss normaliser of the whole step, gradient accumulation over
micro-batches, the gradient reduction, global-norm clipping of the applied gradient, non-finite
detection and (fp16) dynamic loss scaling.

Why each replica's loss is divided by the step's positives: a replica (device of a worker) sees a
slice of the step's images, and the kvstore SUMS the replicas' gradients. With every replica
dividing its summed loss terms by N = (positive anchors of the whole step) + 1, the sum of their
gradients is exactly the gradient of one device at the whole batch, however the batch is split
(mmdetection reduces num_pos across GPUs the same way). N is counted on the host from the batch's
cls_target (micro-batches and devices), summed over workers through the kvstore, and fed as the
`normaliser` input.
"""
import math

import mxnet as mx
import numpy as np

NORMALISER_KEY = "loss_normaliser"


def positives(batch, label_names):
    """Positive anchors (cls_target >= 0) in a DataBatch with labels `label_names`."""
    cls_target = batch.label[list(label_names).index("cls_target")]
    return float((cls_target >= 0).sum().asscalar())


class TrainStep:
    """One update from a list of micro-batches (DataBatch: data, cls_target, box_target), gradients
    summed over them (the Module must be bound with grad_req="add" for more than one). Returns the
    loss values, or None when the step was skipped (fp16 overflow: the loss scale halves and the
    weights stay as they were).

    The gradients of all devices (and workers) are summed through the Module's kvstore first; their
    global L2 norm, the norm of the gradient actually applied, decides the clipping (as effdet clips
    after DDP's all-reduce). Every device and worker then holds the same summed gradient, so every
    copy of the weights takes the same update. The loss values are this worker's step losses
    normalised by its own positives (with one worker: what one device at the whole batch logs).
    """

    def __init__(self, mod, clip_norm, loss_scale=None, dynamic=False, growth_interval=2000):
        self.mod, self.clip_norm = mod, clip_norm
        self.loss_scale, self.dynamic, self.growth_interval = loss_scale, dynamic, growth_interval
        self._good_steps = 0
        self.accumulates = mod._grad_req == "add"
        kv = mod._kvstore
        self._dist = kv if kv is not None and kv.type.startswith("dist") else None
        if self._dist is not None:
            self._dist.init(NORMALISER_KEY, mx.nd.zeros((1,), dtype=np.float64))
        self.last_norm = None       # the global gradient norm of the last step (before clipping)

    def _step_positives(self, batches):
        """(positives of this worker's step, of the whole step over all workers)."""
        own = sum(positives(b, self.mod._label_names) for b in batches)
        if self._dist is None:
            return own, own
        total = mx.nd.zeros((1,), dtype=np.float64)
        self._dist.push(NORMALISER_KEY, mx.nd.array([own], dtype=np.float64))
        self._dist.pull(NORMALISER_KEY, out=total)
        return own, float(total.asscalar())

    def _inputs(self, batch, normaliser):
        n = len(batch.data[0])
        extra = [mx.nd.full((n,), normaliser)]
        if self.loss_scale is not None:
            extra.append(mx.nd.full((n,), self.loss_scale))
        return mx.io.DataBatch(batch.data[:1] + extra, batch.label, pad=batch.pad)

    def _reduce(self):
        """Sum every gradient over devices and workers, in place on every device's copy; returns
        device 0's copies (parameters with gradients only)."""
        group, kv = self.mod._exec_group, self.mod._kvstore
        for i, (name, grads) in enumerate(zip(group.param_names, group.grad_arrays)):
            if grads[0] is not None and kv is not None:
                kv.pushpull(name, grads, priority=-i)
        return [g[0] for g in group.grad_arrays if g[0] is not None]

    def _apply(self, factor):
        """The optimiser on every device's copy, gradients times `factor`."""
        group = self.mod._exec_group
        self.mod._optimizer.rescale_grad = factor
        # Module.update without its own reduction (done in _reduce): the same per-device indices
        # i * num_devices + k, which Module's index -> name map (weight decay groups) expects.
        mx.model._update_params(group.param_arrays, group.grad_arrays, updater=self.mod._updater,
                                num_device=len(self.mod._context), kvstore=None)
        self.mod._params_dirty = True

    def _zero(self):
        if self.accumulates:
            for grads in self.mod._exec_group.grad_arrays:
                for g in grads:
                    if g is not None:
                        g[:] = 0

    def __call__(self, batches):
        if len(batches) > 1 and not self.accumulates:
            raise ValueError("%d micro-batches need a Module bound with grad_req='add'" % len(batches))
        own, total = self._step_positives(batches)
        unscale = 1.0 / (self.loss_scale or 1.0)
        losses = 0.0
        for batch in batches:
            self.mod.forward_backward(self._inputs(batch, total + 1.0))
            # Each output is this device's share of the step's loss: the sum is the worker's share.
            losses = losses + np.array([o.asnumpy().sum() for o in self.mod.get_outputs()], np.float64)
        losses = [float(v) * unscale * (total + 1.0) / (own + 1.0) for v in losses]
        grads = self._reduce()
        sq = mx.nd.multi_sum_sq(*grads, num_arrays=len(grads))
        norm = self.last_norm = math.sqrt(float(sq.sum().asscalar())) * unscale
        finite = math.isfinite(norm) and all(math.isfinite(v) for v in losses)
        if not finite:
            self._zero()
            if self.dynamic:
                self.loss_scale, self._good_steps = max(self.loss_scale / 2.0, 1.0), 0
                return None
            return losses  # the caller stops on non-finite losses; gradients are not applied
        factor = unscale
        if self.clip_norm and norm > self.clip_norm:
            factor *= self.clip_norm / norm
        self._apply(factor)
        self._zero()
        if self.dynamic:
            self._good_steps += 1
            if self._good_steps % self.growth_interval == 0:
                self.loss_scale *= 2.0
        return losses
