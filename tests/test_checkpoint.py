"""utils.checkpoint: atomic saves under kill -9, corrupt/partial checkpoints skipped, pruning."""
import logging
import os
import random
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from utils.checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint, load_params,
                              prune_checkpoints, save_checkpoint)
from utils.ema import ExponentialMovingAverage
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDE = 512

# Saves ever-newer ~14 MB checkpoints whose every value encodes the iteration, resuming after the
# newest complete one, until killed.
WRITER = """
import sys
import mxnet as mx
from utils.checkpoint import latest_checkpoint, save_checkpoint
folder, side = sys.argv[1], int(sys.argv[2])
m = latest_checkpoint(folder)
it = m["iteration"] + 1 if m else 0
while True:
    arg = {"w%d" % i: mx.nd.full((side, side), it) for i in range(4)}
    ema = {"arg:w0": mx.nd.full((side, side), -it), "num_updates": mx.nd.array([it], dtype="float64")}
    save_checkpoint(folder, it // 3, it, arg, {"bn_moving_mean": mx.nd.full((8,), it)},
                    optimizer_states=bytes([it % 256]) * 4000000, ema_params=ema,
                    extra={"it": it}, keep_last=2)
    it += 1
"""


def _assert_intact(manifest):
    it = manifest["iteration"]
    arg, aux, states, ema, m = load_checkpoint(manifest, verify_hash=True)
    assert m["extra"] == {"it": it}
    assert sorted(arg) == ["w0", "w1", "w2", "w3"]
    for v in arg.values():
        assert v.shape == (SIDE, SIDE) and (v.asnumpy() == it).all()
    assert (aux["bn_moving_mean"].asnumpy() == it).all()
    assert states == bytes([it % 256]) * 4000000
    assert (ema["arg:w0"].asnumpy() == -it).all() and ema["num_updates"].asscalar() == it


def test_kill_9_during_saves_never_yields_a_corrupt_checkpoint(tmp_path):
    rng = random.Random(0)
    env = dict(os.environ, PYTHONPATH=ROOT)
    last = -1
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(SIDE)], cwd=str(tmp_path),
                                env=env, stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 30
            while (latest_checkpoint(tmp_path) or {"iteration": -1})["iteration"] <= last:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.time() < deadline, "writer made no progress"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
        manifest = latest_checkpoint(tmp_path, verify_hash=True)
        assert manifest is not None and manifest["iteration"] > last
        _assert_intact(manifest)
        for m in list_checkpoints(tmp_path, verify_hash=True):   # nothing complete is corrupt
            _assert_intact(m)
        last = manifest["iteration"]


def _save(folder, epoch, it, value=1.0, **kw):
    arg = {"conv_weight": mx.nd.full((4, 3), value)}
    aux = {"bn_moving_var": mx.nd.full((4,), value)}
    return save_checkpoint(str(folder), epoch, it, arg, aux, **kw)


def test_roundtrip_with_states_and_ema(tmp_path):
    ema = ExponentialMovingAverage(0.9, warmup=False)
    for v in (1.0, 3.0):
        ema.update({"conv_weight": mx.nd.full((4, 3), v)}, {"bn_moving_var": mx.nd.full((4,), v)})
    _save(tmp_path, 2, 70, 5.0, optimizer_states=b"\x00states", ema_params=ema.state_dict(),
          extra={"seed": 1}, epoch_prefix=str(tmp_path / "effdet"))
    arg, aux, states, ema_state, m = load_checkpoint(latest_checkpoint(tmp_path))
    assert (m["epoch"], m["iteration"], m["extra"]) == (2, 70, {"seed": 1})
    assert (arg["conv_weight"].asnumpy() == 5).all() and (aux["bn_moving_var"].asnumpy() == 5).all()
    assert states == b"\x00states"
    restored = ExponentialMovingAverage(0.9, warmup=False)
    restored.load(ema_state)
    assert restored.num_updates == 2
    np.testing.assert_allclose(restored.params()[0]["conv_weight"].asnumpy(), ema.params()[0]["conv_weight"].asnumpy())
    # The epoch file is what mx.model loads for `--epoch N`; it holds the EMA (eval) weights.
    e_arg, e_aux = mx.model.load_params(str(tmp_path / "effdet"), 2)
    np.testing.assert_allclose(e_arg["conv_weight"].asnumpy(), 0.9 * 1 + 0.1 * 3, rtol=1e-6)
    assert sorted(e_aux) == ["bn_moving_var"]
    # A checkpoint's params file also loads as plain params, raw or EMA.
    p_arg, _ = load_params(os.path.join(m["dir"], m["files"]["params"]["name"]))
    assert (p_arg["conv_weight"].asnumpy() == 5).all()
    ema_arg, _ = load_params(os.path.join(m["dir"], m["files"]["params"]["name"]), ema=True)
    assert sorted(ema_arg) == ["conv_weight"]


