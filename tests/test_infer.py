"""detection_infer.py on odd images, class names, and the deploy-side resize (prepare_image)."""
import json
import os

import cv2
import numpy as np
import pytest

from conftest import run_script
from config.base import make_config
from utils.errors import UserError

CONFIG = "config/quickstart.py"
SETS = ["NeckParam.repeats=1", "HeadParam.repeats=1", "DatasetParam.image_size=(128,128)",
        "DatasetParam.val_roidb=", "DatasetParam.class_names=['circle','square','triangle','cross','star']"]
NAMES = ["circle", "square", "triangle", "cross", "star"]


def set_args(sets=SETS):
    return [a for s in sets for a in ("--set", s)]


def tiny_params(path, box_scale=1.0, class_names=None):
    """Random weights for CONFIG + SETS saved to `path` (with `class_names` recorded, if given).
    box_scale < 1 shrinks the box predictor, so boxes stay near their anchors instead of spanning
    ~exp(10) anchor sizes."""
    import mxnet as mx
    from models.efficientdet.builder import get_raw_symbol
    from utils.checkpoint import save_epoch_params
    from utils.config import load_config
    cfg = load_config(CONFIG, SETS, is_train=False)
    mod = mx.mod.Module(get_raw_symbol(cfg), data_names=["data"], label_names=None)
    mod.bind([("data", (cfg.General.batch_image, 3, 128, 128))], for_training=False)
    mx.random.seed(0)
    mod.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2.3))
    arg, aux = mod.get_params()
    arg["bbox_pred_weight"] *= box_scale
    save_epoch_params(str(path), arg, aux, class_names)
    return str(path)


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    return tiny_params(tmp_path_factory.mktemp("infer") / "tiny.params")


def test_odd_sizes_and_formats_give_pngs_and_json_inside_the_image(tmp_path, params):
    rng = np.random.RandomState(0)
    images = tmp_path / "images"
    images.mkdir()
    shapes = {"wide.png": (37, 211, 3), "tall.jpg": (500, 90, 3), "gray.png": (64, 80), "rgba.png": (90, 70, 4)}
    for name, shape in shapes.items():
        cv2.imwrite(str(images / name), rng.randint(0, 255, shape).astype(np.uint8))
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    (images / "notes.txt").write_text("not an image, not listed")
    out = tmp_path / "out"
    res = run_script(["detection_infer.py", "--config", CONFIG, "--params", params, "--input", images,
                      "--out", out, "--score", "0"] + set_args())
    assert res.returncode == 0, res.stdout + res.stderr
    skipped = [l for l in res.stdout.splitlines() if l.startswith("skipped")]
    assert len(skipped) == 1 and "broken.png" in skipped[0]
    assert "4 image(s)" in res.stdout and "1 unreadable image(s) skipped" in res.stdout
    assert sorted(os.listdir(out)) == sorted(n + ext for n in shapes for ext in (".json", ".png"))
    for name, shape in shapes.items():
        h, w = shape[:2]
        drawn = cv2.imread(str(out / (name + ".png")))
        assert drawn.shape == (h, w, 3)
        doc = json.loads((out / (name + ".json")).read_text())
        assert (doc["width"], doc["height"]) == (w, h) and doc["image"].endswith(name)
        dets = doc["detections"]
        assert dets, name                      # score 0 keeps every non-padding detection
        for d in dets:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert d["class_name"] == NAMES[d["class_id"]] and 0 <= d["score"] <= 1
        assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)


def test_batch_gives_the_detections_of_single_images(tmp_path, params):
    """--batch 3 over 4 readable images and a broken one (batches padded by repetition) writes the
    detections that one image per call writes."""
    rng = np.random.RandomState(1)
    images = tmp_path / "images"
    images.mkdir()
    for i, shape in enumerate([(60, 90, 3), (128, 40, 3), (77, 77, 3), (100, 128, 3)]):
        cv2.imwrite(str(images / ("%d.png" % i)), rng.randint(0, 255, shape).astype(np.uint8))
    (images / "1b.png").write_bytes(b"broken")
    docs = {}
    for batch in (1, 3):
        out = tmp_path / ("out%d" % batch)
        res = run_script(["detection_infer.py", "--config", CONFIG, "--params", params, "--input", images,
                          "--out", out, "--score", "0.05", "--batch", str(batch)] + set_args())
        assert res.returncode == 0, res.stdout + res.stderr
        assert "4 image(s)" in res.stdout and "1 unreadable image(s) skipped" in res.stdout
        docs[batch] = {n: json.loads((out / n).read_text())["detections"] for n in os.listdir(out) if n.endswith("json")}
    assert sorted(docs[1]) == sorted(docs[3]) and len(docs[1]) == 4
    for name, single in docs[1].items():
        batched = docs[3][name]
        assert len(single) == len(batched) > 0, name
        np.testing.assert_allclose([d["box"] + [d["score"]] for d in batched],
                                   [d["box"] + [d["score"]] for d in single], atol=0.02)


def test_missing_input_is_one_line_and_exit_2(tmp_path, params):
    res = run_script(["detection_infer.py", "--config", CONFIG, "--params", params, "--input",
                      tmp_path / "nowhere", "--out", tmp_path / "out"] + set_args())
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: input not found: %s" % (tmp_path / "nowhere")]


def test_class_names_from_config_roidb_or_numbers(tmp_path):
    from core.dataset import save_roidb
    from detection_infer import class_names
    assert class_names(make_config(False, {"DatasetParam.num_classes": 2})) == ["0", "1"]
    cats = [{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}]
    save_roidb(str(tmp_path / "val.json"), [], cats, "coco")
    cfg = make_config(False, {"DatasetParam.num_classes": 2, "DatasetParam.val_roidb": str(tmp_path / "val.json")})
    assert class_names(cfg) == ["cat", "dog"]
    cfg.DatasetParam.class_names = ["a", "b"]
    assert class_names(cfg) == ["a", "b"]
    cfg.DatasetParam.class_names = ["a"]
    with pytest.raises(UserError, match="1 names for 2 classes"):
        class_names(cfg)


@pytest.mark.parametrize("hw", [(37, 211), (500, 90), (128, 128)])
def test_prepare_image_is_the_eval_transform_before_normalisation(tmp_path, hw):
    """Normalising prepare_image's output (mean padding -> 0) gives the eval transform's input."""
    from core.pipeline import build_transform
    from core.transforms import prepare_image
    cfg = make_config(False, {"DatasetParam.image_size": (96, 128)})
    image = np.random.RandomState(1).randint(0, 255, hw + (3,)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), image[:, :, ::-1])
    want = build_transform(cfg, False)({"image": str(tmp_path / "x.png"), "image_id": 0,
                                        "boxes": np.zeros((0, 4)), "classes": np.zeros(0)})
    raw, scale = prepare_image(image, (96, 128), cfg.NormalizeParam.mean)
    mean = np.array(cfg.NormalizeParam.mean, np.float32)[:, None, None]
    got = (raw - mean) * (1 / np.array(cfg.NormalizeParam.std, np.float32))[:, None, None]
    assert scale == pytest.approx(want["scale"])
    np.testing.assert_allclose(got, want["data"], atol=1e-5)
