"""In-graph post-processing (models/efficientdet/postprocess.py) against a numpy reference, the
effdet D0 fixture's detections, soft-NMS behaviour, save/load and ONNX export."""
import re

import mxnet as mx
import numpy as np
import pytest

from conftest import require_reference, run_script
from config.base import make_config
from core.targets import decode_boxes
from models.efficientdet.anchors import generate_anchors
from models.efficientdet.builder import build_network, get_raw_symbol, get_test_symbol
from models.efficientdet.layers import graph_target
from models.efficientdet.loss import flatten_level_outputs
from models.efficientdet.postprocess import (_top_pairs, candidates, flat_predictions, greedy_nms,
                                             match_detections, postprocess)

D0 = "tf_efficientdet_d0_256.npz"


def small_cfg(image_size=(64, 96), **test):
    overrides = {"DatasetParam.image_size": image_size, "DatasetParam.num_classes": 3,
                 "NeckParam.max_level": 5, "TestParam.topk_candidates": 120, "TestParam.max_det": 25}
    overrides.update({"TestParam." + k: v for k, v in test.items()})
    return make_config(False, overrides)


def anchors_of(cfg):
    a = cfg.AnchorParam
    return generate_anchors(cfg.DatasetParam.image_size, cfg.NeckParam.min_level, cfg.NeckParam.max_level,
                            a.num_scales, a.aspect_ratios, a.scale)


def iou(box, boxes):
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def reference_nms(boxes, scores, classes, max_det, nms_type, thresh, sigma):
    """Textbook per-class NMS: hard = sweep in score order, soft = effdet's Gaussian soft-NMS."""
    keep = []
    if nms_type == "hard":
        alive = np.ones(len(scores), bool)
        for i in np.argsort(-scores, kind="stable"):
            if alive[i]:
                keep.append((i, scores[i]))
                alive &= ~((classes == classes[i]) & (iou(boxes[i], boxes) > thresh))
        return keep[:max_det]
    s, left = scores.astype(np.float64).copy(), np.ones(len(scores), bool)
    while left.any() and len(keep) < max_det:
        i = int(np.argmax(np.where(left, s, -np.inf)))
        keep.append((i, s[i]))
        left[i] = False
        same = classes == classes[i]
        s[same] *= np.exp(-iou(boxes[i], boxes[same]) ** 2 / sigma)
    return keep


def reference_detections(cls_pred, box_pred, anchors, cfg, scale):
    """One image: (A, C) logits, (A, 4) codes -> (max_det, 6) as the graph should produce it."""
    t, num_classes = cfg.TestParam, cls_pred.shape[1]
    flat = cls_pred.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:t.topk_candidates]
    anchor, cls = order // num_classes, order % num_classes
    boxes = decode_boxes(anchors[anchor], box_pred[anchor])
    scores = 1 / (1 + np.exp(-flat[order]))
    out = np.full((t.max_det, 6), -1.0, np.float32)
    rows = [(i, s) for i, s in reference_nms(boxes, scores, cls, t.max_det, t.nms_type, t.nms_thresh,
                                             t.soft_nms_sigma) if s >= t.score_thresh]
    for r, (i, s) in enumerate(rows):
        out[r] = list(boxes[i] / scale) + [s, cls[i]]
    return out


def run_postprocess(cfg, cls_pred, box_pred, scale):
    sym = postprocess(mx.sym.Variable("cls_pred"), mx.sym.Variable("box_pred"), mx.sym.Variable("im_scale"), cfg)
    ex = sym.bind(mx.cpu(), {"cls_pred": mx.nd.array(cls_pred), "box_pred": mx.nd.array(box_pred),
                             "im_scale": mx.nd.array(scale)}, grad_req="null")
    return ex.forward()[0].asnumpy()


def random_problem(cfg, batch=2, seed=0):
    rng = np.random.RandomState(seed)
    num = len(anchors_of(cfg))
    cls_pred = rng.normal(-2, 2, (batch, num, cfg.DatasetParam.num_classes)).astype(np.float32)
    box_pred = rng.normal(0, 0.4, (batch, num, 4)).astype(np.float32)   # overlapping neighbours
    scale = rng.uniform(0.5, 2, (batch, 1)).astype(np.float32)
    return cls_pred, box_pred, scale


@pytest.mark.parametrize("test", [{}, {"nms_type": "soft"}, {"nms_thresh": 0.3, "score_thresh": 0.6},
                                  {"topk_candidates": 30, "max_det": 40}])
