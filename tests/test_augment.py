"""Mosaic, MixUp, CutMix and paste-in (core/augment.py, core/mixing.py): boxes stay inside the image
and follow the pixels through the mixing and DetTransform's flip / scale / crop; loader determinism."""
import cv2
import numpy as np
import pytest

from conftest import run_script
from config.base import make_config
from core.augment import minus_rect
from core.dataset import save_roidb
from core.loader import DetectionLoader
from core.mixing import MixStep
from core.pipeline import Compose, build_transform
from core.transforms import DetTransform
from utils.errors import UserError

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
# RGB, one per class; pairwise far apart, and no 50/50 blend of two of them (or of one with the
# black background / the grey mosaic fill) comes near another.
PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
           (255, 255, 255)]
SIZE = 96
TOL = 2.0


def _record(tmp_path, image_id, cls, rects):
    """A black SIZE x SIZE png with solid rectangles (x1, y1, x2, y2) of PALETTE[cls]."""
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    for x1, y1, x2, y2 in rects:
        img[y1:y2, x1:x2] = PALETTE[cls]
    path = str(tmp_path / ("%d.png" % image_id))
    cv2.imwrite(path, img[..., ::-1])
    return {"image": path, "width": SIZE, "height": SIZE, "image_id": image_id,
            "boxes": np.array(rects, np.float32).reshape(-1, 4), "classes": np.full(len(rects), cls, np.int32)}


@pytest.fixture
def data(tmp_path):
    """(primary record of class 0, roidb of classes 1..5). Each record has its own colour and keeps
    its rectangles 6 px from the borders, so a colour is never next to a copy of itself after
    mixing; the primary is not in the roidb, so it is never mixed with itself."""
    primary = _record(tmp_path, 100, 0, [(8, 10, 40, 38), (52, 50, 88, 84)])
    roidb = [_record(tmp_path, 1, 1, [(6, 6, 50, 40)]), _record(tmp_path, 2, 2, [(30, 30, 90, 90)]),
             _record(tmp_path, 3, 3, [(10, 50, 34, 90), (60, 8, 86, 30)]),
             _record(tmp_path, 4, 4, [(40, 6, 90, 60)]), _record(tmp_path, 5, 5, [(6, 44, 70, 70)])]
    return primary, roidb


def _rgb(sample):
    return sample["data"].transpose(1, 2, 0) * np.array(STD) + np.array(MEAN)


def _colour_mask(rgb, cls):
    return (np.abs(rgb - np.array(PALETTE[cls])) < 50).all(-1)


def _channel_mask(rgb, cls):
    """MixUp blends colours; with pure R/G/B classes each channel still tells its class."""
    return rgb[..., cls] > 60


def _check_follow(sample, mask_fn):
    """Every box lies in the image and bounds its class's pixels around it within TOL px."""
    boxes, classes = sample["boxes"], sample["classes"]
    H, W = sample["data"].shape[1:]
    assert ((boxes[:, :2] >= 0) & (boxes[:, 2:] <= [W, H]) & (boxes[:, 2:] > boxes[:, :2])).all()
    rgb = _rgb(sample)
    for box, cls in zip(boxes, classes):
        x0, y0 = int(max(np.floor(box[0] - TOL), 0)), int(max(np.floor(box[1] - TOL), 0))
        x1, y1 = int(min(np.ceil(box[2] + TOL), W)), int(min(np.ceil(box[3] + TOL), H))
        ys, xs = np.nonzero(mask_fn(rgb[y0:y1, x0:x1], cls))
        assert len(xs), (box, cls)
        extent = np.array([xs.min() + x0, ys.min() + y0, xs.max() + 1 + x0, ys.max() + 1 + y0])
        np.testing.assert_allclose(extent, box, atol=TOL, err_msg="class %d" % cls)


def _transform(roidb, **kw):
    det = DetTransform((SIZE, SIZE), MEAN, STD, train=True, hflip_prob=0.5, scale_range=(0.7, 1.3))
    return Compose([MixStep(roidb, num_classes=len(PALETTE), min_box_size=det.min_box_size,
                            min_visible=det.min_visible, **kw), det])


@pytest.mark.parametrize("kind", ["mosaic", "cutmix", "paste_crops"])
def test_boxes_follow_pixels(data, kind):
    primary, roidb = data
    kw = {"mosaic": dict(mosaic_prob=1.0), "cutmix": dict(cutmix_prob=1.0),
          "paste_crops": dict(paste_prob=1.0, paste_max=1)}[kind]
    t = _transform(roidb, **kw)
    mixed = 0
    for seed in range(25):
        sample = t(primary, np.random.RandomState(seed))
        _check_follow(sample, _colour_mask)
        mixed += bool((sample["classes"] > 0).any())
    assert mixed >= 10          # the other images' objects do come in


def test_mixup_keeps_both_box_sets(tmp_path):
    primary = _record(tmp_path, 100, 0, [(8, 10, 40, 38), (52, 50, 88, 84)])
    roidb = [_record(tmp_path, 1, 1, [(20, 20, 70, 60)]), _record(tmp_path, 2, 2, [(6, 40, 44, 90)])]
    t = _transform(roidb, mixup_prob=1.0)
    for seed in range(15):
        sample = t(primary, np.random.RandomState(seed))
        _check_follow(sample, _channel_mask)
        assert (sample["classes"] == 0).sum() >= 1 and (sample["classes"] > 0).sum() == 1


