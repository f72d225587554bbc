"""MixStep: the training-time step of core/augment.py's Mosaic, MixUp, CutMix and paste-in.

It is the step before DetTransform in the pipeline (core/pipeline.py). The other samples (random
roidb indices), the coins and every parameter come from the loader's per-sample RNG
(core/loader.py), so mixed batches stay deterministic whatever the number of workers. The mixed
image goes on to DetTransform as record["pixels"], so flip, scale jitter, crop and colour jitter
then apply to it as to any image.
"""
import os

import cv2
import numpy as np

from core.augment import cutmix, mixup, mosaic, paste
from core.image_io import ImageReadError, read_record_image
from utils.errors import UserError

MAX_OVERLAP = 0.2         # a paste may cover at most this fraction of a box (and vice versa)
PLACEMENT_TRIES = 10      # random places tried per patch before it is skipped


def _overlap_ok(rect, boxes):
    """The patch rect covers at most MAX_OVERLAP of every box, and no box covers more of it."""
    if not len(boxes):
        return True
    iw = np.clip(np.minimum(boxes[:, 2], rect[2]) - np.maximum(boxes[:, 0], rect[0]), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], rect[3]) - np.maximum(boxes[:, 1], rect[1]), 0, None)
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
    patch_area = (rect[2] - rect[0]) * (rect[3] - rect[1])
    return bool((iw * ih <= MAX_OVERLAP * area).all() and (iw * ih <= MAX_OVERLAP * patch_area).all())


