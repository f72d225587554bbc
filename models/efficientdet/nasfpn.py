"""NAS-FPN neck (Ghiasi et al. 2019): the searched 7-block cell of tensorflow/models `nasfpn.py`.

A drop-in alternative to the BiFPN (`NeckParam.type = "nasfpn"`): same input {level: (symbol,
channels, hw)} for P3..P5, same output {level: (symbol, width, hw)} for P3..P7, so the heads follow
unchanged. Uses NeckParam.width, repeats, min_level and max_level (fusion is BiFPN-only).

Convs carry a bias before their BN, as tf.keras Conv2D does by default in the reference, and as the
BiFPN projections here do.

Parameter names:
  nasfpn_p{L}_conv / nasfpn_p{L}_bn                    1x1 projection + BN of backbone level L
                                                       (only where its channels differ from width)
  nasfpn_cell{c}_block{b}_conv / nasfpn_cell{c}_block{b}_bn   3x3 conv + BN closing block b of cell c
"""
import mxnet as mx

from models.efficientdet.layers import batchnorm, bn_args, conv, conv_bn, max_pool
from utils.errors import UserError

LEVELS = (3, 4, 5, 6, 7)

# (level, combine, (input0, input1), is_output). Inputs 0..4 are the cell's P3..P7, then 5, 6, ...
# are the blocks in order (tensorflow/models NASFPN_BLOCK_SPECS).
NASFPN_BLOCKS = (
    (4, "attention", (1, 3), False),
    (4, "sum", (1, 5), False),
    (3, "sum", (0, 6), True),
    (4, "sum", (6, 7), True),
    (5, "attention", (7, 8), True),
    (7, "attention", (6, 9), True),
    (6, "attention", (9, 10), True),
)


def resample(x, hw, level, target_level, target_hw):
    """Bring a node (N, C, *hw) at `level` to `target_level`: (N, C, *target_hw).

    Down: one SAME max-pool with kernel = stride = 2^d (-inf padding, so odd sizes keep every cell).
    Up: one nearest upsample by 2^d, cropped to target_hw (x[i // 2^d], equal to d nested 2x steps).
    """
    if level < target_level:
        s = 2 ** (target_level - level)
        x, out_hw = max_pool(x, hw, kernel=s, stride=s)
        assert tuple(out_hw) == tuple(target_hw), (hw, level, target_level, target_hw)
    elif level > target_level:
        s = 2 ** (level - target_level)
        x = mx.sym.UpSampling(x, scale=s, sample_type="nearest", num_args=1)
        if (s * hw[0], s * hw[1]) != tuple(target_hw):
            x = mx.sym.slice(x, begin=(None, None, 0, 0), end=(None, None, target_hw[0], target_hw[1]))
    return x


def global_attention(a, b):
    """a + b * sigmoid(max of a over H, W): a (N, C, H, W), the coarser input, gates b (N, C, H, W)
    per sample and channel (tensorflow/models `_global_attention(feat0, feat1)`)."""
    return a + mx.sym.broadcast_mul(b, mx.sym.sigmoid(mx.sym.max(a, axis=(2, 3), keepdims=True)))


def input_pyramid(feats, width, bn):
    """P3..P7 at `width` channels from backbone {level: (symbol, channels, hw)}.

    Backbone levels are projected (1x1 conv + BN) where channels differ; a level the backbone lacks is
    the SAME max-pool 2x2 stride 2 of the (projected) level below. Returns [(level, symbol, hw)].
    """
    nodes = []
    for level in LEVELS:
        if level in feats:
            x, ch, hw = feats[level]
            if ch != width:
                x, _ = conv_bn(x, "nasfpn_p%d" % level, hw, width, 1, bias=True, act=False, bn=bn)
        else:
            _, below, below_hw = nodes[-1]
            x, hw = max_pool(below, below_hw, kernel=2, stride=2)
        nodes.append((level, x, tuple(hw)))
    return nodes


def nasfpn_cell(nodes, name, width, bn):
    """One NAS-FPN cell: [(level, symbol, hw)] for P3..P7 in, the same for its 5 output blocks out.

    Each block resamples its two inputs to its level, combines them (sum, or global attention with the
    coarser input as `a`), in an output block adds every earlier same-level node nothing has consumed,
    then ReLU -> 3x3 conv (width) -> BN. Outputs: the last 5 blocks, sorted by level.
    """
    sizes = {level: hw for level, _, hw in nodes}
    nodes = list(nodes)
    consumed = [0] * len(nodes)
    for b, (level, combine, inputs, is_output) in enumerate(NASFPN_BLOCKS):
        hw = sizes[level]
        xs = []
        for i in inputs:
            consumed[i] += 1
            xs.append(resample(nodes[i][1], nodes[i][2], nodes[i][0], level, hw))
        if combine == "sum":
            x = xs[0] + xs[1]
        elif nodes[inputs[0]][0] >= nodes[inputs[1]][0]:
            x = global_attention(xs[0], xs[1])
        else:
            x = global_attention(xs[1], xs[0])
        if is_output:
            # Unconsumed same-level nodes would otherwise be dead ends of the cell graph.
            for j, (node_level, node, _) in enumerate(nodes):
                if consumed[j] == 0 and node_level == level:
                    consumed[j] += 1
                    x = x + node
        x, _ = conv(mx.sym.relu(x), "%s_block%d_conv" % (name, b), hw, width, 3, bias=True)
        nodes.append((level, batchnorm(x, "%s_block%d_bn" % (name, b), **bn), hw))
        consumed.append(0)
    return sorted(nodes[-len(LEVELS):], key=lambda n: n[0])


def nasfpn(feats, cfg):
    """NAS-FPN on backbone features {level: (symbol, channels, hw)} for levels 3..5.

    NeckParam.repeats cells at NeckParam.width channels. Returns {level: (symbol, width, hw)} for
    levels 3..7, each (N, width, H_l, W_l) with H_l = ceil(H / 2^l) as for the BiFPN.
    """
    p = cfg.NeckParam
    if (p.min_level, p.max_level) != (LEVELS[0], LEVELS[-1]):
        raise UserError("NAS-FPN is defined for levels P3-P7 only (NeckParam.min_level=3, max_level=7); "
                        "got min_level=%d, max_level=%d" % (p.min_level, p.max_level))
    bn = bn_args(cfg)
    nodes = input_pyramid(feats, p.width, bn)
    for c in range(p.repeats):
        nodes = nasfpn_cell(nodes, "nasfpn_cell%d" % c, p.width, bn)
    return {level: (x, p.width, hw) for level, x, hw in nodes}
