"""Draw detections on images and tile them into one PNG."""
import cv2
import numpy as np

# Distinct BGR colours, cycled by class index.
_PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
            (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
            (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203)]


def draw_detections(image_bgr, boxes, scores, classes, class_names, score_thresh=0.3):
    """Copy of `image_bgr` (H, W, 3) with boxes (K, 4) x1y1x2y2 in its pixels, labelled 'name score'."""
    img = image_bgr.copy()
    thick = max(1, int(round(max(img.shape[:2]) / 400.0)))
    for box, score, cls in zip(boxes, scores, classes):
        if score < score_thresh:
            continue
        color = _PALETTE[int(cls) % len(_PALETTE)]
        x1, y1, x2, y2 = [int(round(v)) for v in box]
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thick)
        name = class_names[int(cls)] if 0 <= int(cls) < len(class_names) else str(int(cls))
        label = "%s %.2f" % (name, score)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, thick)
        top = max(y1, th + base)
        cv2.rectangle(img, (x1, top - th - base), (x1 + tw, top), color, -1)
        cv2.putText(img, label, (x1, top - base), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, (255, 255, 255), thick,
                    cv2.LINE_AA)
    return img


def tile(images, columns=4, cell=320):
    """Images (any sizes) letterboxed into cell x cell tiles, `columns` per row: one (H, W, 3) array."""
    rows = (len(images) + columns - 1) // columns
    out = np.full((rows * cell, columns * cell, 3), 255, np.uint8)
    for i, img in enumerate(images):
        s = cell / float(max(img.shape[:2]))
        small = cv2.resize(img, (max(1, int(img.shape[1] * s)), max(1, int(img.shape[0] * s))))
        r, c = divmod(i, columns)
        out[r * cell:r * cell + small.shape[0], c * cell:c * cell + small.shape[1]] = small
    return out
