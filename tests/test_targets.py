"""Anchor matching and the box coder (core/targets.py) on hand-computed cases."""
import numpy as np
import pytest

from config.base import make_config
from core.targets import assign_targets, decode_boxes, encode_boxes, iou_matrix, make_target_fn
from models.efficientdet.anchors import generate_anchors, num_anchors
from utils.errors import UserError

# Three anchors (y1, x1, y2, x2) whose IoUs with the boxes below are easy to do by hand.
ANCHORS = np.array([[0, 0, 10, 10],      # a0: 10x10 at the origin
                    [0, 20, 10, 30],     # a1: 10x10, right of a0
                    [20, 0, 40, 20]],    # a2: 20x20, below a0
                   np.float32)


def test_gt_equal_to_anchor_is_positive_with_zero_target():
    cls_t, box_t, num_pos = assign_targets(ANCHORS, np.array([[0, 0, 10, 10]], np.float32), [7])
    np.testing.assert_array_equal(cls_t, [7, -1, -1])
    np.testing.assert_array_equal(box_t, np.zeros((3, 4)))
    assert num_pos == 1 and cls_t.dtype == np.float32 and box_t.dtype == np.float32


def test_iou_between_thresholds_is_ignored():
    gt = np.array([[20, 0, 30, 4.5]], np.float32)   # x 20..30, y 0..4.5 inside a1: IoU 45/100
    cls_t, box_t, num_pos = assign_targets(ANCHORS, gt, [1], pos_iou=0.5, neg_iou=0.4,
                                           force_match=False)
    np.testing.assert_array_equal(cls_t, [-1, -2, -1])
    assert num_pos == 0 and not box_t.any()
    # Force-matching turns that ignored anchor into the GT's positive.
    cls_t, _, num_pos = assign_targets(ANCHORS, gt, [1], pos_iou=0.5, neg_iou=0.4)
    np.testing.assert_array_equal(cls_t, [-1, 1, -1])
    assert num_pos == 1


def test_force_match_small_gt_takes_exactly_its_best_anchor():
    gt = np.array([[0, 20, 2, 22]], np.float32)     # 2x2 in a2's corner: IoU 4/400
    cls_t, _, num_pos = assign_targets(ANCHORS, gt, [3], force_match=False)
    assert num_pos == 0 and (cls_t == -1).all()
    cls_t, box_t, num_pos = assign_targets(ANCHORS, gt, [3])
    np.testing.assert_array_equal(cls_t, [-1, -1, 3])
    assert num_pos == 1
    # a2: centre (30, 10), size 20; GT: centre (21, 1), size 2.
    np.testing.assert_allclose(box_t[2], [-0.45, -0.45, np.log(0.1), np.log(0.1)], rtol=1e-6)
    np.testing.assert_array_equal(box_t[:2], 0)


def test_shared_best_anchor_goes_to_higher_iou_then_lower_index():
    # Both GTs have a2 as best anchor: IoU 36/400 and 16/400.
    g_big, g_small = [0, 20, 6, 26], [0, 20, 4, 24]
    for boxes, classes in (([g_small, g_big], [5, 6]), ([g_big, g_small], [6, 5])):
        cls_t, _, _ = assign_targets(ANCHORS, np.array(boxes, np.float32), classes)
        assert cls_t[2] == 6
    # Equal IoU: the lower GT index wins, both for the forced anchor and for plain argmax.
    twins = np.array([[0, 20, 4, 24], [16, 36, 20, 40]], np.float32)
    assert assign_targets(ANCHORS, twins, [1, 2])[0][2] == 1
    assert assign_targets(ANCHORS, twins[::-1], [2, 1])[0][2] == 2


def test_no_ground_truth_is_all_background():
    for empty in (np.zeros((0, 4), np.float32), []):
        cls_t, box_t, num_pos = assign_targets(ANCHORS, empty, np.zeros(0, np.int64))
        assert num_pos == 0 and (cls_t == -1).all() and not box_t.any()
        assert cls_t.shape == (3,) and box_t.shape == (3, 4)