def load_patches(folder):
    """RGBA/RGB/grey images of `folder` -> [(RGB uint8 (h, w, 3), alpha float32 (h, w))], each
    cropped to its opaque part. Read once: patches are small and reused by every sample."""
    if not os.path.isdir(folder):
        raise UserError("DatasetParam.paste_dir %s is not a folder" % folder)
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".webp")))
    if not names:
        raise UserError("DatasetParam.paste_dir %s holds no images" % folder)
    patches = []
    for name in names:
        raw = cv2.imread(os.path.join(folder, name), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.dtype != np.uint8:
            raise UserError("cannot read patch %s as an 8-bit image" % os.path.join(folder, name))
        raw = raw[..., None] if raw.ndim == 2 else raw
        alpha = raw[..., 3].astype(np.float32) / 255.0 if raw.shape[2] == 4 else np.ones(raw.shape[:2], np.float32)
        rgb = cv2.cvtColor(np.ascontiguousarray(raw[..., :3]), cv2.COLOR_BGR2RGB) if raw.shape[2] >= 3 \
            else np.repeat(raw, 3, axis=2)
        ys, xs = np.nonzero(alpha > 0)
        if not len(xs):
            raise UserError("patch %s is fully transparent" % os.path.join(folder, name))
        box = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
        patches.append((np.ascontiguousarray(rgb[box]), np.ascontiguousarray(alpha[box])))
    return patches


class MixStep:
    """Callable `(record, rng) -> record`: mixes other roidb records into `record` (see the module
    docstring). A mixed record carries "pixels" (RGB uint8 (h, w, 3)) with its boxes, classes, width
    and height; a record that nothing was mixed into comes back as it was.

    Per sample the draws come in a fixed order, mosaic, mixup, cutmix, paste, each coin drawn only
    when its probability is above 0; a sample therefore depends on its RNG alone. An unreadable
    secondary image skips that augmentation (the loader reports it when it is a sample itself).
    """

    def __init__(self, roidb, num_classes, mosaic_prob=0.0, mixup_prob=0.0, mixup_alpha=32.0,
                 cutmix_prob=0.0, paste_prob=0.0, paste_dir="", paste_as_objects=True, paste_class=-1,
                 paste_max=3, paste_scale=(0.5, 1.5), min_box_size=2.0, min_visible=0.25):
        probs = dict(mosaic_prob=mosaic_prob, mixup_prob=mixup_prob, cutmix_prob=cutmix_prob, paste_prob=paste_prob)
        for name, p in probs.items():
            if not 0.0 <= p <= 1.0:
                raise UserError("DatasetParam.%s must be in [0, 1], got %r" % (name, p))
        if mixup_alpha <= 0 or paste_max < 1 or not 0 < paste_scale[0] <= paste_scale[1]:
            raise UserError("need DatasetParam.mixup_alpha > 0, paste_max >= 1 and 0 < paste_scale[0] <= "
                            "paste_scale[1]; got %r, %r, %r" % (mixup_alpha, paste_max, paste_scale))
        self.patches = load_patches(paste_dir) if paste_prob and paste_dir else None
        if paste_prob and not paste_dir and not paste_as_objects:
            raise UserError("distractors (paste_as_objects = False) need DatasetParam.paste_dir: unlabelled "
                            "crops of the dataset's own objects would teach the model to ignore them")
        if self.patches and paste_as_objects and not 0 <= paste_class < num_classes:
            raise UserError("pasting paste_dir patches as objects needs DatasetParam.paste_class in 0..%d, "
                            "got %d" % (num_classes - 1, paste_class))
        self.roidb = roidb
        self.mosaic_prob, self.mixup_prob, self.cutmix_prob, self.paste_prob = (
            mosaic_prob, mixup_prob, cutmix_prob, paste_prob)
        self.mixup_alpha, self.paste_max, self.paste_scale = mixup_alpha, paste_max, tuple(paste_scale)
        self.paste_label = paste_class if paste_as_objects else None
        # the box-keeping rule of the geometry step that follows (DetTransform)
        self.min_size, self.min_visible = min_box_size, min_visible

    def _read(self, record):
        return read_record_image(record), record["boxes"], record["classes"]

    def _other(self, rng):
        try:
            return self._read(self.roidb[rng.randint(len(self.roidb))])
        except ImageReadError:
            return None

    def _patch(self, rng):
        """(RGB patch, alpha, label or None) from paste_dir or an object crop of the roidb, or None."""
        if self.patches is not None:
            rgb, alpha = self.patches[rng.randint(len(self.patches))]
            return rgb, alpha, self.paste_label
        record = self.roidb[rng.randint(len(self.roidb))]
        if not len(record["boxes"]):
            return None
        k = rng.randint(len(record["boxes"]))
        try:
            img = read_record_image(record)
        except ImageReadError:
            return None
        x1, y1 = np.floor(record["boxes"][k][:2]).astype(int)
        x2, y2 = np.ceil(record["boxes"][k][2:]).astype(int)
        crop = img[max(y1, 0):y2, max(x1, 0):x2]
        return crop, np.ones(crop.shape[:2], np.float32), int(record["classes"][k])

    def _paste_some(self, sample, rng):
        h, w = sample[0].shape[:2]
        for _ in range(rng.randint(1, self.paste_max + 1)):
            got = self._patch(rng)
            if got is None or not got[0].size:
                continue
            rgb, alpha, label = got
            f = rng.uniform(*self.paste_scale)
            f = min(f, w / rgb.shape[1], h / rgb.shape[0])          # the patch must fit
            pw, ph = int(rgb.shape[1] * f), int(rgb.shape[0] * f)
            if pw < self.min_size or ph < self.min_size:
                continue
            rgb, alpha = cv2.resize(rgb, (pw, ph)), cv2.resize(alpha, (pw, ph))
            boxes = np.asarray(sample[1], np.float64).reshape(-1, 4)
            for _ in range(PLACEMENT_TRIES):
                x, y = rng.randint(0, w - pw + 1), rng.randint(0, h - ph + 1)
                if _overlap_ok((x, y, x + pw, y + ph), boxes):
                    sample = paste(sample, rgb, alpha, (x, y), label, self.min_size, self.min_visible)
                    break
        return sample

    def __call__(self, record, rng):
        cur = None
        if self.mosaic_prob and rng.uniform() < self.mosaic_prob:
            others = [self._other(rng) for _ in range(3)]
            cx, cy = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75)
            if all(o is not None for o in others):
                base = self._read(record)
                h, w = base[0].shape[:2]
                cur = mosaic([base] + others, (int(cx * w), int(cy * h)), self.min_size, self.min_visible)
        if self.mixup_prob and rng.uniform() < self.mixup_prob:
            other, ratio = self._other(rng), rng.beta(self.mixup_alpha, self.mixup_alpha)
            if other is not None:
                cur = mixup(cur if cur is not None else self._read(record), other, ratio)
        if self.cutmix_prob and rng.uniform() < self.cutmix_prob:
            # CutMix (Yun et al. 2019) with Beta(1, 1): area fraction uniform, centre uniform, clipped.
            other, frac, u, v = self._other(rng), rng.uniform(), rng.uniform(), rng.uniform()
            if other is not None:
                base = cur if cur is not None else self._read(record)
                h, w = base[0].shape[:2]
                cw, ch, cx, cy = w * np.sqrt(frac), h * np.sqrt(frac), u * w, v * h
                rect = (int(max(cx - cw / 2, 0)), int(max(cy - ch / 2, 0)),
                        int(min(cx + cw / 2, w)), int(min(cy + ch / 2, h)))
                cur = cutmix(base, other, rect, self.min_size, self.min_visible) \
                    if rect[2] > rect[0] and rect[3] > rect[1] else base
        if self.paste_prob and rng.uniform() < self.paste_prob:
            cur = self._paste_some(cur if cur is not None else self._read(record), rng)
        if cur is None:
            return record
        img, boxes, classes = cur
        return dict(record, pixels=img, boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                    classes=np.asarray(classes, np.int32), width=img.shape[1], height=img.shape[0])


def build_mix_step(cfg, roidb, min_box_size, min_visible):
    """MixStep from DatasetParam drawing from `roidb`, or None when all mixing is off.
    min_box_size, min_visible: the box-keeping rule of the geometry step that follows."""
    d = cfg.DatasetParam
    if not (d.mosaic_prob or d.mixup_prob or d.cutmix_prob or d.paste_prob):
        return None
    if roidb is None:
        raise UserError("DatasetParam mosaic/mixup/cutmix/paste need the training roidb: pass it to "
                        "build_transform(cfg, True, roidb)")
    return MixStep(roidb, d.num_classes, d.mosaic_prob, d.mixup_prob, d.mixup_alpha, d.cutmix_prob,
                   d.paste_prob, d.paste_dir, d.paste_as_objects, d.paste_class, d.paste_max, d.paste_scale,
                   min_box_size, min_visible)
