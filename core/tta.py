"""Test-time augmentation: extra views of each image (horizontal flip, other input sizes) whose
detections are mapped back to the original image and merged with weighted boxes fusion.

Views (TestParam.tta_flip, TestParam.tta_scales): every input size, DatasetParam.image_size
first, each unflipped and, with tta_flip, flipped. A size needs its own bound symbol because
shapes and anchors are static. A flipped view is the original image mirrored and then placed
top-left like any eval input, so x in the view maps back to W_orig - x exactly.
"""
import numpy as np

from core.pipeline import build_transform
from core.transforms import DetTransform
from core.wbf import fuse
from utils.config import ConfigSet
from utils.errors import UserError


class FlipEvalTransform(DetTransform):
    """The eval transform of the horizontally mirrored image: scale to fit, top-left, pad."""

    def _geometry(self, h, w, rng):
        scale, ox, oy, _ = super()._geometry(h, w, rng)
        return scale, ox, oy, True


def eval_transform(cfg, flip):
    """The eval transform of cfg (core.pipeline.build_transform), or its mirrored twin."""
    if not flip:
        return build_transform(cfg, False)
    return FlipEvalTransform(cfg.DatasetParam.image_size, cfg.NormalizeParam.mean, cfg.NormalizeParam.std, False)


def with_image_size(cfg, size):
    """A copy of `cfg` whose DatasetParam.image_size is `size` (H, W); `cfg` is left alone."""
    dataset = type("DatasetParam", (cfg.DatasetParam,), {"image_size": tuple(size)})
    return ConfigSet(**dict(vars(cfg), DatasetParam=dataset))


def tta_views(cfg):
    """[(config at one input size, [flips])]: the configured size first, then TestParam.tta_scales
    (an int is a square size, a pair is (H, W)). Without TTA: [(cfg, [False])]."""
    t = cfg.TestParam
    flips = [False, True] if t.tta_flip else [False]
    views, seen = [(cfg, flips)], {tuple(cfg.DatasetParam.image_size)}
    for s in t.tta_scales:
        size = (s, s) if isinstance(s, int) else tuple(s)
        if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise UserError("TestParam.tta_scales entries are sizes like 640 or (512, 768), got %r" % (s,))
        if size not in seen:
            seen.add(size)
            views.append((with_image_size(cfg, size), flips))
    return views


def unflip(det, widths):
    """Detections (N, D, 6) on mirrored images -> the same detections on the originals.

    widths (N,): original image widths (im_info[:, 1]). x1' = W - x2 and x2' = W - x1; padding
    rows (score < 0) stay all -1.
    """
    out = det.copy()
    w = np.asarray(widths, det.dtype).reshape(-1, 1)
    out[..., 0] = w - det[..., 2]
    out[..., 2] = w - det[..., 0]
    out[det[..., 4] < 0] = -1
    return out


def merge_views(per_view, image_sizes, cfg):
    """Fuse the views' detections image by image.

    per_view: [{image_id: (D, 6)}] one dict per view; image_sizes: {image_id: (h, w)}.
    Returns {image_id: (K, 6)} with K <= TestParam.max_det, best first (WBF with
    TestParam.wbf_iou_thr and wbf_skip_box_thr, every view weighted equally).
    """
    t = cfg.TestParam
    return {i: fuse([v[i] for v in per_view], image_sizes[i], iou_thr=t.wbf_iou_thr,
                    skip_box_thr=t.wbf_skip_box_thr)[:t.max_det]
            for i in per_view[0]}
