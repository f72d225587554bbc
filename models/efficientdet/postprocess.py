"""EfficientDet test-time post-processing as stock MXNet symbols (effdet `_post_process` +
`generate_detections`), so a saved test symbol needs no Python operator and exports to ONNX.

Per image:
1. top-T over all (anchor, class) logits, T = min(TestParam.topk_candidates, A*C). Logits are
   ranked directly (sigmoid is monotonic), so only the T winners see a sigmoid;
2. decode the winners' box codes against their anchors (docs/design.md §3 box coder, no variances)
   to x1, y1, x2, y2 in network-input pixels;
3. per-class NMS, hard (IoU > TestParam.nms_thresh suppresses) or Gaussian soft-NMS (a same-class
   box's score is multiplied by exp(-IoU^2 / TestParam.soft_nms_sigma)), keeping max_det;
4. rows scoring below max(TestParam.score_thresh, 0) become padding, and boxes are divided by
   `im_scale` (N, 1) to get back to the original image. Boxes are not clipped to the image.

Output (N, max_det, 6): x1, y1, x2, y2, score, class (0-based contiguous), best first; a padding
row is -1 in all six fields.

Cost (D0 at 512 has 4.4 M logits; scripts/benchmark_postprocess.py measures each part against
the forward pass):
- flat_predictions runs the heads' shared last 1x1 convolution once over all levels as a
  FullyConnected, which yields the logits already in (anchor, class) order: no transpose or
  concatenation of the wide outputs (MXNet's concat of them is slow on CPU);
- a top-T over the anchors' best logits, then over the T winners' C logits (the pairs of one
  top-T over all 4.4 M logits, at a fraction of its cost: _top_pairs); the winners' anchors are
  computed from their indices (level, y, x, k) by arithmetic, so anchors need no input, parameter or
  constant array: the symbol keeps the inputs `data` and `im_scale` only and survives save/load
  and ONNX export as it is;
- NMS as below. Reductions other than topk/argmax are slow in MXNet on CPU (a 2-element `sum` or
  `prod` costs as much as dozens of adds), so sums and products over small axes are spelled out.

NMS is a greedy selection unrolled max_det times: take the best remaining candidate, emit it, then
suppress or decay the candidates of its class by their IoU with it. The k-th pick of greedy NMS
depends only on the picks before it, so the first max_det picks are exactly the first max_det
survivors of a full NMS over all T candidates (soft-NMS scores only fall, so its picks also come
out best first). That is max_det passes over T boxes, where `contrib.box_nms` is O(T^2) and
exports to ONNX class-agnostic (docs/design.md §2).
"""
import mxnet as mx
import numpy as np

from models.efficientdet.anchors import feature_sizes, level_strides
from models.efficientdet.layers import uses
from utils.config import MAX_RANKED_PAIRS

PAD = -1.0   # every field of a padding row


def _const(values):
    """1-D float32 symbol holding `values` (built from `ones`, which every exporter supports)."""
    return mx.sym.concat(*[mx.sym.ones(shape=(1,)) * float(v) for v in values], dim=0)


def _shared_1x1_input(outputs):
    """Check that `outputs` all come from one 1x1 convolution with bias (shared weights) over
    convolution outputs; return ([per-level inputs], weight name, bias, filters, in channels)."""
    attrs = outputs[0].list_attr()
    parts = [o.get_children() for o in outputs]
    if attrs.get("kernel") != "(1, 1)" or any(len(p) != 3 for p in parts) \
            or len({(p[1].name, p[2].name) for p in parts}) != 1 \
            or "num_filter" not in parts[0][0].list_attr():
        raise ValueError("head outputs %s are not one shared 1x1 convolution with bias"
                         % [o.name for o in outputs])
    return ([p[0] for p in parts], parts[0][1].name, parts[0][2], int(attrs["num_filter"]),
            int(parts[0][0].list_attr()["num_filter"]))


