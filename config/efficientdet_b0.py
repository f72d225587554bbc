"""EfficientDet-D0: EfficientNet-B0 backbone, 512 px, BiFPN 64 x 3, head 3."""
from config.base import efficientdet_overrides, make_config


def get_config(is_train):
    return make_config(is_train, efficientdet_overrides("d0"))
