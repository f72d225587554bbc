#!/usr/bin/env python
"""Remove (or re-initialise) the detection head of a checkpoint, for fine-tuning on new classes.

  python scripts/strip_head.py --src d4_coco-0000.params --out d4_nohead-0000.params
  python scripts/strip_head.py --src IN.params --out OUT.params --keep-box
  python scripts/strip_head.py --src IN.params --out OUT.params --pattern '^cls_pred_' --pattern '^bbox_pred_'
  python scripts/strip_head.py --src IN.params --out OUT.params --num-classes 3

Default: delete the class net and the box net, i.e. every parameter of `cls_conv{i}`, `cls_pred`,
`bbox_conv{i}` and `bbox_pred` (HEAD_PATTERNS): the depthwise (`_dw_weight`) and pointwise
(`_weight`, `_bias`) parts of each separable conv, and the per-level BNs `{p}_conv{i}_bn_p{L}_*`
(gamma, beta, moving mean/var). The BNs go with their convs: they belong to the head nets, and
statistics of COCO activations would not match freshly initialised convs. Backbone and BiFPN stay.

--keep-box keeps the box net (boxes are class-agnostic, so it transfers as is). --pattern REGEX
(repeatable) replaces the default patterns; patterns are `re.search`ed against the name without its
`arg:`/`aux:` prefix. --num-classes N deletes nothing: it keeps the head convs and re-initialises
only the class predictor's pointwise part for N classes, `cls_pred_weight` (K*N, width, 1, 1) from
N(0, 0.01) and `cls_pred_bias` (K*N,) = -log((1 - 0.01) / 0.01) (HeadParam.prior_prob's default),
with K anchors per position read off the box predictor (K = its channels / 4). The depthwise part
`cls_pred_dw_weight` does not depend on the classes and is kept.

The output keeps the input's key style (`arg:`/`aux:` prefixed or plain) but not the class names a
checkpoint records (the head is for new classes), is never the input file, is written atomically,
and loads as ModelParam.pretrain (missing head parameters are then initialised fresh). Prints a
table of removed and kept parameters grouped by prefix; nothing matched is an error (exit 2).
"""
import argparse
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

from utils.checkpoint import CLASS_NAMES_KEY, read_params, save_nd  # noqa: E402
from utils.errors import UserError, refuse_overwrite, run_cli  # noqa: E402
from utils.fileio import atomic_write  # noqa: E402

# The class and box nets; config/efficientdet_b4_wrs.py repeats these as its pretrain.exclude.
HEAD_PATTERNS = [r"^cls_(conv\d+|pred)_", r"^bbox_(conv\d+|pred)_"]
CLASS_PATTERNS = HEAD_PATTERNS[:1]
PRIOR_PROB = 0.01
INIT_STD = 0.01


def bare(key):
    """'arg:cls_pred_bias' -> 'cls_pred_bias' (plain names are returned as they are)."""
    return key.split(":", 1)[1] if key.startswith(("arg:", "aux:")) else key


def group(name):
    """Table row of a parameter: 'cls_conv1', 'bbox_pred', 'fpn_cell0', 'fpn_p6', 'stage3', 'stem'."""
    m = re.match(r"([a-z]+)_([a-z]+\d+|pred)(_|$)", name)
    return m.group(1) + "_" + m.group(2) if m else name.split("_")[0]


def strip(params, patterns):
    """({kept key: array}, [removed keys]) of `params` ({key: NDArray}) under `patterns`."""
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise UserError("bad --pattern %r: %s" % (p, e))
    removed = sorted(k for k in params if any(c.search(bare(k)) for c in compiled))
    return {k: v for k, v in params.items() if k not in removed}, removed


def reinit_classes(params, num_classes, seed=0):
    """Replace the class predictor's pointwise weight and bias for `num_classes` classes.

    Returns (new params dict, [(key, old shape, new shape)]). K = box predictor channels / 4.
    """
    keys = {bare(k): k for k in params}
    for need in ("cls_pred_weight", "cls_pred_bias", "bbox_pred_bias"):
        if need not in keys:
            raise UserError("--num-classes needs %s in the file (is the head already stripped?)" % need)
    box_channels = params[keys["bbox_pred_bias"]].shape[0]
    weight, bias = params[keys["cls_pred_weight"]], params[keys["cls_pred_bias"]]
    if box_channels % 4 or weight.shape[0] % (box_channels // 4):
        raise UserError("cannot infer the anchors per position: box predictor has %d channels, class "
                        "predictor %d" % (box_channels, weight.shape[0]))
    k = box_channels // 4
    rng = np.random.RandomState(seed)
    new_w = rng.normal(0.0, INIT_STD, (k * num_classes,) + weight.shape[1:])
    new_b = np.full(k * num_classes, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
    out = dict(params)
    out[keys["cls_pred_weight"]] = mx.nd.array(new_w, dtype=weight.dtype)
    out[keys["cls_pred_bias"]] = mx.nd.array(new_b, dtype=bias.dtype)
    changes = [(keys["cls_pred_weight"], weight.shape, out[keys["cls_pred_weight"]].shape),
               (keys["cls_pred_bias"], bias.shape, out[keys["cls_pred_bias"]].shape)]
    print("anchors per position K = %d; classes %d -> %d" % (k, weight.shape[0] // k, num_classes))
    return out, changes


def format_table(kept, removed):
    """Rows 'group removed kept', sorted by group, and a total."""
    rows = {}
    for keys, col in ((removed, 0), (kept, 1)):
        for key in keys:
            rows.setdefault(group(bare(key)), [0, 0])[col] += 1
    width = max([len("group")] + [len(g) for g in rows])
    lines = ["%-*s %8s %8s" % (width, "group", "removed", "kept")]
    lines += ["%-*s %8d %8d" % (width, g, r, k) for g, (r, k) in sorted(rows.items())]
    lines.append("%-*s %8d %8d" % (width, "total", len(removed), len(kept)))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="input .params (mx.nd.save dict)")
    parser.add_argument("--out", required=True, help="output .params")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--pattern", action="append", metavar="REGEX",
                      help="delete parameters matching REGEX (repeatable; replaces the defaults)")
    mode.add_argument("--keep-box", action="store_true", help="delete only the class net")
    mode.add_argument("--num-classes", type=int, metavar="N",
                      help="keep the head; re-initialise the class predictor for N classes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --num-classes initialisation")
    args = parser.parse_args()
    refuse_overwrite([("--out", args.out)], [("--src", args.src)])
    params = read_params(args.src)
    params.pop(CLASS_NAMES_KEY, None)      # the new head is for other classes
    if args.num_classes is not None:
        if args.num_classes < 1:
            raise UserError("--num-classes must be at least 1, got %d" % args.num_classes)
        out, changes = reinit_classes(params, args.num_classes, args.seed)
        for key, old, new in changes:
            print("re-initialised %-22s %s -> %s" % (key, tuple(old), tuple(new)))
    else:
        patterns = args.pattern or (CLASS_PATTERNS if args.keep_box else HEAD_PATTERNS)
        out, removed = strip(params, patterns)
        if not removed:
            raise UserError("no parameter of %s matches %s; nothing written" % (args.src, " ".join(patterns)))
        print(format_table(sorted(out), removed))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write(args.out, lambda tmp: save_nd(tmp, out))
    print("wrote %s (%d parameters)" % (args.out, len(out)))
    return 0


if __name__ == "__main__":
    run_cli(main)
