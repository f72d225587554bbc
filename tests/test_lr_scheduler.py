"""utils.lr_scheduler: warmup, cosine and step decay, linear scaling, resume; core.optimizer wd groups."""
import math

import mxnet as mx
import pytest

from config.base import make_config
from core.optimizer import param_groups_no_wd
from utils.errors import UserError
from utils.lr_scheduler import build_lr_scheduler


def _sched(batch=64, ipe=100, **over):
    overrides = {"OptimizeParam.lr_per_64": 0.08, "OptimizeParam.schedule.end_epoch": 10,
                 "OptimizeParam.warmup.epochs": 1.0, "OptimizeParam.warmup.init_lr_ratio": 0.1}
    overrides.update({"OptimizeParam." + k.replace("__", "."): v for k, v in over.items()})
    return build_lr_scheduler(make_config(True, overrides), ipe * batch, batch, ipe)


def test_linear_scaling_of_base_lr():
    assert _sched(batch=16).base_lr == pytest.approx(0.02)
    assert _sched(batch=128).base_lr == pytest.approx(0.16)
    # iters_per_epoch defaults to ceil(images / batch)
    cfg = make_config(True, {"OptimizeParam.warmup.epochs": 0.5})
    assert build_lr_scheduler(cfg, 1001, 10).warmup_steps == 50   # 101 iters/epoch, half of it


def test_warmup_is_linear_from_init_ratio():
    s = _sched()
    assert s.warmup_steps == 100
    assert s(0) == pytest.approx(0.008)
    assert s(50) == pytest.approx(0.008 + 0.5 * 0.072)
    assert s(99) == pytest.approx(0.008 + 0.99 * 0.072)
    assert s(100) == pytest.approx(0.08)
    assert _sched(warmup__epochs=0.25).warmup_steps == 25   # fractional epochs
    assert _sched(warmup__epochs=0.0)(0) == pytest.approx(0.08)


def test_cosine_endpoints_and_midpoint():
    s = _sched()
    assert s(100) == pytest.approx(0.08)
    assert s(550) == pytest.approx(0.04)
    assert s(325) == pytest.approx(0.04 * (1 + math.cos(math.pi / 4)))
    assert s(1000) == pytest.approx(0.0, abs=1e-12)
    assert s(1500) == pytest.approx(0.0, abs=1e-12)
    values = [s(n) for n in range(100, 1001)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_step_decay():
    s = _sched(schedule__type="step", schedule__step_epochs=[3, 6.5], schedule__step_factor=0.1)
    assert s(100) == pytest.approx(0.08) and s(299) == pytest.approx(0.08)
    assert s(300) == pytest.approx(0.008) and s(649) == pytest.approx(0.008)
    assert s(650) == pytest.approx(0.0008) and s(999) == pytest.approx(0.0008)


def test_bad_schedules_are_user_errors():
    with pytest.raises(UserError, match="cosine or step"):
        _sched(schedule__type="poly")
    with pytest.raises(UserError, match="warmup"):
        _sched(warmup__epochs=10)
    with pytest.raises(UserError, match="increasing"):
        _sched(schedule__type="step", schedule__step_epochs=[6, 3])


def _lrs_seen(scheduler, begin, steps):
    """The lr an SGD optimizer applies on each of `steps` updates, starting at update `begin`."""
    opt = mx.optimizer.SGD(momentum=0.9, lr_scheduler=scheduler, begin_num_update=begin)
    updater = mx.optimizer.get_updater(opt)
    weight, grad, seen = mx.nd.zeros(1), mx.nd.ones(1), []
    for _ in range(steps):
        updater(0, grad, weight)
        seen.append(opt.learning_rate)
    return seen


def test_resume_continues_the_same_curve():
    full = _lrs_seen(_sched(), 0, 300)
    resumed = _lrs_seen(_sched(), 120, 180)
    assert resumed == pytest.approx(full[120:])
    # begin_epoch (resume from an epoch boundary) tells the optimizer where to start counting
    assert _sched(schedule__begin_epoch=2).begin_num_update == 200


def test_weight_decay_only_on_kernels():
    names = ["stem_conv_weight", "stem_bn_gamma", "stem_bn_beta", "cls_pred_bias",
             "bifpn0_node5_edge_weight", "blocks1_dw_weight", "se_reduce_bias"]
    assert param_groups_no_wd(names) == {
        "stem_conv_weight": 1.0, "blocks1_dw_weight": 1.0, "stem_bn_gamma": 0.0, "stem_bn_beta": 0.0,
        "cls_pred_bias": 0.0, "bifpn0_node5_edge_weight": 0.0, "se_reduce_bias": 0.0}
    opt = mx.optimizer.SGD(wd=4e-5, param_idx2name=dict(enumerate(names)))
    opt.set_wd_mult(param_groups_no_wd(names))
    assert opt._get_wds([0, 1, 4]) == pytest.approx([4e-5, 0.0, 0.0])
