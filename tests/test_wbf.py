"""Weighted boxes fusion (core/wbf.py) and test-time augmentation (core/tta.py, detection_test.py)."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ONE_DEVICE, REPO
from config.base import make_config
from core.tta import eval_transform, merge_views, tta_views, unflip
from core.wbf import fuse
from utils.errors import UserError


def test_two_overlapping_boxes_fuse_at_score_weighted_mean():
    a = np.array([[10, 20, 50, 60, 0.9, 2]], np.float32)
    b = np.array([[14, 22, 54, 64, 0.6, 2]], np.float32)
    out = fuse([a, b], (100, 200))
    assert out.shape == (1, 6)
    np.testing.assert_allclose(out[0, :4], (0.9 * a[0, :4] + 0.6 * b[0, :4]) / 1.5, atol=1e-3)
    np.testing.assert_allclose(out[0, 4:], [0.75, 2], atol=1e-6)     # mean score, both lists found it


def test_fuse_keeps_classes_apart_and_ignores_padding():
    a = np.array([[10, 10, 50, 50, 0.9, 0], [-1, -1, -1, -1, -1, -1]], np.float32)
    b = np.array([[10, 10, 50, 50, 0.8, 1], [60, 60, 90, 90, 0.4, 0]], np.float32)
    out = fuse([a, b], (100, 100))
    # Three clusters, each found by one of two lists: its score is halved.
    np.testing.assert_allclose(out[:, 4], [0.45, 0.4, 0.2], atol=1e-6)
    np.testing.assert_array_equal(out[:, 5], [0, 1, 0])
    weighted = fuse([a, b], (100, 100), weights=[3, 1])
    np.testing.assert_allclose(weighted[0, 4], 0.9 * 3 / 4, atol=1e-6)


def test_fuse_clips_to_the_image_and_drops_empty_boxes():
    a = np.array([[-20, 5, 40, 130, 0.5, 0], [120, 0, 150, 10, 0.5, 0]], np.float32)  # 2nd: outside
    out = fuse([a], (100, 110))
    np.testing.assert_allclose(out, [[0, 5, 40, 100, 0.5, 0]], atol=1e-3)
    assert fuse([np.zeros((0, 6))], (10, 10)).shape == (0, 6)
    with pytest.raises(ValueError, match="conf_type"):
        fuse([a], (100, 110), conf_type="mean")


def test_mirrored_view_merges_back_onto_the_original_boxes():
    """A model whose flipped-view detections are exactly the mirror of its plain ones."""
    width = 200.0
    plain = np.array([[[10, 20, 50, 60, 0.9, 1], [120, 30, 190, 80, 0.7, 0], [-1] * 6]], np.float32)
    mirrored = plain.copy()
    mirrored[..., 0], mirrored[..., 2] = width - plain[..., 2], width - plain[..., 0]
    mirrored[plain[..., 4] < 0] = -1
    back = unflip(mirrored, [width])
    np.testing.assert_allclose(back, plain)
    merged = merge_views([{7: plain[0]}, {7: back[0]}], {7: (100, 200)}, make_config(False))
    np.testing.assert_allclose(merged[7], plain[0, :2], atol=1e-3)


def test_tta_views_sizes_and_flips():
    cfg = make_config(False, {"DatasetParam.image_size": (128, 128), "TestParam.tta_flip": True,
                              "TestParam.tta_scales": [96, (128, 128), (64, 96)]})
    views = tta_views(cfg)
    assert [(tuple(c.DatasetParam.image_size), f) for c, f in views] == \
        [((128, 128), [False, True]), ((96, 96), [False, True]), ((64, 96), [False, True])]
    assert cfg.DatasetParam.image_size == (128, 128)                  # the original is untouched
    bad = make_config(False, {"TestParam.tta_scales": ["big"]})
    with pytest.raises(UserError, match="tta_scales"):
        tta_views(bad)


def test_flipped_view_of_an_image_is_the_plain_view_of_its_mirror(tmp_path):
    """Through the real test symbol (random weights): the flip view of A, un-flipped, equals the
    plain-view detections of mirror(A) mirrored back: transform geometry and unflip agree."""
    import mxnet as mx
    from core.loader import DetectionLoader
    from core.validation import EvalGraph, detect
    from models.efficientdet.builder import get_raw_symbol
    from models.efficientdet.postprocess import match_detections

    image = np.random.RandomState(0).randint(0, 255, (90, 150, 3), np.uint8)
    records = []
    for i, img in enumerate((image, image[:, ::-1])):
        cv2.imwrite(str(tmp_path / ("%d.png" % i)), img)
        records.append({"image": str(tmp_path / ("%d.png" % i)), "image_id": i, "width": 150, "height": 90,
                        "boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int32)})
    cfg = make_config(False, {"DatasetParam.image_size": (128, 128), "DatasetParam.num_classes": 3,
                              "NeckParam.repeats": 1, "HeadParam.repeats": 1, "TestParam.max_det": 20,
                              "General.batch_image": 2})
    t_plain, t_flip = eval_transform(cfg, False), eval_transform(cfg, True)
    np.testing.assert_allclose(t_flip(records[0])["data"], t_plain(records[1])["data"], atol=1e-4)

    raw = mx.mod.Module(get_raw_symbol(cfg), data_names=["data"], label_names=None)
    raw.bind([("data", (2, 3, 128, 128))], for_training=False)
    mx.random.seed(0)
    raw.init_params(mx.init.Xavier())
    arg, aux = raw.get_params()
    mod = EvalGraph(cfg, [mx.cpu()]).bind(arg, aux, "random")
    plain = detect(mod, DetectionLoader(records, t_plain, None, 2))
    flipped = detect(mod, DetectionLoader(records, t_flip, None, 2), flip=True)
    assert (plain[1][:, 4] >= 0).sum() == 20
    assert match_detections(flipped[0], unflip(plain[1][None], [150])[0], score_tol=1e-4) < 1e-2


def test_detection_test_runs_tta(tmp_path):
    """detection_test.py with flip + an extra scale: 4 views merged, results inside the images."""
    import mxnet as mx
    from core.dataset import load_coco, save_roidb
    from core.synthetic import make_synthetic
    from models.efficientdet.builder import get_raw_symbol
    from utils.checkpoint import save_epoch_params
    from utils.config import load_config

    paths = make_synthetic(str(tmp_path / "data"), 3, val_fraction=0.7, size=128)
    roidb, categories, _ = load_coco(paths["val"], paths["image_dir"])
    save_roidb(str(tmp_path / "val_roidb.json"), roidb, categories, "coco")
    sets = ["NeckParam.repeats=1", "HeadParam.repeats=1", "DatasetParam.image_size=(128,128)",
            "DatasetParam.val_roidb=%s" % (tmp_path / "val_roidb.json"), "General.name=tta",
            "TestParam.tta_flip=true", "TestParam.tta_scales=[96]", "TestParam.max_det=30", ONE_DEVICE]
    config = os.path.join(REPO, "config", "quickstart.py")
    cfg = load_config(config, sets, is_train=False)
    mod = mx.mod.Module(get_raw_symbol(cfg), data_names=["data"], label_names=None)
    mod.bind([("data", (cfg.General.batch_image, 3, 128, 128))], for_training=False)
    mod.init_params(mx.init.Xavier())
    save_epoch_params(str(tmp_path / "rand.params"), *mod.get_params())
    # cwd = tmp_path: detection_test.py writes into ./experiments/<name>/.
    res = subprocess.run([sys.executable, os.path.join(REPO, "detection_test.py"), "--config", config,
                          "--params", "rand.params"] + [a for s in sets for a in ("--set", s)], cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    results = json.loads((tmp_path / "experiments/tta/results-rand.json").read_text())
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in roidb}
    assert set(by_image) == set(sizes) and all(len(v) <= 30 for v in by_image.values())
    for r in results:
        x, y, w, h = r["bbox"]
        assert x >= 0 and y >= 0 and x + w <= sizes[r["image_id"]][0] + 1e-3 and y + h <= sizes[r["image_id"]][1] + 1e-3
