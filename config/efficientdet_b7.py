"""EfficientDet-D7x: EfficientNet-B7 backbone, 1536 px, BiFPN 384 x 8, head 5, sum fusion,
levels P3-P8."""
from config.base import efficientdet_overrides, make_config


def get_config(is_train):
    return make_config(is_train, efficientdet_overrides("d7x"))
