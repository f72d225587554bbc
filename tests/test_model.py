"""EfficientDet core: fixture parity, exact parameter counts, SAME padding and resampling rules."""
import json

import mxnet as mx
import numpy as np
import pytest

from conftest import require_reference, run_script
from models.efficientdet.anchors import generate_anchors, num_anchors
from models.efficientdet.backbone import STRIDE_STAGES, efficientnet_classifier
from models.efficientdet.builder import get_raw_symbol
from models.efficientdet.convert import convert, read_source
from models.efficientdet.layers import conv, graph_target, max_pool, same_pad, upsample_to
from models.efficientdet.stats import count_params, param_shapes
from utils.config import load_config

DETECTION_COUNTS = {"b0": 3880067, "b1": 6625898, "b2": 8097039, "b3": 12032296, "b4": 20723675,
                    "b5": 33653315, "b6": 51871782, "d7": 51871782, "b7": 77147166}
CLASSIFIER_COUNTS = [5288548, 7794184, 9109994, 12233232, 19341616, 30389784, 43040704, 66347960]


def _run(sym, arg, aux, data):
    ex = sym.bind(mx.cpu(), args=dict({k: mx.nd.array(v) for k, v in arg.items()}, data=mx.nd.array(data)),
                  aux_states={k: mx.nd.array(v) for k, v in aux.items()}, grad_req="null")
    return [o.asnumpy() for o in ex.forward(is_train=False)]


def test_d0_parity_with_effdet_fixture():
    path = require_reference("tf_efficientdet_d0_256.npz")
    z = np.load(path)
    cfg = load_config("config/efficientdet_b0.py", ["DatasetParam.image_size=(256, 256)"], is_train=False)
    sym = get_raw_symbol(cfg)
    arg, aux = convert(read_source(path), *param_shapes(sym, (1, 3, 256, 256)))
    outs = dict(zip(sym.list_outputs(), _run(sym, arg, aux, z["input"])))
    for level in range(3, 8):
        for ours, theirs in (("cls_out_p%d_output", "class_out_p%d"), ("box_out_p%d_output", "box_out_p%d")):
            np.testing.assert_allclose(outs[ours % level], z[theirs % level], atol=1e-3, rtol=0)
    np.testing.assert_allclose(generate_anchors((256, 256)), z["anchors_yxyx"], atol=1e-3, rtol=0)


def test_b0_classifier_parity_with_timm_fixture():
    path = require_reference("tf_efficientnet_b0_224.npz")
    z = np.load(path)
    sym, feats = efficientnet_classifier("efficientnet_b0")
    strides = (2, 4, 8, 16, 32)
    group = mx.sym.Group([sym] + [feats["stage%d" % STRIDE_STAGES[s]][0] for s in strides])
    arg, aux = convert(read_source(path), *param_shapes(group, (1, 3, 224, 224)))
    outs = _run(group, arg, aux, z["input"])
    np.testing.assert_allclose(outs[0], z["logits"], atol=1e-3, rtol=0)
    for out, s in zip(outs[1:], strides):
        np.testing.assert_allclose(out, z["feature_stride%d" % s], atol=1e-3, rtol=0)


@pytest.mark.parametrize("variant", sorted(DETECTION_COUNTS))
def test_detection_parameter_counts(variant):
    cfg = load_config("config/efficientdet_%s.py" % variant, ["DatasetParam.num_classes=90"], is_train=False)
    shape = (1, 3) + tuple(cfg.DatasetParam.image_size)
    assert count_params(get_raw_symbol(cfg), shape) == DETECTION_COUNTS[variant]


@pytest.mark.parametrize("index", range(8))
def test_classifier_parameter_counts(index):
    sym, _ = efficientnet_classifier("efficientnet_b%d" % index, 224)   # counts do not depend on the size
    assert count_params(sym, (1, 3, 224, 224)) == CLASSIFIER_COUNTS[index]


