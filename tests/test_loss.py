"""Focal and Huber losses (models/efficientdet/loss.py) against a float64 numpy reference."""
import mxnet as mx
import numpy as np
import pytest

from models.efficientdet.loss import detection_loss, flatten_level_outputs

N, K, C = 2, 9, 3
SIZES = [(4, 4), (2, 2), (1, 1)]                 # three tiny levels
A = sum(h * w for h, w in SIZES) * K
BOX_W = 50.0


def np_flatten(levels, width):
    """Numpy twin of flatten_level_outputs: [(N, K*width, H, W)] -> (N, A, width) float64."""
    flat = [o.transpose(0, 2, 3, 1).reshape(o.shape[0], -1, width) for o in levels]
    return np.concatenate(flat, 1).astype(np.float64)


def reference_terms(x, b, cls_t, box_t, alpha, gamma, ls, delta):
    """effdet's new_focal_loss and huber_loss per element of float64 x (N, A, C), b (N, A, 4),
    already divided by the normaliser: (N, A, C) focal terms and (N, A, 4) box terms."""
    t = (cls_t[..., None] == np.arange(C)).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    p_t = t * p + (1 - t) * (1 - p)
    alpha_t = t * alpha + (1 - t) * (1 - alpha)
    ts = t * (1 - ls) + 0.5 * ls
    ce = np.maximum(x, 0) - x * ts + np.log1p(np.exp(-np.abs(x)))
    focal = alpha_t * (1 - p_t) ** gamma * ce * (cls_t != -2)[..., None]
    err = np.abs(b - box_t)
    quad = np.minimum(err, delta)
    huber = (0.5 * quad ** 2 + delta * (err - quad)) * (cls_t >= 0)[..., None]
    norm = (cls_t >= 0).sum() + 1.0
    return focal / norm, huber / (4 * norm)


def make_problem(seed, num_pos_frac):
    rng = np.random.RandomState(seed)
    cls_levels = [rng.normal(0, 3, (N, K * C, h, w)).astype(np.float32) for h, w in SIZES]
    box_levels = [rng.normal(0, 0.3, (N, K * 4, h, w)).astype(np.float32) for h, w in SIZES]
    cls_levels[0][0, :4, 0, 0] = [30.0, -30.0, 25.0, -25.0]   # past softrelu's switch at 20
    u = rng.uniform(size=(N, A))
    cls_t = np.where(u < num_pos_frac, rng.randint(0, C, (N, A)), -1).astype(np.float32)
    cls_t[u > 0.85] = -2                                       # ignored anchors
    box_t = rng.normal(0, 0.2, (N, A, 4)).astype(np.float32) * (cls_t >= 0)[..., None]
    return cls_levels, box_levels, cls_t, box_t


def run_mxnet(cls_levels, box_levels, cls_t, box_t, alpha, gamma, ls, delta):
    cls_vars = [mx.sym.var("cls%d" % i) for i in range(len(SIZES))]
    box_vars = [mx.sym.var("box%d" % i) for i in range(len(SIZES))]
    sym = detection_loss(cls_vars, box_vars, mx.sym.var("cls_target"), mx.sym.var("box_target"),
                         C, alpha, gamma, ls, delta, BOX_W)
    assert sym.list_outputs() == ["cls_loss_output", "box_loss_output"]
    feed = {"cls_target": cls_t, "box_target": box_t}
    feed.update({"cls%d" % i: v for i, v in enumerate(cls_levels)})
    feed.update({"box%d" % i: v for i, v in enumerate(box_levels)})
    req = {k: ("null" if k.endswith("target") else "write") for k in feed}
    exe = sym.simple_bind(mx.cpu(), grad_req=req, **{k: v.shape for k, v in feed.items()})
    for k, v in feed.items():
        exe.arg_dict[k][:] = v
    outs = [o.asnumpy() for o in exe.forward(is_train=True)]
    exe.backward()
    grads = [exe.grad_dict["cls%d" % i].asnumpy() for i in range(len(SIZES))], \
            [exe.grad_dict["box%d" % i].asnumpy() for i in range(len(SIZES))]
    return outs, grads


