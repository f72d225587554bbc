"""A synthetic detection dataset: coloured shapes on textured backgrounds, written as COCO.

It is the quickstart dataset, so it must be learnable in minutes on a CPU: every class has its own
shape AND its own saturated colour, backgrounds are muted (low saturation), and boxes are the exact
tight bounds of the drawn pixels. Sizes span small to large (12-120 px at 320, log-uniform skewed
towards the larger end), 1-8 objects per image, with moderate overlap.

Determinism: image i is drawn from RandomState([seed, i]) and written with a fixed JPEG quality, so
the same seed gives byte-identical files regardless of how many images are made.
"""
import json
import os

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle", "cross", "star")
# RGB; far apart in hue so colour alone nearly separates the classes.
COLORS = ((230, 40, 40), (40, 200, 60), (40, 90, 235), (235, 215, 30), (205, 50, 215))
JPEG_QUALITY = 95
MAX_IOU = 0.3           # placement rejects a box overlapping an earlier one more than this ...
MAX_COVER = 0.4         # ... or covering more than this fraction of an earlier box


def _shape_mask(cls, w, h):
    """uint8 (h, w) mask of shape `cls` filling a w x h frame."""
    mask = np.zeros((h, w), np.uint8)
    name = CLASSES[cls]
    if name == "circle":
        cv2.ellipse(mask, (((w - 1) / 2.0, (h - 1) / 2.0), (w, h), 0), 255, -1)
    elif name == "square":
        mask[:] = 255
    elif name == "triangle":
        pts = np.array([[(w - 1) / 2.0, 0], [0, h - 1], [w - 1, h - 1]])
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
    elif name == "cross":
        tw, th = max(2, w // 3), max(2, h // 3)
        mask[:, (w - tw) // 2:(w - tw) // 2 + tw] = 255
        mask[(h - th) // 2:(h - th) // 2 + th, :] = 255
    else:  # five-pointed star, outer radius touching the frame
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([np.cos(angles) * radius, np.sin(angles) * radius], 1)
        pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0)) * [w - 1, h - 1]
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
    return mask


def _background(rng, h, w):
    """Muted texture: a grey-ish base with a gradient plus stripes or blotches, float32 (h, w, 3)."""
    base = rng.uniform(70, 180) + rng.uniform(-15, 15, size=3)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * xx + np.sin(theta) * yy) / max(h, w)
    img = base + rng.uniform(-40, 40) * ramp[..., None]
    kind = rng.randint(3)
    if kind == 0:  # stripes at a random angle and period
        phi = rng.uniform(0, np.pi)
        period = rng.uniform(6, 40)
        wave = np.sin((np.cos(phi) * xx + np.sin(phi) * yy) * 2 * np.pi / period)
        img = img + rng.uniform(10, 30) * wave[..., None]
    elif kind == 1:  # smooth blotches: upsampled coarse noise
        coarse = rng.uniform(-25, 25, size=(8, 8, 3)).astype(np.float32)
        img = img + cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return img.astype(np.float32)


def _overlaps(box, boxes):
    if not boxes:
        return False
    b = np.array(boxes, np.float64)
    iw = np.clip(np.minimum(b[:, 2], box[2]) - np.maximum(b[:, 0], box[0]), 0, None)
    ih = np.clip(np.minimum(b[:, 3], box[3]) - np.maximum(b[:, 1], box[1]), 0, None)
    inter = iw * ih
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    area = (box[2] - box[0]) * (box[3] - box[1])
    iou = inter / (area_b + area - inter)
    return bool((iou > MAX_IOU).any() or (inter / area_b > MAX_COVER).any())


def render_image(rng, size=320, max_objects=8):
    """One image: (RGB uint8 (size, size, 3), boxes float32 (G, 4) x1y1x2y2, classes int32 (G,)).

    Object sizes scale with `size` (12-120 px at 320); boxes are tight bounds of drawn pixels.
    """
    img = _background(rng, size, size)
    lo, hi = 12 * size / 320.0, 120 * size / 320.0
    boxes, classes = [], []
    for _ in range(rng.randint(1, max_objects + 1)):
        cls = rng.randint(len(CLASSES))
        extent = lo * (hi / lo) ** (rng.uniform() ** 0.7)   # median ~49 px at 320
        aspect = np.exp(rng.uniform(np.log(0.75), np.log(1.33)))
        w = int(np.clip(round(extent * np.sqrt(aspect)), 8, size))
        h = int(np.clip(round(extent / np.sqrt(aspect)), 8, size))
        color = np.clip(np.array(COLORS[cls]) + rng.uniform(-20, 20, size=3), 0, 255)
        for _ in range(20):  # rejection sampling for a place with moderate overlap
            x0, y0 = rng.randint(0, size - w + 1), rng.randint(0, size - h + 1)
            mask = _shape_mask(cls, w, h)
            ys, xs = np.nonzero(mask)
            box = [x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1]
            if not _overlaps(box, boxes):
                img[y0:y0 + h, x0:x0 + w][mask > 0] = color
                boxes.append(box)
                classes.append(cls)
                break
    # Pixel noise from raw bytes (uniform, +-8): rng.normal would take most of the time here.
    noise = np.frombuffer(rng.bytes(img.size), np.uint8).reshape(img.shape)
    img += noise.astype(np.float32) * (16 / 255.0) - 8
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int32)


def _coco_doc(records):
    images, anns = [], []
    for image_id, file_name, size, boxes, classes in records:
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for box, cls in zip(boxes.tolist(), classes.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cls + 1,
                         "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
    return {"info": {"description": "synthetic shapes (core/synthetic.py)"}, "images": images,
            "annotations": anns,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"}
                           for i, n in enumerate(CLASSES)]}


def make_synthetic(out_dir, num_images, seed=0, val_fraction=0.2, size=320):
    """Write out_dir/images/*.jpg, out_dir/train.json and out_dir/val.json (COCO).

    The last round(num_images * val_fraction) images form the validation split.
    Returns {"train": path, "val": path, "image_dir": path}.
    """
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    num_val = int(round(num_images * val_fraction))
    splits = {"train": [], "val": []}
    for i in range(num_images):
        rng = np.random.RandomState([seed & 0xFFFFFFFF, i])
        img, boxes, classes = render_image(rng, size)
        file_name = "%06d.jpg" % i
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        with open(os.path.join(image_dir, file_name), "wb") as f:
            f.write(buf.tobytes())
        split = "val" if i >= num_images - num_val else "train"
        splits[split].append((i + 1, file_name, size, boxes, classes))
    out = {"image_dir": image_dir}
    for split, records in splits.items():
        out[split] = os.path.join(out_dir, split + ".json")
        with open(out[split], "w") as f:
            json.dump(_coco_doc(records), f, sort_keys=True)
    return out
