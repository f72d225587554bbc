"""Synthetic shapes dataset: determinism, valid COCO, tight boxes, the CLI."""
import os

import numpy as np

from conftest import run_script
from core.dataset import load_coco
from core.synthetic import CLASSES, COLORS, render_image, make_synthetic


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    make_synthetic(str(tmp_path / "a"), 6, seed=3, val_fraction=0.34, size=96)
    make_synthetic(str(tmp_path / "b"), 6, seed=3, val_fraction=0.34, size=96)
    make_synthetic(str(tmp_path / "c"), 6, seed=4, val_fraction=0.34, size=96)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert len(a) == 8 and a == b                    # 6 jpgs + train.json + val.json
    assert all(a[k] != c[k] for k in a if k.endswith(".jpg"))


def test_coco_splits_load(tmp_path):
    paths = make_synthetic(str(tmp_path), 10, seed=0, val_fraction=0.2, size=128)
    train, cats, _ = load_coco(paths["train"], paths["image_dir"])
    val, _, stats = load_coco(paths["val"], paths["image_dir"])
    assert (len(train), len(val)) == (8, 2)
    assert [c["name"] for c in cats] == list(CLASSES) and len(CLASSES) >= 4
    assert sum(stats["dropped"].values()) == 0 and stats["clipped"] == 0
    for r in train + val:
        assert 1 <= len(r["boxes"]) <= 8
        assert (r["boxes"][:, :2] >= 0).all() and (r["boxes"][:, 2] <= 128).all()


def test_boxes_are_tight_and_sizes_vary():
    """For each box, the pixels of its class colour (unique to the class) span the box exactly,
    checked where no other object comes within 2 px of it."""
    sides, checked = [], 0
    for i in range(30):
        img, boxes, classes = render_image(np.random.RandomState([7, i]), size=320)
        for k, (box, cls) in enumerate(zip(boxes.astype(int), classes)):
            sides.append(max(box[2] - box[0], box[3] - box[1]))
            other = np.delete(boxes, k, 0)
            if ((other[:, 0] < box[2] + 2) & (other[:, 2] > box[0] - 2)
                    & (other[:, 1] < box[3] + 2) & (other[:, 3] > box[1] - 2)).any():
                continue
            x0, y0 = max(box[0] - 2, 0), max(box[1] - 2, 0)
            crop = img[y0:box[3] + 2, x0:box[2] + 2].astype(int)
            mask = (np.abs(crop - np.array(COLORS[cls])).max(-1) < 40)
            ys, xs = np.nonzero(mask)
            assert [xs.min() + x0, ys.min() + y0, xs.max() + x0 + 1, ys.max() + y0 + 1] == list(box)
            checked += 1
    assert checked >= 50
    assert min(sides) <= 20 and max(sides) >= 90          # small and large objects both occur
    assert 30 <= np.median(sides) <= 80                   # not tiny on average


def test_cli(tmp_path):
    r = run_script(["scripts/make_synthetic.py", "--out", tmp_path, "--num-images", 3, "--seed", 1,
                    "--size", 64], timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "images")) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    r = run_script(["scripts/make_synthetic.py", "--out", tmp_path, "--num-images", 0], timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: --num-images")