@pytest.mark.parametrize("image_size", [(64, 96), (50, 77)])  # 50 x 77: anchor strides below 2**level
def test_matches_numpy_reference(test, image_size):
    cfg = small_cfg(image_size, **test)
    cls_pred, box_pred, scale = random_problem(cfg)
    got = run_postprocess(cfg, cls_pred, box_pred, scale)
    assert got.shape == (2, cfg.TestParam.max_det, 6)
    for n in range(2):
        want = reference_detections(cls_pred[n], box_pred[n], anchors_of(cfg), cfg, scale[n, 0])
        np.testing.assert_allclose(got[n], want, rtol=1e-5, atol=1e-4)
        valid = want[:, 4] >= 0
        assert 0 < valid.sum() and (got[n][~valid] == -1).all()   # padding rows are all -1
    if "max_det" in test:      # fewer candidates than max_det: the tail is padding
        assert (got[:, 30:] == -1).all()


@pytest.mark.parametrize("layout", ["random", "crowded", "few_anchors"])
@pytest.mark.parametrize("target", ["inference", "plain"])      # best class by max-pool / by max
def test_two_stage_top_pairs_equal_one_flat_top_k(layout, target):
    """The anchor-first ranking picks the same pairs, in the same order, as one top-k over all
    logits, also when the best pairs crowd into few anchors or k exceeds the anchors."""
    rng = np.random.RandomState(1)
    anchors, classes, k = (5, 7, 30) if layout == "few_anchors" else (50, 7, 40)
    cls_pred = rng.normal(size=(2, anchors, classes)).astype(np.float32)
    if layout == "crowded":     # all 7 classes of anchors 3 and 17 beat every other logit
        cls_pred[:, [3, 17]] += 10
    with graph_target(target):
        syms = _top_pairs(mx.sym.Variable("c"), anchors, classes, k)
    ex = mx.sym.Group(list(syms)).bind(mx.cpu(), {"c": mx.nd.array(cls_pred)}, grad_req="null")
    logits, anchor, cls = [o.asnumpy() for o in ex.forward()]
    order = np.argsort(-cls_pred.reshape(2, -1), axis=1, kind="stable")[:, :min(k, anchors * classes)]
    np.testing.assert_array_equal(anchor * classes + cls, order)
    np.testing.assert_array_equal(logits, np.take_along_axis(cls_pred.reshape(2, -1), order, 1))


def run_nms(boxes, scores, classes, max_det, nms_type, sigma=0.5):
    picks, values = greedy_nms(mx.sym.Variable("b"), mx.sym.Variable("s"), mx.sym.Variable("c"),
                               max_det, nms_type, 0.5, sigma)
    ex = mx.sym.Group([picks, values]).bind(mx.cpu(), {"b": mx.nd.array([boxes]), "s": mx.nd.array([scores]),
                                                       "c": mx.nd.array([classes])}, grad_req="null")
    picks, values = (o.asnumpy()[0] for o in ex.forward())
    return picks[:, 4], values


def test_soft_nms_decays_overlapping_box_instead_of_removing_it():
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [50, 50, 60, 60]]
    scores, classes = [0.9, 0.8, 0.7, 0.6], [0, 0, 1, 0]
    overlap = 90.0 / 110.0                       # IoU of box 1 with box 0
    classes_out, values = run_nms(boxes, scores, classes, 5, "soft", sigma=0.5)
    # Box 1 drops to 0.8 * exp(-IoU^2 / sigma) ~ 0.21 and comes last; the other class and the
    # distant box keep their scores; once all four are out the rest is padding (-1).
    np.testing.assert_allclose(values[:4], [0.9, 0.7, 0.6, 0.8 * np.exp(-overlap ** 2 / 0.5)], rtol=1e-6)
    assert values[4] < 0
    np.testing.assert_array_equal(classes_out[:4], [0, 1, 0, 0])
    classes_out, values = run_nms(boxes, scores, classes, 5, "hard")
    np.testing.assert_allclose(values, [0.9, 0.7, 0.6, -1, -1], rtol=1e-6)   # removed outright


def test_empty_boxes_are_picked_once_each():
    """A zero-area box has IoU 0 even with itself; it must still leave the candidate list."""
    boxes = [[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 4, 4]]
    _, values = run_nms(boxes, [0.9, 0.8, 0.7], [0, 0, 0], 4, "hard")
    np.testing.assert_allclose(values, [0.9, 0.8, 0.7, -1], rtol=1e-6)


