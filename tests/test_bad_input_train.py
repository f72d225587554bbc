"""Issue 14, the training side: class names travel with the weights, --resume with another batch,
a full disk, Ctrl-C, metrics after a crash, detection_infer's --out and --score. The scripts run
with tmp_path as their working directory, so experiments/ lands there."""
import json
import os
import resource
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from conftest import REPO
from core.roidb import load_roidb, save_roidb
from core.synthetic import CLASSES
from test_infer import NAMES, SETS, tiny_params
from test_train import TINY, _dataset
from utils.checkpoint import latest_checkpoint, load_checkpoint, load_weights
from utils.config import load_config
from utils.logger import MetricsWriter
from utils.lr_scheduler import build_lr_scheduler
from utils.resume import StopOnInterrupt, resume_position

CONFIG = os.path.join(REPO, "config", "quickstart.py")
FSIZE_LIMIT = 1 << 20      # above train.log and metrics.csv, far below a checkpoint (~15 MB)


def _cmd(script, sets=(), extra=()):
    return [sys.executable, os.path.join(REPO, script), "--config", CONFIG] + \
        [a for s in sets for a in ("--set", s)] + [str(a) for a in extra]


def _run(tmp_path, cmd, timeout=300, **kw):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=timeout, **kw)


def _popen(tmp_path, cmd):
    return subprocess.Popen(cmd, cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _train_sets(roidb, name, *extra):
    return TINY + ["DatasetParam.train_roidb=" + roidb, "General.name=" + name] + list(extra)


def _rows(path):
    """metrics.csv -> [(iteration, lr)]."""
    lines = open(path).read().strip().splitlines()[1:]
    return [(int(l.split(",")[1]), float(l.split(",")[2])) for l in lines]


def _last_error(res):
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return lines[-1]


def _wait_for(proc, test, what, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not test():
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before %s: %s" % (what, proc.stderr.read()[-2000:])


# ---- 5. class names travel with the weights (stored: see the --resume test) -------------------

def test_test_and_infer_check_the_class_names_of_the_weights(tmp_path):
    params = tiny_params(tmp_path / "w.params", box_scale=0.05, class_names=NAMES)
    records, cats = load_roidb(_dataset(tmp_path, 2))        # the same images, two classes swapped
    swapped = [cats[1], cats[0]] + cats[2:]
    for r in records:
        r["classes"] = np.array([{0: 1, 1: 0}.get(int(c), int(c)) for c in r["classes"]], np.int32)
    other = str(tmp_path / "swapped.json")
    save_roidb(other, records, swapped, "coco")
    both = "%s was trained on the classes %s but %s has %s" % (params, NAMES, other, [c["name"] for c in swapped])
    sets = SETS + ["DatasetParam.val_roidb=" + other]
    res = _run(tmp_path, _cmd("detection_test.py", sets, ["--params", params]))
    assert res.returncode == 2 and both in _last_error(res)
    image = records[0]["image"]
    res = _run(tmp_path, _cmd("detection_infer.py", sets, ["--params", params, "--input", image,
                                                          "--out", tmp_path / "o"]))
    assert res.returncode == 2 and both in _last_error(res)
    assert not (tmp_path / "o").exists()
    # By default the names come from the weights (no class_names, no val roidb in the config).
    plain = [s for s in SETS if not s.startswith("DatasetParam.class_names")]
    res = _run(tmp_path, _cmd("detection_infer.py", plain, ["--params", params, "--input", image,
                                                           "--out", tmp_path / "o", "--score", 0]))
    assert res.returncode == 0, res.stderr[-3000:]
    detections = json.loads((tmp_path / "o" / (os.path.basename(image) + ".json")).read_text())["detections"]
    assert detections and all(d["class_name"] == NAMES[d["class_id"]] for d in detections)


# ---- 6. --resume with another batch --------------------------------------------------------------

def test_resume_position_is_remapped_to_the_new_epoch_length():
    manifest = {"epoch": 1, "iteration": 9, "extra": {"batch_in_epoch": 3, "iters_per_epoch": 6}}
    assert resume_position(manifest, 6) == (9, 3)                 # same batches: exactly as saved
    assert resume_position(manifest, 3) == (4, 1)                 # half the batches: 1 * 3 + floor(1.5)
    assert resume_position(manifest, 12) == (18, 6)
    assert resume_position(None, 5, begin_epoch=2) == (10, 0)
    old = {"epoch": 1, "iteration": 9, "extra": {"batch_in_epoch": 3}}   # before iters_per_epoch was kept
    assert resume_position(old, 3) == (9, 3)


def test_resume_with_a_larger_batch_continues_the_schedule(tmp_path):
    roidb = _dataset(tmp_path, 8)
    base = _train_sets(roidb, "batch", "OptimizeParam.ema_decay=0")
    res = _run(tmp_path, _cmd("detection_train.py", base + ["General.batch_image=2",
                                                             "OptimizeParam.schedule.end_epoch=1"]))
    assert res.returncode == 0, res.stderr[-3000:]
    more = base + ["General.batch_image=4", "OptimizeParam.schedule.end_epoch=2"]
    res = _run(tmp_path, _cmd("detection_train.py", more, ["--resume"]))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "position re-mapped from iteration 4 (batch 0 of epoch 1) to iteration 2" in res.stderr
    exp = str(tmp_path / "experiments" / "batch")
    last = latest_checkpoint(exp)                       # every checkpoint records the class names
    assert last["class_names"] == list(CLASSES) == load_weights(os.path.join(exp, "batch-0002.params"))[2]
    assert load_weights(os.path.join(exp, last["files"]["params"]["name"]))[2] == list(CLASSES)
    rows = _rows(os.path.join(exp, "metrics.csv"))
    assert [it for it, _ in rows] == [1, 2, 3, 4, 3, 4]   # 4 steps of 2, then epoch 1 in 2 steps of 4
    sched = build_lr_scheduler(load_config(CONFIG, more), 8, 4)
    assert rows[4][1] > 0 and rows[4][1] == pytest.approx(sched(3), rel=1e-4)


# ---- 10. a full disk (file-size limit) -----------------------------------------------------------

SHORT_WRITER = """
import resource, sys
import mxnet as mx
from utils.checkpoint import save_checkpoint
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
save_checkpoint(sys.argv[1], 0, 1, {"w": mx.nd.ones((100,))}, {})             # fits
for it, n in ((2, 1000), (3, 100000)):  # lost at close without a word / a failing write MXNet reports
    try:
        save_checkpoint(sys.argv[1], 0, it, {"w": mx.nd.ones((n,))}, {})
    except OSError as e:
        print("refused:", e)
"""


def test_params_cut_short_by_a_file_size_limit_never_become_a_checkpoint(tmp_path):
    res = _run(tmp_path, [sys.executable, "-c", SHORT_WRITER, str(tmp_path / "ckpt")], timeout=120)
    assert res.returncode == 0 and res.stdout.count("refused:") == 2, res.stdout + res.stderr
    assert "cannot write %s: mx.nd.save left an incomplete file (3000 bytes)" % (
        tmp_path / "ckpt" / "ckpt-0000-0000002.params") in res.stdout
    last = latest_checkpoint(str(tmp_path / "ckpt"), verify_hash=True)
    assert last["iteration"] == 1 and load_checkpoint(last)[0]["w"].shape == (100,)
    assert sorted(os.listdir(str(tmp_path / "ckpt"))) == ["ckpt-0000-0000001.json", "ckpt-0000-0000001.params"]


def test_full_disk_while_saving_or_restoring_names_the_intact_checkpoint(tmp_path):
    roidb = _dataset(tmp_path, 8)
    sets = _train_sets(roidb, "disk", "General.batch_image=2", "General.checkpoint_iters=1",
                       "OptimizeParam.schedule.end_epoch=20")
    exp = str(tmp_path / "experiments" / "disk")
    proc = _popen(tmp_path, _cmd("detection_train.py", sets))
    try:
        _wait_for(proc, lambda: latest_checkpoint(exp) is not None, "its first checkpoint")
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))   # the disk fills up
        assert proc.wait(timeout=120) == 2
    finally:
        proc.kill()
    line = proc.stderr.read().strip().splitlines()[-1]
    last = latest_checkpoint(exp, verify_hash=True)
    named = "%s/ckpt-%04d-%07d.json (epoch %d, iteration %d) is intact" % (
        exp, last["epoch"], last["iteration"], last["epoch"], last["iteration"])
    # A write refused by the limit (File too large), or mx.nd.save's short file found on reading it back.
    assert line.startswith("error: saving the checkpoint of epoch") and named in line, line
    assert "File too large" in line or "mx.nd.save left an incomplete file" in line, line
    load_checkpoint(last)
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))  # noqa: E731
    res = _run(tmp_path, _cmd("detection_train.py", sets, ["--resume"]), preexec_fn=limit)
    assert res.returncode == 2
    line = _last_error(res)
    assert line.startswith("error: restoring the optimizer state of %s/ckpt-" % exp) and named in line, line
    assert latest_checkpoint(exp, verify_hash=True) == last


