"""Distributed training on localhost with real processes: scripts/launch.py (local and ssh dry-run),
dist_sync equivalence with one machine, failure handling, rank-0-only outputs and resume.

Every wait has a timeout: a dist_sync worker whose peer died blocks forever, and so would a test.
"""
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import cv2
import mxnet as mx
import numpy as np
import pytest

from conftest import REPO, run_script
from core.dataset import save_roidb
from core.optimizer import initializer
from core.roidb import load_roidb
from core.validation import Validator
from core.targets import make_target_fn
from models.efficientdet.builder import get_train_symbol
from utils.checkpoint import latest_checkpoint, list_checkpoints, load_weights
from utils.config import load_config

LAUNCH = os.path.join(REPO, "scripts", "launch.py")
SIZE = 64
BOXES = np.array([[6, 8, 38, 36], [30, 26, 60, 60]], np.float32)
# Tiny and deterministic: no augmentation, frozen BN (see the equivalence test), plain SGD.
EXACT = ["DatasetParam.image_size=(%d, %d)" % (SIZE, SIZE), "NeckParam.repeats=1", "HeadParam.repeats=1",
         "DatasetParam.num_workers=1", "General.log_frequency=1", "OptimizeParam.ema_decay=0",
         "DatasetParam.scale_range=(1.0, 1.0)", "DatasetParam.hflip_prob=0.0",
         "DatasetParam.color_jitter=(0.0, 0.0, 0.0, 0.0)", "ModelParam.pretrain.fixed_param=['_bn_']",
         "OptimizeParam.optimizer=sgd", "OptimizeParam.momentum=0.0", "OptimizeParam.wd=0.0",
         "OptimizeParam.clip_gradient=0.0", "OptimizeParam.warmup.epochs=0.0", "OptimizeParam.schedule.type=step",
         "AnchorParam.scale=4.0",    # the anchors the measurements below were made with (few positives)
         "TestParam.eval_every=0"]
# One BLAS/OpenMP thread per process: 2 workers + a server share the 2 cores of the dev machine.
ENV = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")


