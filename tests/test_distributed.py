"""Distributed training on localhost with real processes: scripts/launch.py (local and ssh dry-run),
dist_sync equivalence with one device (2 workers x 2 CPU devices), failure handling, rank-0-only
outputs and resume.

Every wait has a timeout: a dist_sync worker whose peer died blocks forever, and so would a test.
"""
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from conftest import ONE_DEVICE, REPO, run_script, varied_roidb, weight_difference
from core.optimizer import initializer
from core.roidb import load_roidb
from core.targets import make_target_fn
from core.validation import Validator
from models.efficientdet.builder import get_train_symbol, train_data_shapes
from test_multi_device import FROZEN_BN, RECIPE
from utils.checkpoint import latest_checkpoint, list_checkpoints, load_weights
from utils.config import load_config

LAUNCH = os.path.join(REPO, "scripts", "launch.py")
SIZE = 64
# A tiny model for the tests of launching, failing and resuming.
TINY = ["DatasetParam.image_size=(%d, %d)" % (SIZE, SIZE), "NeckParam.repeats=1", "HeadParam.repeats=1",
        "DatasetParam.num_workers=1", "General.log_frequency=1", "OptimizeParam.ema_decay=0", "TestParam.eval_every=0",
        ONE_DEVICE]
# One BLAS/OpenMP thread per process: 2 workers + a server share the 2 cores of the dev machine.
ENV = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")


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
    """Initial weights as a pretrained file both runs start from; returns them as numpy."""
    cfg = load_config("config/quickstart.py", sets + ["General.batch_image=1"], is_train=True)
    targets = make_target_fn(cfg)(np.array([[0, 0, 9, 9]], np.float32), np.zeros(1, np.int32))
    data_shapes = train_data_shapes(cfg, 1)
    mod = mx.mod.Module(get_train_symbol(cfg), data_names=[n for n, _ in data_shapes], label_names=sorted(targets))
    mod.bind(data_shapes, [(k, (1,) + targets[k].shape) for k in sorted(targets)], for_training=False)
    mx.random.seed(7)
    mod.init_params(initializer())
    mod.save_params(prefix + "-0000.params")
    return {k: v.asnumpy() for k, v in mod.get_params()[0].items()}


