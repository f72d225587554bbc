"""EfficientDet-D2: EfficientNet-B2 backbone, 768 px, BiFPN 112 x 5, head 3."""
from config.base import efficientdet_overrides, make_config


def get_config(is_train):
    return make_config(is_train, efficientdet_overrides("d2"))