def _dataset(folder, num_images):
    """Noise images with the same two boxes (coloured by a random class) in every image, so every
    image has the same number of positive anchors; returns the roidb cache path."""
    os.makedirs(folder, exist_ok=True)
    roidb = []
    for i in range(num_images):
        rng = np.random.RandomState(i)
        img = rng.randint(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
        classes = rng.randint(0, 5, len(BOXES)).astype(np.int32)
        for (x1, y1, x2, y2), c in zip(BOXES.astype(int), classes):
            img[y1:y2, x1:x2] = (50 * c, 255 - 40 * c, 128)
        path = os.path.join(folder, "%03d.png" % i)   # lossless: identical pixels for every reader
        cv2.imwrite(path, img)
        roidb.append({"image": path, "width": SIZE, "height": SIZE, "image_id": i + 1,
                      "boxes": BOXES.copy(), "classes": classes})
    path = os.path.join(folder, "roidb.json")
    save_roidb(path, roidb, [{"id": c + 1, "name": "c%d" % c} for c in range(5)], "test")
    return path


def _train(sets, resume=False):
    """detection_train.py arguments; every path is absolute, as the runs' cwd is tmp_path."""
    args = [os.path.join(REPO, "detection_train.py"), "--config", os.path.join(REPO, "config", "quickstart.py")] + \
        [a for s in sets for a in ("--set", s)]
    return args + (["--resume"] if resume else [])


def _launch(workers, train_args, extra=()):
    return [sys.executable, LAUNCH, "--launcher", "local", "-n", str(workers), "-s", "1"] + list(extra) + \
        ["--", sys.executable] + train_args


def _exp(tmp_path, name):
    """The run's folder: training runs with cwd = tmp_path, so experiments/ lands there."""
    return os.path.join(str(tmp_path), "experiments", name)


def _run(argv, timeout, cwd):
    """subprocess.run in `cwd`, except that a launcher that overruns gets SIGTERM, so it stops its
    processes (SIGKILL would orphan them: they run in their own sessions)."""
    proc = subprocess.Popen(argv, cwd=str(cwd), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        out, err = proc.communicate()
        pytest.fail("timed out after %d s:\n%s" % (timeout, out[-3000:]))
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _write_init(sets, prefix):
    """Initial weights as a pretrained file both runs start from; returns them as numpy, and the
    number of positive anchors of one image."""
    cfg = load_config("config/quickstart.py", sets + ["General.batch_image=1"], is_train=True)
    targets = make_target_fn(cfg)(BOXES, np.zeros(len(BOXES), np.int32))
    mod = mx.mod.Module(get_train_symbol(cfg), data_names=["data"], label_names=sorted(targets))
    mod.bind([("data", (1, 3, SIZE, SIZE))], [(k, (1,) + targets[k].shape) for k in sorted(targets)],
             for_training=False)
    mx.random.seed(7)
    mod.init_params(initializer())
    mod.save_params(prefix + "-0000.params")
    return {k: v.asnumpy() for k, v in mod.get_params()[0].items()}, int((targets["cls_target"] >= 0).sum())


def test_two_workers_batch_2_equal_one_worker_batch_4(tmp_path):
    """3 dist_sync steps of 2 workers x batch 2 give the weights of 3 steps of 1 worker x batch 4.

    Why they must be equal, and what makes them so:
    - Weights: both runs start from the same file (ModelParam.pretrain), written here.
    - Data: the loader's epoch plan is the same permutation on every rank and rank r takes every
      2nd sample from r, so step k of the two workers covers exactly batch k of the single worker.
      No augmentation, so each image yields the same input and targets in both runs.
    - BN: batch statistics of 2 images differ from those of 4, so BN runs on its stored
      statistics (`fixed_param` matching `_bn_` sets use_global_stats): every image's loss then
      depends on that image alone. Gradients are additive over images.
    - Loss normaliser: a replica divides its summed loss by (its positives + 1). Every image has
      the same q positives (same boxes in every image), so a worker divides by 2q + 1 and the
      single run by 4q + 1. The servers sum the two workers' gradients and the optimizer divides
      by 2 (rescale_grad = 1/workers), so the dist step is lr * G / (2 (2q + 1)) for the summed
      per-image gradient G, and the single step lr' * G / (4q + 1): equal for
      lr' = lr (4q + 1) / (4q + 2). The single run gets that lr; everything else is identical.
    - Plain SGD (no momentum, wd or clipping, constant lr): the update is linear in the gradient.
    Tolerance: the runs sum the same float32 terms in another order (per worker, then on the
    server). Measured: the weights move by 3.6% (L2) and the two runs differ by 1e-6 of that
    move; no tensor differs by more than a quarter of its bound, 1e-4 of its largest move plus 4
    float32 ulps (a tensor that barely moves still rounds differently). Without the normaliser
    correction the difference is 1.6e-2 of the move and tensors exceed the bound 600-fold, so the
    1e-4 bounds sit two orders from both.
    """
    roidb = _dataset(str(tmp_path / "data"), 12)
    prefix = str(tmp_path / "init")
    init, q = _write_init(EXACT, prefix)
    lr = 4.0     # large, so that 3 steps move the weights well beyond float32 noise
    common = EXACT + ["DatasetParam.train_roidb=" + roidb, "OptimizeParam.schedule.end_epoch=1",
                      "ModelParam.pretrain.prefix=" + prefix, "ModelParam.pretrain.epoch=0"]
    single, dist = "test_dist_single_%d" % os.getpid(), "test_dist_two_%d" % os.getpid()
    try:
        res = _run([sys.executable] + _train(common + [
            "General.name=" + single, "General.batch_image=4",
            "OptimizeParam.lr_per_64=%r" % (lr * (4 * q + 1) / (4 * q + 2))]), timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        res = _run(_launch(2, _train(common + ["General.name=" + dist, "General.batch_image=2",
                                               "OptimizeParam.lr_per_64=%r" % lr])), timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:]
        assert "lr: base %g (%g per 64 images x batch 4)" % (lr * 4 / 64, lr) in res.stdout
        a = mx.nd.load(os.path.join(_exp(tmp_path, single), single + "-0001.params"))
        b = mx.nd.load(os.path.join(_exp(tmp_path, dist), dist + "-0001.params"))
        assert latest_checkpoint(_exp(tmp_path, dist))["iteration"] == 3
        worst, diff2, update2, init2 = [], 0.0, 0.0, 0.0
        for key, value in a.items():
            name = key.split(":", 1)[1]
            one, two = value.asnumpy().astype(np.float64), b[key].asnumpy().astype(np.float64)
            if key.startswith(("aux:", "meta:")) or "_bn_" in name:   # meta: the class names
                assert np.array_equal(one, two), key          # frozen in both runs
                continue
            update = np.abs(one - init[name]).max()
            # float32 rounding of w + step: a tensor that barely moves still differs by an ulp or two
            rounding = 4 * np.spacing(np.float32(np.abs(one).max()))
            worst.append((np.abs(one - two).max() / (1e-4 * update + rounding), key))
            diff2 += ((one - two) ** 2).sum()
            update2 += ((one - init[name]) ** 2).sum()
            init2 += (init[name] ** 2).sum()
        assert max(worst)[0] <= 1.0, sorted(worst)[-3:]
        assert np.sqrt(diff2 / update2) <= 1e-4
        assert np.sqrt(update2 / init2) > 1e-2               # the weights did move
    finally:
        subprocess.run(["rm", "-rf", _exp(tmp_path, single), _exp(tmp_path, dist)])


def test_training_with_launcher_rank0_outputs_and_resume(tmp_path):
    """launch.py -n 2 -s 1 trains quickstart to completion; only rank 0 writes; --resume continues.
    With validation every epoch: the ranks share the 3 val images unevenly (2 + 1 and a padded
    slot), and the gathered AP is the one evaluating rank 0's saved weights in one process gives."""
    roidb = _dataset(str(tmp_path / "data"), 8)
    val = _dataset(str(tmp_path / "val"), 3)
    name = "test_dist_resume_%d" % os.getpid()
    sets = ["DatasetParam.image_size=(%d, %d)" % (SIZE, SIZE), "NeckParam.repeats=1", "HeadParam.repeats=1",
            "DatasetParam.num_workers=1", "General.log_frequency=1", "General.batch_image=2",
            "General.checkpoint_iters=1", "DatasetParam.train_roidb=" + roidb, "General.name=" + name,
            "DatasetParam.val_roidb=" + val, "TestParam.eval_every=1"]
    try:
        res = _run(_launch(2, _train(sets + ["OptimizeParam.schedule.end_epoch=1"])), timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:]
        assert re.search(r"^\[worker \d\] .* rank 1 INFO train: training", res.stdout, re.M)  # console only
        log = open(os.path.join(_exp(tmp_path, name), "train.log")).read()
        assert log.count("INFO train: training") == 1 and "(rank 0)" in log and " rank 1 " not in log
        rows = open(os.path.join(_exp(tmp_path, name), "metrics.csv")).read().splitlines()[1:]
        assert [int(r.split(",")[1]) for r in rows] == [1, 2]    # 8 images / (2 x 2): one writer
        assert [m["iteration"] for m in list_checkpoints(_exp(tmp_path, name))] == [1, 2]
        assert os.path.isfile(os.path.join(_exp(tmp_path, name), name + "-0001.params"))
        assert os.path.isfile(os.path.join(_exp(tmp_path, name), "loss_curve.png"))
        val_rows = open(os.path.join(_exp(tmp_path, name), "val_metrics.csv")).read().splitlines()
        assert len(val_rows) == 2 and val_rows[1].startswith("1,2,")
        cfg = load_config("config/quickstart.py", sets, is_train=True)
        val_roidb, categories = load_roidb(val)
        arg, aux, _ = load_weights(os.path.join(_exp(tmp_path, name), name + "-0001.params"))
        alone = Validator(cfg, val_roidb, categories, [mx.cpu()])(arg, aux)["stats"]["AP"]
        assert float(val_rows[1].split(",")[2]) == pytest.approx(alone, abs=1e-5)

        res = _run(_launch(2, _train(sets + ["OptimizeParam.schedule.end_epoch=2"], resume=True)), timeout=300,
                   cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:]
        assert len(re.findall(r"resuming from epoch 1, iteration 2", res.stdout)) == 2   # every rank
        assert latest_checkpoint(_exp(tmp_path, name))["iteration"] == 4
        rows = open(os.path.join(_exp(tmp_path, name), "metrics.csv")).read().splitlines()[1:]
        assert [int(r.split(",")[1]) for r in rows] == [1, 2, 3, 4]
        val_rows = open(os.path.join(_exp(tmp_path, name), "val_metrics.csv")).read().splitlines()
        assert [r.split(",")[:2] for r in val_rows[1:]] == [["1", "2"], ["2", "4"]]
        assert os.path.isfile(os.path.join(_exp(tmp_path, name), name + "-best.params"))
    finally:
        subprocess.run(["rm", "-rf", _exp(tmp_path, name)])


def test_killed_worker_stops_the_job(tmp_path):
    """SIGKILL one worker mid-training: the launcher stops everything and fails within 60 s."""
    roidb = _dataset(str(tmp_path / "data"), 8)
    name = "test_dist_kill_%d" % os.getpid()
    args = _launch(2, _train(EXACT + ["DatasetParam.train_roidb=" + roidb, "General.name=" + name,
                                      "General.batch_image=2", "OptimizeParam.schedule.end_epoch=1000"]),
                   ["--grace", "5"])
    out_path = str(tmp_path / "launcher.out")
    try:
        with open(out_path, "w") as out:
            proc = subprocess.Popen(args, cwd=str(tmp_path), env=ENV, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 180
            metrics = os.path.join(_exp(tmp_path, name), "metrics.csv")
            while time.time() < deadline and proc.poll() is None:
                if os.path.isfile(metrics) and len(open(metrics).read().splitlines()) > 2:
                    break                                      # two steps done: training runs
                time.sleep(0.2)
            assert proc.poll() is None, open(out_path).read()[-3000:]
            text = open(out_path).read()
            pids = {m.group(1): int(m.group(2)) for m in re.finditer(r"started (.+) \(pid (\d+)\)", text)}
            assert len(pids) == 4, text
            os.kill(pids["worker 1"], signal.SIGKILL)
            killed = time.time()
            code = proc.wait(timeout=60)
            assert time.time() - killed < 60
        finally:
            _stop(proc)
        text = open(out_path).read()
        assert code != 0 and "worker 1 was killed by SIGKILL: stopping the others" in text, text[-2000:]
        assert all(_gone(pid) for pid in pids.values())
    finally:
        subprocess.run(["rm", "-rf", _exp(tmp_path, name)])


FAIL_FIRST_WORKER = """
import os, sys
# The first worker to get here trains on a missing roidb: a UserError after the kvstore exists.
if os.environ["DMLC_ROLE"] == "worker":
    try:
        os.close(os.open(sys.argv[1], os.O_CREAT | os.O_EXCL))
        sys.argv += ["--set", "DatasetParam.train_roidb=/nonexistent/roidb.json"]
    except FileExistsError:
        pass
os.execv(sys.executable, [sys.executable] + sys.argv[2:])
"""


def test_failing_worker_exits_and_stops_the_job(tmp_path):
    """A worker that fails after joining the job exits at once (not in ps-lite's shutdown barrier),
    and the launcher passes its exit code on."""
    roidb = _dataset(str(tmp_path / "data"), 4)
    wrapper = tmp_path / "fail_first.py"
    wrapper.write_text(FAIL_FIRST_WORKER)
    name = "test_dist_fail_%d" % os.getpid()
    args = _launch(2, [str(wrapper), str(tmp_path / "marker")] + _train(EXACT + [
        "DatasetParam.train_roidb=" + roidb, "General.name=" + name, "General.batch_image=2"]))
    try:
        start = time.time()
        res = _run(args, timeout=120, cwd=tmp_path)
        assert res.returncode == 2, res.stdout[-3000:]
        assert "error: roidb cache not found: /nonexistent/roidb.json" in res.stdout
        assert re.search(r"worker \d exited with code 2: stopping the others", res.stdout)
        assert time.time() - start < 60
    finally:
        subprocess.run(["rm", "-rf", _exp(tmp_path, name)])


FAKE = """
import os, sys, time
role = os.environ["DMLC_ROLE"]
print(role, *(os.environ[k] for k in ("DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER", "DMLC_NUM_WORKER")),
      flush=True)
mode = sys.argv[1]
if mode == "ok" or (mode == "linger" and role == "worker"):
    sys.exit(0)
if mode == "fail" and role == "worker":
    sys.exit(3)
time.sleep(300)
"""


@pytest.mark.parametrize("mode,code,message", [
    ("ok", 0, "all 4 processes finished"),
    ("fail", 3, "exited with code 3: stopping the others"),
    ("linger", 0, "scheduler, server 0 still running 1 s after the first clean exit: stopping (every worker"),
])
def test_launcher_outcomes(tmp_path, mode, code, message):
    """Without MXNet: roles and environment, a failing worker, servers that do not exit by themselves."""
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    res = subprocess.run([sys.executable, LAUNCH, "-n", "2", "-s", "1", "--port", "9555", "--grace", "2",
                          "--finish-timeout", "1", "--", sys.executable, str(script), mode],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == code, res.stdout
    assert message in res.stdout
    # A failing worker may be stopped before its sibling prints anything: then only the one
    # that failed is sure to have spoken.
    prefixes = ["[worker 0] worker", "[worker 1] worker"]
    if mode == "fail":
        prefixes = [p for p in prefixes if p in res.stdout][:1] or prefixes[:1]
    for prefix in ["[scheduler] scheduler", "[server 0] server"] + prefixes:
        assert prefix + " 127.0.0.1 9555 1 2" in res.stdout


def test_launcher_ctrl_c_stops_everything(tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    proc = subprocess.Popen([sys.executable, LAUNCH, "-n", "1", "-s", "1", "--grace", "2", "--",
                             sys.executable, str(script), "hang"], stdout=subprocess.PIPE, text=True)
    try:
        pids, lines = [], []
        while len(pids) < 3 and len(lines) < 20:      # EOF ("") if the launcher died
            lines.append(proc.stdout.readline())
            pids += [int(m) for m in re.findall(r"started .* \(pid (\d+)\)", lines[-1])]
        assert len(pids) == 3, lines
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        _stop(proc)
    assert proc.returncode == 130 and "SIGINT: stopping all processes" in out
    assert all(_gone(pid) for pid in pids)


def test_ssh_dry_run_commands(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# cluster\nalpha:2\n\nme@beta  # second machine\n")
    res = subprocess.run([sys.executable, LAUNCH, "--launcher", "ssh", "-H", str(hostfile), "-n", "3", "-s", "2",
                          "--workdir", "/data/my repo", "--env", "DMLC_INTERFACE=eth0", "--dry-run", "--",
                          ".venv/bin/python", "detection_train.py", "--set", "General.name=it's mine"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(": ", 1) for line in res.stdout.splitlines())
    assert list(lines) == ["scheduler 0", "server 0", "server 1", "worker 0", "worker 1", "worker 2"]
    hosts = {}
    for who, line in lines.items():
        argv = shlex.split(line)
        assert argv[:4] == ["ssh", "-o", "BatchMode=yes", "-tt"]
        hosts[who] = argv[4]
        remote = shlex.split(argv[5])
        assert remote[:4] == ["cd", "/data/my repo", "&&", "env"]
        env = dict(a.split("=", 1) for a in remote[4:] if re.match(r"^[A-Z_]+=", a))
        assert env == {"DMLC_ROLE": who.split()[0], "DMLC_PS_ROOT_URI": "alpha",
                       "DMLC_PS_ROOT_PORT": "9091", "DMLC_NUM_SERVER": "2", "DMLC_NUM_WORKER": "3",
                       "DMLC_INTERFACE": "eth0"}
        assert remote[4 + len(env):] == [".venv/bin/python", "detection_train.py", "--set", "General.name=it's mine"]
    assert hosts == {"scheduler 0": "alpha", "server 0": "alpha", "server 1": "me@beta",
                     "worker 0": "alpha", "worker 1": "alpha", "worker 2": "me@beta"}


def test_dist_kvstore_without_launcher_is_one_line(tmp_path):
    roidb = _dataset(str(tmp_path / "data"), 2)
    res = run_script(_train(EXACT + ["DatasetParam.train_roidb=" + roidb, "KvstoreParam.kvstore=dist_sync"]),
                     timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and "start training with scripts/launch.py" in res.stderr, res.stderr[-2000:]