def test_two_workers_two_devices_equal_one_device(tmp_path):
    """3 dist_sync updates of 2 workers x 2 CPU devices x batch 1 give the weights of 3 updates of
    1 worker x 1 device x batch 4, with the real recipe (tests/test_multi_device.py RECIPE: SGD
    momentum, weight decay, warmup, global-norm clipping at every update, augmentation), BN frozen.

    Why they must agree: both start from the same file; the loader's epoch plan is the same
    permutation on every rank, rank r takes every 2nd sample from r and augments each sample from
    a seed of its place in the plan, so update k of the workers covers exactly batch k of the
    single run, pixel for pixel; every replica divides its loss by the positives of the whole
    step (summed over devices and workers through the kvstore), the kvstore sums the gradients,
    and every worker clips by the norm of that sum before its update.
    Tolerance (conftest.weight_difference): per tensor max|diff| <= 1e-4 of its largest move
    (+ 4 ulps + 1e-6 of the largest move), ||diff|| <= 1e-5 ||move||. Observed: worst tensor
    0.035 of its bound, ||diff|| = 6.4e-8 ||move|| (the weights move by 1.8% of their norm).
    """
    roidb = varied_roidb(str(tmp_path / "data"), 12)
    prefix = str(tmp_path / "init")
    common = RECIPE + FROZEN_BN + ["DatasetParam.train_roidb=" + roidb, "ModelParam.pretrain.prefix=" + prefix,
                                   "ModelParam.pretrain.epoch=0", "General.log_frequency=1"]
    init = _write_init(common, prefix)
    single, dist = "test_dist_single_%d" % os.getpid(), "test_dist_two_%d" % os.getpid()
    try:
        res = _run([sys.executable] + _train(common + ["General.name=" + single, "General.batch_image=4"]),
                   timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        res = _run(_launch(2, _train(common + ["General.name=" + dist, "General.batch_image=1",
                                               "KvstoreParam.cpu_devices=2"])), timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:]
        assert "lr: base 0.5 (8 per 64 images x batch 4)" in res.stdout
        assert latest_checkpoint(_exp(tmp_path, dist))["iteration"] == 3
        a = mx.nd.load(os.path.join(_exp(tmp_path, single), single + "-0001.params"))
        b = mx.nd.load(os.path.join(_exp(tmp_path, dist), dist + "-0001.params"))
        for key in a:
            if key.startswith(("aux:", "meta:")) or "_bn_" in key:   # meta: the class names
                assert np.array_equal(a[key].asnumpy(), b[key].asnumpy()), key   # frozen in both runs
        weights = lambda params: {k[4:]: v.asnumpy() for k, v in params.items() if k.startswith("arg:")}  # noqa: E731
        worst, relative = weight_difference(weights(a), weights(b), init)
        assert worst <= 1.0 and relative <= 1e-5, (worst, relative)
    finally:
        subprocess.run(["rm", "-rf", _exp(tmp_path, single), _exp(tmp_path, dist)])


def test_training_with_launcher_rank0_outputs_and_resume(tmp_path):
    """launch.py -n 2 -s 1 trains quickstart (2 CPU devices x 1 image per worker) to completion;
    only rank 0 writes; --resume continues. With validation every epoch: the ranks share the 3 val
    images unevenly (2 + 1 and a padded slot), and the gathered AP is the one evaluating rank 0's
    saved weights in one process gives."""
    roidb = varied_roidb(str(tmp_path / "data"), 8)
    val = varied_roidb(str(tmp_path / "val"), 3)
    name = "test_dist_resume_%d" % os.getpid()
    sets = ["DatasetParam.image_size=(%d, %d)" % (SIZE, SIZE), "NeckParam.repeats=1", "HeadParam.repeats=1",
            "DatasetParam.num_workers=1", "General.log_frequency=1", "General.batch_image=1",
            "KvstoreParam.cpu_devices=2",
            "General.checkpoint_iters=1", "DatasetParam.train_roidb=" + roidb, "General.name=" + name,
            "DatasetParam.val_roidb=" + val, "TestParam.eval_every=1"]
    try:
        res = _run(_launch(2, _train(sets + ["OptimizeParam.schedule.end_epoch=1"])), timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:]
        assert re.search(r"^\[worker \d\] .* rank 1 INFO train: training", res.stdout, re.M)  # console only
        log = open(os.path.join(_exp(tmp_path, name), "train.log")).read()
        assert log.count("INFO train: training") == 1 and "(rank 0)" in log and " rank 1 " not in log
        rows = open(os.path.join(_exp(tmp_path, name), "metrics.csv")).read().splitlines()[1:]
        assert [int(r.split(",")[1]) for r in rows] == [1, 2]    # 8 images / (2 x 2 x 1): one writer
        assert [m["iteration"] for m in list_checkpoints(_exp(tmp_path, name))] == [1, 2]
        assert os.path.isfile(os.path.join(_exp(tmp_path, name), name + "-0001.params"))
        assert os.path.isfile(os.path.join(_exp(tmp_path, name), "loss_curve.png"))
        val_rows = open(os.path.join(_exp(tmp_path, name), "val_metrics.csv")).read().splitlines()
        assert len(val_rows) == 2 and val_rows[1].startswith("1,2,")
        cfg = load_config(os.path.join(REPO, "config", "quickstart.py"), sets, is_train=True)
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
    roidb = varied_roidb(str(tmp_path / "data"), 8)
    name = "test_dist_kill_%d" % os.getpid()
    args = _launch(2, _train(TINY + ["DatasetParam.train_roidb=" + roidb, "General.name=" + name,
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
    roidb = varied_roidb(str(tmp_path / "data"), 4)
    wrapper = tmp_path / "fail_first.py"
    wrapper.write_text(FAIL_FIRST_WORKER)
    name = "test_dist_fail_%d" % os.getpid()
    args = _launch(2, [str(wrapper), str(tmp_path / "marker")] + _train(TINY + [
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
# One write: the launcher may stop this process mid-line (stdout is unbuffered).
sys.stdout.write(" ".join([role] + [os.environ[k] for k in ("DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT",
                                                            "DMLC_NUM_SERVER", "DMLC_NUM_WORKER")]) + "\\n")
sys.stdout.flush()
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
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == code, res.stdout
    assert message in res.stdout
    # When a worker fails, the launcher may stop the others before they print: then only the one
    # that failed is sure to have spoken. Whoever spoke saw the full environment.
    prefixes = ["[scheduler] scheduler", "[server 0] server", "[worker 0] worker", "[worker 1] worker"]
    if mode == "fail":
        assert "[worker 0] worker" in res.stdout or "[worker 1] worker" in res.stdout, res.stdout
        prefixes = [p for p in prefixes if p in res.stdout]
    for prefix in prefixes:
        assert prefix + " 127.0.0.1 9555 1 2" in res.stdout, res.stdout


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
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
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
    roidb = varied_roidb(str(tmp_path / "data"), 2)
    res = run_script(_train(TINY + ["DatasetParam.train_roidb=" + roidb, "KvstoreParam.kvstore=dist_sync"]),
                     timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and "start training with scripts/launch.py" in res.stderr, res.stderr[-2000:]