@pytest.mark.parametrize("pos_frac, ls", [(0.1, 0.0), (0.1, 0.1), (0.0, 0.0), (0.0, 0.2)])
def test_loss_and_gradients_match_numpy(pos_frac, ls):
    alpha, gamma, delta = 0.25, 1.5, 0.1
    cls_levels, box_levels, cls_t, box_t = make_problem(int(pos_frac * 10 + ls * 100), pos_frac)
    (cls_loss, box_loss), (cls_g, box_g) = run_mxnet(cls_levels, box_levels, cls_t, box_t,
                                                     alpha, gamma, ls, delta)
    x, b = np_flatten(cls_levels, C), np_flatten(box_levels, 4)
    terms = lambda xx, bb: reference_terms(xx, bb, cls_t, box_t, alpha, gamma, ls, delta)
    focal, huber = terms(x, b)
    assert cls_loss.shape == box_loss.shape == (1,)
    np.testing.assert_allclose(cls_loss[0], focal.sum(), rtol=1e-5)
    np.testing.assert_allclose(box_loss[0], huber.sum(), rtol=1e-5, atol=1e-12)
    if pos_frac == 0:
        assert box_loss[0] == 0

    # Each term depends on its own input only (the normaliser is a constant), so one central
    # difference over all inputs at once gives every partial derivative.
    h = 1e-6
    ref_cls_g = (terms(x + h, b)[0] - terms(x - h, b)[0]) / (2 * h)
    ref_box_g = BOX_W * (terms(x, b + h)[1] - terms(x, b - h)[1]) / (2 * h)
    for got, ref in ((np_flatten(cls_g, C), ref_cls_g), (np_flatten(box_g, 4), ref_box_g)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max() + 1e-12)
    ignored = np.broadcast_to((cls_t == -2)[..., None], ref_cls_g.shape)
    assert not np_flatten(cls_g, C)[ignored].any()
    assert not np_flatten(box_g, 4)[np.broadcast_to((cls_t < 0)[..., None], ref_box_g.shape)].any()


def test_flatten_order_is_level_y_x_anchor_then_class():
    levels = [np.arange(N * K * C * h * w, dtype=np.float32).reshape(N, K * C, h, w) + 1000 * i
              for i, (h, w) in enumerate(SIZES)]
    box_levels = [np.zeros((N, K * 4, h, w), np.float32) for h, w in SIZES]
    cls_sym, box_sym = flatten_level_outputs([mx.sym.var("c%d" % i) for i in range(3)],
                                             [mx.sym.var("b%d" % i) for i in range(3)], C)
    args = {"c%d" % i: mx.nd.array(v) for i, v in enumerate(levels)}
    args.update({"b%d" % i: mx.nd.array(v) for i, v in enumerate(box_levels)})
    got = mx.sym.Group([cls_sym, box_sym]).eval(mx.cpu(), **args)
    expect = [[lv[n, k * C + c, y, x] for lv in levels for y in range(lv.shape[2])
               for x in range(lv.shape[3]) for k in range(K) for c in range(C)] for n in range(N)]
    np.testing.assert_array_equal(got[0].asnumpy(), np.array(expect).reshape(N, A, C))
    assert got[1].shape == (N, A, 4)


def test_module_trains_on_loss_outputs():
    """The Group is a complete training symbol: Module.fit-style steps lower the total loss."""
    data = mx.sym.var("data")
    p3 = mx.sym.Convolution(data, num_filter=K * (C + 4), kernel=(3, 3), pad=(1, 1), name="head")
    p4 = mx.sym.Pooling(p3, kernel=(2, 2), stride=(2, 2), pool_type="avg")
    split = lambda p: (mx.sym.slice_axis(p, axis=1, begin=0, end=K * C),
                       mx.sym.slice_axis(p, axis=1, begin=K * C, end=K * (C + 4)))
    (c3, b3), (c4, b4) = split(p3), split(p4)
    sym = detection_loss([c3, c4], [b3, b4], mx.sym.var("cls_target"), mx.sym.var("box_target"),
                         C, box_loss_weight=BOX_W)
    a = (16 + 4) * K
    rng = np.random.RandomState(0)
    cls_t = np.where(rng.uniform(size=(N, a)) < 0.1, rng.randint(0, C, (N, a)), -1)
    box_t = rng.normal(0, 0.2, (N, a, 4)) * (cls_t >= 0)[..., None]
    batch = mx.io.DataBatch([mx.nd.array(rng.normal(size=(N, 4, 4, 4)))],
                            [mx.nd.array(cls_t), mx.nd.array(box_t)])
    mod = mx.mod.Module(sym, data_names=["data"], label_names=["cls_target", "box_target"])
    mod.bind([("data", (N, 4, 4, 4))], [("cls_target", (N, a)), ("box_target", (N, a, 4))])
    mod.init_params(mx.init.Normal(0.01))
    mod.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.2})
    totals = []
    for _ in range(20):
        mod.forward_backward(batch)
        mod.update()
        cls_loss, box_loss = (o.asscalar() for o in mod.get_outputs())
        totals.append(cls_loss + BOX_W * box_loss)
    assert all(np.diff(totals) < 0) and totals[-1] < 0.6 * totals[0]