def _flatten_head(outputs, per_anchor):
    data, weight_name, bias, filters, channels = _shared_1x1_input(outputs)
    feats = [mx.sym.transpose(mx.sym.reshape(d, shape=(0, 0, -1)), axes=(0, 2, 1)) for d in data]
    feats = mx.sym.concat(*feats, dim=1) if len(feats) > 1 else feats[0]    # (N, P, channels)
    # The same parameter, with its shape stated: FullyConnected cannot infer (F, ch, 1, 1).
    weight = mx.sym.Variable(weight_name, shape=(filters, channels, 1, 1))
    out = mx.sym.FullyConnected(feats, mx.sym.reshape(weight, shape=(filters, channels)), bias,
                                num_hidden=filters, flatten=False)           # (N, P, K*per_anchor)
    return mx.sym.reshape(out, shape=(0, -1, per_anchor))


def flat_predictions(cls_outputs, box_outputs, num_classes):
    """Per-level head outputs [(N, K*C, H_l, W_l)], [(N, K*4, H_l, W_l)] -> cls_pred (N, A, C)
    and box_pred (N, A, 4) in anchor order (level, y, x, anchor): the values of
    loss.flatten_level_outputs, computed cheaply.

    Each head ends in a 1x1 convolution shared by all levels. Its per-level inputs (64 channels
    for D0) are flattened and concatenated instead, and the 1x1 convolution runs once over all
    positions as a FullyConnected, whose (position, K*C) output is already in anchor order. No
    transpose or concatenation of the K*C-channel outputs is left (MXNet's concat of D0's 4.4 M
    logits is slow on CPU), and the per-level 1x1 convolutions drop out of the graph.
    The FullyConnected takes the convolution's weight as a new variable of the same name with its
    shape stated, so a graph must not use both these outputs and the per-level ones.
    """
    return _flatten_head(cls_outputs, num_classes), _flatten_head(box_outputs, 4)


def _gather(data, index):
    """data (N, M, ...) and index (N, T) -> data[n, index[n, t], ...] as (N, T, ...)."""
    batch = mx.sym.broadcast_like(mx.sym.reshape(mx.sym.contrib.arange_like(index, axis=0),
                                                 shape=(-1, 1)), index)
    return mx.sym.gather_nd(data, mx.sym.stack(batch, index, axis=0))


def _split_index(index, size):
    """Integer-valued float32 index < 2^24 -> (index // size, index % size), both exact; `size` is
    a positive integer, or a symbol of them shaped like `index`.

    index / size = q + r / size lies at least 1 / size below q + 1, while its float32 rounding
    error is at most half an ulp of a number below 2^24 / size, i.e. less than 1 / size: floor
    never rounds up into q + 1.
    """
    quotient = mx.sym.floor(index / size)
    return quotient, index - quotient * size


def _top_pairs(cls_pred, num_anchors, num_classes, topk):
    """Top-`topk` over cls_pred (N, A, C) -> logits, anchor, class (N, T each, float32),
    T = min(topk, A*C), best first.

    Ranked in two exact stages instead of one top-T over all A*C logits: first the T' = min(T, A)
    anchors with the highest best logit, then the top T of their T'*C logits. An anchor holding
    one of the T best pairs is among those T' anchors: every anchor whose best logit beats its own
    holds a pair that beats that pair, and fewer than T pairs do (ties aside). The second top-T
    sees T'*C logits, so flat indices stay exact in float32 (below 2^24) at any image size.
    """
    if topk * num_classes > MAX_RANKED_PAIRS:      # utils/config.validate refuses such configs
        raise ValueError("topk %d * %d classes is not below 2^24" % (topk, num_classes))
    if uses("pool_best_class"):      # oneDNN pooling: several times faster than MXNet's max
        best = mx.sym.reshape(mx.sym.Pooling(mx.sym.expand_dims(cls_pred, axis=1), kernel=(1, num_classes),
                                             pool_type="max"), shape=(0, -1))
    else:                            # ReduceMax in ONNX, which onnxruntime runs faster than MaxPool
        best = mx.sym.max(cls_pred, axis=2)                                  # (N, A)
    anchors = mx.sym.topk(best, axis=1, k=min(topk, num_anchors), ret_typ="indices")  # (N, T')
    rows = mx.sym.reshape(_gather(cls_pred, anchors), shape=(0, -1))         # (N, T' * C)
    logits, index = mx.sym.topk(rows, axis=1, k=min(topk, num_anchors * num_classes), ret_typ="both")
    row, cls = _split_index(index, num_classes)
    return logits, _gather(anchors, row), cls


