"""EfficientDet-D0 with a NAS-FPN neck: EfficientNet-B0 backbone, 512 px, NAS-FPN 64 x 3, head 3.

Everything but the neck is D0. The NAS-FPN keeps the BiFPN's width and repeats of D0 so the two
necks differ only in topology and convs (NAS-FPN blocks use full 3x3 convs, hence far more
parameters per cell than the BiFPN's separable ones; the paper's NAS-FPN is 7 x 256).
"""
from config.base import efficientdet_overrides, make_config


def get_config(is_train):
    return make_config(is_train, dict(efficientdet_overrides("d0"), **{
        "General.name": "efficientdet_d0_nasfpn",
        "NeckParam.type": "nasfpn",
    }))