def test_flat_predictions_equal_flattened_head_outputs():
    """The shared 1x1 predictor run once as a FullyConnected == per-level convs, transposed."""
    cfg = make_config(False, {"DatasetParam.image_size": (64, 96), "DatasetParam.num_classes": 3,
                              "General.batch_image": 2})
    data = mx.nd.random.uniform(-2, 2, (2, 3, 64, 96))
    outs, params = [], {}
    for flatten in (flatten_level_outputs, flat_predictions):   # separate graphs: see its docstring
        cls, box = build_network(cfg)
        sym = mx.sym.Group(list(flatten([cls[l] for l in sorted(cls)], [box[l] for l in sorted(box)], 3)))
        mod = mx.mod.Module(sym, data_names=["data"], label_names=None)
        mod.bind([("data", data.shape)], for_training=False)
        if params:
            mod.set_params(*params)
        else:
            mod.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2.3))
            params = mod.get_params()
        mod.forward(mx.io.DataBatch([data]), is_train=False)
        outs.append([o.asnumpy() for o in mod.get_outputs()])
    (cls_pred, box_pred), (fast_cls, fast_box) = outs
    assert fast_cls.shape == cls_pred.shape == (2, len(anchors_of(cfg)), 3)
    assert np.std(cls_pred) > 1e-3                # not a degenerate all-equal output
    np.testing.assert_allclose(fast_cls, cls_pred, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast_box, box_pred, rtol=1e-5, atol=1e-5)


def test_test_symbol_matches_raw_outputs_and_survives_save_load():
    """get_test_symbol (shared 1x1 predictor as one FullyConnected) == raw head outputs + reference."""
    cfg = make_config(False, {"DatasetParam.image_size": (128, 128), "DatasetParam.num_classes": 4,
                              "TestParam.max_det": 30, "General.batch_image": 2})
    raw = mx.mod.Module(get_raw_symbol(cfg), data_names=["data"], label_names=None)
    raw.bind([("data", (2, 3, 128, 128))], for_training=False)
    mx.random.seed(0)
    raw.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2.3))
    arg, aux = raw.get_params()     # (this init gives logits over ~[-7, -1.5], codes over ~[-2, 2])
    data = mx.nd.random.uniform(-2, 2, (2, 3, 128, 128))
    scale = np.array([[1.0], [0.5]], np.float32)
    raw.forward(mx.io.DataBatch([data]), is_train=False)
    heads = [o.asnumpy() for o in raw.get_outputs()]
    cls_pred, box_pred = [np.concatenate([h.transpose(0, 2, 3, 1).reshape(2, -1, w) for h in hs], 1)
                          for hs, w in ((heads[:5], 4), (heads[5:], 4))]

    sym = get_test_symbol(cfg)
    assert [n for n in sym.list_arguments() if n not in arg] == ["data", "im_scale"]
    assert sym.list_outputs() == ["detections_output"]
    for s in (sym, mx.sym.load_json(sym.tojson())):
        mod = mx.mod.Module(s, data_names=["data", "im_scale"], label_names=None)
        mod.bind([("data", (2, 3, 128, 128)), ("im_scale", (2, 1))], for_training=False)
        mod.set_params(arg, aux)
        mod.forward(mx.io.DataBatch([data, mx.nd.array(scale)]), is_train=False)
        got = mod.get_outputs()[0].asnumpy()
        for n in range(2):
            want = reference_detections(cls_pred[n], box_pred[n], anchors_of(cfg), cfg, scale[n, 0])
            assert match_detections(got[n], want, score_tol=1e-5) < 1e-3


def test_d0_fixture_detections():
    fixture = require_reference(D0)
    from models.efficientdet.convert import convert, read_source
    from models.efficientdet.stats import param_shapes
    cfg = make_config(False, {"DatasetParam.image_size": (256, 256)})
    arg_shapes, aux_shapes = param_shapes(get_raw_symbol(cfg), (1, 3, 256, 256))
    arg, aux = convert(read_source(fixture), arg_shapes, aux_shapes, 3)
    z = np.load(fixture)
    mod = mx.mod.Module(get_test_symbol(cfg), data_names=["data", "im_scale"], label_names=None)
    mod.bind([("data", (1, 3, 256, 256)), ("im_scale", (1, 1))], for_training=False)
    mod.set_params({k: mx.nd.array(v) for k, v in arg.items()}, {k: mx.nd.array(v) for k, v in aux.items()})
    mod.forward(mx.io.DataBatch([mx.nd.array(z["input"]), mx.nd.ones((1, 1))]), is_train=False)
    ours = mod.get_outputs()[0].asnumpy()[0]
    ours[:, 5] += 1                              # effdet's class ids are 1-based
    reference = z["detections_xyxy_score_class"]
    assert match_detections(ours, reference) <= 1e-3
    # Even in plain score order the classes and scores agree (boxes may swap within score ties).
    np.testing.assert_allclose(np.sort(ours[:, 4]), np.sort(reference[:, 4]), atol=1e-5)


