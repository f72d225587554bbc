"""The reference training recipe as config defaults (issue 11): drop-connect per variant, crop
keeping any box with area left, no colour jitter, warmup from 0.1 x lr."""
import numpy as np
import pytest

from core.pipeline import build_transform
from utils.config import load_config


@pytest.mark.parametrize("variant,drop", [("b0", 0.1), ("b1", 0.2), ("b4", 0.2), ("b7", 0.2), ("d7", 0.2),
                                          ("b0_nasfpn", 0.1)])
def test_variants_follow_effdet(variant, drop):
    cfg = load_config("config/efficientdet_%s.py" % variant, is_train=True)
    assert cfg.BackboneParam.drop_connect == drop
    assert cfg.DatasetParam.color_jitter == (0.0, 0.0, 0.0, 0.0)
    assert cfg.OptimizeParam.warmup.init_lr_ratio == 0.1
    assert cfg.DatasetParam.crop_min_visible == 0.0


class FarEnd:
    """Every draw at the far end of its range: no flip (prob 0), the largest scale and crop offset."""

    def uniform(self, lo=0.0, hi=1.0):
        return lo + 0.999 * (hi - lo)


@pytest.mark.parametrize("min_visible,kept", [(None, 2), (0.25, 1)])
def test_crop_keeps_any_box_with_area_left_unless_asked(min_visible, kept):
    sets = ["DatasetParam.image_size=(64, 64)", "DatasetParam.scale_range=(2.0, 2.0)", "DatasetParam.hflip_prob=0.0"]
    sets += ["DatasetParam.crop_min_visible=%r" % min_visible] if min_visible is not None else []
    cfg = load_config("config/efficientdet_b0.py", sets, is_train=True)
    # Scale 2, crop offset 63: box 0 keeps (0, 0, 9, 9), 1.6 % of its area; box 1 is whole.
    record = {"pixels": np.zeros((64, 64, 3), np.uint8), "image_id": 1, "classes": np.array([0, 1], np.int32),
              "boxes": np.array([[0, 0, 36, 36], [40, 40, 60, 60]], np.float32)}
    out = build_transform(cfg, True)(record, FarEnd())
    assert len(out["boxes"]) == kept
    assert out["boxes"][-1].tolist() == [17, 17, 57, 57]
    if kept == 2:
        assert out["boxes"][0].tolist() == [0, 0, 9, 9]
