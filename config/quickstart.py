"""Quickstart: a small EfficientDet-D0-like model (EfficientNet-B0, BiFPN 64 x 2, head 2) at 256 px,
trained from scratch on the generated synthetic shapes dataset (scripts/make_synthetic.py)."""
from config.base import efficientdet_overrides, make_config


def get_config(is_train):
    return make_config(is_train, dict(efficientdet_overrides("d0"), **{
        "General.name": "quickstart",
        "General.batch_image": 8 if is_train else 8,
        "NeckParam.repeats": 2,
        "HeadParam.repeats": 2,
        "DatasetParam.num_classes": 5,
        "DatasetParam.image_size": (256, 256),
        "DatasetParam.train_roidb": "data/synthetic/train_roidb.json",
        "DatasetParam.val_roidb": "data/synthetic/val_roidb.json",
        "DatasetParam.scale_range": (0.6, 1.4),
        "OptimizeParam.optimizer": "adamw",
        "OptimizeParam.lr_per_64": 0.016,
        "OptimizeParam.wd": 1e-4,
        "OptimizeParam.schedule.end_epoch": 8,
        "OptimizeParam.warmup.epochs": 0.5,
        "OptimizeParam.ema_decay": 0.999,
    }))
