"""K-fold: stratified split (scripts/kfold.py), a 2-fold fine-tune + WBF ensemble run of
scripts/wrs/kfold.sh on tiny data, and WBF fusing noisy models into a better one (scripts/ensemble.py)."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np

from conftest import REPO, run_script
from core.dataset import load_coco, load_roidb, save_roidb
from core.evaluate import evaluate
from core.synthetic import make_synthetic
from test_finetune import WRS_TINY, _random_params
from utils.checkpoint import save_epoch_params


def _kfold_module():
    spec = importlib.util.spec_from_file_location("kfold", os.path.join(REPO, "scripts", "kfold.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _presence(label_sets, fold, k, num_classes):
    """(C, k) images containing class c in fold j."""
    return np.array([[sum(1 for s, f in zip(label_sets, fold) if f == j and c in s) for j in range(k)]
                     for c in range(num_classes)])


def test_stratified_folds_balance_class_presence():
    stratified_folds = _kfold_module().stratified_folds
    rng = np.random.RandomState(1)
    freq = np.array([0.03, 0.08, 0.2, 0.4, 0.6])          # rare to common classes
    label_sets = [set(np.flatnonzero(rng.uniform(size=5) < freq).tolist()) for _ in range(150)]
    for k in (2, 3, 5):
        fold = stratified_folds(label_sets, 5, k, seed=0)
        assert set(fold.tolist()) == set(range(k))          # every image in exactly one fold
        assert np.abs(np.bincount(fold) - 150 / k).max() <= 2
        counts = _presence(label_sets, fold, k, 5)
        total = counts.sum(1, keepdims=True)
        spread = np.abs(counts - total / k)
        assert spread[:2].max() <= 1                        # rare classes: as even as possible
        random_split = _presence(label_sets, rng.randint(k, size=150), k, 5)
        assert spread.max() < np.abs(random_split - total / k).max()
        assert np.array_equal(fold, stratified_folds(label_sets, 5, k, seed=0))   # seeded


def _write_dataset(tmp_path, num_images, val_fraction):
    out = make_synthetic(str(tmp_path / "wrs"), num_images, seed=11, val_fraction=val_fraction, size=128)
    paths = {}
    for split in ("train", "val"):
        roidb, categories, _ = load_coco(out[split], out["image_dir"])
        paths[split] = str(tmp_path / ("%s_roidb.json" % split))
        save_roidb(paths[split], roidb, categories, "coco")
    return paths


def test_two_fold_finetune_and_ensemble(tmp_path):
    paths = _write_dataset(tmp_path, 10, 0.4)
    arg, aux = _random_params("config/efficientdet_b4_wrs.py", WRS_TINY, 90)
    coco = str(tmp_path / "coco-0000.params")
    save_epoch_params(coco, arg, aux)
    name = "test_kfold_%d" % os.getpid()
    exps = [str(tmp_path / "experiments" / n) for n in (name, name + "_fold0", name + "_fold1")]   # kfold.sh's cwd
    sets = [a for s in WRS_TINY + ["General.batch_image=2"] for a in ("--set", s)]
    try:
        res = subprocess.run(["bash", os.path.join(REPO, "scripts/wrs/kfold.sh"), "--k", "2", "--coco", coco,
                              "--name", name, "--roidb", paths["train"], "--test-roidb", paths["val"]] + sets,
                             cwd=str(tmp_path), env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
                             text=True, timeout=400)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        train, _ = load_roidb(paths["train"])
        folds = [[load_roidb(os.path.join(exps[0], "folds", "fold%d_%s.json" % (j, part)))[0]
                  for part in ("train", "val")] for j in range(2)]
        ids = lambda roidb: [r["image_id"] for r in roidb]              # noqa: E731
        assert sorted(ids(folds[0][1]) + ids(folds[1][1])) == sorted(ids(train))   # a partition
        for j in range(2):
            assert sorted(ids(folds[j][0])) == sorted(ids(folds[1 - j][1]))
            assert os.path.isfile(os.path.join(exps[j + 1], "eval-oof.json"))
            assert os.path.isfile(os.path.join(exps[j + 1], "results-test.json"))
        assert res.stdout.count("(AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]") == 5   # 2 oof, 2 test, WBF
        assert "fused 2 inputs over 4 images" in res.stdout
        assert isinstance(json.load(open(os.path.join(exps[0], "ensemble.json"))), list)
    finally:
        subprocess.run(["rm", "-rf"] + exps)


def _noisy_model(roidb, rng, sigma=3.0, miss=0.15):
    """COCO results of a made-up model: ground truth with jittered corners, some boxes missed, one
    low-scoring false positive per image."""
    results = []
    for r in roidb:
        for box, cls in zip(r["boxes"], r["classes"]):
            if rng.uniform() < miss:
                continue
            x1, y1, x2, y2 = box + rng.normal(0, sigma, 4)
            results.append({"image_id": r["image_id"], "category_id": int(cls) + 1, "score": rng.uniform(0.5, 1.0),
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
        x, y = rng.uniform(0, 150, 2)
        results.append({"image_id": r["image_id"], "category_id": int(rng.randint(3)) + 1,
                        "score": rng.uniform(0.0, 0.5), "bbox": [float(x), float(y), 40.0, 40.0]})
    return results


def test_wbf_ensemble_beats_every_single_model(tmp_path):
    rng = np.random.RandomState(0)
    roidb = []
    for i in range(30):
        n = rng.randint(1, 5)
        xy = rng.uniform(0, 140, (n, 2))
        wh = rng.uniform(20, 60, (n, 2))
        roidb.append({"image": "img%d.jpg" % i, "width": 200, "height": 200, "image_id": i + 1,
                      "boxes": np.clip(np.concatenate([xy, xy + wh], 1), 0, 200).astype(np.float32),
                      "classes": rng.randint(3, size=n).astype(np.int32)})
    categories = [{"id": c + 1, "name": "c%d" % c} for c in range(3)]
    roidb_path = str(tmp_path / "val.json")
    save_roidb(roidb_path, roidb, categories)
    inputs, single = [], []
    for m in range(3):
        results = _noisy_model(roidb, rng)
        inputs.append(str(tmp_path / ("model%d.json" % m)))
        json.dump(results, open(inputs[-1], "w"))
        single.append(evaluate(roidb, categories, results)["stats"]["AP"])
    out = str(tmp_path / "merged.json")
    res = run_script(["scripts/ensemble.py", "--inputs"] + inputs + ["--roidb", roidb_path, "--out", out], timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    fused = evaluate(roidb, categories, json.load(open(out)))["stats"]["AP"]
    assert max(single) < 0.9 and fused >= max(single) + 0.02, (single, fused)
    printed = re.search(r"\(AP\) @\[ IoU=0.50:0.95 \| area=   all \| maxDets=100 \] = ([\d.]+)", res.stdout)
    assert abs(float(printed.group(1)) - fused) < 1e-3
    bad = run_script(["scripts/ensemble.py", "--inputs", inputs[0], "--roidb", roidb_path, "--out", out,
                      "--weights", "1", "2"], timeout=120)
    assert bad.returncode == 2 and bad.stderr == "error: 2 --weights for 1 --inputs\n"
