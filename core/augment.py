"""Sample-mixing augmentations: Mosaic, MixUp, CutMix and paste-in, applied before DetTransform.

They work on whole source images, so DetTransform's flip / scale jitter / crop then treats the mixed
image like any other. Pure functions take and return (img, boxes, classes):
img RGB uint8 (h, w, 3), boxes float (G, 4) x1y1x2y2 in its pixels (edges at integers), classes
int32 (G,). Boxes always follow the pixels: a box cut by a region boundary is clipped to what stays
visible, and dropped if thinner than `min_size` px or left with less than `min_visible` of its area.

- mosaic: 4 images in a 2x2 around a centre (YOLOv4/v5). Each image is scaled to fit the canvas
  (the first image's size) and placed with one corner at the centre, so objects keep the scale they
  would have alone; canvas left uncovered is grey 114.
- mixup: ratio * a + (1 - ratio) * b, with b resized to a's size. Both box sets are kept with full
  labels, as YOLOv5/YOLOX do: the targets assign one hard class per anchor, so there is no soft
  label weight to carry the ratio (which Beta(32, 32) keeps near 0.5 anyway).
- cutmix: a rectangle of b (resized to a's size) replaces the same rectangle of a; a's boxes lose
  the covered part, b's boxes are clipped to the rectangle.
- paste: an RGB patch with alpha blended in at (x, y), optionally labelled; boxes under the patch's
  rectangle lose the covered part (the rectangle counts as opaque).

core/mixing.py draws the other samples and every parameter from the loader's per-sample RNG.
"""
import cv2
import numpy as np

FILL = 114                # mosaic background, as YOLOv5


def filter_boxes(boxes, classes, area, min_size, min_visible):
    """Keep boxes at least min_size px wide and high with >= min_visible of `area` (their area
    before cutting) left. Returns (float32 (G', 4), int32 (G',))."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (w >= min_size) & (h >= min_size) & (w * h >= min_visible * np.maximum(area, 1e-6))
    return boxes[keep].astype(np.float32), classes[keep].astype(np.int32)


def clip_to(boxes, rect):
    """Boxes (G, 4) clipped to rect (x1, y1, x2, y2) -> (clipped (G, 4), original areas (G,))."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    x1, y1, x2, y2 = rect
    return np.stack([np.clip(boxes[:, 0], x1, x2), np.clip(boxes[:, 1], y1, y2),
                     np.clip(boxes[:, 2], x1, x2), np.clip(boxes[:, 3], y1, y2)], 1), area


