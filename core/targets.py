"""Anchor targets for EfficientDet training (numpy, one image at a time), and the box coder.

Matching follows automl's ArgMaxMatcher with `force_match_for_each_row`:
- every anchor takes its highest-IoU ground truth (ties: the lowest GT index);
- IoU >= pos_iou is positive, IoU < neg_iou is background (-1), anything between is ignored (-2);
- then each ground truth is forced onto its best anchor (ties over anchors: the lowest anchor
  index), whatever that IoU is, overriding the threshold result. When several ground truths pick
  the same anchor, the one with the highest IoU with it wins (ties: the lowest GT index). automl
  gives such an anchor to the lowest GT index regardless of IoU; the two rules differ only when
  ground truths share their best anchor. A ground truth whose best IoU is 0 (an empty box, or one
  outside the image) is never forced, so it cannot produce an infinite log-size target.

Box coder (automl / effdet, no variances), with centres and sizes from (y1, x1, y2, x2):
ty = (yc - yca) / ha, tx = (xc - xca) / wa, th = log(h / ha), tw = log(w / wa).
"""
import numpy as np

from models.efficientdet.anchors import generate_anchors
from utils.errors import UserError

BACKGROUND = -1.0
IGNORE = -2.0


def _centre_size(boxes_yxyx):
    """(..., 4) y1,x1,y2,x2 -> yc, xc, h, w, each (...)."""
    y1, x1, y2, x2 = np.moveaxis(boxes_yxyx, -1, 0)
    h, w = y2 - y1, x2 - x1
    return y1 + 0.5 * h, x1 + 0.5 * w, h, w


def iou_matrix(boxes_a, boxes_b):
    """IoU of (M, 4) against (K, 4) boxes, both y1,x1,y2,x2 -> (M, K) float32.

    Pass the long list (the anchors) second: its coordinates then run contiguously along rows,
    which is several times faster than the transpose for 440k anchors. Built in place on three
    (M, K) buffers.
    """
    ay1, ax1, ay2, ax2 = (c[:, None] for c in np.asarray(boxes_a, np.float32).T)
    by1, bx1, by2, bx2 = np.ascontiguousarray(np.asarray(boxes_b, np.float32).T)
    ih = np.minimum(ay2, by2)
    ih -= np.maximum(ay1, by1)
    np.maximum(ih, 0, out=ih)
    iw = np.minimum(ax2, bx2)
    iw -= np.maximum(ax1, bx1)
    np.maximum(iw, 0, out=iw)
    ih *= iw                                   # ih is now the intersection
    np.add((ay2 - ay1) * (ax2 - ax1), (by2 - by1) * (bx2 - bx1), out=iw)
    iw -= ih                                   # iw is now the union
    # Two empty boxes have union 0; keep their IoU at 0 rather than NaN.
    np.maximum(iw, np.finfo(np.float32).tiny, out=iw)
    ih /= iw
    return ih


def encode_boxes(anchors_yxyx, boxes_yxyx):
    """Box coder: (..., 4) anchors and matched boxes, both y1,x1,y2,x2 -> (..., 4) ty,tx,th,tw."""
    yca, xca, ha, wa = _centre_size(anchors_yxyx)
    yc, xc, h, w = _centre_size(boxes_yxyx)
    return np.stack([(yc - yca) / ha, (xc - xca) / wa, np.log(h / ha), np.log(w / wa)], -1)


def decode_boxes(anchors_yxyx, rel_codes):
    """Inverse of the coder: anchors (A, 4) y1,x1,y2,x2 and codes (..., A, 4) ty,tx,th,tw
    -> boxes (..., A, 4) x1,y1,x2,y2 (float32 for float32 inputs)."""
    yca, xca, ha, wa = _centre_size(anchors_yxyx)
    ty, tx, th, tw = np.moveaxis(rel_codes, -1, 0)
    yc, xc = ty * ha + yca, tx * wa + xca
    h, w = np.exp(th) * ha, np.exp(tw) * wa
    return np.stack([xc - 0.5 * w, yc - 0.5 * h, xc + 0.5 * w, yc + 0.5 * h], -1)


