"""Roidb readers (COCO, VOC, both CSV forms), clipping/drop counts, missing images, the cache."""
import json
import os

import cv2
import numpy as np
import pytest

from conftest import run_script
from core.dataset import load_coco, load_csv, load_roidb, load_voc, save_roidb
from utils.errors import UserError


def _write_image(path, w, h):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))


def _coco(tmp_path):
    img_dir = tmp_path / "imgs"
    _write_image(img_dir / "a.jpg", 40, 30)
    _write_image(img_dir / "b.jpg", 20, 20)
    doc = {"images": [{"id": 11, "file_name": "a.jpg", "width": 40, "height": 30},
                      {"id": 12, "file_name": "b.jpg", "width": 20, "height": 20}],
           "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
           "annotations": [
               {"id": 1, "image_id": 11, "category_id": 7, "bbox": [2, 3, 10, 5], "iscrowd": 0, "area": 50},
               {"id": 2, "image_id": 11, "category_id": 3, "bbox": [30, 20, 20, 20], "iscrowd": 0, "area": 400},
               {"id": 3, "image_id": 11, "category_id": 3, "bbox": [5, 5, 0, 4], "iscrowd": 0, "area": 0},
               {"id": 4, "image_id": 11, "category_id": 3, "bbox": [50, 5, 4, 4], "iscrowd": 0, "area": 16},
               {"id": 5, "image_id": 12, "category_id": 7, "bbox": [1, 1, 4, 4], "iscrowd": 1, "area": 16}]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))
    return ann, img_dir


def test_coco_keeps_ids_clips_and_counts_drops(tmp_path):
    ann, img_dir = _coco(tmp_path)
    roidb, cats, stats = load_coco(str(ann), str(img_dir))
    assert cats == [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]   # index = contiguous class
    a, b = roidb
    assert (a["image_id"], a["width"], a["height"]) == (11, 40, 30)
    assert os.path.isabs(a["image"]) and a["image"].endswith("a.jpg")
    np.testing.assert_array_equal(a["boxes"], [[2, 3, 12, 8], [30, 20, 40, 30]])   # second clipped
    np.testing.assert_array_equal(a["classes"], [1, 0])
    assert a["boxes"].dtype == np.float32 and a["classes"].dtype == np.int32
    assert b["boxes"].shape == (0, 4) and b["classes"].shape == (0,)
    # zero-width and fully-outside boxes are degenerate; the crowd box is not trained on
    assert stats["dropped"] == {"degenerate": 2, "crowd": 1}
    assert stats["clipped"] == 1 and stats["boxes"] == 2 and stats["images"] == 2
    assert stats["per_class"] == {"cat": 1, "dog": 1}


def test_missing_images_listed(tmp_path):
    img_dir = tmp_path / "imgs"
    _write_image(img_dir / "ok.jpg", 10, 10)
    doc = {"images": [{"id": i, "file_name": "ok.jpg" if i == 0 else "m%d.jpg" % i,
                       "width": 10, "height": 10} for i in range(8)],
           "categories": [{"id": 1, "name": "x"}], "annotations": []}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(UserError) as e:
        load_coco(str(tmp_path / "ann.json"), str(img_dir))
    msg = str(e.value)
    assert "7 of 8 images are missing" in msg
    assert "m1.jpg" in msg and "m5.jpg" in msg and "m6.jpg" not in msg   # only the first five


def _voc_xml(name, objs, size=(50, 40)):
    parts = ["<annotation><filename>%s.jpg</filename><size><width>%d</width><height>%d</height>"
             "<depth>3</depth></size>" % (name, size[0], size[1])]
    for cls, box, difficult in objs:
        parts.append("<object><name>%s</name><difficult>%d</difficult><bndbox><xmin>%d</xmin>"
                     "<ymin>%d</ymin><xmax>%d</xmax><ymax>%d</ymax></bndbox></object>"
                     % ((cls, difficult) + tuple(box)))
    return "".join(parts) + "</annotation>"


def test_voc(tmp_path):
    root = tmp_path / "VOC"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main" / "train.txt").write_text("0001\n0002\n")
    (root / "Annotations" / "0001.xml").write_text(_voc_xml("0001", [
        ("dog", (1, 1, 10, 20), 0), ("cat", (5, 5, 60, 30), 0), ("dog", (2, 2, 8, 8), 1)]))
    (root / "Annotations" / "0002.xml").write_text(_voc_xml("0002", [("bird", (3, 3, 9, 9), 0)]))
    for n in ("0001", "0002"):
        _write_image(root / "JPEGImages" / (n + ".jpg"), 50, 40)
    roidb, cats, stats = load_voc(str(root), "train", classes=["dog", "cat"])
    assert [c["name"] for c in cats] == ["dog", "cat"] and [c["id"] for c in cats] == [1, 2]
    # 1-based inclusive VOC pixels -> pixel edges; the cat box is clipped to the 50 px width
    np.testing.assert_array_equal(roidb[0]["boxes"], [[0, 0, 10, 20], [4, 4, 50, 30]])
    np.testing.assert_array_equal(roidb[0]["classes"], [0, 1])
    assert roidb[1]["boxes"].shape == (0, 4)
    assert stats["dropped"] == {"degenerate": 0, "difficult": 1, "unknown_class": 1}
    # without --classes every name found becomes a class, sorted
    _, cats, _ = load_voc(str(root), "train")
    assert [c["name"] for c in cats] == ["bird", "cat", "dog"]


