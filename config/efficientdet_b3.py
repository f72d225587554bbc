"""EfficientDet-D3: EfficientNet-B3 backbone, 896 px, BiFPN 160 x 6, head 4."""
from config.base import efficientdet_overrides, make_config


def get_config(is_train):
    return make_config(is_train, efficientdet_overrides("d3"))
