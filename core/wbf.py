"""Weighted boxes fusion (Solovyev et al., `ensemble_boxes.weighted_boxes_fusion`) of detection
lists for one image: test-time augmentation views or the members of a K-fold ensemble.

A fused box is the score-weighted mean of the same-class boxes that overlap it by IoU > iou_thr,
and its score (conf_type "avg") is their mean score times min(#boxes, #models) / #models, so a
box that only some of the lists found comes out weaker.
"""
import numpy as np
from ensemble_boxes import weighted_boxes_fusion

CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


def fuse(per_model_dets, image_hw, weights=None, iou_thr=0.55, skip_box_thr=0.0, conf_type="avg"):
    """Fuse one image's detection lists.

    per_model_dets: list of (K_i, 6) arrays x1, y1, x2, y2 (original pixels), score, class
        (0-based); rows with score < 0 or class < 0 are padding and are ignored.
    image_hw: (height, width) of the original image; boxes are clipped to it.
    weights: one weight per list (None = all 1).
    Returns (K, 6) float32 in the same layout, best first, boxes inside the image.
    """
    if conf_type not in CONF_TYPES:
        # ensemble_boxes would print and call exit() instead of raising.
        raise ValueError("unknown WBF conf_type '%s' (one of %s)" % (conf_type, ", ".join(CONF_TYPES)))
    if weights is not None and len(weights) != len(per_model_dets):
        raise ValueError("%d WBF weights for %d detection lists" % (len(weights), len(per_model_dets)))
    h, w = float(image_hw[0]), float(image_hw[1])
    size = np.array([w, h, w, h])
    boxes, scores, labels = [], [], []
    for det in per_model_dets:
        det = np.asarray(det, np.float64).reshape(-1, 6)
        det = det[(det[:, 4] >= 0) & (det[:, 5] >= 0)]
        norm = np.clip(det[:, :4] / size, 0.0, 1.0)
        # Boxes empty after clipping would each cost ensemble_boxes a warning line; drop them here.
        keep = (norm[:, 2] > norm[:, 0]) & (norm[:, 3] > norm[:, 1])
        boxes.append(norm[keep])
        scores.append(det[keep, 4])
        labels.append(det[keep, 5])
    fused, fused_scores, fused_labels = weighted_boxes_fusion(
        boxes, scores, labels, weights=weights, iou_thr=iou_thr, skip_box_thr=skip_box_thr,
        conf_type=conf_type)
    out = np.concatenate([np.asarray(fused, np.float64).reshape(-1, 4) * size,
                          np.asarray(fused_scores, np.float64).reshape(-1, 1),
                          np.asarray(fused_labels, np.float64).reshape(-1, 1)], axis=1)
    return out.astype(np.float32)