def test_model_stats_json_cli():
    res = run_script(["scripts/model_stats.py", "--config", "config/efficientdet_b0.py", "--num-classes", "90",
                      "--json"])
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    assert stats["params"] == 3880067 and stats["anchors"] == 49104 and stats["image_size"] == [512, 512]
    assert 2.4e9 < stats["flops"] < 2.6e9  # published D0: 2.54 B multiply-adds
    res = run_script(["scripts/model_stats.py", "--classifier", "efficientnet_b7", "--json"])
    assert json.loads(res.stdout)["params"] == CLASSIFIER_COUNTS[7]
    res = run_script(["scripts/model_stats.py", "--classifier", "efficientnet_b0", "--json"])
    assert 0.38e9 < json.loads(res.stdout)["flops"] < 0.40e9  # published B0: 0.39 B


def test_anchor_counts():
    for size, count in ((512, 49104), (640, 76725), (768, 110484), (1024, 196416), (1280, 306900),
                        (1536, 441936)):
        assert num_anchors((size, size)) == count
        assert generate_anchors((size, size)).shape == (count, 4)
    # D7x adds P8: one more level of 6x6 positions at 1536.
    assert num_anchors((1536, 1536), max_level=8) == 441936 + 6 * 6 * 9


def test_anchor_layout_first_cell():
    a = generate_anchors((64, 64), anchor_scale=4.0)
    # level 3, y=0, x=0, octave 0, aspect (1, 1): a 32x32 box centred at (4, 4).
    np.testing.assert_allclose(a[0], [4 - 16, 4 - 16, 4 + 16, 4 + 16])
    # aspect (1.4, 0.7): x half-size 16*1.4, y half-size 16*0.7.
    np.testing.assert_allclose(a[1], [4 - 16 * 0.7, 4 - 16 * 1.4, 4 + 16 * 0.7, 4 + 16 * 1.4], rtol=1e-6)


def _tf_same_conv_numpy(x, w, stride):
    """Reference TF SAME conv on (C, H, W) with (O, C, k, k) weights, written out by hand."""
    k = w.shape[-1]
    (t, b, oh), (l, r, ow) = same_pad(x.shape[1], k, stride), same_pad(x.shape[2], k, stride)
    xp = np.pad(x, ((0, 0), (t, b), (l, r)))
    out = np.zeros((w.shape[0], oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, i, j] = np.tensordot(w, patch, axes=([1, 2, 3], [0, 1, 2]))
    return out


def test_same_pad_rule():
    assert same_pad(256, 3, 2) == (0, 1, 128)   # even input, stride 2, k3: (0, 1)
    assert same_pad(256, 5, 2) == (1, 2, 128)   # k5: (1, 2)
    assert same_pad(75, 3, 2) == (1, 1, 38)     # odd input: symmetric
    assert same_pad(300, 3, 1) == (1, 1, 300)


@pytest.mark.parametrize("size,kernel,stride", [(9, 3, 2), (10, 3, 2), (11, 5, 2), (12, 5, 2), (7, 3, 1),
                                                (7, 5, 1)])
def test_same_conv_matches_tf_rule_on_odd_and_even_sizes(size, kernel, stride):
    rng = np.random.RandomState(size + kernel)
    w = rng.randn(3, 2, kernel, kernel).astype(np.float32)
    # in_channels lets stride 2 on even sizes use the (k+1) kernel with a zero first row and column
    # in the inference graph; without it (and in the portable graph) the input is padded.
    for width in (size, size + 1):
        x = rng.randn(2, size, width).astype(np.float32)
        ref = _tf_same_conv_numpy(x.astype(np.float64), w.astype(np.float64), stride)
        for target, in_channels in (("inference", 2), ("inference", None), ("portable", 2)):
            with graph_target(target):
                sym, hw = conv(mx.sym.Variable("data"), "c", (size, width), 3, kernel, stride,
                               in_channels=in_channels)
            grown = '"kernel": "(%d, %d)"' % (kernel + 1, kernel + 1) in sym.tojson()
            out = sym.bind(mx.cpu(), {"data": mx.nd.array(x[None]), "c_weight": mx.nd.array(w)}).forward()[0]
            assert out.shape[2:] == hw == ref.shape[1:]
            np.testing.assert_allclose(out.asnumpy()[0], ref, atol=1e-4)
            assert grown == (target == "inference" and in_channels is not None and stride == 2
                             and size % 2 == 0 and width % 2 == 0)


def test_graph_forms_give_the_plain_outputs_over_calls_and_batches():
    """The oneDNN forms (layers.FORMS) compute what the plain graph computes, image after image:
    a form that cached a per-image value (the SE gate) would repeat the first image's answer."""
    sets = ["DatasetParam.image_size=(96, 128)", "NeckParam.repeats=1", "HeadParam.repeats=1"]
    cfg = load_config("config/quickstart.py", sets, is_train=False)
    images = np.random.RandomState(0).randn(4, 3, 96, 128).astype(np.float32)
    outs, params = {}, None
    for target, batch in (("plain", 1), ("portable", 1), ("inference", 1), ("inference", 2), ("training", 2)):
        cfg.General.batch_image = batch
        with graph_target(target):
            mod = mx.mod.Module(get_raw_symbol(cfg), label_names=None)
        mod.bind([("data", (batch, 3, 96, 128))], for_training=False)
        if params is None:
            mx.random.seed(0)
            mod.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2.0))
            params = mod.get_params()
        mod.set_params(*params)
        got = []
        for i in range(0, len(images), batch):
            mod.forward(mx.io.DataBatch([mx.nd.array(images[i:i + batch])]), is_train=False)
            got.append(np.concatenate([o.asnumpy().reshape(batch, -1) for o in mod.get_outputs()], 1))
        outs[target, batch] = np.concatenate(got)
    ref = outs["plain", 1]
    assert np.abs(ref[0] - ref[1]).max() > 1e-2          # the images give different outputs
    for key, out in outs.items():
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=str(key))