# ---- 11. Ctrl-C --------------------------------------------------------------------------------

def test_ctrl_c_saves_the_position_and_exits_130(tmp_path):
    roidb = _dataset(tmp_path, 8)
    exp = tmp_path / "experiments" / "ctrlc"
    proc = _popen(tmp_path, _cmd("detection_train.py", _train_sets(
        roidb, "ctrlc", "General.batch_image=2", "OptimizeParam.schedule.end_epoch=20")))
    try:
        _wait_for(proc, lambda: (exp / "metrics.csv").exists() and len(_rows(str(exp / "metrics.csv"))) >= 2,
                  "two steps")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()
    err = proc.stderr.read()
    last = latest_checkpoint(str(exp), verify_hash=True)
    assert "Traceback" not in err and last is not None
    assert err.strip().splitlines()[-1] == "interrupted; resume with --resume (last checkpoint: %s/ckpt-%04d-%07d" \
        ".json (epoch %d, iteration %d))" % (exp, last["epoch"], last["iteration"], last["epoch"], last["iteration"])
    assert last["iteration"] == _rows(str(exp / "metrics.csv"))[-1][0]     # the step it stopped after


def test_second_ctrl_c_stops_at_once_naming_the_last_checkpoint(tmp_path, capsys):
    stop = StopOnInterrupt(str(tmp_path)).install()
    try:
        signal.raise_signal(signal.SIGINT)           # runs the handler before returning
        assert stop.requested
        with pytest.raises(SystemExit) as e:
            signal.raise_signal(signal.SIGINT)
        assert e.value.code == 130
    finally:
        stop.restore()
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "interrupted; resume with --resume (position not saved; last checkpoint: none)"


