"""Error analysis (core/error_analysis.py) on constructed detections with hand-counted answers, the
threshold lookup of detection_infer.py --score auto. detection_test.py --analyze end to end is in
tests/test_evaluate.py (test_detection_test_end_to_end)."""
import json
import os

import numpy as np
import pytest

from core.error_analysis import (analysis_paths, apply_thresholds, confusion_matrix, find_thresholds, pr_analysis,
                                 threshold_candidates, write_analysis)
from core.evaluate import evaluate
from utils.errors import UserError

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "unicorn"}]
A, B, C, D, E = [10, 10, 50, 50], [60, 10, 100, 50], [10, 10, 40, 40], [60, 60, 90, 90], [100, 100, 140, 140]


def record(image_id, boxes, classes):
    return {"image": "/data/%d.jpg" % image_id, "width": 200, "height": 150, "image_id": image_id,
            "boxes": np.array(boxes, np.float32).reshape(-1, 4), "classes": np.array(classes, np.int32)}


def det(image_id, box, score, cat_id):
    return {"image_id": image_id, "category_id": cat_id, "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            "score": score}


ROIDB = [record(1, [A, B], [0, 1]), record(2, [C, D], [0, 1]), record(3, [E], [0])]
RESULTS = [det(1, A, 0.9, 3), det(1, B, 0.8, 3), det(1, B, 0.3, 7),      # cat right; cat on the dog; dog right
           det(2, D, 0.95, 3), det(2, C, 0.6, 3),                        # cat on the dog; cat right
           det(3, [10, 10, 30, 30], 0.5, 3), det(3, D, 0.4, 7)]          # two on background; E is never found


def test_thresholds_maximise_f1_and_ap50_is_the_evaluation_s():
    per_class = {c["name"]: c for c in pr_analysis(ROIDB, CATEGORIES, RESULTS)}
    # cat, ranked: .95 F, .9 T, .8 F, .6 T, .5 F of 3 boxes -> F1 .4, .4, .571 at .6, .5 at .5
    assert per_class["cat"]["threshold"] == pytest.approx(0.6) and per_class["cat"]["f1"] == pytest.approx(4 / 7)
    assert per_class["cat"]["precision"] == pytest.approx(0.5) and per_class["cat"]["recall"] == pytest.approx(2 / 3)
    # dog: .4 F, .3 T of 2 boxes
    assert per_class["dog"]["threshold"] == pytest.approx(0.3) and per_class["dog"]["f1"] == pytest.approx(0.5)
    assert per_class["unicorn"]["threshold"] is None and per_class["unicorn"]["num_gt"] == 0
    scores, precision, recall = per_class["cat"]["curve"]
    np.testing.assert_allclose(scores, [0.95, 0.9, 0.8, 0.6, 0.5])
    np.testing.assert_allclose(precision, [0, 1 / 2, 1 / 3, 1 / 2, 2 / 5])
    np.testing.assert_allclose(recall, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    coco = {c["name"]: c["AP50"] for c in evaluate(ROIDB, CATEGORIES, RESULTS)["per_class"]}
    assert per_class["cat"]["ap50"] == pytest.approx(coco["cat"])
    assert per_class["dog"]["ap50"] == pytest.approx(coco["dog"])


def test_confusion_matrix_counts_background_misses_and_false_positives():
    matrix = confusion_matrix(ROIDB, CATEGORIES, RESULTS, [0.6, 0.3, None])
    # rows: true cat, dog, unicorn, background; columns: predicted cat, dog, unicorn, background (missed)
    np.testing.assert_array_equal(matrix, [[2, 0, 0, 1],      # A, C found; E missed
                                           [1, 1, 0, 0],      # D taken for a cat; B found
                                           [0, 0, 0, 0],
                                           [1, 1, 0, 0]])     # the cat on B after B was taken; the dog at .4
    # with every detection kept, the cat at .5 on the background of image 3 shows up too
    assert confusion_matrix(ROIDB, CATEGORIES, RESULTS, [0, 0, 0])[3].tolist() == [2, 1, 0, 0]


def test_write_analysis_files(tmp_path):
    paths = analysis_paths(str(tmp_path), "epoch0003")
    table = write_analysis(ROIDB, CATEGORIES, RESULTS, 100, paths, "/w/x.params")
    assert table.splitlines()[1].split() == ["cat", "3", "%.3f" % pr_analysis(ROIDB, CATEGORIES, RESULTS)[0]["ap50"],
                                             "0.600", "0.571", "0.500", "0.667"]
    assert sorted(os.listdir(tmp_path)) == ["confusion-epoch0003.json", "confusion-epoch0003.png",
                                            "pr-epoch0003.png", "thresholds-epoch0003.json"]
    doc = json.loads((tmp_path / "thresholds-epoch0003.json").read_text())
    assert doc["class_names"] == ["cat", "dog", "unicorn"] and doc["thresholds"] == [0.6, 0.3, None]
    conf = json.loads((tmp_path / "confusion-epoch0003.json").read_text())
    assert conf["labels"][-1] == "background" and conf["matrix"][0] == [2, 0, 0, 1]
    thresholds = find_thresholds(str(tmp_path / "run-0003.params"), str(tmp_path / "run"), ["cat", "dog", "unicorn"],
                                 str(tmp_path / "thresholds-epoch0003.json"))
    # float32 scores as the model gives them; 0.599996 rounds to the 0.6 the threshold was taken at
    dets = np.array([[0, 0, 1, 1, 0.59999, 0], [0, 0, 1, 1, 0.599996, 0], [0, 0, 1, 1, 0.3, 1],
                     [0, 0, 1, 1, 0.99, 2]], np.float32)
    np.testing.assert_array_equal(apply_thresholds(dets, thresholds), dets[1:3])     # unicorn: no threshold, off
    with pytest.raises(UserError, match=r"are for the classes \['cat', 'dog', 'unicorn'\], not \['cat', 'dog'\]"):
        find_thresholds("x.params", "exp", ["cat", "dog"], str(tmp_path / "thresholds-epoch0003.json"))


def test_where_score_auto_looks(tmp_path):
    exp = os.path.join("experiments", "run")
    assert threshold_candidates(os.path.join(exp, "run-0012.params"), exp) == [
        os.path.join(exp, "thresholds-epoch0012.json"), os.path.join(exp, "thresholds-run-0012.json")]
    weights = str(tmp_path / "best.params")
    with pytest.raises(UserError) as e:
        find_thresholds(weights, exp, ["cat"])
    msg = str(e.value)
    assert "\n" not in msg and os.path.join(exp, "thresholds-best.json") in msg
    assert str(tmp_path / "thresholds-best.json") in msg and "detection_test.py --analyze" in msg
