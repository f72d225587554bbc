"""The LabelImg folder, YOLO txt and TensorFlow CSV readers on real files made here, with their
counted drops and the bad input that must be one clear line."""
import os

import cv2
import numpy as np
import pytest

from conftest import run_script
from core.dataset import load_csv, load_roidb
from core.readers import load_labelimg, load_yolo
from utils.errors import UserError


def _image(path, w, h):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))


def _xml(filename, objs, size=(64, 48)):
    body = "".join("<object><name>%s</name><difficult>%d</difficult><bndbox><xmin>%g</xmin><ymin>%g</ymin>"
                   "<xmax>%g</xmax><ymax>%g</ymax></bndbox></object>" % ((n, d) + tuple(b)) for n, b, d in objs)
    return ("<annotation><folder>x</folder><filename>%s</filename><path>/elsewhere/%s</path><size><width>%d"
            "</width><height>%d</height><depth>3</depth></size>%s</annotation>"
            % ((filename, filename) + size + (body,)))


def one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_labelimg_folder(tmp_path):
    d = tmp_path / "photos"
    _image(d / "a.jpg", 64, 48)
    _image(d / "b.png", 64, 48)
    _image(d / "c.jpg", 64, 48)                                  # never saved in LabelImg: no xml
    _image(d / "renamed.jpg", 64, 48)
    (d / "a.xml").write_text(_xml("a.jpg", [("dog", (1, 1, 20, 30), 0), ("cat", (30, 10, 70, 40), 0),
                                            ("dog", (5, 5, 9, 9), 1), ("bird", (2, 2, 6, 6), 0)]))
    (d / "b.xml").write_text(_xml("b.png", []))                  # saved without boxes: an empty image
    (d / "renamed.xml").write_text(_xml("old_name.jpg", [("cat", (11, 11, 20, 20), 0)]))   # image beside wins
    roidb, cats, stats = load_labelimg(str(d), classes=["dog", "cat"])
    assert [c["name"] for c in cats] == ["dog", "cat"]
    by_name = {os.path.basename(r["image"]): r for r in roidb}
    assert sorted(by_name) == ["a.jpg", "b.png", "renamed.jpg"]
    np.testing.assert_array_equal(by_name["a.jpg"]["boxes"], [[0, 0, 20, 30], [29, 9, 64, 40]])  # 1-based, clipped
    np.testing.assert_array_equal(by_name["a.jpg"]["classes"], [0, 1])
    np.testing.assert_array_equal(by_name["renamed.jpg"]["boxes"], [[10, 10, 20, 20]])
    assert by_name["b.png"]["boxes"].shape == (0, 4)
    assert stats["dropped"] == {"degenerate": 0, "difficult": 1, "unknown_class": 1}
    assert stats["clipped"] == 1 and stats["skipped_images"] == {"size_mismatch": 0, "no_xml": 1}
    (d / "b.xml").write_text("<annotation><object>")
    with pytest.raises(UserError) as e:
        load_labelimg(str(d))
    assert "b.xml is not valid xml" in one_line(e)
    empty = tmp_path / "empty"
    _image(empty / "x.jpg", 8, 8)
    with pytest.raises(UserError) as e:
        load_labelimg(str(empty))
    assert "holds no .xml annotations" in one_line(e)


def _yolo_set(tmp_path):
    root = tmp_path / "yolo"
    _image(root / "images" / "a.jpg", 100, 50)
    _image(root / "images" / "b.jpg", 40, 40)                   # no txt: a background image
    (root / "labels").mkdir()
    (root / "labels" / "classes.txt").write_text("person\ncar\n\n")
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.95 0.1 0.2 0.2\n\n1 0.3 0.3 0 0.1\n")
    (root / "labels" / "gone.txt").write_text("0 0.5 0.5 0.1 0.1\n")   # its image was deleted
    return root