# ---- 16. metrics after a crash ---------------------------------------------------------------------

def test_metrics_rows_past_the_checkpoint_are_dropped_on_resume(tmp_path):
    path = str(tmp_path / "metrics.csv")
    with MetricsWriter(path) as m:
        for it in range(1, 6):
            m.write(0, it, 0.1, {"loss": 1.0 / it}, 1.0)
    with open(path, "a") as f:
        f.write("0,6,0.1,0.1")                       # a line cut by the crash
    MetricsWriter(path, keep_until=3).close()        # resuming from the checkpoint of iteration 3
    assert [it for it, _ in _rows(path)] == [1, 2, 3]
    with MetricsWriter(path, keep_until=3) as m:
        m.write(0, 4, 0.1, {"loss": 0.2}, 1.0)
    assert [it for it, _ in _rows(path)] == [1, 2, 3, 4]


# ---- 9, 12. detection_infer arguments ------------------------------------------------------------

@pytest.mark.parametrize("bad,message", [
    ("out_file", "--out %(out)s is an existing file; name a folder for the outputs"),
    ("score", "--score=1.5 is out of range: must be a number in [0, 1]"),
])
def test_infer_bad_out_or_score_is_one_line(tmp_path, bad, message):
    image = str(tmp_path / "a.png")
    cv2.imwrite(image, np.zeros((20, 30, 3), np.uint8))
    out = tmp_path / "results.txt"
    out.write_text("the user's notes")
    args = ["--params", tmp_path / "none.params", "--input", image,
            "--out", out if bad == "out_file" else tmp_path / "o", "--score", 1.5 if bad == "score" else 0.3]
    res = _run(tmp_path, _cmd("detection_infer.py", extra=args), timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == ["error: " + message % {"out": out}]
    assert out.read_text() == "the user's notes"