def test_paste_patches_as_objects_and_distractors(data, tmp_path):
    primary, roidb = data
    folder = tmp_path / "patches"
    folder.mkdir()
    patch = np.zeros((20, 24, 4), np.uint8)
    patch[2:18, 3:21] = (255, 255, 255, 255)        # opaque white, transparent border (BGRA)
    cv2.imwrite(str(folder / "p.png"), patch)
    as_objects = _transform(roidb, paste_prob=1.0, paste_dir=str(folder), paste_class=6, paste_max=1)
    distractors = _transform(roidb, paste_prob=1.0, paste_dir=str(folder), paste_as_objects=False,
                             paste_max=3)
    pasted = seen = 0
    for seed in range(20):
        sample = as_objects(primary, np.random.RandomState(seed))
        _check_follow(sample, _colour_mask)
        pasted += int((sample["classes"] == 6).sum())
        sample = distractors(primary, np.random.RandomState(seed))
        _check_follow(sample, _colour_mask)
        assert (sample["classes"] == 0).all()                 # distractors get no boxes
        seen += bool(_colour_mask(_rgb(sample), 6).any())
    assert pasted >= 10 and seen >= 10


def test_minus_rect_cases():
    box = [[10, 10, 30, 30]]
    cut = lambda rect: minus_rect(box, rect)[0][0].tolist()            # noqa: E731
    assert cut((0, 0, 15, 40)) == [15, 10, 30, 30]                     # left strip: x1 moves
    assert cut((25, 0, 40, 40)) == [10, 10, 25, 30]                    # right strip
    assert cut((0, 0, 40, 12)) == [10, 12, 30, 30]                     # top strip
    assert cut((15, 15, 20, 20)) == [10, 10, 30, 30]                   # a hole keeps the extent
    assert cut((0, 0, 15, 15)) == [10, 10, 30, 30]                     # a corner keeps it too
    assert cut((15, 0, 20, 40)) == [10, 10, 30, 30]                    # a middle band too
    assert minus_rect(box, (0, 0, 40, 40))[1][0] == 0                  # fully covered
    assert minus_rect(box, (0, 0, 15, 40))[1][0] == 15 * 20


def test_off_by_default_and_bad_settings(data, tmp_path):
    primary, roidb = data
    cfg = make_config(True, {"DatasetParam.image_size": (SIZE, SIZE)})
    steps = lambda t: [type(s) for s in t.steps]                          # noqa: E731
    assert steps(build_transform(cfg, True)) == [DetTransform]           # nothing changes when off
    cfg.DatasetParam.mosaic_prob = 0.5
    assert steps(build_transform(cfg, True, roidb)) == [MixStep, DetTransform]    # mixing, then geometry
    with pytest.raises(UserError, match="need the training roidb"):
        build_transform(cfg, True)
    with pytest.raises(UserError, match="distractors"):
        _transform(roidb, paste_prob=1.0, paste_as_objects=False)
    with pytest.raises(UserError, match="paste_class"):
        (tmp_path / "p").mkdir()
        cv2.imwrite(str(tmp_path / "p" / "a.png"), np.full((4, 4, 3), 9, np.uint8))
        _transform(roidb, paste_prob=1.0, paste_dir=str(tmp_path / "p"))
    with pytest.raises(UserError, match="mosaic_prob"):
        _transform(roidb, mosaic_prob=1.5)


def test_loader_stays_deterministic_with_mixing(data):
    _, roidb = data
    t = _transform(roidb, mosaic_prob=0.5, mixup_prob=0.3, cutmix_prob=0.3, paste_prob=0.5)
    target_fn = lambda boxes, classes: {"n": np.array([len(boxes)], np.float32)}   # noqa: E731
    runs = []
    for workers in (0, 2):
        loader = DetectionLoader(roidb, t, target_fn, batch_size=2, shuffle=True, seed=7, num_workers=workers)
        runs.append([(b.data[0].asnumpy(), b.label[0].asnumpy()) for b in loader])
        loader.close()
    for (da, la), (db, lb) in zip(*runs):
        assert np.array_equal(da, db) and np.array_equal(la, lb)


def test_show_augment_draws_a_grid(data, tmp_path):
    _, roidb = data
    path = str(tmp_path / "roidb.json")
    save_roidb(path, roidb, [{"id": i + 1, "name": "c%d" % i} for i in range(len(PALETTE))])
    out = tmp_path / "grid.png"
    res = run_script(["scripts/show_augment.py", "--config", "config/quickstart.py", "--out", out, "--num", 6,
                      "--set", "DatasetParam.train_roidb=" + path, "--set", "DatasetParam.image_size=(96, 96)",
                      "--set", "DatasetParam.mosaic_prob=1.0"], timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    grid = cv2.imread(str(out))
    assert grid.shape == (2 * 96, 4 * 96, 3)
