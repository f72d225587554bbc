"""Transforms: boxes follow the pixels under flip / scale / crop, eval padding, box dropping."""
import cv2
import numpy as np
import pytest

from config.base import make_config
from core.image_io import ImageReadError
from core.pipeline import build_transform
from core.transforms import DetTransform

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


class FixedRng:
    """Stands in for RandomState: every uniform draw sits at fraction `u` of its range."""

    def __init__(self, u):
        self.u = u

    def uniform(self, low=0.0, high=1.0):
        return low + (high - low) * self.u

    def permutation(self, n):
        return np.arange(n)


def _record(tmp_path, h, w, box, name="img.png"):
    """A black image with a red filled rectangle `box` (x1, y1, x2, y2 pixel edges); png: exact."""
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = (0, 0, 255)                       # BGR red
    path = str(tmp_path / name)
    cv2.imwrite(path, img)
    return {"image": path, "width": w, "height": h, "image_id": 5,
            "boxes": np.array([box], np.float32), "classes": np.array([2], np.int32)}


def _red_extent(data):
    """Bounding box (pixel edges) of the red pixels of a normalised CHW image, or None."""
    rgb = data.transpose(1, 2, 0) * np.array(STD) + np.array(MEAN)
    ys, xs = np.nonzero((rgb[..., 0] > 127) & (rgb[..., 1] < 100))
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_eval_resize_top_left_and_zero_padding(tmp_path):
    rec = _record(tmp_path, 200, 300, (30, 40, 120, 150))
    t = DetTransform((128, 160), MEAN, STD, train=False)
    out = t(rec)
    s = min(128 / 200, 160 / 300)
    assert out["data"].shape == (3, 128, 160) and out["data"].dtype == np.float32
    assert out["scale"] == pytest.approx(s) and out["orig_size"] == (200, 300)
    valid_h = int(np.ceil(200 * s - 0.5))                 # 107 rows of image, the rest padding
    assert (out["data"][:, valid_h:] == 0).all()          # zero AFTER normalisation
    assert (out["data"][:, :valid_h] != 0).any(axis=(1, 2)).all()
    np.testing.assert_allclose(out["boxes"], [np.array([30, 40, 120, 150]) * s], rtol=1e-6)
    np.testing.assert_allclose(_red_extent(out["data"]), out["boxes"][0], atol=1.0)
    # black pixels normalise to -mean/std: the padding is not the image's black
    assert out["data"][0, 0, 0] == pytest.approx(-MEAN[0] / STD[0], rel=1e-5)


def test_train_boxes_follow_pixels(tmp_path):
    rec = _record(tmp_path, 120, 160, (20, 30, 80, 90))
    t = DetTransform((96, 96), MEAN, STD, train=True, scale_range=(0.3, 2.0))
    kept = flipped = cropped = 0
    for seed in range(40):
        out = t(rec, np.random.RandomState(seed))
        boxes, s = out["boxes"], out["scale"]
        assert out["data"].shape == (3, 96, 96)
        assert ((boxes[:, :2] >= 0) & (boxes[:, 2:] <= 96)).all()
        extent = _red_extent(out["data"])
        if len(boxes) == 0:                 # dropped: at most a sliver of red may remain
            assert extent is None or np.prod(extent[2:] - extent[:2]) < 0.25 * (60 * s) ** 2
            continue
        np.testing.assert_allclose(extent, boxes[0], atol=1.5)
        assert out["classes"].tolist() == [2]
        kept += 1
        if 160 * s > 96:
            cropped += 1
        else:                               # no crop room: x1 is 20 s, or 80 s when flipped
            flipped += bool(np.isclose(boxes[0, 0], 80 * s, atol=1e-3))
    assert kept >= 20 and cropped >= 5 and 3 <= flipped


def test_flip_exact(tmp_path):
    rec = _record(tmp_path, 100, 100, (10, 20, 30, 60))
    t = DetTransform((100, 100), MEAN, STD, train=True, hflip_prob=0.5, scale_range=(1.0, 1.0))
    out = t(rec, FixedRng(0.0))             # u = 0 < 0.5: flip, scale 1, no offset
    np.testing.assert_allclose(out["boxes"], [[70, 20, 90, 60]])
    np.testing.assert_allclose(_red_extent(out["data"]), [70, 20, 90, 60])


def test_crop_drops_mostly_hidden_and_tiny_boxes(tmp_path):
    rec = _record(tmp_path, 100, 100, (40, 40, 60, 60))
    rec["boxes"] = np.array([[40, 40, 60, 60], [0, 0, 55, 55], [90, 90, 100, 100]], np.float32)
    rec["classes"] = np.array([0, 1, 2], np.int32)
    t = DetTransform((100, 100), MEAN, STD, train=True, hflip_prob=0.0, scale_range=(2.0, 2.0))
    out = t(rec, FixedRng(0.999))           # scale 2, crop offset floor(0.999 * 100) = 99
    # box 0 -> (-19, -19, 21, 21): 441 of 1600 px visible (27.6 %), kept and clipped;
    # box 1 -> 121 of 12100 px visible: dropped; box 2 -> (81, 81, 100, 100): kept whole.
    np.testing.assert_allclose(out["boxes"], [[0, 0, 21, 21], [81, 81, 100, 100]])
    assert out["classes"].tolist() == [0, 2]
    t = DetTransform((100, 100), MEAN, STD, train=True, hflip_prob=0.0, scale_range=(0.1, 0.1))
    out = t(rec, FixedRng(0.5))             # scale 0.1: the 10 px box becomes 1 px, dropped
    np.testing.assert_allclose(out["boxes"], [[4, 4, 6, 6], [0, 0, 5.5, 5.5]], atol=1e-5)
    assert (out["data"][:, 10:] == 0).all() and (out["data"][:, :, 10:] == 0).all()


def test_same_rng_same_output_and_color_jitter(tmp_path):
    rec = _record(tmp_path, 80, 80, (10, 10, 50, 50))
    t = DetTransform((64, 64), MEAN, STD, train=True, color_jitter=(0.3, 0.3, 0.3, 0.05))
    a, b = t(rec, np.random.RandomState(1)), t(rec, np.random.RandomState(1))
    assert np.array_equal(a["data"], b["data"]) and np.array_equal(a["boxes"], b["boxes"])
    plain = DetTransform((64, 64), MEAN, STD, train=True)(rec, np.random.RandomState(1))
    assert np.array_equal(plain["boxes"], a["boxes"]) and not np.array_equal(plain["data"], a["data"])


def test_unreadable_image_raises_specific_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    rec = {"image": str(bad), "width": 10, "height": 10, "image_id": 1,
           "boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int32)}
    with pytest.raises(ImageReadError):
        DetTransform((32, 32), MEAN, STD, train=False)(rec)


def test_build_transform_reads_config(tmp_path):
    cfg = make_config(True, {"DatasetParam.image_size": (64, 80), "DatasetParam.scale_range": (1.0, 1.0),
                             "DatasetParam.hflip_prob": 0.0})
    t = build_transform(cfg, is_train=True)
    geometry, = t.steps                                          # no mixing configured
    assert geometry.size == (64, 80) and geometry.train and geometry.scale_range == (1.0, 1.0)
    rec = _record(tmp_path, 64, 80, (8, 8, 40, 40))
    out = t(rec, np.random.RandomState(0))
    np.testing.assert_allclose(out["boxes"], [[8, 8, 40, 40]])   # scale 1, no flip, no crop room
    assert not build_transform(cfg, is_train=False).steps[-1].train
