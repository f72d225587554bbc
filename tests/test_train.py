"""detection_train.py end to end on tiny generated data: overfitting, resume after kill -9, freezing,
fp16 graph dtypes and the bad-input errors. Training runs with cwd = tmp_path, so experiments/ lands
there."""
import os
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from conftest import ONE_DEVICE, REPO, run_script
from core.dataset import load_coco, save_roidb
from core.synthetic import make_synthetic
from models.efficientdet.builder import get_train_symbol
from utils.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from utils.config import load_config

TINY = ["DatasetParam.image_size=(128, 128)", "NeckParam.repeats=1", "HeadParam.repeats=1",
        "DatasetParam.num_workers=1", "General.log_frequency=1", "OptimizeParam.ema_decay=0", "TestParam.eval_every=0",
        ONE_DEVICE]
CONFIG = os.path.join(REPO, "config", "quickstart.py")


def _dataset(tmp_path, num_images):
    out = make_synthetic(str(tmp_path / "data"), num_images, seed=3, val_fraction=0.0, size=128)
    roidb, categories, _ = load_coco(out["train"], out["image_dir"])
    path = str(tmp_path / "train_roidb.json")
    save_roidb(path, roidb, categories, "coco")
    return path


def _train_args(tmp_path, roidb, name, extra=()):
    sets = TINY + ["DatasetParam.train_roidb=" + roidb, "General.name=" + name] + list(extra)
    return ["detection_train.py", "--config", CONFIG] + [a for s in sets for a in ("--set", s)]


def _metrics(path):
    rows = [line.split(",") for line in open(path).read().split("\n")[1:] if line]
    return np.array([[float(r[3]), float(r[4])] for r in rows])


def _exp(tmp_path, name):
    """The run's folder: training runs with cwd = tmp_path, so experiments/ lands there."""
    return os.path.join(str(tmp_path), "experiments", name)


def test_overfits_four_images(tmp_path):
    roidb = _dataset(tmp_path, 4)
    name = "test_overfit_%d" % os.getpid()
    res = run_script(_train_args(tmp_path, roidb, name, [
        "General.batch_image=4", "DatasetParam.scale_range=(1.0, 1.0)", "DatasetParam.hflip_prob=0.0",
        "DatasetParam.color_jitter=(0.0, 0.0, 0.0, 0.0)", "OptimizeParam.schedule.end_epoch=60",
        "OptimizeParam.lr_per_64=0.16", "OptimizeParam.warmup.epochs=3.0"]), timeout=600, cwd=tmp_path)
    try:
        assert res.returncode == 0, res.stderr[-2000:]
        losses = _metrics(os.path.join(_exp(tmp_path, name), "metrics.csv"))
        total = losses[:, 0] + 50 * losses[:, 1]
        assert total[-3:].mean() * 5 <= total[:3].mean(), total
        assert os.path.getsize(os.path.join(_exp(tmp_path, name), "loss_curve.png")) > 0
        assert os.path.isfile(os.path.join(_exp(tmp_path, name), "%s-0060.params" % name))
    finally:
        subprocess.run(["rm", "-rf", _exp(tmp_path, name)])


