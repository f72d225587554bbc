"""scripts/convert_weights.py end to end: parity verification, written files, and one-line errors."""
import re

import mxnet as mx
import numpy as np
import pytest

from conftest import require_reference, run_script

D0 = "tf_efficientdet_d0_256.npz"
B0 = "tf_efficientnet_b0_224.npz"


def test_convert_and_verify_d0(tmp_path):
    fixture = require_reference(D0)
    out = tmp_path / "d0"
    res = run_script(["scripts/convert_weights.py", "--src", fixture, "--out", out, "--config",
                      "config/efficientdet_b0.py", "--verify", fixture])
    assert res.returncode == 0, res.stdout + res.stderr
    last = res.stdout.strip().splitlines()[-2]
    assert last.startswith("max abs diff:") and float(last.split(":")[1]) <= 1e-3
    assert "class_out_p3" in res.stdout and "box_out_p7" in res.stdout and "anchors_yxyx" in res.stdout
    saved = mx.nd.load(str(out) + "-0000.params")
    assert saved["arg:cls_pred_bias"].shape == (810,) and "aux:stem_bn_moving_var" in saved
    # Module-loadable: symbol + params through the standard checkpoint loader.
    sym, arg, aux = mx.model.load_checkpoint(str(out), 0)
    assert set(arg) | set(aux) == {n for n in sym.list_arguments() + sym.list_auxiliary_states() if n != "data"}


def test_convert_and_verify_b0_classifier(tmp_path):
    fixture = require_reference(B0)
    out = tmp_path / "b0"
    res = run_script(["scripts/convert_weights.py", "--src", fixture, "--out", out, "--classifier", "efficientnet_b0",
                      "--verify", fixture])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "logits" in res.stdout and "feature_stride32" in res.stdout
    saved = mx.nd.load(str(out) + "-0000.params")
    # Backbone names are the detection backbone's, so the classifier loads as pretrained weights.
    assert "arg:stage7_unit1_project_conv_weight" in saved and "arg:fc_weight" in saved


def _broken_copy(tmp_path, fixture, edit):
    z = dict(np.load(fixture))
    edit(z)
    path = tmp_path / "broken.npz"
    np.savez(path, **z)
    return path


@pytest.mark.parametrize("edit,message", [
    (lambda z: z.pop("param:class_net.predict.conv_pw.bias"), "1 unfilled parameters: cls_pred_bias"),
    (lambda z: z.__setitem__("param:extra.weight", np.zeros(3)), "1 unused source tensors: extra.weight"),
    (lambda z: z.__setitem__("param:backbone.conv_stem.weight", np.zeros((32, 3, 5, 5))),
     r"1 shape mismatches: backbone.conv_stem.weight \(32, 3, 5, 5\) vs stem_conv_weight \(32, 3, 3, 3\)"),
])
def test_bad_npz_is_one_line_and_writes_nothing(tmp_path, edit, message):
    broken = _broken_copy(tmp_path, require_reference(D0), edit)
    out = tmp_path / "out"
    res = run_script(["scripts/convert_weights.py", "--src", broken, "--out", out, "--config",
                      "config/efficientdet_b0.py", "--num-classes", "90"])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: weights do not match the model")
    assert re.search(message, lines[0])
    assert not list(tmp_path.glob("out*"))


def test_verify_failure_exits_1(tmp_path):
    fixture = require_reference(D0)
    broken = _broken_copy(tmp_path, fixture, lambda z: z["param:box_net.predict.conv_pw.bias"].__iadd__(0.01))
    res = run_script(["scripts/convert_weights.py", "--src", broken, "--out", tmp_path / "x", "--config",
                      "config/efficientdet_b0.py", "--verify", fixture])
    assert res.returncode == 1 and "verification failed" in res.stdout
    assert not list(tmp_path.glob("x*"))


@pytest.mark.parametrize("args,message", [
    (["--config", "config/nope.py"], "error: config file not found: config/nope.py"),
    (["--config", "config/efficientdet_b0.py", "--set", "NeckParam.widht=3"], "did you mean 'width'"),
    (["--classifier", "efficientnet_b9"], "unknown classifier 'efficientnet_b9'"),
])
def test_bad_arguments_are_one_line(tmp_path, args, message):
    res = run_script(["scripts/convert_weights.py", "--src", require_reference(B0), "--out", tmp_path / "x"] + args)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_missing_source_file(tmp_path):
    res = run_script(["scripts/convert_weights.py", "--src", tmp_path / "none.npz", "--out", tmp_path / "x",
                      "--classifier", "efficientnet_b0"])
    assert res.returncode == 2 and "weights file not found" in res.stderr
