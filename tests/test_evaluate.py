"""core/evaluate.py: COCO results from detections and real COCOeval on constructed predictions."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core.evaluate import STAT_NAMES, evaluate, format_per_class, ground_truth, to_coco_results
from utils.fileio import write_json

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "unicorn"}]


def record(image_id, boxes, classes, width=200, height=150):
    return {"image": "/data/%d.jpg" % image_id, "width": width, "height": height, "image_id": image_id,
            "boxes": np.array(boxes, np.float32).reshape(-1, 4), "classes": np.array(classes, np.int32)}


@pytest.fixture
def roidb():
    # Original (COCO-style, non-contiguous) image ids; "unicorn" has no ground truth.
    return [record(42, [[10, 10, 60, 50], [100, 20, 180, 120]], [0, 1]),
            record(7, [[30, 40, 90, 140]], [1]),
            record(13, [], [])]


def detections_from(roidb, shift=0.0, pad=3):
    """Ground-truth boxes as detections (score decreasing), shifted right by `shift` box widths,
    with `pad` padding rows of -1 as the test symbol emits them."""
    out = {}
    for r in roidb:
        rows = [[x1 + shift * (x2 - x1), y1, x2 + shift * (x2 - x1), y2, 0.9 - 0.1 * i, c]
                for i, ((x1, y1, x2, y2), c) in enumerate(zip(r["boxes"].tolist(), r["classes"].tolist()))]
        out[r["image_id"]] = np.array(rows + [[-1] * 6] * pad, np.float32).reshape(-1, 6)
    return out


def test_ground_truth_dict(roidb):
    gt = ground_truth(roidb, CATEGORIES)
    assert [i["id"] for i in gt["images"]] == [42, 7, 13]
    ann = gt["annotations"][1]
    assert ann["image_id"] == 42 and ann["category_id"] == 7 and ann["iscrowd"] == 0
    assert ann["bbox"] == [100, 20, 80, 100] and ann["area"] == 8000
    assert len({a["id"] for a in gt["annotations"]}) == 3


def test_results_map_classes_boxes_and_skip_padding(roidb):
    dets = {42: np.array([[10, 10, 60, 50, 0.9, 1], [-20, 140, 30, 170, 0.5, 0], [-1] * 6,
                          [250, 10, 300, 40, 0.4, 0]], np.float32)}
    results = to_coco_results(dets, roidb, CATEGORIES)
    # xyxy -> xywh, contiguous class 1 -> category id 7; the second box is clipped to the
    # 200 x 150 image; padding and the box wholly outside the image are dropped.
    assert results == [{"image_id": 42, "category_id": 7, "bbox": [10, 10, 50, 40], "score": 0.9},
                       {"image_id": 42, "category_id": 3, "bbox": [0, 140, 30, 10], "score": 0.5}]


def test_perfect_predictions_score_one(roidb):
    res = evaluate(roidb, CATEGORIES, to_coco_results(detections_from(roidb), roidb, CATEGORIES))
    assert list(res["stats"]) == list(STAT_NAMES)
    assert res["stats"]["AP"] == pytest.approx(1.0) and res["stats"]["AP50"] == pytest.approx(1.0)
    assert res["stats"]["AR100"] == pytest.approx(1.0)
    assert len(res["summary"]) == 12 and res["summary"][0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95")
    by_name = {c["name"]: c for c in res["per_class"]}
    assert by_name["cat"]["AP"] == pytest.approx(1.0) and by_name["dog"]["num_gt"] == 2
    assert by_name["unicorn"]["AP"] is None and by_name["unicorn"]["num_gt"] == 0
    assert json.loads(json.dumps(res)) == res           # plain json types only (no numpy ints)


def test_shifted_predictions_score_lower(roidb):
    perfect = evaluate(roidb, CATEGORIES, to_coco_results(detections_from(roidb), roidb, CATEGORIES))
    # A shift of 0.2 box widths leaves IoU 0.8 / 1.2 = 0.67: right at IoU 0.5, wrong above 0.65.
    shifted = evaluate(roidb, CATEGORIES, to_coco_results(detections_from(roidb, 0.2), roidb, CATEGORIES))
    assert shifted["stats"]["AP50"] == pytest.approx(1.0)
    assert 0.1 < shifted["stats"]["AP"] < perfect["stats"]["AP"]
    assert shifted["stats"]["AP75"] == pytest.approx(0.0)
    far = evaluate(roidb, CATEGORIES, to_coco_results(detections_from(roidb, 1.5), roidb, CATEGORIES))
    assert far["stats"]["AP"] == pytest.approx(0.0)


@pytest.mark.parametrize("dets", [{}, {42: np.full((5, 6), -1, np.float32)}])
def test_empty_predictions_give_zero(roidb, dets):
    results = to_coco_results(dets, roidb, CATEGORIES)
    assert results == []
    res = evaluate(roidb, CATEGORIES, results)
    assert res["stats"]["AP"] == 0 and res["stats"]["AR100"] == 0
    assert {c["name"]: c["AP"] for c in res["per_class"]} == {"cat": 0, "dog": 0, "unicorn": None}


def test_per_class_table(roidb):
    res = evaluate(roidb, CATEGORIES, to_coco_results(detections_from(roidb), roidb, CATEGORIES))
    lines = format_per_class(res["per_class"]).splitlines()
    assert lines[0].split() == ["class", "gt", "AP", "AP50"]
    assert lines[1].split() == ["cat", "1", "1.000", "1.000"]
    assert lines[3].split() == ["unicorn", "0", "-", "-"]


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "results.json"
    write_json(str(path), [{"a": 1}])
    write_json(str(path), [{"a": 2}])
    assert json.loads(path.read_text()) == [{"a": 2}]
    assert os.listdir(tmp_path) == ["results.json"]


CONFIG = '''from config.base import efficientdet_overrides, make_config


def get_config(is_train):
    return make_config(is_train, dict(efficientdet_overrides("d0"), **{
        "General.name": "tiny", "General.batch_image": 2, "NeckParam.repeats": 1, "HeadParam.repeats": 1,
        "DatasetParam.num_classes": 5, "DatasetParam.image_size": (128, 128),
        "DatasetParam.val_roidb": "val_roidb.json"}))
'''


def test_detection_test_end_to_end(tmp_path):
    """detection_test.py --analyze on 3 synthetic images with random weights: runs, pads the last
    batch of 2 correctly, and writes the results and eval json into experiments/<name>/ (AP itself
    is ~0), and the error analysis beside them (core/error_analysis.py, tests/test_error_analysis.py)."""
    import mxnet as mx
    from conftest import REPO
    from core.dataset import load_coco, save_roidb
    from core.synthetic import make_synthetic
    from models.efficientdet.builder import get_raw_symbol
    from utils.checkpoint import save_epoch_params
    from utils.config import load_config

    paths = make_synthetic(str(tmp_path / "data"), 5, val_fraction=0.6, size=128)
    roidb, categories, _ = load_coco(paths["val"], paths["image_dir"])
    save_roidb(str(tmp_path / "val_roidb.json"), roidb, categories, "coco")
    (tmp_path / "cfg.py").write_text(CONFIG)
    cfg = load_config(str(tmp_path / "cfg.py"), is_train=False)
    mod = mx.mod.Module(get_raw_symbol(cfg), data_names=["data"], label_names=None)
    mod.bind([("data", (2, 3, 128, 128))], for_training=False)
    mod.init_params(mx.init.Xavier())
    save_epoch_params(str(tmp_path / "rand.params"), *mod.get_params())

    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, os.path.join(REPO, "detection_test.py"), "--config", "cfg.py",
                          "--params", "rand.params", "--analyze"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in res.stdout and "circle" in res.stdout
    report = json.loads((tmp_path / "experiments/tiny/eval-rand.json").read_text())
    assert report["images"] == 3 and list(report["stats"]) == list(STAT_NAMES)
    assert [c["name"] for c in report["per_class"]] == ["circle", "square", "triangle", "cross", "star"]
    results = json.loads((tmp_path / "experiments/tiny/results-rand.json").read_text())
    assert {r["image_id"] for r in results} <= {r["image_id"] for r in roidb}
    exp = tmp_path / "experiments" / "tiny"
    assert all(os.path.getsize(exp / n) > 5000 for n in ("pr-rand.png", "confusion-rand.png"))
    conf = json.loads((exp / "confusion-rand.json").read_text())
    gt_per_class = np.bincount(np.concatenate([r["classes"] for r in roidb]), minlength=5)
    assert np.array(conf["matrix"])[:5].sum(1).tolist() == gt_per_class.tolist()   # each box in one cell of its row
    doc = json.loads((exp / "thresholds-rand.json").read_text())
    assert doc["class_names"] == [c["name"] for c in categories] and doc["params"] == str(tmp_path / "rand.params")
    assert "thresholds-rand.json" in res.stdout
