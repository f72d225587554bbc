"""How well the configured anchors fit a roidb's boxes, and a k-means suggestion that fits better.

All measures are taken on the boxes as the network sees them at evaluation: each image resized by
the eval transform (core.transforms.eval_scale) into DatasetParam.image_size.

- Best possible recall (BPR): the share of ground-truth boxes whose best anchor IoU reaches
  AnchorParam.pos_iou, i.e. that the matcher labels positive without forcing.
- The smallest box the smallest anchor can match: a box inside an anchor, centred, has IoU
  box area / anchor area, so below sqrt(pos_iou) x the anchor's side no anchor reaches pos_iou.
- Suggestion: AnchorParam.aspect_ratios by 1-D k-means of log(h / w) (as many ratios as configured,
  so the head keeps its shape), then AnchorParam.scale by a search of the BPR over [0.5, 32],
  ties broken by the mean best IoU.

The best IoU of a box is exact and cheap: the anchors of one level and one shape sit on a grid,
and the overlap of two axis-aligned boxes shrinks with the distance of their centres along each
axis on its own, so the anchor whose centre is nearest the box's, per axis, has the highest IoU of
its (level, shape). That is L x K IoUs per box instead of one per anchor (49k at 512).
"""
import logging

import numpy as np

from core.roidb import roidb_stats
from core.transforms import eval_scale
from models.efficientdet.anchors import feature_sizes, generate_anchors

logger = logging.getLogger(__name__)

WARN_BPR = 0.98
SEARCH_BOXES = 10000


def input_boxes(roidb, image_size, max_boxes=None, seed=0):
    """Every ground-truth box of `roidb` at the network input after the eval resize, as float64
    (N, 4) x1, y1, x2, y2, and the class of each (N,) int. With `max_boxes`, a random subset of at
    most that many boxes (fixed seed)."""
    counts = np.array([len(r["boxes"]) for r in roidb], np.int64)
    if not counts.sum():
        return np.zeros((0, 4)), np.zeros(0, np.int64)
    scales = eval_scale([r["height"] for r in roidb], [r["width"] for r in roidb], image_size)
    boxes = np.concatenate([r["boxes"] for r in roidb]).astype(np.float64) * np.repeat(scales, counts)[:, None]
    classes = np.concatenate([r["classes"] for r in roidb]).astype(np.int64)
    if max_boxes and len(boxes) > max_boxes:
        keep = np.sort(np.random.RandomState(seed).choice(len(boxes), max_boxes, replace=False))
        boxes, classes = boxes[keep], classes[keep]
    return boxes, classes


def anchor_grids(image_size, min_level, max_level, num_scales, aspect_ratios, scale):
    """Per level, the anchors of models.efficientdet.anchors.generate_anchors as a grid:
    [(centres y (fh,), centres x (fw,), anchors (fh, fw, K, 4) y1, x1, y2, x2)]."""
    anchors = generate_anchors(tuple(image_size), min_level, max_level, num_scales, aspect_ratios,
                               scale).astype(np.float64)
    k = num_scales * len(aspect_ratios)
    sizes, grids, start = feature_sizes(tuple(image_size), max_level), [], 0
    for level in range(min_level, max_level + 1):
        fh, fw = sizes[level]
        block = anchors[start:start + fh * fw * k].reshape(fh, fw, k, 4)
        start += fh * fw * k
        grids.append(((block[:, 0, 0, 0] + block[:, 0, 0, 2]) / 2, (block[0, :, 0, 1] + block[0, :, 0, 3]) / 2,
                      block))
    return grids


def _nearest(centres, values):
    """Index of the centre nearest each value (centres sorted ascending)."""
    i = np.clip(np.searchsorted(centres, values), 1, max(len(centres) - 1, 1))
    lower = np.clip(i - 1, 0, len(centres) - 1)
    upper = np.minimum(i, len(centres) - 1)
    return np.where(np.abs(values - centres[lower]) <= np.abs(centres[upper] - values), lower, upper)


