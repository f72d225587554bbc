"""EfficientDet-D5: EfficientNet-B5 backbone, 1280 px, BiFPN 288 x 7, head 4."""
from config.base import efficientdet_overrides, make_config


def get_config(is_train):
    return make_config(is_train, efficientdet_overrides("d5"))
