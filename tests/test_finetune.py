"""The fine-tuning workflow: scripts/strip_head.py, freezing recipes, config/efficientdet_b4_wrs.py and
scripts/wrs/finetune.sh end to end on a tiny generated dataset."""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from conftest import REPO, run_script
from core.dataset import load_coco, save_roidb
from core.synthetic import make_synthetic
from models.efficientdet.backbone import pyramid_features
from models.efficientdet.builder import NECKS, freeze_bn_statistics, get_raw_symbol, get_train_symbol
from models.efficientdet.stats import param_shapes
from utils.checkpoint import save_epoch_params
from utils.config import load_config
from utils.pretrain import fixed_param_names

TINY = ["DatasetParam.image_size=(128, 128)", "NeckParam.repeats=1", "HeadParam.repeats=1"]
# config/efficientdet_b4_wrs.py shrunk to run on a CPU in seconds: B0 backbone, BiFPN 32 x 1, 128 px.
WRS_TINY = TINY + ["General.fp16=false", "BackboneParam.name=efficientnet_b0", "NeckParam.width=32",
                   "DatasetParam.num_workers=1", "General.log_frequency=1", "OptimizeParam.ema_decay=0",
                   "OptimizeParam.schedule.end_epoch=1", "OptimizeParam.warmup.epochs=0.5"]


