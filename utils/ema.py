"""Exponential moving average of weights and BN statistics (EfficientDet evaluates with it)."""
import mxnet as mx
import numpy as np


class ExponentialMovingAverage:
    """Shadow copies (on CPU) of arg and aux params: ema = d·ema + (1 − d)·param per update.

    With warmup, the decay of update number `step` (0-based) is min(decay, (1 + step)/(10 + step)),
    as TF's ExponentialMovingAverage with num_updates, so early averages are not dominated by the
    random initialisation. The shadow starts as a copy of the first params it sees. The shadows
    keep their own dtype (float32 for float16 params) and never alias the caller's arrays.
    """

    def __init__(self, decay=0.9998, warmup=True):
        if not 0.0 <= decay < 1.0:
            raise ValueError("EMA decay must be in [0, 1), got %r" % decay)
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self._shadow = {}   # "arg:name" / "aux:name" -> NDArray on CPU

    def current_decay(self):
        """The decay the next update() will use."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    def update(self, arg_params, aux_params):
        """Fold one snapshot of the params into the average (dicts of name -> NDArray)."""
        d = self.current_decay()
        for kind, params in (("arg", arg_params), ("aux", aux_params or {})):
            for name, value in params.items():
                key = kind + ":" + name
                shadow = self._shadow.get(key)
                if shadow is None:
                    dtype = np.float32 if np.dtype(value.dtype) == np.float16 else value.dtype
                    self._shadow[key] = value.as_in_context(mx.cpu()).astype(dtype, copy=True)
                    continue
                value = value.as_in_context(mx.cpu())
                if value.dtype != shadow.dtype:
                    value = value.astype(shadow.dtype)
                # One fused in-place kernel per array, no temporaries: sgd_update computes
                # w·(1 − lr·wd) − lr·rescale·g, which with lr = 1 − d, wd = 1, rescale = −1
                # is exactly d·ema + (1 − d)·param.
                mx.nd.sgd_update(shadow, value, lr=1.0 - d, wd=1.0, rescale_grad=-1.0, out=shadow)
        self.num_updates += 1

    def params(self):
        """(arg_params, aux_params) copies of the averages, ready for Module.set_params."""
        arg = {k[4:]: v.copy() for k, v in self._shadow.items() if k.startswith("arg:")}
        aux = {k[4:]: v.copy() for k, v in self._shadow.items() if k.startswith("aux:")}
        return arg, aux

    def state_dict(self):
        """Flat dict of NDArrays (`arg:x`, `aux:x`, `num_updates`) for utils.checkpoint."""
        state = {k: v.copy() for k, v in self._shadow.items()}
        # float64 holds update counts exactly far beyond any training run.
        state["num_updates"] = mx.nd.array([self.num_updates], dtype="float64")
        return state

    def load(self, state):
        """Restore from state_dict() output (e.g. the `ema` part of utils.checkpoint.load_checkpoint)."""
        if "num_updates" not in state:
            raise ValueError("EMA state has no num_updates entry")
        self.num_updates = int(state["num_updates"].asscalar())
        self._shadow = {k: v.as_in_context(mx.cpu()).copy() for k, v in state.items()
                        if k.startswith(("arg:", "aux:"))}