def best_anchor_iou(boxes, grids):
    """Highest IoU of each box (N, 4) x1, y1, x2, y2 with any anchor of `grids` (anchor_grids) -> (N,)."""
    best = np.zeros(len(boxes))
    if not len(boxes):
        return best
    cy, cx = (boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for ys, xs, block in grids:
        a = block[_nearest(ys, cy), _nearest(xs, cx)]                 # (N, K, 4) y1, x1, y2, x2
        ih = np.minimum(a[..., 2], boxes[:, 3:4]) - np.maximum(a[..., 0], boxes[:, 1:2])
        iw = np.minimum(a[..., 3], boxes[:, 2:3]) - np.maximum(a[..., 1], boxes[:, 0:1])
        inter = np.clip(ih, 0, None) * np.clip(iw, 0, None)
        union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + area[:, None] - inter
        best = np.maximum(best, (inter / np.maximum(union, 1e-12)).max(1))
    return best


def anchor_settings(cfg):
    """The anchor settings of a config as a dict (the keyword arguments of fit())."""
    a = cfg.AnchorParam
    return {"image_size": tuple(cfg.DatasetParam.image_size), "min_level": cfg.NeckParam.min_level,
            "max_level": cfg.NeckParam.max_level, "num_scales": a.num_scales,
            "aspect_ratios": tuple(tuple(float(v) for v in p) for p in a.aspect_ratios), "scale": float(a.scale)}


def fit(boxes, pos_iou, image_size, min_level, max_level, num_scales, aspect_ratios, scale):
    """{"bpr", "mean_iou", "smallest_anchor", "min_matchable", "too_small"} of boxes (N, 4) at the
    input size: BPR and mean best IoU (module docstring), the side (sqrt of the area) of the
    smallest anchor, the least box side it can match at pos_iou, and how many boxes are smaller."""
    grids = anchor_grids(image_size, min_level, max_level, num_scales, aspect_ratios, scale)
    best = best_anchor_iou(boxes, grids)
    # every grid position holds the same K shapes: the first one's are all the sizes there are
    smallest = min(float(np.sqrt(((b[0, 0, :, 2] - b[0, 0, :, 0]) * (b[0, 0, :, 3] - b[0, 0, :, 1])).min()))
                   for _, _, b in grids)
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    floor = smallest * np.sqrt(pos_iou)
    return {"bpr": float((best >= pos_iou).mean()) if len(best) else 1.0,
            "mean_iou": float(best.mean()) if len(best) else 1.0,
            "smallest_anchor": smallest, "min_matchable": float(floor), "too_small": int((side < floor).sum())}


def kmeans_1d(values, k, iters=100):
    """Lloyd's k-means of 1-D `values` -> k sorted centres, started at the quantiles."""
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        label = np.abs(values[:, None] - centres[None]).argmin(1)
        new = np.array([values[label == j].mean() if (label == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def kmeans_aspect_ratios(boxes, k):
    """k (x, y) anchor aspect pairs with x * y = 1 from k-means of log(h / w), rounded to 0.01,
    square first when one of them rounds to (1, 1)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    centres = kmeans_1d(np.log(h / w), k)
    pairs = [(round(float(np.exp(-c / 2)), 2), round(float(np.exp(c / 2)), 2)) for c in centres]
    return tuple(sorted(pairs, key=lambda p: p != (1.0, 1.0)))


def suggest(boxes, pos_iou, settings):
    """The anchors that fit `boxes` (N, 4) best: {"aspect_ratios", "scale", **fit()} for the
    k-means aspect ratios or the configured ones (whichever fits better) with the best scale in
    [0.5, 32] (searched in quarter octaves, then sixteenths around the best; rounded to 0.01) on
    at most SEARCH_BOXES of the boxes, measured on all; `settings` as from anchor_settings()."""
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    search = boxes
    if len(boxes) > SEARCH_BOXES:       # the search runs ~60 fits: on a fixed subset, the answer on all
        search = boxes[np.random.RandomState(0).choice(len(boxes), SEARCH_BOXES, replace=False)]
    results = {}

    def score(aspects, log2_scale):
        scale = round(float(2.0 ** log2_scale), 2)
        if (aspects, scale) not in results:
            f = fit(search, pos_iou, **dict(settings, aspect_ratios=aspects, scale=scale))
            key = (round(f["bpr"], 6), f["mean_iou"])
            results[aspects, scale] = (key, dict(f, aspect_ratios=aspects, scale=scale))
        return results[aspects, scale]

    for aspects in (kmeans_aspect_ratios(boxes, len(settings["aspect_ratios"])), settings["aspect_ratios"]):
        coarse = max(np.arange(-4, 21) / 4.0, key=lambda e: score(aspects, e)[0])
        for e in coarse + np.arange(-3, 4) / 16.0:
            score(aspects, e)
    best = max(results.values(), key=lambda r: r[0])[1]
    return dict(best, **fit(boxes, pos_iou, **dict(settings, aspect_ratios=best["aspect_ratios"], scale=best["scale"])))


def suggestion_sets(suggestion):
    """The suggestion as `Class.field=value` items, as `--set` takes them."""
    aspects = "(%s)" % ", ".join("(%g, %g)" % p for p in suggestion["aspect_ratios"])
    return ["AnchorParam.scale=%g" % suggestion["scale"], "AnchorParam.aspect_ratios=%s" % aspects]


def set_line(suggestion):
    """The suggestion as `--set` arguments for any entry script."""
    return " ".join('--set "%s"' % item for item in suggestion_sets(suggestion))


def data_summary(cfg, roidb, categories, max_boxes=5000):
    """(one summary line, warning line or None) for the start of training: images, boxes, classes,
    box sides at the input size and the anchor fit, on at most `max_boxes` boxes."""
    boxes, _ = input_boxes(roidb, cfg.DatasetParam.image_size, max_boxes)
    stats = roidb_stats(roidb, categories)
    rare = min(stats["per_class"], key=stats["per_class"].get)
    line = "data: %d images (%d without boxes), %d boxes in %d classes (fewest: %s=%d)" % (
        stats["images"], stats["empty_images"], stats["boxes"], len(categories), rare, stats["per_class"][rare])
    if not len(boxes):
        return line, None
    pos_iou = float(cfg.AnchorParam.pos_iou)
    f = fit(boxes, pos_iou, **anchor_settings(cfg))
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    line += "; box side %.0f-%.0f px (median %.0f) at %dx%d; anchor fit: best possible recall %.3f at IoU %g%s" % (
        side.min(), side.max(), np.median(side), cfg.DatasetParam.image_size[0], cfg.DatasetParam.image_size[1],
        f["bpr"], pos_iou, " (%d sampled boxes)" % len(boxes) if stats["boxes"] > len(boxes) else "")
    warning = None
    if f["bpr"] < WARN_BPR:
        warning = ("anchor fit: only %.1f%% of the boxes reach IoU %g with an anchor (best possible recall "
                   "below %g; %.1f%% are smaller than the %.1f px the smallest anchor can match); "
                   "scripts/analyze_data.py with this config suggests AnchorParam values"
                   % (100 * f["bpr"], pos_iou, WARN_BPR, 100.0 * f["too_small"] / len(boxes), f["min_matchable"]))
    return line, warning


def log_data_summary(cfg, roidb, categories):
    """Log data_summary(): the line as info, the warning (best possible recall < 0.98) as a warning."""
    line, warning = data_summary(cfg, roidb, categories)
    logger.info("%s", line)
    if warning:
        logger.warning("%s", warning)
