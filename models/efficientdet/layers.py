"""Symbol building blocks with TF "SAME" semantics.

Every builder takes and returns the static spatial size `hw = (H, W)` beside the symbol: SAME
padding is asymmetric for stride 2 on even inputs (k3 pads (0, 1)), and the published weights
depend on it, so padding is decided at graph-build time from the true feature sizes.
"""
import contextlib

import mxnet as mx

# Graph forms that run fastest on oneDNN, per build target; each gives the same outputs as the
# plain form. Measured per target with scripts/profile_forward.py: oneDNN's fast depthwise weight
# gradient takes kernels at most 3 columns wide, so training leaves out "padded_kernel" (4x4 / 6x6)
# and splits wider or stride-2 depthwise convs into column windows ("column_split"), which
# inference does not need (the depthwise forward is fast at any width); "deconv_upsample" has a
# float32 constant weight, which fp16 training graphs cannot take, and was measured for inference
# only; "pool_best_class" is post-processing's max over classes as a max-pool (onnxruntime runs
# ReduceMax faster). The "portable" target is what MXNet's ONNX exporter can translate and
# onnxruntime runs well (a depthwise 1x1 conv with constant weights stays in its blocked layout);
# "plain" uses no form: the reference the others are tested against.
FORMS = {
    "inference": {"padded_kernel", "full_pool", "plain_swish", "conv_scale", "conv_fusion", "fc_mean",
                  "dense_se", "deconv_upsample", "pool_best_class"},
    "training": {"full_pool", "plain_swish", "conv_scale", "conv_fusion", "fc_mean", "dense_se",
                 "column_split"},
    "portable": {"conv_fusion"},
    "plain": set(),
}
_TARGET = ["inference"]


@contextlib.contextmanager
def graph_target(target):
    """Build symbols inside this block for `target` (a key of FORMS)."""
    if target not in FORMS:
        raise ValueError("unknown graph target %r (%s)" % (target, ", ".join(FORMS)))
    _TARGET.append(target)
    try:
        yield
    finally:
        _TARGET.pop()


def uses(form):
    """True if the symbols being built use `form` (see FORMS)."""
    return form in FORMS[_TARGET[-1]]


def same_pad(size, kernel, stride):
    """(before, after) padding and output size for one dimension under TF SAME."""
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def _zero_pad(data, pads):
    """Zero-pad axes 2 and 3 of a 4-D symbol by pads = (top, bottom, left, right).

    Built by concatenating zero blocks: MXNet's Pad op ran 5-10x slower than a copy of the same
    tensor, forward and backward. The blocks are made from the data, so they take its dtype.
    """
    for axis, before, after in ((2,) + tuple(pads[:2]), (3,) + tuple(pads[2:])):
        if before or after:
            zeros = mx.sym.zeros_like(mx.sym.BlockGrad(mx.sym.slice_axis(data, axis=axis, begin=0, end=1)))
            data = mx.sym.concat(*([zeros] * before + [data] + [zeros] * after), dim=axis)
    return data


def _padded(data, hw, kernel, stride, pad_value):
    """Pad `data` for SAME. Returns (data, symmetric_pad, out_hw): symmetric pads are left to the op."""
    (t, b, oh), (l, r, ow) = same_pad(hw[0], kernel, stride), same_pad(hw[1], kernel, stride)
    if t == b and l == r:
        return data, (t, l), (oh, ow)
    data = mx.sym.pad(data, mode="constant", constant_value=pad_value,
                      pad_width=(0, 0, 0, 0, t, b, l, r))
    return data, (0, 0), (oh, ow)


def _one_more_after(hw, kernel, stride, window):
    """True when SAME pads exactly one row and one column more after than before (stride 2 on even
    sizes), the case that a symmetric-pad op can reproduce without a padded copy of the input, and
    a `window`-sized kernel with the smaller (pool) or larger (conv) pad on both sides fits."""
    (t, b, _), (l, r, _) = same_pad(hw[0], kernel, stride), same_pad(hw[1], kernel, stride)
    pad = (t, l) if window == kernel else (b, r)
    return (stride > 1 and b == t + 1 and r == l + 1
            and all(window <= size + 2 * p for size, p in zip(hw, pad)))


