"""Translate timm `tf_efficientnet_*` / effdet `tf_efficientdet_*` state dicts to our parameter names.

The layouts agree (OIHW convs, (C, 1, k, k) depthwise, (out, in) FC), so conversion is renaming plus
strict bookkeeping: every source tensor must land somewhere and every target must be filled.
"""
import os
import re

import numpy as np

from utils.errors import UserError

_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}
_AUX = ("moving_mean", "moving_var")
# PyTorch BN bookkeeping with no MXNet counterpart.
_IGNORED = re.compile(r"\.num_batches_tracked$")

# timm block parts. Stage 1 (blocks.0.*) is a depthwise-separable block with no expansion.
_DS_PARTS = {"conv_dw": "dw_conv", "bn1": "dw_bn", "conv_pw": "project_conv", "bn2": "project_bn"}
_IR_PARTS = {"conv_pw": "expand_conv", "bn1": "expand_bn", "conv_dw": "dw_conv", "bn2": "dw_bn",
             "conv_pwl": "project_conv", "bn3": "project_bn"}


def _leaf(part, attr):
    """`part` + torch attribute -> our suffix (BN attributes get MXNet names)."""
    if part.endswith("bn"):
        return "%s_%s" % (part, _BN[attr])
    return "%s_%s" % (part, attr)


def translate(key, min_level=3):
    """Our parameter name for source `key`, or None when the key is not recognised."""
    key = re.sub(r"^(model\.)?(backbone\.)?", "", key)
    m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(conv_pw|conv_dw|conv_pwl|bn1|bn2|bn3)\.(\w+)", key)
    if m:
        s, u, part, attr = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        parts = _DS_PARTS if s == 0 else _IR_PARTS
        if part not in parts or (part.startswith("bn") and attr not in _BN):
            return None
        return "stage%d_unit%d_%s" % (s + 1, u + 1, _leaf(parts[part], attr))
    m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.se\.conv_(reduce|expand)\.(weight|bias)", key)
    if m:
        return "stage%d_unit%d_se_%s_%s" % (int(m.group(1)) + 1, int(m.group(2)) + 1, m.group(3), m.group(4))
    simple = {"conv_stem.weight": "stem_conv_weight", "conv_head.weight": "head_conv_weight",
              "classifier.weight": "fc_weight", "classifier.bias": "fc_bias"}
    if key in simple:
        return simple[key]
    m = re.fullmatch(r"(bn1|bn2)\.(\w+)", key)
    if m and m.group(2) in _BN:
        return _leaf({"bn1": "stem_bn", "bn2": "head_bn"}[m.group(1)], m.group(2))
    return _translate_fpn_head(key, min_level)


def _translate_fpn_head(key, min_level):
    m = re.fullmatch(r"fpn\.resample\.(\d+)\.conv\.(conv|bn)\.(\w+)", key)
    if m:
        return "fpn_p%d_%s" % (int(m.group(1)) + min_level, _leaf(m.group(2), m.group(3)))
    m = re.fullmatch(r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.(.+)", key)
    if m:
        node, rest = "fpn_cell%s_node%s" % (m.group(1), m.group(2)), m.group(3)
        if rest == "combine.edge_weights":
            return node + "_edge_weight"
        r = re.fullmatch(r"combine\.resample\.(\d+)\.conv\.(conv|bn)\.(\w+)", rest)
        if r:
            return "%s_in%s_%s" % (node, r.group(1), _leaf(r.group(2), r.group(3)))
        r = re.fullmatch(r"after_combine\.conv\.(conv_dw|conv_pw|bn)\.(\w+)", rest)
        if r:
            part = {"conv_dw": "conv_dw", "conv_pw": "conv", "bn": "bn"}[r.group(1)]
            return "%s_%s" % (node, _leaf(part, r.group(2)))
        return None
    m = re.fullmatch(r"(class|box)_net\.(.+)", key)
    if m:
        prefix, rest = {"class": "cls", "box": "bbox"}[m.group(1)], m.group(2)
        r = re.fullmatch(r"conv_rep\.(\d+)\.conv_(dw|pw)\.(weight|bias)", rest)
        if r:
            dw = "_dw" if r.group(2) == "dw" else ""
            return "%s_conv%d%s_%s" % (prefix, int(r.group(1)) + 1, dw, r.group(3))
        r = re.fullmatch(r"bn_rep\.(\d+)\.(\d+)\.bn\.(\w+)", rest)
        if r and r.group(3) in _BN:
            return "%s_conv%d_bn_p%d_%s" % (prefix, int(r.group(1)) + 1, int(r.group(2)) + min_level,
                                           _BN[r.group(3)])
        r = re.fullmatch(r"predict\.conv_(dw|pw)\.(weight|bias)", rest)
        if r:
            return "%s_pred%s_%s" % (prefix, "_dw" if r.group(1) == "dw" else "", r.group(2))
    return None


def read_source(path):
    """Source tensors {state_dict key: float32 array} from a .npz (keys optionally `param:`-prefixed)
    or a torch .pth/.pt state dict (torch is an optional extra)."""
    if not os.path.isfile(path):
        raise UserError("weights file not found: %s" % path)
    if path.endswith(".npz"):
        try:
            z = np.load(path, allow_pickle=False)
            keys = z.files
        except Exception as e:  # a truncated or non-zip file
            raise UserError("cannot read %s as .npz: %s" % (path, e))
        prefixed = [k for k in keys if k.startswith("param:")]
        # Fixtures also carry inputs and outputs; only `param:` keys are weights when present.
        return {k[len("param:"):]: z[k] for k in prefixed} if prefixed else {k: z[k] for k in keys}
    try:
        import torch
    except ImportError:
        raise UserError("reading %s needs torch (pip install -c constraints.txt torch==2.13.0), "
                        "or save the state dict as .npz" % path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    return {k: v.detach().float().numpy() for k, v in obj.items()}


def convert(source, arg_shapes, aux_shapes, min_level=3):
    """Map source tensors onto the target shapes {name: shape}. Returns (arg, aux) numpy dicts.

    Raises UserError listing unrecognised or unused source keys, unfilled targets and shape
    mismatches (first few of each), so nothing half-converted is ever written.
    """
    targets = dict(arg_shapes, **aux_shapes)
    out, unused, mismatched = {}, [], []
    for key, value in sorted(source.items()):
        if _IGNORED.search(key):
            continue
        name = translate(key, min_level)
        if name is None or name not in targets:
            unused.append(key if name is None else "%s (-> %s)" % (key, name))
        elif tuple(value.shape) != tuple(targets[name]):
            mismatched.append("%s %s vs %s %s" % (key, tuple(value.shape), name, tuple(targets[name])))
        else:
            out[name] = np.asarray(value, dtype=np.float32)
    missing = sorted(set(targets) - set(out) - {m.split(" ")[2] for m in mismatched})
    problems = []
    for label, items in (("unused source tensors", unused), ("shape mismatches", mismatched),
                         ("unfilled parameters", missing)):
        if items:
            problems.append("%d %s: %s%s" % (len(items), label, ", ".join(items[:5]),
                                              ", ..." if len(items) > 5 else ""))
    if problems:
        raise UserError("weights do not match the model; " + "; ".join(problems))
    return ({k: v for k, v in out.items() if k in arg_shapes},
            {k: v for k, v in out.items() if k in aux_shapes})
