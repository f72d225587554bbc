"""Box-aware image transforms: one roidb record in, network-ready arrays out.

Geometry is one affine warp from the source image straight to the (H, W) network input, so a flip,
a scale jitter and a crop cost one pass over the output pixels whatever the scale. Coordinates are
continuous with pixel edges at integers (the roidb convention): a point u maps to u * s - offset.

- eval: s = min(H / h, W / w), no offset: the image sits top-left, the rest is padding.
- train (EfficientDet / automl `resize_and_crop_image`): optional horizontal flip, random scale
  r in scale_range, s = min(r H / h, r W / w), a random crop offset inside the scaled image, then
  colour jitter. Boxes follow the pixels, are clipped, and dropped if tiny or if less than
  `min_visible` of their area is left (DatasetParam.crop_min_visible; 0 keeps any box with area left).

Pixels are normalised ((x - mean) / std, 0-255 RGB statistics) and the padding is set to 0 after
normalisation, as the reference implementations do.
"""
import cv2
import numpy as np
import albumentations.augmentations.functional as AF

from core.augment import clip_to, filter_boxes
from core.image_io import read_record_image


def color_jitter(img, rng, brightness, contrast, saturation, hue):
    """torchvision-style ColorJitter on RGB uint8, with albumentations' kernels.

    The factors are drawn from `rng` (not albumentations' own `random` calls) so that a sample's
    augmentation depends only on its seed, whichever worker thread runs it. Order is random too.
    """
    ops = []
    if brightness:
        ops.append((AF.adjust_brightness_torchvision, rng.uniform(1 - brightness, 1 + brightness)))
    if contrast:
        ops.append((AF.adjust_contrast_torchvision, rng.uniform(1 - contrast, 1 + contrast)))
    if saturation:
        ops.append((AF.adjust_saturation_torchvision, rng.uniform(1 - saturation, 1 + saturation)))
    if hue:
        ops.append((AF.adjust_hue_torchvision, rng.uniform(-hue, hue)))
    for i in rng.permutation(len(ops)):
        fn, factor = ops[i]
        img = fn(img, factor)
    return img


def eval_scale(height, width, image_size):
    """Scale of the eval resize (network input = original * scale): the largest that fits the image
    into image_size (H, W) keeping its aspect. Elementwise on arrays of heights and widths."""
    H, W = image_size
    return np.minimum(H / np.asarray(height, np.float64), W / np.asarray(width, np.float64))


