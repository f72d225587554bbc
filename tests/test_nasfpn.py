"""NAS-FPN neck: parameter count by hand, cell structure, shapes, the cell's arithmetic against a numpy
reference written node by node, the level-range error, and a short training run."""
import csv
import json
import os
import subprocess

import mxnet as mx
import numpy as np
import pytest

from conftest import REPO, run_script
from core.dataset import load_coco, save_roidb
from core.synthetic import make_synthetic
from models.efficientdet.backbone import pyramid_features
from models.efficientdet.builder import get_raw_symbol
from models.efficientdet.nasfpn import global_attention, nasfpn, nasfpn_cell
from models.efficientdet.stats import param_shapes
from utils.config import load_config
from utils.errors import UserError

B0_NASFPN = "config/efficientdet_b0_nasfpn.py"


def test_d0_nasfpn_parameter_count_by_hand():
    cfg = load_config(B0_NASFPN, ["DatasetParam.num_classes=90"], is_train=False)
    w, repeats, head, classes, anchors = 64, 3, 3, 90, 9
    assert (cfg.NeckParam.width, cfg.NeckParam.repeats, cfg.HeadParam.repeats) == (w, repeats, head)
    # Backbone: the B0 classifier (docs/design.md §3) without its 1x1 conv 320->1280 + BN and its FC 1280->1000.
    backbone = 5288548 - (320 * 1280 + 2 * 1280) - (1280 * 1000 + 1000)
    # Neck. Projections of P3/P4/P5 (40/112/320 channels): 1x1 conv with bias + BN gamma/beta.
    # P6 and P7 are max-pools of the projected level below: no parameters.
    projections = sum(ch * w + w + 2 * w for ch in (40, 112, 320))
    # Each of the 7 blocks per cell: 3x3 conv w->w with bias + BN gamma/beta.
    block = 3 * 3 * w * w + w + 2 * w
    neck = projections + repeats * 7 * block
    # Heads: separable convs (depthwise 3x3 without bias, pointwise with bias) shared across levels,
    # one BN per (repeat, level) for the 5 levels, then a separable predictor.
    sep = lambda out: 3 * 3 * w + w * out + out  # noqa: E731
    cls_net = head * sep(w) + head * 5 * 2 * w + sep(anchors * classes)
    box_net = head * sep(w) + head * 5 * 2 * w + sep(anchors * 4)
    expected = backbone + neck + cls_net + box_net
    assert (backbone, neck, cls_net + box_net, expected) == (3595388, 808960, 88398, 4492746)
    arg_shapes, _ = param_shapes(get_raw_symbol(cfg), (1, 3, 512, 512))
    assert sum(int(np.prod(s)) for s in arg_shapes.values()) == expected
    assert sum(int(np.prod(s)) for n, s in arg_shapes.items() if n.startswith("nasfpn_")) == neck


def test_model_stats_cli_on_nasfpn_config():
    res = run_script(["scripts/model_stats.py", "--config", B0_NASFPN, "--num-classes", "90", "--json"])
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    assert stats["params"] == 4492746 and stats["anchors"] == 49104
    assert [s["name"] for s in stats["stages"]][-5:] == ["box P%d" % l for l in range(3, 8)]


def test_cells_have_seven_blocks_and_outputs_p3_to_p7():
    cfg = load_config(B0_NASFPN, ["DatasetParam.image_size=(128, 128)", "NeckParam.repeats=2"], is_train=False)
    sym = get_raw_symbol(cfg)
    blocks = {n[:-len("_conv_weight")] for n in sym.list_arguments()
              if n.startswith("nasfpn_cell") and n.endswith("_conv_weight")}
    assert blocks == {"nasfpn_cell%d_block%d" % (c, b) for c in range(2) for b in range(7)}
    projections = {n for n in sym.list_arguments() if n.startswith("nasfpn_p")}
    assert projections == {"nasfpn_p%d_%s" % (l, s) for l in (3, 4, 5)
                           for s in ("conv_weight", "conv_bias", "bn_gamma", "bn_beta")}
    assert [n for n in sym.list_outputs() if n.startswith("cls")] == ["cls_out_p%d_output" % l for l in range(3, 8)]