def assign_targets(anchors_yxyx, gt_boxes_xyxy, gt_classes, pos_iou=0.5, neg_iou=0.5,
                   force_match=True):
    """Match anchors to ground truths (rules in the module docstring) and encode targets.

    anchors_yxyx (A, 4) y1,x1,y2,x2; gt_boxes_xyxy (G, 4) x1,y1,x2,y2 in the same pixel frame;
    gt_classes (G,) int, 0-based. G may be 0.
    Returns cls_target (A,) float32 (class id for positives, -1 background, -2 ignore),
    box_target (A, 4) float32 (coder output for positives, 0 elsewhere) and num_pos (int).
    """
    if neg_iou > pos_iou:
        raise UserError("anchor matching needs neg_iou <= pos_iou, got neg_iou=%g > pos_iou=%g"
                        % (neg_iou, pos_iou))
    num_anchors = anchors_yxyx.shape[0]
    cls_target = np.full(num_anchors, BACKGROUND, np.float32)
    box_target = np.zeros((num_anchors, 4), np.float32)
    gt = np.asarray(gt_boxes_xyxy, np.float32).reshape(-1, 4)
    if gt.shape[0] == 0:
        return cls_target, box_target, 0
    gt_yxyx = gt[:, [1, 0, 3, 2]]
    iou = iou_matrix(gt_yxyx, anchors_yxyx)              # (G, A)

    match = iou.argmax(0)                                # per anchor; ties -> lowest GT index
    best = iou[match, np.arange(num_anchors)]
    match[best < neg_iou] = -1
    match[(best >= neg_iou) & (best < pos_iou)] = -2

    if force_match:
        gt_best = iou.argmax(1)                          # per GT; ties -> lowest anchor index
        gt_best_iou = iou[np.arange(gt.shape[0]), gt_best]
        cand = np.nonzero(gt_best_iou > 0)[0]
        # Sort forcing GTs by (anchor, -IoU, GT index) and keep the first per anchor.
        order = np.lexsort((cand, -gt_best_iou[cand], gt_best[cand]))
        cand = cand[order]
        anchors_hit, first = np.unique(gt_best[cand], return_index=True)
        match[anchors_hit] = cand[first]

    pos = np.nonzero(match >= 0)[0]
    cls_target[match == -2] = IGNORE
    cls_target[pos] = np.asarray(gt_classes).reshape(-1)[match[pos]]
    box_target[pos] = encode_boxes(anchors_yxyx[pos], gt_yxyx[match[pos]])
    return cls_target, box_target, int(pos.size)


def make_target_fn(cfg):
    """Target function for the loader, built from `cfg` (DatasetParam.image_size, NeckParam levels,
    AnchorParam). Returns f(boxes (G, 4) x1,y1,x2,y2 in network-input pixels, classes (G,) 0-based)
    -> {"cls_target": (A,) float32, "box_target": (A, 4) float32}."""
    ap = cfg.AnchorParam
    anchors = generate_anchors(cfg.DatasetParam.image_size, cfg.NeckParam.min_level,
                               cfg.NeckParam.max_level, ap.num_scales, ap.aspect_ratios, ap.scale)
    pos_iou, neg_iou, force = float(ap.pos_iou), float(ap.neg_iou), bool(ap.force_match)
    if neg_iou > pos_iou:   # fail at build time, not in a loader worker
        raise UserError("AnchorParam.neg_iou (%g) must not exceed AnchorParam.pos_iou (%g)"
                        % (neg_iou, pos_iou))

    def target_fn(boxes, classes):
        cls_t, box_t, _ = assign_targets(anchors, boxes, classes, pos_iou, neg_iou, force)
        return {"cls_target": cls_t, "box_target": box_t}

    return target_fn
