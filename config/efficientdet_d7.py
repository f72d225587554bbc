"""EfficientDet-D7: EfficientNet-B6 backbone (not B7), 1536 px, BiFPN 384 x 8, head 5,
sum fusion, anchor scale 5.0."""
from config.base import efficientdet_overrides, make_config


def get_config(is_train):
    return make_config(is_train, efficientdet_overrides("d7"))