def test_max_pool_same_pads_with_minus_infinity():
    x = -np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4) - 100  # all negative
    sym, hw = max_pool(mx.sym.Variable("data"), (4, 4))
    out = sym.bind(mx.cpu(), {"data": mx.nd.array(x)}).forward()[0].asnumpy()
    assert hw == (2, 2)
    # window rows/cols {0,1,2} and {2,3,pad}: a zero pad would make the last cell 0.
    np.testing.assert_array_equal(out[0, 0], [[x[0, 0, 0, 0], x[0, 0, 0, 2]], [x[0, 0, 2, 0], x[0, 0, 2, 2]]])


@pytest.mark.parametrize("size", [3, 5, 10, 19])
def test_upsample_matches_nearest_resize(size):
    out_size = 2 * size - 1 if size > 1 else 2  # ceil-halving pyramids give 2n-1 or 2n
    x = np.random.RandomState(0).randn(1, 1, size, size).astype(np.float32)
    idx = (np.arange(out_size) * size / out_size).astype(int)  # torch nearest: floor(i * in / out)
    for target in ("inference", "portable"):        # 2x2 unit deconvolution, UpSampling
        with graph_target(target):
            sym = upsample_to(mx.sym.Variable("data"), (size, size), (out_size, out_size), 1)
        out = sym.bind(mx.cpu(), {"data": mx.nd.array(x)}).forward()[0].asnumpy()
        np.testing.assert_array_equal(out[0, 0], x[0, 0][np.ix_(idx, idx)])


def test_odd_input_size_pyramid_shapes():
    cfg = load_config("config/efficientdet_b0.py", ["DatasetParam.image_size=(300, 420)"], is_train=False)
    sym = get_raw_symbol(cfg)
    _, outs, _ = sym.infer_shape(data=(1, 3, 300, 420))
    heights = [s[2:] for s in outs[:5]]
    assert heights == [(38, 53), (19, 27), (10, 14), (5, 7), (3, 4)]


def test_d7x_has_p8():
    cfg = load_config("config/efficientdet_b7.py", ["DatasetParam.image_size=(256, 256)"], is_train=False)
    sym = get_raw_symbol(cfg)
    assert [n for n in sym.list_outputs() if n.startswith("cls")][-1] == "cls_out_p8_output"