def test_temp_and_incomplete_files_are_ignored(tmp_path):
    _save(tmp_path, 0, 10)
    (tmp_path / ".ckpt-0000-0000020.params.tmp-123").write_bytes(b"x" * 100)
    (tmp_path / "ckpt-0000-0000020.params").write_bytes(b"half written")   # no manifest yet
    assert latest_checkpoint(tmp_path)["iteration"] == 10


def test_corrupt_manifest_and_truncated_params_are_skipped(tmp_path, caplog):
    _save(tmp_path, 0, 10, 1.0)
    m = _save(tmp_path, 0, 20, 2.0)
    _save(tmp_path, 0, 30, 3.0)
    (tmp_path / "ckpt-0000-0000030.json").write_text('{"epoch": 0, "itera')
    params = tmp_path / m["files"]["params"]["name"]
    params.write_bytes(params.read_bytes()[:-7])
    with caplog.at_level(logging.WARNING):
        latest = latest_checkpoint(tmp_path)
    assert latest["iteration"] == 10
    skipped = [r.getMessage() for r in caplog.records if "skipping corrupt" in r.getMessage()]
    assert len(skipped) == 2 and "ckpt-0000-0000020.json" in skipped[0] and "0000030" in skipped[1]


def test_hash_check_catches_same_size_damage(tmp_path):
    _save(tmp_path, 0, 10)
    m = _save(tmp_path, 0, 20)
    params = tmp_path / m["files"]["params"]["name"]
    data = bytearray(params.read_bytes())
    data[-1] ^= 0xFF
    params.write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path)["iteration"] == 20
    assert latest_checkpoint(tmp_path, verify_hash=True)["iteration"] == 10
    with pytest.raises(UserError, match="sha256"):
        load_checkpoint(m)


def test_pruning_keeps_the_newest(tmp_path):
    (tmp_path / ".ckpt-0000-0000001.params.tmp-99").write_bytes(b"stale")
    os.utime(tmp_path / ".ckpt-0000-0000001.params.tmp-99", (1, 1))
    for it in range(1, 6):
        _save(tmp_path, 0, it * 10, keep_last=2)
    (tmp_path / "ckpt-0000-0000099.params").write_bytes(b"newer, unfinished")
    assert [m["iteration"] for m in list_checkpoints(tmp_path)] == [40, 50]
    prune_checkpoints(tmp_path, 0)   # asks for none: the newest complete one still stays
    assert [m["iteration"] for m in list_checkpoints(tmp_path)] == [50]
    assert sorted(os.listdir(tmp_path)) == ["ckpt-0000-0000050.json", "ckpt-0000-0000050.params",
                                            "ckpt-0000-0000099.params"]


def test_load_params_prefixes_and_errors(tmp_path):
    path = str(tmp_path / "w.params")
    mx.nd.save(path, {"arg:a_weight": mx.nd.ones(2), "aux:b_moving_mean": mx.nd.ones(2),
                      "c_bias": mx.nd.ones(2), "d_moving_var": mx.nd.ones(2)})
    arg, aux = load_params(path)
    assert sorted(arg) == ["a_weight", "c_bias"] and sorted(aux) == ["b_moving_mean", "d_moving_var"]
    with pytest.raises(UserError, match="nothere.params"):
        load_params(str(tmp_path / "nothere.params"))
    with pytest.raises(UserError, match="no EMA"):
        load_params(path, ema=True)
    (tmp_path / "junk.params").write_bytes(b"not a params file")
    with pytest.raises(UserError, match="junk.params"):
        load_params(str(tmp_path / "junk.params"))