@pytest.mark.parametrize("size", [(256, 384), (300, 420)])
def test_neck_shapes_on_non_square_inputs(size):
    cfg = load_config(B0_NASFPN, ["DatasetParam.image_size=%r" % (size,), "NeckParam.repeats=1",
                                  "General.batch_image=2"], is_train=False)
    data = mx.sym.Variable("data")
    feats = nasfpn(pyramid_features(data, size, cfg), cfg)
    assert sorted(feats) == [3, 4, 5, 6, 7]
    _, shapes, _ = mx.sym.Group([feats[l][0] for l in range(3, 8)]).infer_shape(data=(2, 3) + size)
    expected = [(2, 64, -(-size[0] // 2 ** l), -(-size[1] // 2 ** l)) for l in range(3, 8)]
    assert [tuple(s) for s in shapes] == expected
    assert [feats[l][2] for l in range(3, 8)] == [e[2:] for e in expected]


def test_global_attention_gates_by_channel_max_of_the_coarser_input():
    rng = np.random.RandomState(0)
    a, b = rng.randn(2, 3, 4, 5).astype(np.float32), rng.randn(2, 3, 4, 5).astype(np.float32)
    out = global_attention(mx.sym.Variable("a"), mx.sym.Variable("b")).eval(a=mx.nd.array(a), b=mx.nd.array(b))
    gate = 1.0 / (1.0 + np.exp(-a.max(axis=(2, 3), keepdims=True)))  # (N, C, 1, 1)
    np.testing.assert_allclose(out[0].asnumpy(), a + b * gate, rtol=1e-5, atol=1e-6)


# ---- one cell in numpy, written out node by node -------------------------------------------------

def _pool(x, s):
    """TF SAME max-pool, kernel = stride = s, on (C, H, W)."""
    pads = [(0, 0)] + [((-(-n // s) * s - n) // 2, -(-n // s) * s - n - (-(-n // s) * s - n) // 2)
                       for n in x.shape[1:]]
    xp = np.pad(x, pads, constant_values=-np.inf)
    c, h, w = xp.shape
    return xp.reshape(c, h // s, s, w // s, s).max(axis=(2, 4))


def _up(x, s, hw):
    return x.repeat(s, axis=1).repeat(s, axis=2)[:, :hw[0], :hw[1]]


def _att(a, b):
    return a + b / (1.0 + np.exp(-a.max(axis=(1, 2), keepdims=True)))


def test_cell_arithmetic_matches_numpy_reference():
    rng = np.random.RandomState(1)
    width, sizes = 2, {3: (9, 13), 4: (5, 7), 5: (3, 4), 6: (2, 2), 7: (1, 1)}  # odd sizes: crops and pads
    p = {l: rng.randn(width, *sizes[l]).astype(np.float32) for l in (3, 4, 5)}
    p[6] = _pool(p[5], 2)
    p[7] = _pool(p[6], 2)
    params = {}
    for b in range(7):
        params["cell_block%d_conv_weight" % b] = rng.randn(width, width, 3, 3).astype(np.float32) * 0.3
        params["cell_block%d_conv_bias" % b] = rng.randn(width).astype(np.float32)
        params["cell_block%d_bn_gamma" % b] = rng.rand(width).astype(np.float32) + 0.5
        params["cell_block%d_bn_beta" % b] = rng.randn(width).astype(np.float32)

    def block(b, x):
        """relu -> 3x3 SAME conv with bias -> BN (moving mean 0, var 1)."""
        w, xp = params["cell_block%d_conv_weight" % b], np.pad(np.maximum(x, 0), ((0, 0), (1, 1), (1, 1)))
        h, wd = x.shape[1:]
        y = sum(np.einsum("oc,chw->ohw", w[:, :, i, j], xp[:, i:i + h, j:j + wd]) for i in range(3) for j in range(3))
        y = y + params["cell_block%d_conv_bias" % b][:, None, None]
        return y / np.sqrt(1 + 1e-3) * params["cell_block%d_bn_gamma" % b][:, None, None] + \
            params["cell_block%d_bn_beta" % b][:, None, None]

    n5 = block(0, _att(_up(p[6], 4, sizes[4]), p[4]))           # attention: P6 is the coarser input
    n6 = block(1, p[4] + n5)
    n7 = block(2, p[3] + _up(n6, 2, sizes[3]))                  # output P3
    n8 = block(3, n6 + _pool(n7, 2))                            # output P4
    n9 = block(4, _att(_pool(n8, 2), _pool(n7, 4)) + p[5])      # output P5, + the unconsumed input P5
    n10 = block(5, _att(_pool(n9, 4), _pool(n6, 8)) + p[7])     # output P7, + the unconsumed input P7
    n11 = block(6, _att(_up(n10, 2, sizes[6]), _pool(n9, 2)))   # output P6
    expected = [n7, n8, n9, n11, n10]

    nodes = [(l, mx.sym.Variable("p%d" % l), sizes[l]) for l in range(3, 8)]
    out = nasfpn_cell(nodes, "cell", width, {"momentum": 0.99, "eps": 1e-3})
    assert [n[0] for n in out] == [3, 4, 5, 6, 7]
    sym = mx.sym.Group([n[1] for n in out])
    args = {k: mx.nd.array(v) for k, v in params.items()}
    args.update({"p%d" % l: mx.nd.array(p[l][None]) for l in range(3, 8)})
    aux = {n: mx.nd.zeros((width,)) if n.endswith("mean") else mx.nd.ones((width,))
           for n in sym.list_auxiliary_states()}
    outs = sym.bind(mx.cpu(), args, aux_states=aux, grad_req="null").forward(is_train=False)
    for got, want in zip(outs, expected):
        np.testing.assert_allclose(got.asnumpy()[0], want, rtol=1e-4, atol=1e-4)


def test_other_level_ranges_are_an_error():
    cfg = load_config(B0_NASFPN, ["NeckParam.max_level=8"], is_train=False)
    with pytest.raises(UserError, match="P3-P7"):
        get_raw_symbol(cfg)


def test_training_lowers_the_loss(tmp_path):
    out = make_synthetic(str(tmp_path / "data"), 4, seed=3, val_fraction=0.0, size=128)
    roidb, categories, _ = load_coco(out["train"], out["image_dir"])
    save_roidb(str(tmp_path / "train_roidb.json"), roidb, categories, "coco")
    name = "test_nasfpn_train_%d" % os.getpid()
    sets = ["DatasetParam.train_roidb=%s" % (tmp_path / "train_roidb.json"), "General.name=" + name,
            "DatasetParam.num_classes=5", "DatasetParam.image_size=(128, 128)", "NeckParam.repeats=1",
            "HeadParam.repeats=1", "General.batch_image=4", "General.log_frequency=1", "DatasetParam.num_workers=1",
            "DatasetParam.scale_range=(1.0, 1.0)", "DatasetParam.hflip_prob=0.0",
            "DatasetParam.color_jitter=(0.0, 0.0, 0.0, 0.0)", "OptimizeParam.optimizer=adamw",
            "OptimizeParam.lr_per_64=0.16", "OptimizeParam.warmup.epochs=2.0", "OptimizeParam.ema_decay=0",
            "OptimizeParam.schedule.end_epoch=20"]
    exp = str(tmp_path / "experiments" / name)             # training runs with cwd = tmp_path
    try:
        res = run_script(["detection_train.py", "--config", os.path.join(REPO, B0_NASFPN)] +
                         [a for s in sets for a in ("--set", s)], timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        rows = list(csv.DictReader(open(os.path.join(exp, "metrics.csv"))))
        total = np.array([float(r["cls_loss"]) + 50 * float(r["box_loss"]) for r in rows])
        assert total[-3:].mean() * 5 <= total[:3].mean(), total
    finally:
        subprocess.run(["rm", "-rf", exp])