def select_candidates(cls_pred, box_pred, cfg, topk):
    """Top-`topk` (anchor, class) pairs per image.

    cls_pred (N, A, C) logits and box_pred (N, A, 4) codes in anchor order (flat_predictions).
    Returns logits (N, T), best first, and for each of them rows (N, T, 6) float32 =
    (class, anchor index, yc, xc, h, w) and codes (N, T, 4) = (ty, tx, th, tw).
    The anchors are those of anchors.generate_anchors, computed for the T winners only: the K
    anchors of a cell are octave-major, base = anchor_scale * 2^(o / num_scales),
    h = base * ay * stride_y, w = base * ax * stride_x, centred at ((y + 0.5) * stride_y,
    (x + 0.5) * stride_x), with the per-axis strides of anchors.level_strides.
    """
    a, num_classes = cfg.AnchorParam, cfg.DatasetParam.num_classes
    k_anchors = a.num_scales * len(a.aspect_ratios)
    octaves = [a.scale * 2.0 ** (o / float(a.num_scales)) for o in range(a.num_scales)]
    k_h = _const([b * ay for b in octaves for _, ay in a.aspect_ratios])
    k_w = _const([b * ax for b in octaves for ax, _ in a.aspect_ratios])
    image_size = tuple(cfg.DatasetParam.image_size)
    sizes = feature_sizes(image_size, cfg.NeckParam.max_level)
    levels = range(cfg.NeckParam.min_level, cfg.NeckParam.max_level + 1)
    counts = [sizes[l][0] * sizes[l][1] * k_anchors for l in levels]
    strides = [level_strides(image_size, l) for l in levels]
    logits, anchor, cls = _top_pairs(cls_pred, sum(counts), num_classes, topk)
    # The anchor index runs over (level, y, x, k): its level is the number of later levels whose
    # range starts at or below it, and that level's first index, width and strides are looked up.
    firsts = np.cumsum([0] + counts[:-1]).tolist()
    level_of = mx.sym.zeros_like(anchor)
    for first in firsts[1:]:
        level_of = level_of + (anchor > first - 0.5)                    # integers; ONNX has no >=

    def per_level(values):
        return mx.sym.take(_const(values), level_of)
    cell, k = _split_index(anchor - per_level(firsts), k_anchors)
    y, x = _split_index(cell, per_level([sizes[l][1] for l in levels]))
    sy, sx = per_level([s[0] for s in strides]), per_level([s[1] for s in strides])
    rows = mx.sym.stack(cls, anchor, (y + 0.5) * sy, (x + 0.5) * sx, mx.sym.take(k_h, k) * sy,
                        mx.sym.take(k_w, k) * sx, axis=2)
    return logits, rows, _gather(box_pred, anchor)


def decode(codes, anchors):
    """codes (N, T, 4) ty, tx, th, tw and anchors (N, T, 4) yc, xc, h, w -> (N, T, 4) x1, y1, x2, y2:
    centre = t_yx * hw_a + centre_a, size = exp(t_hw) * hw_a."""
    hw_a = mx.sym.slice_axis(anchors, axis=2, begin=2, end=4)
    centre = mx.sym.slice_axis(codes, axis=2, begin=0, end=2) * hw_a + \
        mx.sym.slice_axis(anchors, axis=2, begin=0, end=2)
    half = mx.sym.exp(mx.sym.slice_axis(codes, axis=2, begin=2, end=4)) * hw_a * 0.5
    # [y2, x2, y1, x1] reversed is [x1, y1, x2, y2].
    return mx.sym.reverse(mx.sym.concat(centre + half, centre - half, dim=2), axis=2)


