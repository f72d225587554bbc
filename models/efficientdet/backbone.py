"""EfficientNet B0-B7 (TF "SAME" variant, as timm `tf_efficientnet_*`) as MXNet symbols.

Parameter names (what the converter and `fixed_param` patterns see):
  stem_conv, stem_bn                           3x3 stride-2 stem
  stage{s}_unit{u}_expand_conv / _expand_bn    1x1 expansion (absent when expand ratio is 1)
  stage{s}_unit{u}_dw_conv / _dw_bn            k x k depthwise
  stage{s}_unit{u}_se_reduce / _se_expand      squeeze-excite 1x1 convs (with bias)
  stage{s}_unit{u}_project_conv / _project_bn  1x1 projection
  head_conv, head_bn, fc                       classifier only
Stages and units count from 1, so "freeze stages 1..k" is the pattern `^stage[1-k]_`.
"""
import mxnet as mx

from models.efficientdet.layers import channel_scale, conv_bn, pointwise_on_pixel, sigmoid, spatial_mean, swish
from models.efficientdet.scaling import (EFFICIENTNET_PARAMS, HEAD_CHANNELS, SE_RATIO,
                                         STEM_CHANNELS, round_filters, scaled_stages)

# The last stage at each stride: P3, P4 and P5 are the outputs of stages 3, 5 and 7.
STRIDE_STAGES = {2: 1, 4: 2, 8: 3, 16: 5, 32: 7}


def mbconv(data, name, hw, in_ch, out_ch, kernel, stride, expand, drop_rate, bn, batch):
    """One MBConv block: (N, in_ch, H, W) -> (N, out_ch, ceil(H/stride), ceil(W/stride)), N = batch.

    expand 1x1 + BN + swish (if expand > 1), depthwise + BN + swish, SE (reduced to
    in_ch * 0.25: the block *input* width), project 1x1 + BN, then drop-connect and the residual
    (only for stride 1 with in == out).
    """
    mid = in_ch * expand
    x, out_hw = data, hw
    if expand != 1:
        x, out_hw = conv_bn(x, name + "_expand", out_hw, mid, 1, **bn)
    x, out_hw = conv_bn(x, name + "_dw", out_hw, mid, kernel, stride, groups=mid, **bn)
    reduced = max(1, int(in_ch * SE_RATIO))
    s = pointwise_on_pixel(spatial_mean(x, mid, out_hw), name + "_se_reduce", mid, reduced)
    s = pointwise_on_pixel(swish(s), name + "_se_expand", reduced, mid)
    x = channel_scale(x, sigmoid(s), mid, out_hw, batch)
    x, out_hw = conv_bn(x, name + "_project", out_hw, out_ch, 1, act=False, **bn)
    if stride == 1 and in_ch == out_ch:
        if drop_rate > 0:
            # Drop-connect: one Bernoulli mask per sample, rescaled; Dropout is identity at inference.
            x = mx.sym.Dropout(x, p=drop_rate, axes=(1, 2, 3))
        x = x + data
    return x, out_hw


def efficientnet_features(data, hw, variant, drop_connect=0.0, bn_momentum=0.99, bn_eps=1e-3, batch=1):
    """EfficientNet trunk on `data` (batch, 3, H, W); the graph is built for that batch (the SE
    gates fold it into channels). Returns {"stage1".."stage7": (symbol, channels, hw)}."""
    bn = {"bn": {"momentum": bn_momentum, "eps": bn_eps}}
    width = EFFICIENTNET_PARAMS[variant].width
    stem = round_filters(STEM_CHANNELS, width)
    x, hw = conv_bn(data, "stem", hw, stem, 3, 2, in_channels=3, **bn)
    stages = scaled_stages(variant)
    total = sum(s[0] for s in stages)
    feats, in_ch, idx = {}, stem, 0
    for s, (repeats, kernel, stride, expand, out_ch) in enumerate(stages, 1):
        for u in range(1, repeats + 1):
            x, hw = mbconv(x, "stage%d_unit%d" % (s, u), hw, in_ch, out_ch, kernel,
                           stride if u == 1 else 1, expand, drop_connect * idx / total, bn, batch)
            in_ch, idx = out_ch, idx + 1
        feats["stage%d" % s] = (x, in_ch, hw)
    return feats


def pyramid_features(data, hw, cfg):
    """Backbone P3..P5 for a detection config: {level: (symbol, channels, hw)}."""
    p = cfg.BackboneParam
    feats = efficientnet_features(data, hw, p.name, p.drop_connect, p.bn_momentum, p.bn_eps,
                                  cfg.General.batch_image)
    return {level: feats["stage%d" % STRIDE_STAGES[2 ** level]] for level in (3, 4, 5)}


def efficientnet_classifier(variant, image_size=None, num_classes=1000, drop_connect=0.2, batch=1):
    """ImageNet classifier `efficientnet_bN`: trunk, 1x1 conv to 1280*w, BN, swish, mean-pool,
    dropout, FC. Input (N, 3, H, W) normalised RGB with (H, W) = image_size (an int means square;
    default: the variant's resolution) and N = batch; output (N, num_classes) logits named `fc_output`.
    """
    v = EFFICIENTNET_PARAMS[variant]
    width, resolution, dropout = v.width, v.resolution, v.dropout
    size = image_size or resolution
    hw = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    data = mx.sym.Variable("data")
    feats = efficientnet_features(data, hw, variant, drop_connect, batch=batch)
    x, _, hw = feats["stage7"]
    x, _ = conv_bn(x, "head", hw, round_filters(HEAD_CHANNELS, width), 1)
    x = mx.sym.Pooling(x, global_pool=True, pool_type="avg", kernel=(1, 1))
    x = mx.sym.Dropout(mx.sym.flatten(x), p=dropout)
    return mx.sym.FullyConnected(x, name="fc", num_hidden=num_classes), feats


