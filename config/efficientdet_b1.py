"""EfficientDet-D1: EfficientNet-B1 backbone, 640 px, BiFPN 88 x 4, head 3."""
from config.base import efficientdet_overrides, make_config


def get_config(is_train):
    return make_config(is_train, efficientdet_overrides("d1"))