@pytest.mark.parametrize("header", [True, False])
def test_csv_rows(tmp_path, header):
    img_dir = tmp_path / "imgs"
    _write_image(img_dir / "a.jpg", 30, 20)
    _write_image(img_dir / "b.jpg", 30, 20)
    rows = ["a.jpg,1,2,11,12,zebra", "a.jpg,5,5,40,15,ant", "b.jpg,,,,,", "a.jpg,nan,1,3,4,ant",
            "a.jpg,6,6,6,9,ant"]
    text = ("image,x1,y1,x2,y2,label\n" if header else "") + "\n".join(rows) + "\n"
    (tmp_path / "boxes.csv").write_text(text)
    roidb, cats, stats = load_csv(str(tmp_path / "boxes.csv"), str(img_dir))
    assert [c["name"] for c in cats] == ["ant", "zebra"]
    assert (roidb[0]["width"], roidb[0]["height"]) == (30, 20)   # read from the file header
    np.testing.assert_array_equal(roidb[0]["boxes"], [[1, 2, 11, 12], [5, 5, 30, 15]])
    np.testing.assert_array_equal(roidb[0]["classes"], [1, 0])
    assert roidb[1]["boxes"].shape == (0, 4)                     # listed without boxes
    assert stats["dropped"]["degenerate"] == 2 and stats["clipped"] == 1
    roidb, cats, stats = load_csv(str(tmp_path / "boxes.csv"), str(img_dir), classes=["zebra"])
    assert [c["name"] for c in cats] == ["zebra"] and stats["dropped"]["unknown_class"] == 3


def test_csv_wheat(tmp_path):
    img_dir = tmp_path / "train"
    for n in ("aa", "bb", "cc"):
        _write_image(img_dir / (n + ".jpg"), 64, 48)
    text = ("image_id,width,height,bbox,source\n"
            'aa,64,48,"[10.0, 5.0, 20.0, 10.0]",usask_1\n'
            'aa,64,48,"[50, 40, 30, 30]",usask_1\n'
            'cc,64,48,"[0, 0, 4, 4]",arvalis_1\n')
    (tmp_path / "train.csv").write_text(text)
    roidb, cats, stats = load_csv(str(tmp_path / "train.csv"), str(img_dir))
    assert cats == [{"id": 1, "name": "wheat"}]
    by_name = {os.path.basename(r["image"]): r for r in roidb}
    assert set(by_name) == {"aa.jpg", "bb.jpg", "cc.jpg"}      # bb has no rows: an empty image
    np.testing.assert_array_equal(by_name["aa.jpg"]["boxes"], [[10, 5, 30, 15], [50, 40, 64, 48]])
    assert by_name["bb.jpg"]["boxes"].shape == (0, 4)
    assert (by_name["bb.jpg"]["width"], by_name["bb.jpg"]["height"]) == (64, 48)
    assert stats["boxes"] == 3 and stats["empty_images"] == 1 and stats["clipped"] == 1


def test_cache_round_trip_and_corruption(tmp_path):
    ann, img_dir = _coco(tmp_path)
    roidb, cats, _ = load_coco(str(ann), str(img_dir))
    roidb[0]["boxes"][0, 0] = np.float32(1.1)      # not exact in binary: must survive json
    path = str(tmp_path / "cache.json")
    save_roidb(path, roidb, cats, source="coco")
    doc = json.load(open(path))                     # plain json, no pickle
    assert doc["source"] == "coco" and doc["categories"] == cats
    again, cats2 = load_roidb(path)
    assert cats2 == cats and len(again) == len(roidb)
    for r, s in zip(roidb, again):
        assert r.keys() == s.keys()
        for k in r:
            if isinstance(r[k], np.ndarray):
                assert r[k].dtype == s[k].dtype and np.array_equal(r[k], s[k])
            else:
                assert r[k] == s[k]
    with open(path, "w") as f:
        f.write('{"version": 1, "categories": [')
    with pytest.raises(UserError, match="corrupt") as e:
        load_roidb(path)
    assert path in str(e.value)
    with pytest.raises(UserError, match="not found"):
        load_roidb(str(tmp_path / "nope.json"))


def test_create_roidb_cli(tmp_path):
    ann, img_dir = _coco(tmp_path)
    out = tmp_path / "cache" / "train.json"
    r = run_script(["scripts/create_roidb.py", "--format", "coco", "--ann", ann,
                    "--image-dir", img_dir, "--out", out], timeout=120)
    assert r.returncode == 0, r.stderr
    assert "2 images" in r.stdout and "cat=1, dog=1" in r.stdout and "degenerate=2" in r.stdout
    assert load_roidb(str(out))[1][0]["name"] == "cat"
    r = run_script(["scripts/create_roidb.py", "--format", "csv", "--ann", tmp_path / "none.csv",
                    "--image-dir", img_dir, "--out", out], timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error: CSV file not found")
