"""utils.ema against a numpy reference, including the TF-style warmup decay."""
import mxnet as mx
import numpy as np
import pytest

from utils.ema import ExponentialMovingAverage


def _snapshots(rng, steps):
    return [({"w_weight": rng.randn(3, 4).astype("float32")}, {"bn_moving_var": rng.rand(4).astype("float32")})
            for _ in range(steps)]


def _reference(snapshots, decay, warmup):
    ema = None
    for step, (arg, aux) in enumerate(snapshots):
        flat = {"arg:" + k: v for k, v in arg.items()}
        flat.update({"aux:" + k: v for k, v in aux.items()})
        d = min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay
        ema = {k: v.astype("float64") for k, v in flat.items()} if ema is None else \
            {k: d * ema[k] + (1 - d) * flat[k] for k in flat}
    return ema


@pytest.mark.parametrize("decay,warmup", [(0.9998, True), (0.5, True), (0.7, False)])
def test_matches_numpy(decay, warmup):
    snaps = _snapshots(np.random.RandomState(0), 6)
    ema = ExponentialMovingAverage(decay, warmup)
    for arg, aux in snaps:
        ema.update({k: mx.nd.array(v) for k, v in arg.items()}, {k: mx.nd.array(v) for k, v in aux.items()})
    ref = _reference(snaps, decay, warmup)
    arg, aux = ema.params()
    np.testing.assert_allclose(arg["w_weight"].asnumpy(), ref["arg:w_weight"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["bn_moving_var"].asnumpy(), ref["aux:bn_moving_var"], rtol=1e-5, atol=1e-6)
    assert ema.num_updates == 6


def test_warmup_decay_schedule():
    ema = ExponentialMovingAverage(0.9998)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.num_updates = 90
    assert ema.current_decay() == pytest.approx(91 / 100)
    ema.num_updates = 10 ** 6
    assert ema.current_decay() == 0.9998
    assert ExponentialMovingAverage(0.9998, warmup=False).current_decay() == 0.9998


def test_copies_do_not_alias_and_state_roundtrips():
    w = mx.nd.ones((2, 2))
    ema = ExponentialMovingAverage(0.5, warmup=False)
    ema.update({"w_weight": w}, {})
    w[:] = 100            # the caller's array changes in place ...
    out, _ = ema.params()
    out["w_weight"][:] = -1   # ... and so does the returned copy: the shadow must not follow
    assert (ema.params()[0]["w_weight"].asnumpy() == 1).all()
    ema.update({"w_weight": w}, {})
    other = ExponentialMovingAverage(0.5, warmup=False)
    other.load(ema.state_dict())
    assert other.num_updates == 2
    assert (other.params()[0]["w_weight"].asnumpy() == 50.5).all()


def test_float16_params_average_in_float32():
    ema = ExponentialMovingAverage(0.5, warmup=False)
    for v in (1.0, 2.0):
        ema.update({"w_weight": mx.nd.full((2,), v, dtype="float16")}, {})
    arr = ema.params()[0]["w_weight"]
    assert arr.dtype == np.float32 and (arr.asnumpy() == 1.5).all()
