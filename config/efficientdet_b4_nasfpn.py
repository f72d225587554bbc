"""EfficientDet-D4 with a NAS-FPN neck: EfficientNet-B4 backbone, 1024 px, NAS-FPN 224 x 7, head 4.

Everything but the neck is D4. The NAS-FPN keeps the BiFPN's width and repeats of D4 so the two
necks differ only in topology and convs (NAS-FPN blocks use full 3x3 convs, hence far more
parameters per cell than the BiFPN's separable ones; the paper's NAS-FPN is 7 x 256).
"""
from config.base import efficientdet_overrides, make_config


def get_config(is_train):
    return make_config(is_train, dict(efficientdet_overrides("d4"), **{
        "General.name": "efficientdet_d4_nasfpn",
        "NeckParam.type": "nasfpn",
    }))
