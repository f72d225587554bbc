"""RetinaNet-style class and box nets of EfficientDet.

Conv weights are shared across levels; each (repeat, level) has its own BN. Names (docs/design.md §4):
  {p}_conv{i}_dw_weight, {p}_conv{i}_weight, {p}_conv{i}_bias   i = 1..repeats, p in (cls, bbox)
  {p}_conv{i}_bn_p{L}_*                                          per-level BN
  {p}_pred_dw_weight, {p}_pred_weight, {p}_pred_bias             predictor
"""
import math

import mxnet as mx

from models.efficientdet.layers import batchnorm, bn_args, separable_conv, swish


def _net(feats, prefix, repeats, width, num_outputs, bn, pred_bias_init=None):
    """Apply one head to every level: {level: (N, width, H, W)} -> {level: (N, num_outputs, H, W)}."""
    def shared(name, init=None):
        bias = mx.sym.Variable(name + "_bias", init=init) if init else mx.sym.Variable(name + "_bias")
        return mx.sym.Variable(name + "_dw_weight"), mx.sym.Variable(name + "_weight"), bias

    convs = [shared("%s_conv%d" % (prefix, i)) for i in range(1, repeats + 1)]
    pred = shared(prefix + "_pred", pred_bias_init)
    outs = {}
    for level, (x, ch, hw) in sorted(feats.items()):
        for i, weights in enumerate(convs, 1):
            name = "%s_conv%d" % (prefix, i)
            x, hw = separable_conv(x, "%s_p%d" % (name, level), hw, ch, width, weights=weights)
            x = swish(batchnorm(x, "%s_bn_p%d" % (name, level), **bn))
            ch = width
        outs[level], _ = separable_conv(x, "%s_pred_p%d" % (prefix, level), hw, ch, num_outputs,
                                        weights=pred)
    return outs


def efficientdet_head(feats, cfg):
    """Class and box outputs per level.

    feats: {level: (symbol, width, hw)} from the neck.
    Returns ({level: (N, K*C, H, W)}, {level: (N, K*4, H, W)}) with K anchors per position and
    channel = anchor * C + class (classes) / anchor * 4 + (ty, tx, th, tw) (boxes).
    """
    k = cfg.AnchorParam.num_scales * len(cfg.AnchorParam.aspect_ratios)
    c, width, repeats = cfg.DatasetParam.num_classes, cfg.NeckParam.width, cfg.HeadParam.repeats
    prior = cfg.HeadParam.prior_prob
    cls_init = mx.init.Constant(-math.log((1 - prior) / prior))
    cls = _net(feats, "cls", repeats, width, k * c, bn_args(cfg), cls_init)
    box = _net(feats, "bbox", repeats, width, k * 4, bn_args(cfg))
    return cls, box
