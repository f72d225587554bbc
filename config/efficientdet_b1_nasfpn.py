"""EfficientDet-D1 with a NAS-FPN neck: EfficientNet-B1 backbone, 640 px, NAS-FPN 88 x 4, head 3.

Everything but the neck is D1. The NAS-FPN keeps the BiFPN's width and repeats of D1 so the two
necks differ only in topology and convs (NAS-FPN blocks use full 3x3 convs, hence far more
parameters per cell than the BiFPN's separable ones; the paper's NAS-FPN is 7 x 256).
"""
from config.base import efficientdet_overrides, make_config


def get_config(is_train):
    return make_config(is_train, dict(efficientdet_overrides("d1"), **{
        "General.name": "efficientdet_d1_nasfpn",
        "NeckParam.type": "nasfpn",
    }))
