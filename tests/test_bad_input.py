"""Issue 14, the data side: every bad input is one clear line (exit 2) or a counted, named skip, and
no script replaces one of its inputs. Each test makes its bad input itself, in tmp_path."""
import gc
import importlib.util
import json
import logging
import os
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_script
from config.base import make_config
from core.dataset import format_stats, load_coco, load_csv, save_roidb
from core.loader import DetectionLoader
from core.roidb import load_config_roidb
from core.image_io import ImageReadError, read_image
from core.transforms import DetTransform
from utils.checkpoint import load_params, read_params
from utils.config import load_config
from utils.errors import UserError

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def _image(path, w, h, seed=0):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    cv2.imwrite(str(path), np.random.RandomState(seed).randint(0, 255, (h, w, 3)).astype(np.uint8))
    return str(path)


def _coco(tmp_path, images, anns=None, categories=None):
    doc = {"images": [{"id": i + 1, "file_name": name, "width": w, "height": h}
                      for i, (name, w, h) in enumerate(images)],
           "annotations": anns if anns is not None else [
               {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 10, 10]} for i in range(len(images))],
           "categories": categories or [{"id": 1, "name": "thing"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return str(path)


def _script_main(name, argv, monkeypatch):
    """Run scripts/<name>.py's main() in this process with `argv`."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [name] + [str(a) for a in argv])
    return module.main()


def _one_line_error(res, *parts):
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def _loader(roidb, **kw):
    return DetectionLoader(roidb, DetTransform((64, 64), MEAN, STD, train=False), batch_size=2, **kw)


# ---- 1. no output replaces an input ---------------------------------------------------------------

def test_create_roidb_refuses_out_equal_to_ann(tmp_path):
    ann = _coco(tmp_path, [("a.jpg", 40, 30)])
    _image(tmp_path / "imgs" / "a.jpg", 40, 30)
    before = open(ann, "rb").read()
    same = os.path.join(str(tmp_path), "imgs", "..", "ann.json")     # another spelling of the same file
    res = run_script(["scripts/create_roidb.py", "--format", "coco", "--ann", ann, "--image-dir",
                      tmp_path / "imgs", "--out", same])
    _one_line_error(res, "--out", "is also --ann")
    assert open(ann, "rb").read() == before


def test_ensemble_refuses_out_equal_to_an_input(tmp_path):
    roidb = str(tmp_path / "roidb.json")
    save_roidb(roidb, [{"image": "a.jpg", "width": 40, "height": 30, "image_id": 1,
                        "boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int32)}],
               [{"id": 1, "name": "thing"}])
    inputs = []
    for k in range(2):
        inputs.append(str(tmp_path / ("r%d.json" % k)))
        with open(inputs[-1], "w") as f:
            json.dump([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5}], f)
    before = open(inputs[1], "rb").read()
    res = run_script(["scripts/ensemble.py", "--inputs"] + inputs + ["--roidb", roidb, "--out", inputs[1]])
    _one_line_error(res, "is also --inputs")
    assert open(inputs[1], "rb").read() == before


def test_every_other_writer_refuses_its_inputs(tmp_path, monkeypatch):
    folds = tmp_path / "folds"
    folds.mkdir()
    roidb = str(folds / "fold0_val.json")          # what kfold would write first
    save_roidb(roidb, [{"image": "a%d.jpg" % i, "width": 4, "height": 4, "image_id": i, "boxes": np.zeros((0, 4)),
                        "classes": np.zeros(0, np.int32)} for i in range(2)], [{"id": 1, "name": "thing"}])
    params = tmp_path / "d0-0000.params"
    params.write_bytes(b"weights the user keeps")
    os.symlink(str(params), str(tmp_path / "link.params"))
    png = _image(tmp_path / "imgs" / "a.png", 40, 30)
    images = str(tmp_path / "images.json")
    save_roidb(images, [{"image": png, "width": 40, "height": 30, "image_id": 1,
                         "boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int32)}],
               [{"id": 1, "name": "thing"}])
    cases = [("kfold", ["--roidb", roidb, "--k", "2", "--out", folds]),
             ("show_augment", ["--config", "config/quickstart.py", "--set", "DatasetParam.train_roidb=" + images,
                               "--out", png]),
             ("strip_head", ["--src", params, "--out", tmp_path / "link.params"]),
             ("export", ["--config", "config/quickstart.py", "--params", params, "--out", tmp_path / "d0"]),
             ("convert_weights", ["--src", params, "--out", tmp_path / "d0", "--config", "config/quickstart.py"]),
             ("necks_report", ["--out", tmp_path / "a.md", "--plot", tmp_path / "a.md", "--load", "0",
                               "x=" + str(tmp_path)])]
    for name, argv in cases:
        with pytest.raises(UserError, match="is also") as e:
            _script_main(name, argv, monkeypatch)
        assert "choose another path" in str(e.value), name
    assert params.read_bytes() == b"weights the user keeps" and cv2.imread(png).shape == (30, 40, 3)
    assert os.listdir(str(folds)) == ["fold0_val.json"] and not os.path.exists(str(tmp_path / "a.md"))


def test_training_refuses_to_overwrite_its_pretrained_weights(tmp_path, monkeypatch):
    import detection_train
    monkeypatch.chdir(str(tmp_path))
    os.makedirs("experiments/ft")
    with open("experiments/ft/ft-0003.params", "wb") as f:
        f.write(b"epoch 3 of an earlier run")
    cfg = load_config(os.path.join(REPO, "config", "quickstart.py"), [
        "General.name=ft", "ModelParam.pretrain.prefix=experiments/ft/ft", "ModelParam.pretrain.epoch=3"])
    with pytest.raises(UserError, match="this run's epoch file experiments/ft/ft-0003.params is also "
                                        "ModelParam.pretrain"):
        detection_train.initial_params(cfg, None, {}, None)


# ---- 2. decoded size against the roidb; EXIF orientation -----------------------------------------

def _exif_jpeg(path, w, h, orientation):
    """A JPEG whose stored pixels are w x h, with an EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(str(path), exif=exif.tobytes())
    return str(path)


def test_exif_rotated_image_labelled_on_stored_pixels_is_skipped_and_named(tmp_path, caplog):
    (tmp_path / "imgs").mkdir()
    _exif_jpeg(tmp_path / "imgs" / "rot.jpg", 50, 30, 6)      # decodes as 30 x 50 (cv2 honours EXIF)
    _image(tmp_path / "imgs" / "ok.jpg", 40, 30)
    ann = _coco(tmp_path, [("rot.jpg", 50, 30), ("ok.jpg", 40, 30)])
    with caplog.at_level(logging.WARNING, logger="core.dataset"):
        roidb, _, stats = load_coco(ann, str(tmp_path / "imgs"))
    assert [os.path.basename(r["image"]) for r in roidb] == ["ok.jpg"]
    assert stats["skipped_images"] == {"size_mismatch": 1} and "images skipped: size_mismatch=1" in format_stats(stats)
    warning = [r.getMessage() for r in caplog.records if "annotated size" in r.getMessage()]
    assert len(warning) == 1 and "rot.jpg is 50x30 in the annotation but decodes as 30x50 (EXIF orientation 6)" \
        in warning[0]


def test_csv_sizes_follow_exif_and_oriented_images_are_named(tmp_path, caplog):
    (tmp_path / "imgs").mkdir()
    _exif_jpeg(tmp_path / "imgs" / "rot.jpg", 50, 30, 6)
    (tmp_path / "b.csv").write_text("rot.jpg,1,1,20,40,cat\n")
    with caplog.at_level(logging.WARNING, logger="core.dataset"):
        roidb, _, _ = load_csv(str(tmp_path / "b.csv"), str(tmp_path / "imgs"))
    assert (roidb[0]["width"], roidb[0]["height"]) == (30, 50)       # the displayed frame
    assert read_image(roidb[0]["image"]).shape[:2] == (50, 30)
    assert any("rot.jpg (EXIF orientation 6)" in r.getMessage() for r in caplog.records)


def test_image_resized_after_the_roidb_was_made_is_a_counted_skip(tmp_path, caplog):
    (tmp_path / "imgs").mkdir()
    for n in "abc":
        _image(tmp_path / "imgs" / (n + ".png"), 40, 30)
    roidb, _, _ = load_coco(_coco(tmp_path, [(n + ".png", 40, 30) for n in "abc"]), str(tmp_path / "imgs"))
    _image(tmp_path / "imgs" / "b.png", 80, 60)                      # resized after labelling
    loader = _loader(roidb)
    with caplog.at_level(logging.WARNING, logger="core.loader"):
        ids = [i for batch in loader for i in batch.image_ids[:2 - batch.pad]]
    loader.close()
    assert 2 not in ids and loader.skipped == 1
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "core.loader"]
    assert "b.png decodes as 80x60 but its roidb record says 40x30" in msg and "c.png, instead" in msg


# ---- 3. truncated JPEG -------------------------------------------------------------------------

def test_truncated_jpeg_is_detected_but_trailing_bytes_are_not(tmp_path):
    data = open(_image(tmp_path / "full.jpg", 64, 48), "rb").read()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    (tmp_path / "tail.jpg").write_bytes(data + b"\x00trailer after the image")
    with pytest.raises(ImageReadError, match="cut.jpg is a truncated JPEG"):
        read_image(str(tmp_path / "cut.jpg"))
    assert read_image(str(tmp_path / "tail.jpg")).shape == (48, 64, 3)
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty file"):
        read_image(str(tmp_path / "zero.jpg"))


# ---- 14. the skip counter counts files, names them and their substitutes --------------------------

def test_three_bad_files_over_two_epochs_are_three_skips_named_once(tmp_path, caplog):
    for i in range(6):
        _image(tmp_path / "imgs" / ("%d.jpg" % i), 40, 30)
    roidb, _, _ = load_coco(_coco(tmp_path, [("%d.jpg" % i, 40, 30) for i in range(6)]), str(tmp_path / "imgs"))
    good = open(roidb[0]["image"], "rb").read()
    (tmp_path / "imgs" / "1.jpg").write_bytes(b"")                   # zero bytes
    (tmp_path / "imgs" / "3.jpg").write_bytes(good[:len(good) // 2])  # truncated: cv2 alone would read it
    os.remove(str(tmp_path / "imgs" / "4.jpg"))                      # gone
    loader = _loader(roidb, num_workers=2)
    with caplog.at_level(logging.WARNING, logger="core.loader"):
        for _ in range(2):
            assert all(b.data[0].shape[0] == 2 for b in loader)
            loader.reset()
    loader.close()
    assert loader.skipped == 3
    messages = [r.getMessage() for r in caplog.records if r.name == "core.loader"]
    assert len(messages) == 3
    for name, substitute in (("1.jpg", "2.jpg"), ("3.jpg", "5.jpg"), ("4.jpg", "5.jpg")):
        (msg,) = [m for m in messages if "/%s" % name in m.split(";")[0]]
        assert msg.endswith("takes the next readable image, %s, instead" % (tmp_path / "imgs" / substitute))


def test_failed_loader_constructor_raises_one_error_and_nothing_from_del(tmp_path, monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    roidb = [{"image": str(tmp_path / ("gone%d.jpg" % i)), "width": 4, "height": 4, "image_id": i,
              "boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int32)} for i in range(3)]

    def make():
        try:
            _loader(roidb)
        except UserError as e:
            return str(e)
    assert "3 consecutive images" in make()
    gc.collect()
    assert unraisable == []


# ---- 4, 15. CSV: headers by name, line numbers, empty files ---------------------------------------

def test_csv_header_is_recognised_by_its_names_not_by_parsing(tmp_path):
    _image(tmp_path / "imgs" / "a.jpg", 30, 20)
    (tmp_path / "h.csv").write_text("file,xmin,ymin,xmax,ymax,class\na.jpg,1,2,11,12,cat\n")
    roidb, cats, _ = load_csv(str(tmp_path / "h.csv"), str(tmp_path / "imgs"))
    assert len(roidb[0]["boxes"]) == 1 and cats[0]["name"] == "cat"
    (tmp_path / "n.csv").write_text("a.jpg,1O,2,11,12,cat\na.jpg,5,5,9,9,cat\n")   # letter O, no header
    with pytest.raises(UserError, match=r"n.csv line 1: box fields must be numbers.*a header must name them"):
        load_csv(str(tmp_path / "n.csv"), str(tmp_path / "imgs"))


def test_csv_errors_give_the_line_of_the_file(tmp_path):
    _image(tmp_path / "imgs" / "a.jpg", 30, 20)
    (tmp_path / "b.csv").write_text("image,x1,y1,x2,y2,label\n\na.jpg,1,2,11,12,cat\n\na.jpg,1,2,x,12,cat\n")
    with pytest.raises(UserError, match="b.csv line 5: box fields"):
        load_csv(str(tmp_path / "b.csv"), str(tmp_path / "imgs"))
    (tmp_path / "w.csv").write_text('image_id,width,height,bbox,source\naa,64,48,"[1, 2, 3, 4]",x\naa,64,48,oops,x\n')
    with pytest.raises(UserError, match="w.csv line 3: expected image_id"):
        load_csv(str(tmp_path / "w.csv"), str(tmp_path / "imgs"))


@pytest.mark.parametrize("text", ["", "\n\n", "image,x1,y1,x2,y2,label\n"])
def test_empty_csv_says_0_images(tmp_path, text):
    (tmp_path / "e.csv").write_text(text)
    with pytest.raises(UserError, match="e.csv has 0 images"):
        load_csv(str(tmp_path / "e.csv"), str(tmp_path))


def test_empty_csv_cli_is_one_line_about_images(tmp_path):
    (tmp_path / "e.csv").write_text("")
    res = run_script(["scripts/create_roidb.py", "--format", "csv", "--ann", tmp_path / "e.csv",
                      "--image-dir", tmp_path, "--out", tmp_path / "out.json"])
    _one_line_error(res, "e.csv has 0 images")
    assert not (tmp_path / "out.json").exists()


# ---- 7. a training set without boxes ------------------------------------------------------------

def test_training_roidb_without_any_box_is_refused(tmp_path):
    path = str(tmp_path / "train.json")
    save_roidb(path, [{"image": "a.jpg", "width": 4, "height": 4, "image_id": i, "boxes": np.zeros((0, 4), np.float32),
                       "classes": np.zeros(0, np.int32)} for i in range(3)], [{"id": 1, "name": "thing"}])
    cfg = make_config(True, {"DatasetParam.train_roidb": path, "DatasetParam.val_roidb": path,
                             "DatasetParam.num_classes": 1})
    with pytest.raises(UserError, match="no image of the training roidb .* has a box \\(3 images\\)"):
        load_config_roidb(cfg, "train")
    assert len(load_config_roidb(cfg, "val")[0]) == 3           # evaluation may hold empty images
    save_roidb(path, [], [{"id": 1, "name": "thing"}])
    with pytest.raises(UserError, match="has 0 images"):
        load_config_roidb(cfg, "val")


# ---- 8. COCO json that pycocotools would trip on -------------------------------------------------

@pytest.mark.parametrize("doc,message", [
    ([{"id": 1}], "is not a COCO instances json: expected an object with the lists images, annotations and "
                  "categories, got a json list"),
    ({"images": [{"id": 1, "width": 4, "height": 4}], "annotations": [], "categories": []},
     'ann.json: 1 of 1 images lack an "id" and a "file_name", e.g. images[0]'),
    ({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "x"}],
      "annotations": [{"id": 7, "image_id": 1, "category_id": 12, "bbox": [0, 0, 2, 2]}]},
     "1 annotations have a category_id that is not in categories, e.g. annotation 7 with category_id 12 "
     "(categories ids: 1)"),
    ({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "x"}],
      "annotations": [{"id": 7, "image_id": 5, "category_id": 1, "bbox": [0, 0, 2, 2]}]},
     "annotation 7 with image_id 5"),
])
def test_bad_coco_json_is_one_error(tmp_path, doc, message):
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(UserError) as e:
        load_coco(str(tmp_path / "ann.json"), str(tmp_path))
    assert message in str(e.value)


def test_unknown_category_id_cli_is_one_line(tmp_path):
    _image(tmp_path / "imgs" / "a.jpg", 40, 30)
    ann = _coco(tmp_path, [("a.jpg", 40, 30)], anns=[{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4]}])
    res = run_script(["scripts/create_roidb.py", "--format", "coco", "--ann", ann, "--image-dir", tmp_path / "imgs",
                      "--out", tmp_path / "out.json"])
    _one_line_error(res, "category_id that is not in categories", "category_id 3")


# ---- 9. config values that cannot work -----------------------------------------------------------

@pytest.mark.parametrize("item,message", [
    ("General.batch_image=0", "General.batch_image=0 is out of range: must be an integer >= 1"),
    ("General.batch_image=-2", "General.batch_image=-2 is out of range"),
    ("DatasetParam.image_size=(0, 512)", "DatasetParam.image_size=(0, 512) is out of range: must be two integers"),
    ("DatasetParam.image_size=(512, -8)", "DatasetParam.image_size=(512, -8) is out of range"),
    ("OptimizeParam.lr_per_64=-0.01", "OptimizeParam.lr_per_64=-0.01 is out of range: must be a number >= 0"),
    ("TestParam.score_thresh=1.5", "TestParam.score_thresh=1.5 is out of range: must be a number in [0, 1]"),
    ("TestParam.topk_candidates=0", "TestParam.topk_candidates=0 is out of range: must be an integer >= 1"),
    ("TestParam.topk_candidates=4000000", "TestParam.topk_candidates=4000000 is out of range: must be at most "
                                          "3355443 with 5 classes (float32 indices)"),
])
def test_config_values_that_cannot_work(item, message):
    with pytest.raises(UserError) as e:
        load_config(os.path.join(REPO, "config", "quickstart.py"), [item])
    assert str(e.value) == message or str(e.value).startswith(message)


# ---- 13. not a params file ---------------------------------------------------------------------

def test_not_a_params_file_says_so(tmp_path):
    np.savez(str(tmp_path / "weights.npz"), a=np.zeros(3))
    (tmp_path / "notes.params").write_text("hello")
    (tmp_path / "empty.params").write_bytes(b"")
    for name in ("weights.npz", "notes.params", "empty.params"):
        with pytest.raises(UserError) as e:
            load_params(str(tmp_path / name))
        assert str(e.value).startswith("%s is not an MXNet .params file (mx.nd.load: " % (tmp_path / name))
        assert "Traceback" not in str(e.value) and "\n" not in str(e.value)
    res = run_script(["scripts/strip_head.py", "--src", tmp_path / "notes.params", "--out", tmp_path / "o.params"])
    _one_line_error(res, "notes.params is not an MXNet .params file (mx.nd.load: Invalid NDArray file format)")
    with pytest.raises(UserError, match="not found"):
        read_params(str(tmp_path / "missing.params"))