# oneDNN 2.4's fast depthwise weight gradient (jit_dw) takes kernels at most 3 columns wide; wider
# ones fall back to a per-group GEMM that took ~0.5 s per 5x5 layer of D0 at batch 4.
SPLIT_WIDTH = 3


def _column_split_conv(data, name, hw, channels, kernel, stride, weight=None):
    """Depthwise SAME k x k conv as a sum of depthwise convs at most 3 columns wide.

    Window d reads kernel columns d..d+2 (columns an earlier window covers are zeroed) on the
    input zero-padded so that output j starts at column s*j + d of the SAME-padded input. Rows
    use the conv's symmetric pad, with a zero first kernel row when SAME pads one more row after
    than before. Exact: every product of the k x k conv appears once. `{name}_weight` keeps its
    (C, 1, k, k) shape. (N, C, H, W) -> (N, C, ceil(H/s), ceil(W/s)).
    """
    (t, b, oh), (l, r, ow) = same_pad(hw[0], kernel, stride), same_pad(hw[1], kernel, stride)
    if weight is None:
        weight = mx.sym.Variable(name + "_weight", shape=(channels, 1, kernel, kernel))
    width = min(kernel, SPLIT_WIDTH)
    out = None
    for start in range(0, kernel, width):
        d = min(start, kernel - width)
        w = mx.sym.slice_axis(weight, axis=3, begin=start, end=min(start + width, kernel))
        w = _zero_pad(w, (b - t, 0, start - d, 0))
        # Output j of this window is output j + q of a conv on the input padded by l - d + s*q.
        q = max(0, -((l - d) // stride))
        left = l - d + stride * q
        right = max(0, stride * (q + ow - 1) + width - (hw[1] + left))
        y = mx.sym.Convolution(_zero_pad(data, (0, 0, left, right)), weight=w, num_filter=channels,
                               kernel=(kernel + b - t, width), stride=(stride, stride), pad=(b, 0),
                               num_group=channels, no_bias=True, name="%s_cols%d" % (name, start))
        if q or (hw[1] + left + right - width) // stride + 1 != ow:
            y = mx.sym.slice_axis(y, axis=3, begin=q, end=q + ow)
        out = y if out is None else out + y
    return out, (oh, ow)


def conv(data, name, hw, num_filter, kernel=1, stride=1, groups=1, bias=False,
         weight=None, bias_var=None, in_channels=None):
    """SAME convolution (N, C, H, W) -> (N, num_filter, ceil(H/s), ceil(W/s)).

    Params: `{name}_weight` (O, I/groups, k, k) and, with bias, `{name}_bias`. Pass `weight` /
    `bias_var` to share variables (the heads share convs across levels). `in_channels` (C) lets a
    stride-2 conv on even sizes avoid an explicit Pad (depthwise convs know it already).
    """
    per_group = 1 if groups == num_filter else (in_channels // groups if in_channels else None)
    if uses("column_split") and per_group == 1 and (kernel > SPLIT_WIDTH or stride > 1):
        return _column_split_conv(data, name, hw, num_filter, kernel, stride, weight)
    kwargs = {"bias": bias_var} if bias and bias_var is not None else {}
    grow = uses("padded_kernel") and weight is None and per_group
    if grow and _one_more_after(hw, kernel, stride, kernel + 1):
        # A (k+1) x (k+1) kernel whose first row and column are zero, padded symmetrically by the
        # larger SAME pad, reads exactly the pixels of the k x k SAME conv. The zero row is added
        # in the graph, so `{name}_weight` keeps its (O, I/g, k, k) shape in checkpoints.
        (_, b, oh), (_, r, ow) = same_pad(hw[0], kernel, stride), same_pad(hw[1], kernel, stride)
        weight = mx.sym.Variable(name + "_weight", shape=(num_filter, per_group, kernel, kernel))
        weight = _zero_pad(weight, (1, 0, 1, 0))
        kernel, pad, out_hw = kernel + 1, (b, r), (oh, ow)
    else:
        data, pad, out_hw = _padded(data, hw, kernel, stride, 0.0)
    if weight is not None:
        kwargs["weight"] = weight
    out = mx.sym.Convolution(data, name=name, num_filter=num_filter, kernel=(kernel, kernel),
                             stride=(stride, stride), pad=pad, num_group=groups,
                             no_bias=not bias, **kwargs)
    return out, out_hw


def batchnorm(data, name, momentum=0.99, eps=1e-3):
    """BN with learnable gamma (MXNet's default fix_gamma=True would silently drop it).

    MXNet momentum has TF semantics: moving = moving * momentum + batch * (1 - momentum).
    """
    return mx.sym.BatchNorm(data, name=name, fix_gamma=False, momentum=momentum, eps=eps)


def sigmoid(data):
    """Logistic sigmoid through Activation, which oneDNN runs in any layout; the generic `sigmoid`
    op is an unvectorised kernel that first needs a plain-layout copy."""
    return mx.sym.Activation(data, act_type="sigmoid")


def swish(data):
    """x * sigmoid(x) of a (N, C, H, W) map, same shape.

    The product is not a oneDNN op, so it needs plain layout. Converting x once lets sigmoid and
    the product run on plain data, instead of the product's fallback converting both x and
    sigmoid(x) from the convolution's blocked layout. The conversion is an identity transpose:
    oneDNN's transpose writes the plain layout in one reorder, while MXNet's oneDNN reshape
    reorders into a temporary and then copies it (docs/speed.md).
    """
    if uses("plain_swish"):
        data = mx.sym.transpose(data, axes=(0, 1, 2, 3))
    return data * sigmoid(data)


def channel_scale(data, scale, channels, hw, batch):
    """data (N, C, H, W) times scale (N, C, 1, 1) (the SE gate), as a depthwise convolution whose
    weights are the scales, over the N images folded into one row of N*C channels of H*W pixels.

    oneDNN runs it without a plain-layout round trip and its backward is a convolution's;
    broadcast_mul's backward is a slow generic reduction. The convolution is 1-D on purpose: the
    oneDNN subgraph backend takes over 2-D inference convolutions and folds their weights once,
    which would apply the first image's gate to every later image. `batch` (N) must be the bound
    batch.
    """
    if not uses("conv_scale"):
        return mx.sym.broadcast_mul(data, scale)
    h, w = hw
    # Shapes by merging axes, not by target shapes: a graph bound at another batch then fails the
    # convolution's shape check instead of being silently wrong.
    weight = mx.sym.reshape(scale, shape=(-3, -2))                         # (N*C, 1, 1)
    rows = mx.sym.expand_dims(mx.sym.reshape(data, shape=(-3, -3)), axis=0)  # (1, N*C, H*W)
    out = mx.sym.Convolution(rows, weight=weight, kernel=(1,), num_filter=batch * channels,
                             num_group=batch * channels, no_bias=True)
    return mx.sym.reshape(out, shape=(-1, channels, h, w))


def pointwise_on_pixel(data, name, in_channels, num_filter):
    """1x1 conv with bias on one pixel per image (the SE convs): (N, in_channels, 1, 1) ->
    (N, num_filter, 1, 1), params `{name}_weight` (O, I, 1, 1) and `{name}_bias`.

    The "dense_se" form runs it as FullyConnected on the same parameters: oneDNN's convolution has
    no fast kernel for 1x1 images and falls back to a generic GEMM path.
    """
    if not uses("dense_se"):
        return conv(data, name, (1, 1), num_filter, bias=True)[0]
    weight = mx.sym.Variable(name + "_weight", shape=(num_filter, in_channels, 1, 1))
    out = mx.sym.FullyConnected(data, weight=mx.sym.reshape(weight, shape=(num_filter, in_channels)),
                                bias=mx.sym.Variable(name + "_bias"), num_hidden=num_filter)
    return mx.sym.reshape(out, shape=(0, 0, 1, 1))


def spatial_mean(data, channels, hw):
    """Mean over H and W: (N, C, H, W) -> (N, C, 1, 1), as a matrix product with a constant 1/(H*W)
    column. Global average Pooling gives the same value, but its backward takes ~25x longer."""
    if not uses("fc_mean"):
        return mx.sym.Pooling(data, global_pool=True, pool_type="avg", kernel=(1, 1))
    h, w = hw
    rows = mx.sym.reshape(data, shape=(-1, h * w))
    # The constant is made from the data so that it takes the data's dtype (fp16 training).
    column = mx.sym.ones_like(mx.sym.slice_axis(rows, axis=0, begin=0, end=1)) / float(h * w)
    out = mx.sym.FullyConnected(rows, weight=column, num_hidden=1, no_bias=True)
    return mx.sym.reshape(out, shape=(-1, channels, 1, 1))


def max_pool(data, hw, kernel=3, stride=2):
    """SAME max-pool; padded cells never win (-inf).

    When SAME pads one more row and column after than before, the "full" convention (windows
    clipped at the far edge) gives the same windows without a padded copy of the input.
    """
    if uses("full_pool") and _one_more_after(hw, kernel, stride, kernel):
        (t, _, oh), (l, _, ow) = same_pad(hw[0], kernel, stride), same_pad(hw[1], kernel, stride)
        out = mx.sym.Pooling(data, kernel=(kernel, kernel), stride=(stride, stride), pad=(t, l),
                             pool_type="max", pooling_convention="full")
        return out, (oh, ow)
    data, pad, out_hw = _padded(data, hw, kernel, stride, float("-inf"))
    out = mx.sym.Pooling(data, kernel=(kernel, kernel), stride=(stride, stride), pad=pad,
                         pool_type="max", pooling_convention="valid")
    return out, out_hw


def upsample_to(data, hw, out_hw, channels):
    """Nearest 2x upsample of (N, channels, H, W), cropped to `out_hw` (equals torch's nearest
    resize to a size of ceil(2x)).

    The "deconv_upsample" form is a depthwise 2x2 stride-2 deconvolution with unit weights (each
    pixel copied to its 2x2 block), which oneDNN runs in blocked layout; UpSampling needs plain.
    """
    if uses("deconv_upsample"):
        out = mx.sym.Deconvolution(data, weight=mx.sym.ones((channels, 1, 2, 2)), kernel=(2, 2), stride=(2, 2),
                                   num_filter=channels, num_group=channels, no_bias=True)
    else:
        out = mx.sym.UpSampling(data, scale=2, sample_type="nearest", num_args=1)
    if (2 * hw[0], 2 * hw[1]) != tuple(out_hw):
        out = mx.sym.slice(out, begin=(None, None, 0, 0), end=(None, None, out_hw[0], out_hw[1]))
    return out


def separable_conv(data, name, hw, channels, num_filter, kernel=3, weights=None):
    """Depthwise k x k (no bias, `{name}_dw_weight`) then pointwise 1 x 1 with bias (`{name}_weight/_bias`).

    `weights`: optional (dw_weight, pw_weight, pw_bias) variables to share across calls.
    (N, channels, H, W) -> (N, num_filter, H, W).
    """
    dw, pw, pb = weights or (None, None, None)
    out, hw = conv(data, name + "_dw", hw, channels, kernel, groups=channels, weight=dw)
    out, hw = conv(out, name, hw, num_filter, 1, bias=True, weight=pw, bias_var=pb)
    return out, hw


def conv_bn(data, name, hw, num_filter, kernel=1, stride=1, groups=1, bias=False, act=True, bn=None,
            in_channels=None):
    """conv (`{name}_conv_weight` [`_bias`]) -> BN (`{name}_bn_*`, `bn` = {momentum, eps}) [-> swish]."""
    out, hw = conv(data, name + "_conv", hw, num_filter, kernel, stride, groups, bias,
                   in_channels=in_channels)
    out = batchnorm(out, name + "_bn", **(bn or {}))
    return (swish(out) if act else out), hw


def bn_args(cfg):
    """BN settings shared by every BN of a detection model ({momentum, eps})."""
    return {"momentum": cfg.BackboneParam.bn_momentum, "eps": cfg.BackboneParam.bn_eps}
