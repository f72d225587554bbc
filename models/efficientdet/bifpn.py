"""BiFPN neck (EfficientDet), with the extra P6/P7 (and P8 for D7x) levels.

Parameter names:
  fpn_p{L}_conv / fpn_p{L}_bn                     1x1 projection of the extra level L (if widths differ)
  fpn_cell{c}_node{n}_edge_weight                 one fusion weight per input edge, init 1
  fpn_cell{c}_node{n}_in{i}_conv / _in{i}_bn      1x1 projection of input node i (first cell only)
  fpn_cell{c}_node{n}_conv_dw, _conv, fpn_cell{c}_node{n}_bn   separable conv + BN after fusion
"""
import mxnet as mx

from models.efficientdet.layers import (batchnorm, bn_args, conv_bn, max_pool, separable_conv,
                                       swish, upsample_to, uses)


def bifpn_nodes(min_level, max_level):
    """Node list [(level, input_ids)] with inputs P_min..P_max numbered 0..L-1 (effdet's bifpn_config).

    For levels 3..7: 5=P6td[3,4] 6=P5td[2,5] 7=P4td[1,6] 8=P3out[0,7] 9=P4out[1,7,8]
    10=P5out[2,6,9] 11=P6out[3,5,10] 12=P7out[4,11].
    """
    num = max_level - min_level + 1
    ids = {min_level + i: [i] for i in range(num)}
    nodes, next_id = [], num
    for level in range(max_level - 1, min_level - 1, -1):  # top-down
        nodes.append((level, [ids[level][-1], ids[level + 1][-1]]))
        ids[level].append(next_id)
        next_id += 1
    for level in range(min_level + 1, max_level + 1):  # bottom-up
        nodes.append((level, ids[level] + [ids[level - 1][-1]]))
        ids[level].append(next_id)
        next_id += 1
    return nodes


def _fuse(name, inputs, fusion, width):
    """Weighted sum of same-shape inputs (N, width, H, W): fast = relu(w)/(sum relu(w) + 1e-4),
    softmax, or plain sum."""
    if fusion == "sum":
        return mx.sym.add_n(*inputs)
    w = mx.sym.Variable(name + "_edge_weight", shape=(len(inputs),), init=mx.init.One())
    if fusion == "fast":
        w = mx.sym.relu(w)
        w = mx.sym.broadcast_div(w, mx.sym.sum(w) + 1e-4)
    elif fusion == "softmax":
        # Written out because the softmax op does not infer its input dtype backwards.
        w = mx.sym.exp(mx.sym.broadcast_sub(w, mx.sym.max(w)))
        w = mx.sym.broadcast_div(w, mx.sym.sum(w))
    else:
        raise ValueError("unknown BiFPN fusion '%s' (fast | softmax | sum)" % fusion)
    weights = [mx.sym.reshape(mx.sym.slice_axis(w, axis=0, begin=i, end=i + 1), shape=(1, 1, 1, 1))
               for i in range(len(inputs))]
    if not uses("conv_fusion"):
        return mx.sym.add_n(*[mx.sym.broadcast_mul(x, wi) for x, wi in zip(inputs, weights)])
    # Each input times its weight as a depthwise 1x1 conv with that weight in every channel:
    # oneDNN keeps it in blocked layout, where broadcast_mul would convert to plain and back.
    return mx.sym.add_n(*[mx.sym.Convolution(x, weight=mx.sym.broadcast_to(wi, shape=(width, 1, 1, 1)),
                                             num_filter=width, num_group=width, kernel=(1, 1), no_bias=True)
                          for x, wi in zip(inputs, weights)])


def _resample(x, ch, hw, level, target_level, target_hw, width, name, bn):
    """Bring node x (level, ch channels) to `target_level` with `width` channels.

    Projection (1x1 conv with bias + BN) first when widths differ, then one max-pool per level down
    or a nearest upsample per level up.
    """
    if ch != width:
        x, _ = conv_bn(x, name, hw, width, 1, bias=True, act=False, bn=bn)
    while level < target_level:
        x, hw = max_pool(x, hw)
        level += 1
    if level > target_level:
        assert level == target_level + 1, "BiFPN edges span one level"
        x, hw = upsample_to(x, hw, target_hw, width), target_hw
    return x


def extra_levels(feats, width, max_level, bn):
    """Add P6.. P_max from the top backbone level: [1x1 conv + BN if widths differ] then max-pool."""
    feats = dict(feats)
    for level in range(max(feats) + 1, max_level + 1):
        x, ch, hw = feats[level - 1]
        if ch != width:
            x, _ = conv_bn(x, "fpn_p%d" % level, hw, width, 1, bias=True, act=False, bn=bn)
        x, hw = max_pool(x, hw)
        feats[level] = (x, width, hw)
    return feats


def bifpn(feats, cfg):
    """BiFPN on backbone features {level: (symbol, channels, hw)} for levels 3..5.

    Returns {level: (symbol, width, hw)} for min_level..max_level, each (N, width, H_l, W_l).
    """
    p = cfg.NeckParam
    bn = bn_args(cfg)
    feats = extra_levels(feats, p.width, p.max_level, bn)
    levels = list(range(p.min_level, p.max_level + 1))
    graph = [(level,) + tuple(feats[level]) for level in levels]  # (level, sym, ch, hw)
    for c in range(p.repeats):
        for n, (level, inputs) in enumerate(bifpn_nodes(p.min_level, p.max_level)):
            name = "fpn_cell%d_node%d" % (c, n)
            target_hw = feats[level][2]
            xs = [_resample(graph[i][1], graph[i][2], graph[i][3], graph[i][0], level, target_hw,
                            p.width, "%s_in%d" % (name, i), bn) for i in inputs]
            x = swish(_fuse(name, xs, p.fusion, p.width))
            x, _ = separable_conv(x, name + "_conv", target_hw, p.width, p.width)
            x = batchnorm(x, name + "_bn", **bn)
            graph.append((level, x, p.width, target_hw))
        graph = graph[-len(levels):]
    return {g[0]: g[1:] for g in graph}
