"""The training step around a bound mx.mod.Module: global-norm gradient clipping, non-finite
detection and (fp16) dynamic loss scaling."""
import math

import mxnet as mx


class TrainStep:
    """One forward/backward/update. Returns the loss values, or None when the step was skipped
    (fp16 overflow: the loss scale halves and the weights stay as they were).

    Clipping rescales all gradients together when their global L2 norm exceeds `clip_norm`, as
    EfficientDet does; MXNet's own clip_gradient clips element-wise, which is a different thing.
    """

    def __init__(self, mod, clip_norm, loss_scale=None, dynamic=False, growth_interval=2000):
        self.mod, self.clip_norm = mod, clip_norm
        self.loss_scale, self.dynamic, self.growth_interval = loss_scale, dynamic, growth_interval
        self._good_steps = 0

    def _grads(self):
        # grad_arrays: per parameter, one array per device; fixed parameters have none.
        return [g for per_dev in self.mod._exec_group.grad_arrays for g in per_dev if g is not None]

    def __call__(self, batch):
        if self.loss_scale is not None:
            scale = mx.nd.full((len(batch.data[0]),), self.loss_scale)
            batch = mx.io.DataBatch(batch.data + [scale], batch.label, pad=batch.pad)
        self.mod.forward_backward(batch)
        losses = [o.asnumpy().sum() / (self.loss_scale or 1.0) for o in self.mod.get_outputs()]
        grads = self._grads()
        sq = mx.nd.multi_sum_sq(*grads, num_arrays=len(grads))
        norm = math.sqrt(float(sq.sum().asscalar())) / (self.loss_scale or 1.0)
        finite = math.isfinite(norm) and all(math.isfinite(v) for v in losses)
        if not finite and self.dynamic:
            self.loss_scale, self._good_steps = max(self.loss_scale / 2.0, 1.0), 0
            return None
        if not finite:
            return losses  # the caller stops on non-finite losses; gradients are not applied
        factor = 1.0 / (self.loss_scale or 1.0)
        if self.clip_norm and norm > self.clip_norm:
            factor *= self.clip_norm / norm
        if factor != 1.0:
            for g in grads:
                g *= factor
        self.mod.update()
        if self.dynamic:
            self._good_steps += 1
            if self._good_steps % self.growth_interval == 0:
                self.loss_scale *= 2.0
        return losses