def test_empty_gt_box_is_never_forced():
    cls_t, box_t, num_pos = assign_targets(ANCHORS, np.array([[5, 5, 5, 15]], np.float32), [0])
    assert num_pos == 0 and (cls_t == -1).all() and np.isfinite(box_t).all()


def test_neg_iou_above_pos_iou_is_rejected():
    with pytest.raises(UserError):
        assign_targets(ANCHORS, np.array([[0, 0, 10, 10]], np.float32), [0], 0.4, 0.5)


def test_iou_matrix_by_hand():
    gt_yxyx = np.array([[0, 5, 10, 25], [20, 0, 40, 20]], np.float32)   # 10x20 across a0 and a1
    np.testing.assert_allclose(iou_matrix(ANCHORS, gt_yxyx),
                               [[50 / 250, 0], [50 / 250, 0], [0, 1]], rtol=1e-6)


def test_encode_decode_round_trip():
    rng = np.random.RandomState(0)
    def boxes(n):
        yx = rng.uniform(0, 500, (n, 2))
        return np.concatenate([yx, yx + rng.uniform(2, 300, (n, 2))], 1)
    anchors, gt_yxyx = boxes(200), boxes(200)
    codes = encode_boxes(anchors, gt_yxyx)
    np.testing.assert_allclose(decode_boxes(anchors, codes), gt_yxyx[:, [1, 0, 3, 2]], atol=1e-9)
    # Batched codes (N, A, 4) decode against shared anchors.
    batched = decode_boxes(anchors, np.stack([codes, np.zeros_like(codes)]))
    np.testing.assert_allclose(batched[1], anchors[:, [1, 0, 3, 2]], atol=1e-9)


def _random_gt(rng, n, size=512):
    xy = rng.uniform(0, size - 40, (n, 2))
    wh = rng.uniform(4, 300, (n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, size)], 1).astype(np.float32)


def test_full_anchor_set_fifty_boxes():
    anchors = generate_anchors((512, 512))
    assert anchors.shape == (49104, 4)
    rng = np.random.RandomState(1)
    gt, classes = _random_gt(rng, 50), rng.randint(0, 90, 50)
    cls_t, box_t, num_pos = assign_targets(anchors, gt, classes)
    pos = np.nonzero(cls_t >= 0)[0]
    assert num_pos == pos.size > 0
    assert set(np.unique(cls_t)) <= set(classes.astype(np.float32)) | {-1.0}
    assert not box_t[cls_t < 0].any()
    # Every positive decodes back to one of the ground truths, with that GT's class.
    dec = decode_boxes(anchors[pos], box_t[pos])
    dist = np.abs(dec[:, None] - gt[None]).max(-1)
    which = dist.argmin(1)
    assert dist.min(1).max() < 1e-2
    np.testing.assert_array_equal(cls_t[pos], classes[which])
    # Every GT with overlap gets at least one anchor unless it lost its best one to another GT.
    best = iou_matrix(gt[:, [1, 0, 3, 2]], anchors).argmax(1)
    assert len(set(which)) >= len(set(best))
    # Deterministic.
    again = assign_targets(anchors, gt, classes)
    np.testing.assert_array_equal(again[0], cls_t)
    np.testing.assert_array_equal(again[1], box_t)


def test_make_target_fn_uses_config():
    cfg = make_config(True, {"DatasetParam.image_size": (128, 128), "AnchorParam.neg_iou": 0.4})
    fn = make_target_fn(cfg)
    anchors = generate_anchors((128, 128))
    gt = anchors[[5, 700]][:, [1, 0, 3, 2]]                    # two anchors, as x1,y1,x2,y2
    out = fn(gt, np.array([2, 9]))
    assert set(out) == {"cls_target", "box_target"}
    assert out["cls_target"].shape == (num_anchors((128, 128)),) and out["box_target"].shape[1] == 4
    assert out["cls_target"].dtype == np.float32 and out["box_target"].dtype == np.float32
    assert out["cls_target"][5] == 2 and out["cls_target"][700] == 9
    assert not out["box_target"][[5, 700]].any()
    assert (out["cls_target"] == -2).any()                     # neg_iou 0.4 opens an ignore band
    with pytest.raises(UserError):
        make_target_fn(make_config(True, {"AnchorParam.neg_iou": 0.6}))
