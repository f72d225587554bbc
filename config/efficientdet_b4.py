"""EfficientDet-D4: EfficientNet-B4 backbone, 1024 px, BiFPN 224 x 7, head 4."""
from config.base import efficientdet_overrides, make_config


def get_config(is_train):
    return make_config(is_train, efficientdet_overrides("d4"))