def _strip_module():
    spec = importlib.util.spec_from_file_location("strip_head", os.path.join(REPO, "scripts", "strip_head.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_params(config, sets, num_classes):
    """({arg: NDArray}, {aux: NDArray}) of random weights for the raw model of config + sets."""
    cfg = load_config(config, sets + ["DatasetParam.num_classes=%d" % num_classes, "General.batch_image=1"],
                      is_train=False)
    arg_shapes, aux_shapes = param_shapes(get_raw_symbol(cfg), (1, 3) + tuple(cfg.DatasetParam.image_size))
    rng = np.random.RandomState(0)
    arg = {k: mx.nd.array(rng.normal(0, 0.05, s)) for k, s in arg_shapes.items()}
    aux = {k: mx.nd.array(rng.uniform(0.5, 1.5, s)) for k, s in aux_shapes.items()}
    return arg, aux


def _head_names(config, sets):
    """Names of the model's head parameters: all of them minus those of backbone + neck."""
    cfg = load_config(config, sets, is_train=False)
    feats = NECKS[cfg.NeckParam.type](pyramid_features(mx.sym.Variable("data"), (128, 128), cfg), cfg)
    neck = mx.sym.Group([f[0] for f in feats.values()])
    full = get_raw_symbol(cfg)
    everything = set(full.list_arguments() + full.list_auxiliary_states())
    return everything - set(neck.list_arguments() + neck.list_auxiliary_states())


@pytest.mark.parametrize("prefixed", [True, False])
def test_strip_removes_exactly_the_head(tmp_path, prefixed):
    arg, aux = _random_params("config/quickstart.py", TINY, 5)
    src = str(tmp_path / "coco-0000.params")
    if prefixed:
        save_epoch_params(src, arg, aux)
    else:
        mx.nd.save(src, dict(arg, **aux))
    out = str(tmp_path / "nohead-0000.params")
    res = run_script(["scripts/strip_head.py", "--src", src, "--out", out], timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    head = _head_names("config/quickstart.py", TINY)
    assert {"cls_conv1_dw_weight", "bbox_pred_bias", "cls_conv1_bn_p7_moving_var"} <= head
    kept = {k.split(":", 1)[-1] for k in mx.nd.load(out)}
    assert kept == (set(arg) | set(aux)) - head
    assert all(k.startswith(("arg:", "aux:")) == prefixed for k in mx.nd.load(out))
    assert re.search(r"^total\s+%d\s+%d$" % (len(head), len(kept)), res.stdout, re.M), res.stdout
    if not prefixed:
        return
    # stripping again finds nothing: one line, exit 2, nothing written
    again = run_script(["scripts/strip_head.py", "--src", out, "--out", str(tmp_path / "x.params")], timeout=120)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "nothing written" in again.stderr
    assert not os.path.exists(tmp_path / "x.params")


def test_strip_keep_box_and_num_classes(tmp_path):
    arg, aux = _random_params("config/quickstart.py", TINY, 5)
    src = str(tmp_path / "coco-0000.params")
    save_epoch_params(src, arg, aux)
    strip = _strip_module()
    kept, removed = strip.strip({"arg:" + k: v for k, v in arg.items()}, strip.CLASS_PATTERNS)
    assert removed and all(k.startswith("arg:cls_") for k in removed) and "arg:bbox_pred_weight" in kept

    out = str(tmp_path / "three-0000.params")
    res = run_script(["scripts/strip_head.py", "--src", src, "--out", out, "--num-classes", "3"], timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    new = {k[4:]: v.asnumpy() for k, v in mx.nd.load(out).items()}
    want, _ = param_shapes(get_raw_symbol(load_config("config/quickstart.py",
                                                      TINY + ["DatasetParam.num_classes=3", "General.batch_image=1"],
                                                      is_train=False)), (1, 3, 128, 128))
    assert {k: v.shape for k, v in new.items() if k in want} == want        # fits the 3-class model
    assert new["cls_pred_weight"].shape == (9 * 3, 64, 1, 1)
    assert abs(new["cls_pred_weight"].std() - 0.01) < 0.002 and abs(new["cls_pred_weight"].mean()) < 0.002
    np.testing.assert_allclose(new["cls_pred_bias"], -math.log(99), rtol=1e-6)
    for k in set(arg) | set(aux):
        if k not in ("cls_pred_weight", "cls_pred_bias"):
            assert np.array_equal(new[k], (arg[k] if k in arg else aux[k]).asnumpy()), k


def test_readme_freezing_recipes_select_what_they_say():
    cfg = load_config("config/quickstart.py", TINY)
    sym = get_train_symbol(cfg)
    names = [n for n in sym.list_arguments() if n not in ("data", "cls_target", "box_target")]
    backbone_bn = [n for n in names if re.match(r"(stem|stage\d+)_", n) and "_bn_" in n]
    stages = [n for n in names if n.startswith(("stem_", "stage1_", "stage2_", "stage3_"))]
    bn_recipe, stage_recipe = [r"^(stem|stage\d+_unit\d+_\w+)_bn_"], ["^stem_", "^stage[1-3]_"]   # README
    assert fixed_param_names(names, bn_recipe) == backbone_bn
    assert fixed_param_names(names, stage_recipe) == stages
    for patterns, frozen in ((bn_recipe, backbone_bn), (stage_recipe, stages)):
        graph = freeze_bn_statistics(sym, patterns)
        global_stats = {n["name"] for n in json.loads(graph.tojson())["nodes"]
                        if n["op"] == "BatchNorm" and n.get("attrs", {}).get("use_global_stats") == "True"}
        assert global_stats == {n[:-len("_gamma")] for n in frozen if n.endswith("_bn_gamma")}


def test_wrs_config_carries_the_settings():
    cfg = load_config("config/efficientdet_b4_wrs.py", [], is_train=True)
    assert (cfg.General.batch_image, cfg.General.fp16, cfg.OptimizeParam.schedule.end_epoch) == (2, True, 6)
    assert (cfg.TestParam.nms_thresh, cfg.TestParam.topk_candidates) == (0.5, 1000)
    assert cfg.BackboneParam.name == "efficientnet_b4" and cfg.DatasetParam.image_size == (1024, 1024)
    assert cfg.ModelParam.pretrain.exclude == _strip_module().HEAD_PATTERNS
    assert cfg.ModelParam.pretrain.fixed_param == ["^stem_", "^stage[1-3]_"]


def test_wrs_finetune_flow(tmp_path):
    """COCO-style checkpoint (90 classes) -> strip -> fine-tune 5 classes with frozen stages -> COCO table."""
    out = make_synthetic(str(tmp_path / "wrs"), 8, seed=5, val_fraction=0.5, size=128)
    roidbs = {}
    for split in ("train", "val"):
        roidb, categories, _ = load_coco(out[split], out["image_dir"])
        roidbs[split] = str(tmp_path / ("%s_roidb.json" % split))
        save_roidb(roidbs[split], roidb, categories, "coco")
    arg, aux = _random_params("config/efficientdet_b4_wrs.py", WRS_TINY, 90)
    coco = str(tmp_path / "coco_d4-0000.params")
    save_epoch_params(coco, arg, aux)
    name = "test_wrs_%d" % os.getpid()
    sets = [a for s in WRS_TINY + ["General.batch_image=2"] for a in ("--set", s)]
    exp = str(tmp_path / "experiments" / name)             # finetune.sh writes into its cwd, tmp_path
    try:
        res = subprocess.run(["bash", os.path.join(REPO, "scripts/wrs/finetune.sh"), "--coco", coco, "--name", name,
                              "--train-roidb", roidbs["train"], "--val-roidb", roidbs["val"]] + sets,
                             cwd=str(tmp_path), env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        head = _head_names("config/efficientdet_b4_wrs.py", WRS_TINY)
        assert re.search(r"^total\s+%d\s+" % len(head), res.stdout, re.M)           # strip table
        missing = re.search(r"missing \(fresh init\)\s+(\d+)\s+(.*)", res.stderr)       # pretrained table
        assert missing and int(missing.group(1)) == len(head), res.stderr[-3000:]
        assert all(n.startswith(("cls_", "bbox_")) for n in missing.group(2).split(", ") if n != "...")
        assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in res.stdout
        trained = mx.nd.load(os.path.join(exp, "%s-0001.params" % name))
        frozen = [k for k in trained if k.split(":")[1].startswith(("stem_", "stage1_", "stage2_", "stage3_"))]
        assert len(frozen) > 20
        for k in frozen:                                 # frozen stages (BN statistics too) kept their weights
            kind, key = k.split(":")
            assert np.array_equal(trained[k].asnumpy(), (arg if kind == "arg" else aux)[key].asnumpy()), k
    finally:
        subprocess.run(["rm", "-rf", exp])