def greedy_nms(boxes, scores, classes, max_det, nms_type="hard", iou_thresh=0.5, sigma=0.5):
    """Per-class greedy NMS by repeated selection (module docstring).

    boxes (N, T, 4) x1, y1, x2, y2; scores (N, T) in [0, 1]; classes (N, T).
    Returns picks (N, max_det, 6) as (-x1, -y1, x2, y2, class, area) and their scores
    (N, max_det), best first; once every candidate is used up, picks repeat with scores < 0.
    The loop body is ~22 small ops over (N, T) arrays per pick.
    """
    if nms_type not in ("hard", "soft"):
        raise ValueError("unknown TestParam.nms_type '%s' (hard or soft)" % nms_type)
    x1, y1, x2, y2 = mx.sym.split(boxes, num_outputs=4, axis=2)                 # (N, T, 1) each
    area = (x2 - x1) * (y2 - y1)
    # Corners kept as (-x1, -y1) and (x2, y2): broadcast_minimum against a pick gives
    # (-max x1, -max y1) and (min x2, min y2), whose sum is the intersection's width and height.
    packed = mx.sym.concat(-x1, -y1, x2, y2, mx.sym.expand_dims(classes, axis=2), area, dim=2)
    neg_x1y1, x2y2, _ = mx.sym.split(mx.sym.transpose(packed, axes=(0, 2, 1)), num_outputs=3,
                                     axis=1)                                     # (N, 2, T) each
    area = mx.sym.reshape(area, shape=(0, -1))                                  # (N, T)
    batch = mx.sym.reshape(mx.sym.contrib.arange_like(scores, axis=0), shape=(-1, 1))
    position = mx.sym.contrib.arange_like(scores, axis=1)                       # (T,)
    used = mx.sym.ones_like(scores) * PAD
    picks, values = [], []
    s = scores
    for _ in range(max_det):
        # argmax + gather beat topk(k=1) here; both pick the best remaining candidate.
        index = mx.sym.argmax(s, axis=1, keepdims=True)                          # (N, 1)
        at = mx.sym.stack(batch, index, axis=0)
        values.append(mx.sym.gather_nd(s, at))
        pick = mx.sym.gather_nd(packed, at)                                      # (N, 1, 6)
        picks.append(pick)
        p_neg, p_pos, p_rest = mx.sym.split(mx.sym.reshape(pick, shape=(0, 6, 1)), num_outputs=3,
                                            axis=1)                              # (N, 2, 1) each
        wh = mx.sym.relu(mx.sym.broadcast_minimum(neg_x1y1, p_neg)
                         + mx.sym.broadcast_minimum(x2y2, p_pos))               # (N, 2, T)
        w, h = mx.sym.split(wh, num_outputs=2, axis=1, squeeze_axis=True)      # (N, T) each
        inter = w * h
        p_class, p_area = mx.sym.split(p_rest, num_outputs=2, axis=1, squeeze_axis=True)  # (N, 1)
        union = mx.sym.broadcast_add(area, p_area) - inter
        same = mx.sym.broadcast_equal(classes, p_class)
        # The pick is removed explicitly: an empty box has IoU 0 with itself.
        is_pick = mx.sym.broadcast_equal(position, index)
        if nms_type == "hard":
            # IoU > t as inter > t * union: no division, no NaN for empty boxes.
            drop = same * mx.sym.broadcast_greater(inter, union * iou_thresh) + is_pick
            s = mx.sym.where(drop, used, s)
        else:
            iou = inter / mx.sym.maximum(union, 1e-12)
            decay = 1.0 - same * (1.0 - mx.sym.exp(mx.sym.square(iou) * (-1.0 / sigma)))
            s = mx.sym.where(is_pick, used, s * decay)
    return mx.sym.concat(*picks, dim=1), mx.sym.concat(*values, dim=1)