def test_convert_weights_verify_prints_detections_line(tmp_path):
    fixture = require_reference(D0)
    res = run_script(["scripts/convert_weights.py", "--src", fixture, "--out", tmp_path / "d0", "--config",
                      "config/efficientdet_b0.py", "--verify", fixture])
    assert res.returncode == 0, res.stdout + res.stderr
    line = re.search(r"^detections_xyxy_score_class .*max abs diff (\S+)$", res.stdout, re.M)
    assert line and float(line.group(1)) <= 1e-3


def test_match_detections_tolerates_ties_not_differences():
    ref = np.array([[0, 0, 10, 10, 0.8, 1], [20, 20, 30, 30, 0.8, 1], [0, 0, 5, 5, 0.5, 2]], np.float32)
    assert match_detections(ref[[1, 0, 2]], ref) == 0          # equal scores in either order
    moved = ref.copy()
    moved[2, :4] += 0.01
    assert match_detections(moved, ref) == pytest.approx(0.01, abs=1e-6)
    other_class = ref.copy()
    other_class[0, 5] = 3
    assert match_detections(other_class, ref) == float("inf")
    # At the cut-off a near-tie may keep another box: tolerated there only.
    cut_tie = ref.copy()
    cut_tie[2] = [40, 40, 50, 50, 0.50001, 0]
    assert match_detections(cut_tie, ref) == 0
    cut_tie[2, 4] = 0.51
    assert match_detections(cut_tie, ref) == float("inf")


def test_onnx_export_of_postprocess_matches_mxnet(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from utils.onnx_export import export_onnx, ort_session   # opset forced to 13 (docs/design.md §2)
    cfg = small_cfg()
    cls_pred, box_pred, scale = random_problem(cfg, batch=1)
    want = run_postprocess(cfg, cls_pred, box_pred, scale)
    sym = postprocess(mx.sym.Variable("cls_pred"), mx.sym.Variable("box_pred"), mx.sym.Variable("im_scale"), cfg)
    path = export_onnx(sym, {}, [cls_pred.shape, box_pred.shape, scale.shape], str(tmp_path / "post.onnx"))
    got = ort_session(path).run(None, {"cls_pred": cls_pred, "box_pred": box_pred, "im_scale": scale})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("test", [{}, {"nms_thresh": 0.3, "score_thresh": 0.95},
                                  {"topk_candidates": 30, "max_det": 40}])
def test_onnx_nms_tail_matches_numpy_reference(tmp_path, test):
    """The ONNX export's hard NMS (onnxruntime's NonMaxSuppression, utils/onnx_nms.py) gives the
    detections of the reference NMS, as the MXNet graph does; also with fewer candidates than
    max_det (padding) and with a score threshold."""
    pytest.importorskip("onnxruntime")
    from utils.onnx_export import export_onnx, ort_session
    from utils.onnx_nms import append_class_nms
    cfg = small_cfg((50, 77), **test)
    t = cfg.TestParam
    cls_pred, box_pred, scale = random_problem(cfg, batch=2)
    outs = candidates(mx.sym.Variable("cls_pred"), mx.sym.Variable("box_pred"), cfg)
    sym = mx.sym.Group([mx.sym.identity(o, name=n) for o, n in zip(outs, ("cand_boxes", "cand_logits", "cand_classes"))])
    shapes = {"cls_pred": cls_pred.shape, "box_pred": box_pred.shape}
    path = export_onnx(sym, {}, [shapes[n] for n in sym.list_inputs()], str(tmp_path / "nms.onnx"),
                       edit=lambda m: append_class_nms(m, 3, t.max_det, t.nms_thresh, t.score_thresh))
    got = ort_session(path).run(None, {"cls_pred": cls_pred, "box_pred": box_pred, "im_scale": scale})[0]
    assert got.shape == (2, t.max_det, 6)
    for n in range(2):
        want = reference_detections(cls_pred[n], box_pred[n], anchors_of(cfg), cfg, scale[n, 0])
        np.testing.assert_allclose(got[n], want, rtol=1e-5, atol=1e-4)
        kept = (want[:, 4] >= 0).sum()
        assert 0 < kept and (kept < t.max_det if test else kept == t.max_det)   # padding where expected