class DetTransform:
    """Callable: `(record, rng) -> sample`.

    record: a roidb dict (see core/dataset.py). rng: np.random.RandomState (unused for eval).
        A record may carry "pixels" (RGB uint8 (h, w, 3)) to use instead of reading its image:
        the mixing step (core/mixing.py) passes mixed images that way, with their boxes and classes.
    sample: {"data": float32 (3, H, W), "boxes": float32 (G', 4) x1y1x2y2 in input pixels,
             "classes": int32 (G',), "scale": float (input = original * scale),
             "image_id": int, "orig_size": (h, w)}.
    """

    def __init__(self, image_size, mean, std, train, hflip_prob=0.5, scale_range=(0.1, 2.0),
                 color_jitter=(0.0, 0.0, 0.0, 0.0), min_box_size=2.0, min_visible=0.25):
        self.size = tuple(int(v) for v in image_size)
        self.mean = np.asarray(mean, np.float32)
        self.inv_std = 1.0 / np.asarray(std, np.float32)
        self.train = train
        self.hflip_prob = hflip_prob
        self.scale_range = tuple(scale_range)
        self.jitter = tuple(color_jitter)
        self.min_box_size = min_box_size    # px on the network input, either side
        self.min_visible = min_visible      # kept fraction of a box's area after the crop

    def _geometry(self, h, w, rng):
        """(scale, x offset, y offset, flip) of the source -> input map."""
        H, W = self.size
        if not self.train:
            return float(eval_scale(h, w, self.size)), 0, 0, False
        flip = rng.uniform() < self.hflip_prob
        r = rng.uniform(*self.scale_range)
        s = min(r * H / h, r * W / w)
        # automl draws the offset uniformly over the scaled image's overhang, in whole pixels.
        ox = int(np.floor(rng.uniform() * max(0.0, w * s - W)))
        oy = int(np.floor(rng.uniform() * max(0.0, h * s - H)))
        return s, ox, oy, flip

    def __call__(self, record, rng=None):
        img = record["pixels"] if "pixels" in record else read_record_image(record)
        h, w = img.shape[:2]
        H, W = self.size
        s, ox, oy, flip = self._geometry(h, w, rng)
        # Pixel i has its centre at i + 0.5: (i + 0.5) * s - o = i' + 0.5 gives the warp matrix.
        # A flip maps u -> w - u first, so the x row becomes (w - i - 0.5) * s - ox - 0.5.
        if flip:
            m = np.array([[-s, 0, (w - 0.5) * s - 0.5 - ox], [0, s, 0.5 * s - 0.5 - oy]])
        else:
            m = np.array([[s, 0, 0.5 * s - 0.5 - ox], [0, s, 0.5 * s - 0.5 - oy]])
        # INTER_AREA would alias less when shrinking, but warpAffine lacks it; automl uses
        # plain bilinear as well. REPLICATE keeps edge pixels from blending into black.
        out = cv2.warpAffine(img, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if self.train and any(self.jitter):
            out = color_jitter(out, rng, *self.jitter)
        # HWC uint8 -> CHW float32 channel by channel, then normalise in place: about 6x faster
        # than astype + transpose of the whole image.
        data = np.empty((3, H, W), np.float32)
        for c in range(3):
            data[c] = out[..., c]
        data -= self.mean[:, None, None]
        data *= self.inv_std[:, None, None]
        # The scaled image covers input pixels whose centre lies inside it; the rest is padding.
        valid_w = int(np.clip(np.ceil(w * s - ox - 0.5), 0, W))
        valid_h = int(np.clip(np.ceil(h * s - oy - 0.5), 0, H))
        data[:, valid_h:] = 0
        data[:, :, valid_w:] = 0
        boxes, classes = self._boxes(record, w, s, ox, oy, flip, valid_w, valid_h)
        return {"data": data, "boxes": boxes,
                "classes": classes, "scale": float(s), "image_id": int(record["image_id"]),
                "orig_size": (h, w)}

    def _boxes(self, record, w, s, ox, oy, flip, valid_w, valid_h):
        boxes = record["boxes"].astype(np.float64).reshape(-1, 4)
        classes = record["classes"].astype(np.int32).reshape(-1)
        if flip:
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        boxes = boxes * s - np.array([ox, oy, ox, oy])
        if not self.train:
            return boxes.astype(np.float32), classes
        clipped, area = clip_to(boxes, (0, 0, valid_w, valid_h))
        return filter_boxes(clipped, classes, area, self.min_box_size, self.min_visible)


def prepare_image(image_rgb, image_size, mean):
    """One image for the deploy graph (models/efficientdet/deploy.py): the eval transform without
    the normalisation, padded with the mean colour.

    image_rgb: (h, w, 3) uint8 RGB; image_size: (H, W); mean: 3 floats (RGB 0-255).
    Returns (data float32 (3, H, W), scale) with network input = original * scale.
    """
    # With std 1 the eval transform yields x - mean, padded with 0; adding the mean back gives
    # the pixels (to float32 rounding, < 2e-5) and pads with exactly the mean.
    record = {"pixels": image_rgb, "image_id": 0, "boxes": np.zeros((0, 4), np.float32),
              "classes": np.zeros(0, np.int32)}
    sample = DetTransform(image_size, mean, (1.0, 1.0, 1.0), train=False)(record)
    return sample["data"] + np.asarray(mean, np.float32)[:, None, None], sample["scale"]
