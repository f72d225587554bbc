"""Validation during training (TestParam.eval_every, core/validation.py, core/validation_hook.py):
val rows, the best checkpoint, TensorBoard scalars, early stopping across a resume, fresh weights
at every evaluation, and the bad settings. Runs with cwd = tmp_path, so experiments/ lands there."""
import hashlib
import json
import os
import struct

import mxnet as mx
import numpy as np
import pytest

from conftest import ONE_DEVICE, REPO, run_script
from core.dataset import load_coco, save_roidb
from core.roidb import load_roidb
from core.synthetic import make_synthetic
from core.validation import EvalGraph, Validator, detect, eval_loader
from models.efficientdet.builder import get_raw_symbol
from utils.checkpoint import latest_checkpoint, load_weights
from utils.config import load_config
from utils.errors import UserError

CONFIG = os.path.join(REPO, "config", "quickstart.py")
TINY = ["DatasetParam.image_size=(64, 64)", "NeckParam.repeats=1", "HeadParam.repeats=1",
        "DatasetParam.num_workers=1", "General.log_frequency=1", "General.batch_image=2", ONE_DEVICE]


def _data(tmp_path):
    """(train roidb path, val roidb path): 4 and 4 synthetic 64 px images."""
    out = make_synthetic(str(tmp_path / "data"), 8, seed=3, val_fraction=0.5, size=64)
    paths = []
    for split in ("train", "val"):
        roidb, categories, _ = load_coco(out[split], out["image_dir"])
        paths.append(str(tmp_path / (split + "_roidb.json")))
        save_roidb(paths[-1], roidb, categories, "coco")
    return paths


def _args(sets, resume=False):
    return ["detection_train.py", "--config", CONFIG] + [a for s in sets for a in ("--set", s)] + \
        (["--resume"] if resume else [])


def _rows(path):
    lines = open(path).read().splitlines()
    return [dict(zip(lines[0].split(","), l.split(","))) for l in lines[1:]]


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _scalars(folder):
    """{tag: [values]} of the TensorBoard event files in `folder` (TFRecord: length, crc, event, crc)."""
    from tensorboardX.proto import event_pb2
    found = {}
    for name in sorted(os.listdir(folder)):
        data, at = open(os.path.join(folder, name), "rb").read(), 0
        while at < len(data):
            size = struct.unpack("<Q", data[at:at + 8])[0]
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + size])
            at += 12 + size + 4
            for v in event.summary.value:
                found.setdefault(v.tag, []).append(v.simple_value)
    return found