@pytest.mark.parametrize("fusion", ["fast", "softmax", "sum"])
def test_fusion_variants_build_and_run(fusion):
    cfg = load_config("config/efficientdet_b0.py", ["DatasetParam.image_size=(64, 64)", "NeckParam.fusion=" + fusion,
                                                    "NeckParam.repeats=1", "DatasetParam.num_classes=2"],
                      is_train=False)
    sym = get_raw_symbol(cfg)
    mod = mx.mod.Module(sym, label_names=None)
    mod.bind([("data", (1, 3, 64, 64))], for_training=False)
    mod.init_params(mx.init.Normal(0.01))
    mod.forward(mx.io.DataBatch([mx.nd.ones((1, 3, 64, 64))]), is_train=False)
    assert all(np.isfinite(o.asnumpy()).all() for o in mod.get_outputs())
    has_weights = any(n.endswith("_edge_weight") for n in sym.list_arguments())
    assert has_weights == (fusion != "sum")


def test_anchor_strides_follow_feature_sizes_on_odd_inputs():
    """effdet/automl use stride = input / feature size per axis, which is not 2**level when the
    input does not divide: at 300 px P7 is 3 cells of 100 px, not 128."""
    a = generate_anchors((300, 320), min_level=7, max_level=7, num_scales=1, aspect_ratios=((1.0, 1.0),))
    sy, sx = 300 / 3.0, 320 / 3.0
    np.testing.assert_allclose(a[0], [sy / 2 - 2 * sy, sx / 2 - 2 * sx, sy / 2 + 2 * sy, sx / 2 + 2 * sx], rtol=1e-6)
    np.testing.assert_allclose(a[-1, 2:] - a[-1, :2], [4 * sy, 4 * sx], rtol=1e-6)
    # Dividing sizes keep the power-of-two stride.
    b = generate_anchors((256, 256), min_level=3, max_level=3, num_scales=1, aspect_ratios=((1.0, 1.0),))
    np.testing.assert_allclose(b[1] - b[0], [0, 8, 0, 8])


@pytest.mark.parametrize("size,width,kernel,stride", [(12, 12, 5, 1), (12, 12, 5, 2), (11, 13, 5, 2),
                                                      (9, 10, 7, 1), (9, 9, 7, 2), (8, 8, 3, 2)])
def test_column_split_depthwise_conv_gives_plain_values_and_gradients(size, width, kernel, stride):
    """The training graph's depthwise k x k conv (k > 3, or stride 2) is a sum of convs at most 3
    columns wide, padded by concatenation ("column_split"): outputs and the gradients of input and
    weight must be the plain conv's."""
    rng = np.random.RandomState(size * kernel + stride)
    channels = 8
    args = {"data": rng.randn(2, channels, size, width), "c_weight": rng.randn(channels, 1, kernel, kernel)}
    results = {}
    for target in ("plain", "training"):
        with graph_target(target):
            sym, hw = conv(mx.sym.Variable("data"), "c", (size, width), channels, kernel, stride,
                           groups=channels)
        assert ("c_cols0" in sym.tojson()) == (target == "training" and (kernel > 3 or stride > 1))
        assert '"op": "Pad"' not in sym.tojson() or target == "plain"
        nd_args = {k: mx.nd.array(v) for k, v in args.items()}
        grads = {k: mx.nd.zeros(v.shape) for k, v in args.items()}
        ex = sym.bind(mx.cpu(), nd_args, args_grad=grads)
        out = ex.forward(is_train=True)[0]
        assert out.shape[2:] == hw
        head = np.random.RandomState(1).randn(*out.shape)
        ex.backward(mx.nd.array(head))
        results[target] = [out.asnumpy()] + [grads[k].asnumpy() for k in sorted(args)]
    for plain, split in zip(results["plain"], results["training"]):
        np.testing.assert_allclose(split, plain, rtol=1e-5, atol=1e-5 * np.abs(plain).max())