def test_resume_after_kill_9(tmp_path):
    roidb = _dataset(tmp_path, 12)
    name = "test_resume_%d" % os.getpid()
    args = _train_args(tmp_path, roidb, name, ["General.batch_image=2", "General.checkpoint_iters=2",
                                               "OptimizeParam.schedule.end_epoch=2", "OptimizeParam.ema_decay=0.9"])
    env = dict(os.environ, PYTHONPATH=REPO)
    try:
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, args[0])] + args[1:], cwd=str(tmp_path),
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            ckpts = list_checkpoints(_exp(tmp_path, name))
            if ckpts and ckpts[-1]["iteration"] >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(1.0)  # land the kill at an arbitrary point, likely mid-step or mid-write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = latest_checkpoint(_exp(tmp_path, name), verify_hash=True)
        assert killed_at is not None and killed_at["epoch"] < 2
        load_checkpoint(killed_at)  # complete and loadable
        res = run_script(args + ["--resume"], timeout=600, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        final = latest_checkpoint(_exp(tmp_path, name), verify_hash=True)
        assert final["epoch"] == 2 and final["iteration"] == 12  # 6 batches per epoch, none repeated
        # Rows of the iterations lost by the kill were dropped on resume, then written again once.
        rows = open(os.path.join(_exp(tmp_path, name), "metrics.csv")).read().splitlines()[1:]
        assert [int(r.split(",")[1]) for r in rows] == list(range(1, 13))
        assert os.path.isfile(os.path.join(_exp(tmp_path, name), "%s-0002.params" % name))
        for manifest in list_checkpoints(_exp(tmp_path, name), verify_hash=True):
            load_checkpoint(manifest)
    finally:
        subprocess.run(["rm", "-rf", _exp(tmp_path, name)])


def test_frozen_parameters_stay_bit_identical(tmp_path):
    roidb = _dataset(tmp_path, 4)
    name = "test_freeze_%d" % os.getpid()
    fixed = "ModelParam.pretrain.fixed_param=['^stem_', '^stage[12]_']"
    try:
        res = run_script(_train_args(tmp_path, roidb, name, ["General.batch_image=2", fixed,
                                                             "OptimizeParam.schedule.end_epoch=1"]),
                         timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        first = mx.nd.load(os.path.join(_exp(tmp_path, name), "%s-0001.params" % name))
        # Continue from those weights as pretrained, frozen: stem and stages 1-2 (BN stats too) must not move.
        res = run_script(_train_args(tmp_path, roidb, name + "_b", [
            "General.batch_image=2", fixed, "OptimizeParam.schedule.end_epoch=1",
            "ModelParam.pretrain.prefix=" + os.path.join(_exp(tmp_path, name), name), "ModelParam.pretrain.epoch=1"]),
            timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        second = mx.nd.load(os.path.join(_exp(tmp_path, name + "_b"), "%s_b-0001.params" % name))
        frozen = [k for k in first if k.split(":")[1].startswith(("stem_", "stage1_", "stage2_"))]
        moved = [k for k in first if k.split(":")[1].startswith("stage7_")]
        assert len(frozen) > 20 and any(k.endswith("moving_mean") for k in frozen)
        for k in frozen:
            assert np.array_equal(first[k].asnumpy(), second[k].asnumpy()), k
        assert any(not np.array_equal(first[k].asnumpy(), second[k].asnumpy()) for k in moved)
    finally:
        subprocess.run(["rm", "-rf", _exp(tmp_path, name), _exp(tmp_path, name + "_b")])


def test_fp16_graph_dtypes():
    cfg = load_config("config/quickstart.py", TINY + ["General.fp16=True"], is_train=True)
    sym = get_train_symbol(cfg)
    args, outs, aux = sym.infer_type(data=np.float32, normaliser=np.float32, loss_scale=np.float32,
                                     cls_target=np.float32, box_target=np.float32)
    types = dict(zip(sym.list_arguments(), args))
    assert types["stem_conv_weight"] == np.float16 and types["cls_pred_weight"] == np.float16
    assert types["stem_bn_gamma"] == np.float32  # BN keeps fp32 parameters
    assert all(t == np.float32 for t in outs)      # losses computed in fp32
    internals = sym.get_internals()
    _, inner, _ = internals.infer_type(data=np.float32, normaliser=np.float32, loss_scale=np.float32,
                                       cls_target=np.float32, box_target=np.float32)
    inner = dict(zip(internals.list_outputs(), inner))
    assert inner["stage4_unit1_dw_conv_cols0_output"] == np.float16  # stride 2: column_split form


@pytest.mark.parametrize("extra,message", [
    (["DatasetParam.train_roidb="], "set DatasetParam.train_roidb"),
    (["DatasetParam.train_roidb=/nonexistent/roidb.json"], "/nonexistent/roidb.json"),
    (["DatasetParam.num_classes=7"], "the roidb has 5 classes but DatasetParam.num_classes is 7"),
    (["ModelParam.pretrain.prefix=/nonexistent/model"], "/nonexistent/model-0000.params"),
    (["OptimizeParam.optimizer=adagrad"], "unknown OptimizeParam.optimizer 'adagrad'"),
    (["Generl.seed=1"], "did you mean 'General'"),
])
def test_bad_input_is_one_line(tmp_path, extra, message):
    roidb = _dataset(tmp_path, 2)
    res = run_script(_train_args(tmp_path, roidb, "test_bad_%d" % os.getpid(), extra), timeout=120, cwd=tmp_path)
    subprocess.run(["rm", "-rf", _exp(tmp_path, "test_bad_%d" % os.getpid())])
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr and "Traceback" not in res.stderr


def test_pretrained_shape_mismatch_needs_exclude(tmp_path):
    roidb = _dataset(tmp_path, 2)
    name = "test_mismatch_%d" % os.getpid()
    try:
        base = _train_args(tmp_path, roidb, name, ["General.batch_image=2", "OptimizeParam.schedule.end_epoch=1"])
        assert run_script(base, timeout=300, cwd=tmp_path).returncode == 0
        prefix = os.path.join(_exp(tmp_path, name), name)
        other = _train_args(tmp_path, roidb, name + "_b", [
            "General.batch_image=2", "OptimizeParam.schedule.end_epoch=1", "ModelParam.pretrain.prefix=" + prefix,
            "ModelParam.pretrain.epoch=1", "AnchorParam.aspect_ratios=((1.0, 1.0),)"])
        res = run_script(other, timeout=300, cwd=tmp_path)
        assert res.returncode == 2 and "shape mismatches" in res.stderr and "cls_pred_weight" in res.stderr
        res = run_script(other + ["--set", "ModelParam.pretrain.exclude=['_pred_']"], timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "excluded" in res.stderr and "loaded" in res.stderr
    finally:
        subprocess.run(["rm", "-rf", _exp(tmp_path, name), _exp(tmp_path, name + "_b")])


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    roidb = _dataset(tmp_path, 8)
    name = "test_nan_%d" % os.getpid()
    try:
        # An absurd learning rate: the first update sends the weights to inf, the next loss is NaN.
        res = run_script(_train_args(tmp_path, roidb, name, [
            "General.batch_image=2", "General.checkpoint_iters=1", "OptimizeParam.optimizer=sgd",
            "OptimizeParam.lr_per_64=1e32", "OptimizeParam.warmup.epochs=0.0", "OptimizeParam.clip_gradient=0.0",
            "OptimizeParam.schedule.end_epoch=2"]), timeout=300, cwd=tmp_path)
        assert res.returncode == 2, res.stderr[-2000:]
        line = res.stderr.strip().splitlines()[-1]
        assert line.startswith("error: loss is not finite") and "Last good checkpoint: epoch 0 iteration 1" in line
        last = latest_checkpoint(_exp(tmp_path, name), verify_hash=True)
        arg, _, _, _, _ = load_checkpoint(last)
        assert all(np.isfinite(v.asnumpy()).all() for v in arg.values())
    finally:
        subprocess.run(["rm", "-rf", _exp(tmp_path, name)])


def test_second_run_without_resume_is_refused(tmp_path):
    roidb = _dataset(tmp_path, 2)
    name = "test_rerun_%d" % os.getpid()
    args = _train_args(tmp_path, roidb, name, ["General.batch_image=2", "OptimizeParam.schedule.end_epoch=1"])
    try:
        res = run_script(args, timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        # the data summary (core/anchor_fit.py) opens every run
        assert "data: 2 images (0 without boxes)" in res.stderr and "best possible recall" in res.stderr
        res = run_script(args, timeout=120, cwd=tmp_path)
        assert res.returncode == 2 and "already holds a training run" in res.stderr and "--resume" in res.stderr
        res = run_script(args + ["--resume"], timeout=120, cwd=tmp_path)   # finished: nothing left to do
        assert res.returncode == 0, res.stderr[-2000:]
        assert len(open(os.path.join(_exp(tmp_path, name), "metrics.csv")).read().strip().splitlines()) == 2
    finally:
        subprocess.run(["rm", "-rf", _exp(tmp_path, name)])