def candidates(cls_pred, box_pred, cfg):
    """The top-T candidates of each image, before NMS (steps 1 and 2 of the module docstring).

    cls_pred (N, A, C) logits and box_pred (N, A, 4) codes in anchor order (flat_predictions or
    loss.flatten_level_outputs). Returns boxes (N, T, 4) x1, y1, x2, y2 in network-input pixels,
    logits (N, T) best first, and classes (N, T) (float32, 0-based).
    """
    logits, rows, codes = select_candidates(cls_pred, box_pred, cfg, int(cfg.TestParam.topk_candidates))
    boxes = decode(codes, mx.sym.slice_axis(rows, axis=2, begin=2, end=6))
    classes = mx.sym.reshape(mx.sym.slice_axis(rows, axis=2, begin=0, end=1), shape=(0, -1))
    return boxes, logits, classes


def postprocess(cls_pred, box_pred, im_scale, cfg, name="detections"):
    """Detections (module docstring) from flattened head outputs.

    cls_pred (N, A, C) logits and box_pred (N, A, 4) codes in anchor order (flat_predictions or
    loss.flatten_level_outputs); im_scale (N, 1) with network input = original image * scale.
    Config: DatasetParam.image_size/num_classes, NeckParam levels, AnchorParam, TestParam.
    Returns the (N, TestParam.max_det, 6) symbol named `name`.
    """
    t = cfg.TestParam
    boxes, logits, classes = candidates(cls_pred, box_pred, cfg)
    picks, scores = greedy_nms(boxes, mx.sym.sigmoid(logits), classes, int(t.max_det), t.nms_type,
                               t.nms_thresh, t.soft_nms_sigma)
    neg_x1y1 = mx.sym.slice_axis(picks, axis=2, begin=0, end=2)
    boxes = mx.sym.concat(-neg_x1y1, mx.sym.slice_axis(picks, axis=2, begin=2, end=4), dim=2)
    boxes = mx.sym.broadcast_div(boxes, mx.sym.reshape(im_scale, shape=(-1, 1, 1)))
    scores = mx.sym.expand_dims(scores, axis=2)
    det = mx.sym.concat(boxes, scores, mx.sym.slice_axis(picks, axis=2, begin=4, end=5), dim=2)
    # Used-up picks score -1: a threshold below 0 must not let them through.
    keep = mx.sym.broadcast_like(1 - (scores < max(float(t.score_thresh), 0.0)), det)
    return mx.sym.where(keep, det, mx.sym.ones_like(det) * PAD, name=name)


def match_detections(ours, reference, score_tol=1e-4):
    """Largest field difference between two detection lists, for parity checks (numpy).

    ours, reference: (D, 6) x1, y1, x2, y2, score, class in the same class convention; rows with
    score < 0 are padding. Each reference row, best first, is paired with an unpaired row of ours
    of the same class whose score is within `score_tol`, the one with the closest box, so rows
    whose scores tie within float noise may come in any order. A row left unpaired counts as inf,
    unless its score is within `score_tol` of the lowest kept score on both sides: a near-tie at
    the max_det cut-off may keep either box.
    """
    ours = ours[ours[:, 4] >= 0]
    reference = reference[reference[:, 4] >= 0]
    free = np.ones(len(ours), bool)
    worst, unpaired = 0.0, []
    for row in reference[np.argsort(-reference[:, 4], kind="stable")]:
        near = np.abs(ours[:, 4] - row[4]) <= score_tol
        cand = np.nonzero(free & near & (ours[:, 5] == row[5]))[0]
        if not len(cand):
            unpaired.append(row[4])
            continue
        best = cand[np.argmin(np.abs(ours[cand, :4] - row[:4]).max(1))]
        free[best] = False
        worst = max(worst, float(np.abs(ours[best] - row).max()))
    unpaired += list(ours[free, 4])
    cut = min(ours[:, 4].min(initial=np.inf), reference[:, 4].min(initial=np.inf))
    if len(ours) != len(reference) or any(s > cut + score_tol for s in unpaired):
        return float("inf")
    return worst
