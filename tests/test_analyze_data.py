"""Anchor fit (core/anchor_fit.py) against brute force, the data summary of training, and
scripts/analyze_data.py on a synthetic set with good and deliberately bad anchors."""
import json
import logging
import os
import shutil

import numpy as np
import pytest

from conftest import run_script
from config.base import make_config
from core.anchor_fit import (anchor_grids, best_anchor_iou, data_summary, fit, input_boxes, kmeans_aspect_ratios,
                             log_data_summary)
from core.dataset import load_coco, save_roidb
from core.synthetic import make_synthetic
from core.targets import iou_matrix
from models.efficientdet.anchors import generate_anchors
from utils.config import load_config
from utils.errors import UserError


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """40 synthetic 128 px images (objects 8-48 px) as a train roidb, plus one image listed twice."""
    root = tmp_path_factory.mktemp("analyze")
    paths = make_synthetic(str(root / "data"), 40, seed=5, val_fraction=0.0, size=128)
    roidb, categories, _ = load_coco(paths["train"], paths["image_dir"])
    copy = os.path.join(paths["image_dir"], "copy.jpg")
    shutil.copy(roidb[0]["image"], copy)
    roidb.append(dict(roidb[0], image=copy, image_id=1000, boxes=roidb[0]["boxes"][:0],
                      classes=roidb[0]["classes"][:0]))
    save_roidb(str(root / "train_roidb.json"), roidb, categories, "coco")
    return str(root / "train_roidb.json"), roidb, categories


@pytest.mark.parametrize("image_size,scale,aspects", [
    ((128, 128), 4.0, ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))),
    ((96, 160), 1.5, ((1.0, 1.0), (2.0, 0.5))),          # per-axis strides: 160 is not a multiple of 128
    ((200, 120), 3.0, ((1.0, 1.0),))])
def test_best_anchor_iou_is_the_brute_force_maximum(image_size, scale, aspects):
    rng = np.random.RandomState(0)
    xy = rng.uniform(-10, max(image_size) + 10, (500, 2))
    wh = np.exp(rng.uniform(np.log(2), np.log(200), (500, 2)))
    boxes = np.concatenate([xy, xy + wh], 1)[:, [0, 1, 2, 3]]
    grids = anchor_grids(image_size, 3, 7, 3, aspects, scale)
    anchors = generate_anchors(image_size, 3, 7, 3, aspects, scale)
    brute = iou_matrix(boxes[:, [1, 0, 3, 2]], anchors).max(1)
    np.testing.assert_allclose(best_anchor_iou(boxes, grids), brute, atol=2e-6)


def test_kmeans_aspects_find_the_clusters():
    rng = np.random.RandomState(1)
    ratios = np.concatenate([np.full(100, 0.25), np.full(100, 1.0), np.full(50, 4.0)]) * rng.uniform(0.95, 1.05, 250)
    w = rng.uniform(10, 50, 250)
    boxes = np.stack([np.zeros(250), np.zeros(250), w, w * ratios], 1)
    pairs = kmeans_aspect_ratios(boxes, 3)
    assert pairs[0] == (1.0, 1.0)                        # square first
    assert sorted(round(y / x, 1) for x, y in pairs) == [0.2, 1.0, 4.0] or \
        sorted(round(y / x, 2) for x, y in pairs)[::2] == pytest.approx([0.25, 4.0], rel=0.05)


def test_input_boxes_follow_the_eval_resize():
    roidb = [{"width": 200, "height": 100, "boxes": np.array([[0, 0, 100, 50]], np.float32),
              "classes": np.array([1], np.int32)},
             {"width": 50, "height": 100, "boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int32)},
             {"width": 64, "height": 128, "boxes": np.array([[8, 8, 16, 32]], np.float32),
              "classes": np.array([0], np.int32)}]
    boxes, classes = input_boxes(roidb, (64, 128))
    np.testing.assert_allclose(boxes, [[0, 0, 64, 32], [4, 4, 8, 16]])   # scales 0.64 and 0.5
    np.testing.assert_array_equal(classes, [1, 0])


def test_training_summary_warns_only_for_a_bad_fit(synthetic, caplog):
    _, roidb, categories = synthetic
    cfg = make_config(True, {"DatasetParam.num_classes": 5, "DatasetParam.image_size": (512, 512)})
    line, warning = data_summary(cfg, roidb, categories)
    assert line.startswith("data: 41 images (1 without boxes), ") and "best possible recall" in line
    assert warning is None, line
    cfg.AnchorParam.scale = 1.0
    with caplog.at_level(logging.INFO):
        log_data_summary(cfg, roidb, categories)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "best possible recall below 0.98" in warnings[0]
    line, _ = data_summary(cfg, roidb, categories, max_boxes=50)
    assert "(50 sampled boxes)" in line


def test_bad_anchor_values_fail_at_load():
    with pytest.raises(UserError, match=r"AnchorParam.scale=0.0 is out of range: must be a number > 0"):
        load_config("config/quickstart.py", ["AnchorParam.scale=0"])
    with pytest.raises(UserError, match=r"AnchorParam.aspect_ratios=.* pairs of numbers > 0"):
        load_config("config/quickstart.py", ["AnchorParam.aspect_ratios=((1.0, -1.0),)"])


def test_analyze_data_bad_anchors_fall_and_the_suggestion_restores(synthetic, tmp_path):
    """At 512 (objects 32-192 px) the default anchors fit; AnchorParam.scale=1.0 drops the best
    possible recall, and the printed --set line brings it back (the script reloads the config with it)."""
    roidb_path, roidb, categories = synthetic
    cfg = make_config(True, {"DatasetParam.num_classes": 5, "DatasetParam.image_size": (512, 512)})
    boxes, _ = input_boxes(roidb, (512, 512))
    good = fit(boxes, 0.5, (512, 512), 3, 7, 3, cfg.AnchorParam.aspect_ratios, 4.0)["bpr"]
    res = run_script(["scripts/analyze_data.py", "--config", "config/quickstart.py", "--out", tmp_path,
                      "--set", "DatasetParam.train_roidb=" + roidb_path, "--set", "DatasetParam.image_size=(512,512)",
                      "--set", "AnchorParam.scale=1.0"], timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "41 images (1 without boxes)" in out and "duplicate images (same bytes): 1 group(s)" in out
    report = json.loads((tmp_path / "data-train.json").read_text())
    assert os.path.getsize(tmp_path / "data-train.png") > 10000
    bad, best = report["anchors"]["bpr"], report["suggestion"]
    assert "best possible recall %.3f" % bad in out
    assert bad < 0.8 < 0.98 <= good
    assert best["bpr"] >= max(good, 0.98) and best["bpr_checked"] == best["bpr"]
    line = [l.strip() for l in out.splitlines() if l.strip().startswith("--set")]
    assert line == [report["set_line"]] and "AnchorParam.scale=" in line[0] and "AnchorParam.aspect_ratios=" in line[0]
    assert report["per_class"] == {c["name"]: int(sum((r["classes"] == i).sum() for r in roidb))
                                   for i, c in enumerate(categories)}