def test_best_checkpoint_and_early_stop_across_resume(tmp_path):
    """lr 0 and frozen BN: the weights never change, so the val AP cannot improve after epoch 1.
    Run 1 (1 epoch) writes the val row, the best files and the curve; the resumed run (patience 2)
    evaluates epochs 2 and 3, keeps epoch 1 as the best and stops after epoch 3, counting from the
    first run's best."""
    train, val = _data(tmp_path)
    name = "val_run"
    exp = tmp_path / "experiments" / name
    sets = TINY + ["DatasetParam.train_roidb=" + train, "DatasetParam.val_roidb=" + val, "General.name=" + name,
                   "TestParam.eval_every=1", "OptimizeParam.early_stop_patience=2", "OptimizeParam.lr_per_64=0.0",
                   "ModelParam.pretrain.fixed_param=['_bn_']", "OptimizeParam.ema_decay=0.9"]
    res = run_script(_args(sets + ["OptimizeParam.schedule.end_epoch=1"]), timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = _rows(exp / "val_metrics.csv")
    assert [(r["epoch"], r["iter"]) for r in rows] == [("1", "2")]
    best = json.loads((exp / (name + "-best.json")).read_text())
    assert best["epoch"] == 1 and best["iteration"] == 2 and best["ema"] is True
    assert best["AP"] == pytest.approx(float(rows[0]["AP"]), abs=1e-6) and 0.0 <= best["AP"] <= 1.0
    # the per-epoch file's format and weights (the EMA's), class names included
    arg, aux, names = load_weights(str(exp / (name + "-best.params")))
    arg1, aux1, names1 = load_weights(str(exp / (name + "-0001.params")))
    assert names == names1 and sorted(arg) == sorted(arg1) and sorted(aux) == sorted(aux1)
    assert all(np.array_equal(arg[k].asnumpy(), arg1[k].asnumpy()) for k in arg)
    assert latest_checkpoint(str(exp))["extra"]["hooks"]["validation"]["best"]["epoch"] == 1
    assert os.path.getsize(exp / "val_curve.png") > 0
    tags = _scalars(str(exp / "tensorboard"))
    assert {"train/cls_loss", "train/box_loss", "train/lr", "val/AP", "val/AP50", "val/AP75"} <= set(tags)
    assert tags["val/AP"] == pytest.approx([best["AP"]], abs=1e-6) and len(tags["train/lr"]) == 2
    best_sha = _sha(exp / (name + "-best.params"))

    res = run_script(_args(sets + ["OptimizeParam.schedule.end_epoch=6"], resume=True), timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "early stop after epoch 3: no better val AP for 2 epochs" in res.stderr
    assert latest_checkpoint(str(exp))["epoch"] == 3
    rows = _rows(exp / "val_metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and len({r["AP"] for r in rows}) == 1
    assert json.loads((exp / (name + "-best.json")).read_text())["epoch"] == 1
    assert _sha(exp / (name + "-best.params")) == best_sha


def _random_params(cfg, seed):
    """Every weight random (the prediction layers too, which the initialiser zeroes), BN statistics 0 / 1."""
    raw = mx.mod.Module(get_raw_symbol(cfg), data_names=["data"], label_names=None)
    raw.bind([("data", (2, 3, 64, 64))], for_training=False)
    raw.init_params(mx.init.Zero())
    arg, aux = raw.get_params()
    rs = np.random.RandomState(seed)
    return {k: mx.nd.array(rs.normal(0, 0.1, v.shape)) for k, v in arg.items()}, aux


def test_every_evaluation_binds_the_new_weights(tmp_path):
    """oneDNN folds inference convolution weights at the first forward of an executor: the second
    evaluation of one Validator must give what a fresh binding of the second weights gives."""
    _, val = _data(tmp_path)
    cfg = load_config(CONFIG, TINY + ["DatasetParam.val_roidb=" + val, "TestParam.max_det=20"])
    roidb, categories = load_roidb(val)
    validator = Validator(cfg, roidb, categories, [mx.cpu()])
    first, second = _random_params(cfg, 1), _random_params(cfg, 2)
    a, b = validator.detect(*first), validator.detect(*second)
    graph = EvalGraph(cfg, [mx.cpu()])
    fresh = detect(graph.bind(*second, "second"), eval_loader(cfg, roidb, graph.batch_size))
    assert sorted(b) == sorted(fresh) == sorted(r["image_id"] for r in roidb)
    for i in fresh:
        np.testing.assert_allclose(b[i], fresh[i], rtol=1e-5, atol=1e-4)
    assert max(np.abs(a[i] - b[i]).max() for i in a) > 1.0     # the weights do matter
    report = validator(*second)
    assert set(report["stats"]) >= {"AP", "AP50", "AP75"} and report["seconds"] > 0


@pytest.mark.parametrize("sets,message", [
    (["TestParam.eval_every=-1"], "TestParam.eval_every=-1 is out of range: must be an integer >= 0"),
    (["OptimizeParam.early_stop_patience=-2"], "OptimizeParam.early_stop_patience=-2 is out of range"),
    (["TestParam.eval_every=0", "OptimizeParam.early_stop_patience=3"],
     "OptimizeParam.early_stop_patience=3 needs validation: set TestParam.eval_every > 0"),
])
def test_bad_settings_are_one_line(sets, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(CONFIG, sets)


def test_bad_val_roidb_fails_at_start(tmp_path):
    """One line before any training: no val roidb set (the whole CLI), one with no images, or one
    whose classes are not the training roidb's."""
    import detection_train
    train, _ = _data(tmp_path)
    base = TINY + ["DatasetParam.train_roidb=" + train, "General.name=bad", "TestParam.eval_every=2"]
    res = run_script(_args(base + ["DatasetParam.val_roidb="]), timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == ("error: TestParam.eval_every=2 evaluates on DatasetParam.val_roidb, "
                                                   "which is not set: set it (a roidb cache from "
                                                   "scripts/create_roidb.py) or TestParam.eval_every=0")
    assert not os.path.exists(tmp_path / "experiments" / "bad" / "metrics.csv")
    empty = str(tmp_path / "empty_roidb.json")
    roidb, categories = load_roidb(train)
    save_roidb(empty, [], categories, "coco")
    with pytest.raises(UserError, match="the roidb %s has 0 images" % empty):
        detection_train.val_roidb(load_config(CONFIG, base + ["DatasetParam.val_roidb=" + empty]), categories)
    renamed = str(tmp_path / "renamed_roidb.json")
    save_roidb(renamed, roidb, [dict(c, name=c["name"] + "_x") for c in categories], "coco")
    with pytest.raises(UserError, match="DatasetParam.val_roidb %s has the classes .* but the training roidb" % renamed):
        detection_train.val_roidb(load_config(CONFIG, base + ["DatasetParam.val_roidb=" + renamed]), categories)


def test_val_metrics_resume_and_foreign_file(tmp_path):
    """A resumed run drops the rows past its checkpoint and a cut last line; other columns are refused."""
    from utils.logger import VAL_COLUMNS, ValMetricsWriter
    path = str(tmp_path / "val_metrics.csv")
    stats = {k: 0.5 for k in VAL_COLUMNS[2:-2]}
    with ValMetricsWriter(path) as w:
        for epoch in (1, 2, 3):
            w.write(epoch, 10 * epoch, stats, 1.0)
    with open(path, "a") as f:
        f.write("4,40,0.5")                                   # a crash mid-row
    with ValMetricsWriter(path, keep_until=20) as w:
        w.write(3, 30, dict(stats, AP=0.75), 1.0)
    rows = _rows(path)
    assert [(r["epoch"], r["AP"]) for r in rows] == [("1", "0.5"), ("2", "0.5"), ("3", "0.75")]
    (tmp_path / "other.csv").write_text("epoch,iter,lr\n1,1,0.1\n")
    with pytest.raises(UserError, match="other.csv has the columns"):
        ValMetricsWriter(str(tmp_path / "other.csv"))
