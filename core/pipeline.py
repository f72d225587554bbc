"""The per-sample pipeline: a list of steps run in order, as SimpleDet's DetectionAugmentation list
and effdet's Compose. It sits above the steps it composes (core/mixing.py, core/transforms.py).

Training: [MixStep (Mosaic / MixUp / CutMix / paste-in, only when one is on), DetTransform (flip,
scale jitter, crop, colour jitter, normalisation)]. Evaluation: [DetTransform (resize to fit,
top-left, pad)]. Every step but the last maps (record, rng) -> record; the last maps the record to
the sample the loader batches (DetTransform's contract).
"""
from core.mixing import build_mix_step
from core.transforms import DetTransform


class Compose:
    """Callable `(record, rng) -> sample`: `steps` applied in order, all with the same RNG (so a
    sample depends on its RNG alone, whichever worker runs it)."""

    def __init__(self, steps):
        self.steps = list(steps)

    def __call__(self, record, rng=None):
        for step in self.steps:
            record = step(record, rng)
        return record


def build_transform(cfg, is_train, roidb=None):
    """The pipeline of cfg: DetTransform from cfg.DatasetParam (image_size, hflip_prob, scale_range,
    color_jitter, crop_min_visible) and cfg.NormalizeParam (mean, std); for training with any of DatasetParam's
    mosaic / mixup / cutmix / paste probabilities above 0, preceded by a MixStep drawing from
    `roidb`."""
    d = cfg.DatasetParam
    geometry = DetTransform(d.image_size, cfg.NormalizeParam.mean, cfg.NormalizeParam.std, is_train,
                            hflip_prob=d.hflip_prob, scale_range=d.scale_range, color_jitter=d.color_jitter,
                            min_visible=d.crop_min_visible)
    mixing = build_mix_step(cfg, roidb, geometry.min_box_size, geometry.min_visible) if is_train else None
    return Compose(([mixing] if mixing else []) + [geometry])