def minus_rect(boxes, rect):
    """Bounding boxes of what each box keeps outside rect -> (boxes (G, 4), visible areas (G,)).

    The remainder's extent along x shrinks only when rect spans the box along y and covers one of
    its x ends (and the other way round); a rect spanning both ways leaves an empty box.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    rx1, ry1, rx2, ry2 = rect
    iw = np.clip(np.minimum(b[:, 2], rx2) - np.maximum(b[:, 0], rx1), 0, None)
    ih = np.clip(np.minimum(b[:, 3], ry2) - np.maximum(b[:, 1], ry1), 0, None)
    visible = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - iw * ih
    span_x, span_y = (rx1 <= b[:, 0]) & (rx2 >= b[:, 2]), (ry1 <= b[:, 1]) & (ry2 >= b[:, 3])
    for lo, hi, r_lo, r_hi, span in ((0, 2, rx1, rx2, span_y), (1, 3, ry1, ry2, span_x)):
        cut = span & (iw * ih > 0)
        left = cut & (r_lo <= b[:, lo])
        right = cut & (r_hi >= b[:, hi])
        b[left, lo] = np.minimum(r_hi, b[left, hi])
        b[right, hi] = np.maximum(r_lo, b[right, lo])
    return b, visible


def _occlude(boxes, classes, rect, min_size, min_visible):
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(0)
    cut, _ = minus_rect(boxes, rect)
    return filter_boxes(cut, np.asarray(classes), area, min_size, min_visible)


def _resize_to(img, boxes, w, h):
    """img resized to exactly (h, w) and its boxes scaled along (the aspect may change)."""
    sx, sy = w / img.shape[1], h / img.shape[0]
    out = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR) if (sx, sy) != (1, 1) else img
    return out, np.asarray(boxes, np.float64).reshape(-1, 4) * [sx, sy, sx, sy]


def mosaic(parts, centre, min_size=2.0, min_visible=0.25):
    """parts: 4 (img, boxes, classes), placed top-left, top-right, bottom-left, bottom-right of the
    integer centre (cx, cy) on a canvas of parts[0]'s size. Returns (img, boxes, classes)."""
    h, w = parts[0][0].shape[:2]
    cx, cy = centre
    canvas = np.full((h, w, 3), FILL, np.uint8)
    all_boxes, all_classes = [], []
    for q, (img, boxes, classes) in enumerate(parts):
        s = min(h / img.shape[0], w / img.shape[1])
        pw, ph = max(1, int(round(img.shape[1] * s))), max(1, int(round(img.shape[0] * s)))
        img, boxes = _resize_to(img, boxes, pw, ph)
        x0 = cx - pw if q in (0, 2) else cx            # the corner touching the centre
        y0 = cy - ph if q in (0, 1) else cy
        quad = ((0, cx)[q % 2], (0, cy)[q // 2], (cx, w)[q % 2], (cy, h)[q // 2])
        # the part of the placed image that lands inside its quadrant
        rx1, ry1 = max(quad[0], x0), max(quad[1], y0)
        rx2, ry2 = min(quad[2], x0 + pw), min(quad[3], y0 + ph)
        if rx2 <= rx1 or ry2 <= ry1:
            continue
        canvas[ry1:ry2, rx1:rx2] = img[ry1 - y0:ry2 - y0, rx1 - x0:rx2 - x0]
        clipped, area = clip_to(boxes + [x0, y0, x0, y0], (rx1, ry1, rx2, ry2))
        kept = filter_boxes(clipped, np.asarray(classes), area, min_size, min_visible)
        all_boxes.append(kept[0])
        all_classes.append(kept[1])
    return (canvas, np.concatenate(all_boxes or [np.zeros((0, 4), np.float32)]),
            np.concatenate(all_classes or [np.zeros(0, np.int32)]))


def mixup(a, b, ratio):
    """ratio * a + (1 - ratio) * b (b resized to a's size); both box sets kept."""
    img_a, boxes_a, classes_a = a
    h, w = img_a.shape[:2]
    img_b, boxes_b = _resize_to(b[0], b[1], w, h)
    img = cv2.addWeighted(img_a, ratio, img_b, 1.0 - ratio, 0.0)
    return (img, np.concatenate([np.asarray(boxes_a, np.float32).reshape(-1, 4), boxes_b.astype(np.float32)]),
            np.concatenate([np.asarray(classes_a, np.int32), np.asarray(b[2], np.int32)]))


def cutmix(a, b, rect, min_size=2.0, min_visible=0.25):
    """a with the integer rect (x1, y1, x2, y2) taken from b (resized to a's size)."""
    img_a, boxes_a, classes_a = a
    h, w = img_a.shape[:2]
    img_b, boxes_b = _resize_to(b[0], b[1], w, h)
    x1, y1, x2, y2 = rect
    img = img_a.copy()
    img[y1:y2, x1:x2] = img_b[y1:y2, x1:x2]
    kept_a = _occlude(np.asarray(boxes_a, np.float64).reshape(-1, 4), classes_a, rect, min_size, min_visible)
    clipped, area = clip_to(boxes_b, rect)
    kept_b = filter_boxes(clipped, np.asarray(b[2]), area, min_size, min_visible)
    return img, np.concatenate([kept_a[0], kept_b[0]]), np.concatenate([kept_a[1], kept_b[1]])


def paste(target, patch, alpha, xy, label=None, min_size=2.0, min_visible=0.25):
    """Blend patch (ph, pw, 3) with alpha float (ph, pw) in [0, 1] at integer xy = (x, y), inside
    the image. With label (a class index) the patch's rectangle becomes a box."""
    img, boxes, classes = target
    ph, pw = patch.shape[:2]
    x, y = xy
    rect = (x, y, x + pw, y + ph)
    img = img.copy()
    region = img[y:y + ph, x:x + pw].astype(np.float32)
    a = alpha[..., None].astype(np.float32)
    img[y:y + ph, x:x + pw] = np.clip(a * patch + (1 - a) * region + 0.5, 0, 255).astype(np.uint8)
    boxes, classes = _occlude(np.asarray(boxes, np.float64).reshape(-1, 4), classes, rect, min_size, min_visible)
    if label is not None:
        boxes = np.concatenate([boxes, np.array([rect], np.float32)])
        classes = np.concatenate([classes, np.array([label], np.int32)])
    return img, boxes, classes