def test_yolo_sibling_labels_classes_file_and_drops(tmp_path):
    root = _yolo_set(tmp_path)
    roidb, cats, stats = load_yolo(str(root / "images"))
    assert [c["name"] for c in cats] == ["person", "car"]
    a, b = roidb
    # cx, cy, w, h normalised by 100 x 50; the car crosses the right edge (clipped); w = 0 is degenerate
    np.testing.assert_allclose(a["boxes"], [[40, 15, 60, 35], [85, 0, 100, 10]], atol=1e-4)
    np.testing.assert_array_equal(a["classes"], [0, 1])
    assert (a["width"], a["height"]) == (100, 50) and b["boxes"].shape == (0, 4)
    assert stats["dropped"] == {"degenerate": 1, "unknown_class": 0} and stats["clipped"] == 1
    assert stats["skipped_images"]["no_image"] == 1 and stats["empty_images"] == 1
    _, cats, stats = load_yolo(str(root / "images"), classes=["car"])
    assert [c["name"] for c in cats] == ["car"] and stats["dropped"]["unknown_class"] == 1


@pytest.mark.parametrize("text,message", [
    ("0 0.5 0.5 0.2\n", "a.txt line 1: expected 'class cx cy w h'"),
    ("0 0.5 0.5 0.2 0.4\nperson 0.5 0.5 0.2 0.4\n", "a.txt line 2: expected 'class cx cy w h'"),
    ("2 0.5 0.5 0.2 0.4\n", "a.txt line 1: class 2 is not in the classes file (2 names: 0..1)")])
def test_yolo_bad_lines_are_one_line(tmp_path, text, message):
    root = _yolo_set(tmp_path)
    (root / "labels" / "a.txt").write_text(text)
    with pytest.raises(UserError) as e:
        load_yolo(str(root / "images"))
    assert message in one_line(e)


def test_yolo_cli_report_and_missing_classes_file(tmp_path):
    root = _yolo_set(tmp_path)
    out = tmp_path / "roidb.json"
    res = run_script(["scripts/create_roidb.py", "--format", "yolo", "--image-dir", root / "images",
                      "--out", out], timeout=120)
    assert res.returncode == 0, res.stderr
    assert "yolo: 2 images (1 empty), 2 boxes; per class: person=1, car=1; clipped 1; dropped: degenerate=1, " \
           "unknown_class=0; images skipped: no_image=1" in res.stdout
    assert [c["name"] for c in load_roidb(str(out))[1]] == ["person", "car"]
    os.remove(root / "labels" / "classes.txt")
    with pytest.raises(UserError) as e:
        load_yolo(str(root / "images"))
    assert one_line(e) == ("YOLO classes file not found: %s (one class name a line, in class-id order; pass "
                           "--classes-file)" % (root / "labels" / "classes.txt"))


TF_HEADER = "filename,width,height,class,xmin,ymin,xmax,ymax\n"


def test_tf_csv_recognised_by_its_header(tmp_path):
    img = tmp_path / "imgs"
    _image(img / "a.jpg", 64, 48)
    _image(img / "b.jpg", 64, 48)
    _image(img / "c.jpg", 30, 30)
    (tmp_path / "train_labels.csv").write_text(TF_HEADER + "a.jpg,64,48,cat,1,2,20,30\na.jpg,64,48,dog,40,10,70,40\n"
                                               "b.jpg,64,48,emu,1,1,5,5\nc.jpg,64,48,cat,1,1,5,5\n")
    roidb, cats, stats = load_csv(str(tmp_path / "train_labels.csv"), str(img), classes=["cat", "dog"])
    assert [c["name"] for c in cats] == ["cat", "dog"]
    assert [os.path.basename(r["image"]) for r in roidb] == ["a.jpg", "b.jpg"]   # c.jpg: not its stated size
    np.testing.assert_array_equal(roidb[0]["boxes"], [[1, 2, 20, 30], [40, 10, 64, 40]])   # pixel edges, clipped
    np.testing.assert_array_equal(roidb[0]["classes"], [0, 1])
    assert stats["dropped"] == {"degenerate": 0, "unknown_class": 1} and stats["clipped"] == 1
    assert stats["skipped_images"] == {"size_mismatch": 1}
    for rows, message in [("a.jpg,64,48,cat,1,2,x,30\n", "line 2: expected filename,width,height,class,xmin"),
                          ("a.jpg,64,48,cat,1,2,20\n", "line 2: expected filename,width,height,class,xmin"),
                          ("a.jpg,64,48,cat,1,2,20,30\na.jpg,60,48,cat,1,2,20,30\n",
                           "line 3: a.jpg is 60x48 here but 64x48 on an earlier line")]:
        (tmp_path / "bad.csv").write_text(TF_HEADER + rows)
        with pytest.raises(UserError) as e:
            load_csv(str(tmp_path / "bad.csv"), str(img))
        assert message in one_line(e)
