"""Symbol building blocks with TF "SAME" semantics.

Every builder takes and returns the static spatial size `hw = (H, W)` beside the symbol: SAME
padding is asymmetric for stride 2 on even inputs (k3 pads (0, 1)), and the published weights
depend on it, so padding is decided at graph-build time from the true feature sizes.
"""
import mxnet as mx


def same_pad(size, kernel, stride):
    """(before, after) padding and output size for one dimension under TF SAME."""
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def _padded(data, hw, kernel, stride, pad_value):
    """Pad `data` for SAME. Returns (data, symmetric_pad, out_hw): symmetric pads are left to the op."""
    (t, b, oh), (l, r, ow) = same_pad(hw[0], kernel, stride), same_pad(hw[1], kernel, stride)
    if t == b and l == r:
        return data, (t, l), (oh, ow)
    data = mx.sym.pad(data, mode="constant", constant_value=pad_value,
                      pad_width=(0, 0, 0, 0, t, b, l, r))
    return data, (0, 0), (oh, ow)


def conv(data, name, hw, num_filter, kernel=1, stride=1, groups=1, bias=False,
         weight=None, bias_var=None):
    """SAME convolution (N, C, H, W) -> (N, num_filter, ceil(H/s), ceil(W/s)).

    Params: `{name}_weight` (O, I/groups, k, k) and, with bias, `{name}_bias`. Pass `weight` /
    `bias_var` to share variables (the heads share convs across levels).
    """
    data, pad, out_hw = _padded(data, hw, kernel, stride, 0.0)
    kwargs = {}
    if weight is not None:
        kwargs["weight"] = weight
    if bias and bias_var is not None:
        kwargs["bias"] = bias_var
    out = mx.sym.Convolution(data, name=name, num_filter=num_filter, kernel=(kernel, kernel),
                             stride=(stride, stride), pad=pad, num_group=groups,
                             no_bias=not bias, **kwargs)
    return out, out_hw


def batchnorm(data, name, momentum=0.99, eps=1e-3):
    """BN with learnable gamma (MXNet's default fix_gamma=True would silently drop it).

    MXNet momentum has TF semantics: moving = moving * momentum + batch * (1 - momentum).
    """
    return mx.sym.BatchNorm(data, name=name, fix_gamma=False, momentum=momentum, eps=eps)


def swish(data):
    return data * mx.sym.sigmoid(data)


def max_pool(data, hw, kernel=3, stride=2):
    """SAME max-pool; asymmetric padding uses -inf so padded cells never win."""
    data, pad, out_hw = _padded(data, hw, kernel, stride, float("-inf"))
    out = mx.sym.Pooling(data, kernel=(kernel, kernel), stride=(stride, stride), pad=pad,
                         pool_type="max", pooling_convention="valid")
    return out, out_hw


def upsample_to(data, hw, out_hw):
    """Nearest 2x upsample, cropped to `out_hw` (equals torch's nearest resize to a size of ceil(2x))."""
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


def conv_bn(data, name, hw, num_filter, kernel=1, stride=1, groups=1, bias=False, act=True, bn=None):
    """conv (`{name}_conv_weight` [`_bias`]) -> BN (`{name}_bn_*`, `bn` = {momentum, eps}) [-> swish]."""
    out, hw = conv(data, name + "_conv", hw, num_filter, kernel, stride, groups, bias)
    out = batchnorm(out, name + "_bn", **(bn or {}))
    return (swish(out) if act else out), hw


def bn_args(cfg):
    """BN settings shared by every BN of a detection model ({momentum, eps})."""
    return {"momentum": cfg.BackboneParam.bn_momentum, "eps": cfg.BackboneParam.bn_eps}
