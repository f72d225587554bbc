"""EfficientDet-D6: EfficientNet-B6 backbone, 1280 px, BiFPN 384 x 8, head 5, sum fusion."""
from config.base import efficientdet_overrides, make_config


def get_config(is_train):
    return make_config(is_train, efficientdet_overrides("d6"))
