#!/usr/bin/env python
"""Convert effdet `tf_efficientdet_*` / timm `tf_efficientnet_*` weights to MXNet, optionally verifying
the outputs against a reference fixture.

  python scripts/convert_weights.py --src tf_efficientdet_d0.pth --out model/d0 --config config/efficientdet_b0.py
  python scripts/convert_weights.py --src ../shared/reference/tf_efficientnet_b0_224.npz --out model/b0 \
      --classifier efficientnet_b0 --verify ../shared/reference/tf_efficientnet_b0_224.npz

Writes PREFIX-0000.params (arg:/aux: names, loadable by Module) and PREFIX-symbol.json, and only
after every source tensor has found its parameter; neither may be one of the input files.
"""
import argparse
import ast
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cpu import configure_cpu  # noqa: E402

configure_cpu()  # before mxnet is imported

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

from models.efficientdet.anchors import generate_anchors  # noqa: E402
from models.efficientdet.backbone import STRIDE_STAGES, efficientnet_classifier  # noqa: E402
from models.efficientdet.builder import get_raw_symbol  # noqa: E402
from models.efficientdet.convert import convert, read_source  # noqa: E402
from models.efficientdet.loss import flatten_level_outputs  # noqa: E402
from models.efficientdet.postprocess import match_detections, postprocess  # noqa: E402
from models.efficientdet.scaling import EFFICIENTNET_PARAMS  # noqa: E402
from models.efficientdet.stats import param_shapes  # noqa: E402
from utils.checkpoint import save_epoch_params  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.errors import UserError, refuse_overwrite, run_cli  # noqa: E402
from utils.fileio import atomic_write  # noqa: E402

TOLERANCE = 1e-3
# Fixture meta keys that must agree with the config, and where the config keeps them.
_META_FIELDS = {"fpn_channels": ("NeckParam", "width"), "fpn_cell_repeats": ("NeckParam", "repeats"),
                "box_class_repeats": ("HeadParam", "repeats"), "anchor_scale": ("AnchorParam", "scale"),
                "num_scales": ("AnchorParam", "num_scales")}


def _hw(size):
    """An image size given as an int (square) or (H, W) -> (H, W)."""
    return tuple(int(v) for v in size) if isinstance(size, (tuple, list)) else (int(size), int(size))


def read_fixture(path):
    if not os.path.isfile(path):
        raise UserError("fixture not found: %s" % path)
    z = np.load(path, allow_pickle=False)
    if "meta" not in z.files or "input" not in z.files:
        raise UserError("%s is not a reference fixture (needs 'meta' and 'input')" % path)
    return z, ast.literal_eval(str(z["meta"]))


def classifier_model(variant, image_size):
    """(symbol whose outputs are logits then the stride 2..32 features, output names in fixture terms)."""
    if variant not in EFFICIENTNET_PARAMS:
        raise UserError("unknown classifier '%s'; choose from %s" % (variant, ", ".join(EFFICIENTNET_PARAMS)))
    sym, feats = efficientnet_classifier(variant, image_size)
    strides = (2, 4, 8, 16, 32)
    return (mx.sym.Group([sym] + [feats["stage%d" % STRIDE_STAGES[s]][0] for s in strides]),
            ["logits"] + ["feature_stride%d" % s for s in strides])


def detection_model(cfg):
    sym = get_raw_symbol(cfg)
    names = [n[:-len("_output")].replace("cls_out", "class_out") for n in sym.list_outputs()]
    return sym, names


def with_detections(sym, names, cfg):
    """Add the in-graph post-processing (models/efficientdet/postprocess.py) of the raw outputs,
    without image scaling, as output "detections_xyxy_score_class"."""
    half = len(names) // 2
    cls, box = flatten_level_outputs(list(sym)[:half], list(sym)[half:], cfg.DatasetParam.num_classes)
    det = postprocess(cls, box, mx.sym.ones(shape=(1, 1)), cfg)
    return mx.sym.Group(list(sym) + [det]), names + ["detections_xyxy_score_class"]


def detection_diff(ours, reference):
    """Detections (0-based classes) against effdet's (1-based), order-free (match_detections)."""
    ours = ours[0].copy()
    ours[:, 5] += 1
    return match_detections(ours, reference)


# Outputs compared by something other than the plain max abs diff.
_DIFFS = {"detections_xyxy_score_class": detection_diff}


def check_meta(cfg, meta):
    for key, (cls, field) in _META_FIELDS.items():
        if key in meta and getattr(getattr(cfg, cls), field) != meta[key]:
            raise UserError("fixture was made with %s=%s but the config has %s.%s=%s"
                            % (key, meta[key], cls, field, getattr(getattr(cfg, cls), field)))
    backbone = str(meta.get("backbone", "")).replace("tf_", "")
    if backbone and backbone != cfg.BackboneParam.name:
        raise UserError("fixture backbone %s but the config has %s" % (backbone, cfg.BackboneParam.name))


def verify(sym, names, arg, aux, fixture, extra=()):
    """Run the fixture input; print one line per output and the overall max abs diff. True if within 1e-3."""
    data = fixture["input"]
    ex = sym.bind(mx.cpu(), args=dict({k: mx.nd.array(v) for k, v in arg.items()}, data=mx.nd.array(data)),
                  aux_states={k: mx.nd.array(v) for k, v in aux.items()}, grad_req="null")
    outs = ex.forward(is_train=False)
    worst = 0.0
    for name, out in list(zip(names, (o.asnumpy() for o in outs))) + list(extra):
        if name not in fixture.files:
            continue
        diff = float(_DIFFS.get(name, lambda a, b: np.abs(a - b).max())(out, fixture[name]))
        worst = max(worst, diff)
        print("%-24s %-22s max abs diff %.3g" % (name, tuple(out.shape), diff))
    print("max abs diff: %.3g" % worst)
    return worst <= TOLERANCE


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help=".pth/.pt state dict or .npz (keys optionally 'param:'-prefixed)")
    parser.add_argument("--out", required=True, help="output prefix: writes PREFIX-0000.params, PREFIX-symbol.json")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--config")
    group.add_argument("--classifier", help="efficientnet_b0 .. efficientnet_b7")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="Class.field=value")
    parser.add_argument("--num-classes", type=int)
    parser.add_argument("--verify", metavar="FIXTURE.npz", help="compare outputs with a reference fixture")
    args = parser.parse_args()
    refuse_overwrite([("--out", args.out + "-0000.params"), ("--out", args.out + "-symbol.json")],
                     [("--src", args.src), ("--verify", args.verify), ("--config", args.config)])

    fixture, meta = read_fixture(args.verify) if args.verify else (None, {})
    if args.classifier:
        known = EFFICIENTNET_PARAMS.get(args.classifier)
        size = meta.get("image_size") or (known.resolution if known else 224)
        sym, names = classifier_model(args.classifier, size)
        min_level, extra = 3, []
    else:
        sets = list(args.sets)
        num_classes = args.num_classes or meta.get("num_classes")
        if num_classes:
            sets.append("DatasetParam.num_classes=%d" % num_classes)
        if meta.get("image_size"):
            sets.append("DatasetParam.image_size=%r" % (_hw(meta["image_size"]),))
        if fixture is not None and "detections_xyxy_score_class" in fixture.files:
            # effdet's post-processing settings when it made the fixture's detections
            sets += ["TestParam.nms_type=hard", "TestParam.nms_thresh=0.5", "TestParam.score_thresh=0.0",
                     "TestParam.topk_candidates=%d" % meta.get("max_detection_points", 5000),
                     "TestParam.max_det=%d" % meta.get("max_det_per_image", 100)]
        cfg = load_config(args.config, list(sets) + ["General.batch_image=1"], is_train=False)  # one fixture image
        if meta:
            check_meta(cfg, meta)
        sym, names = detection_model(cfg)
        size, min_level = cfg.DatasetParam.image_size, cfg.NeckParam.min_level
        a = cfg.AnchorParam
        extra = [("anchors_yxyx", generate_anchors(size, min_level, cfg.NeckParam.max_level, a.num_scales,
                                                    a.aspect_ratios, a.scale))]
    arg_shapes, aux_shapes = param_shapes(sym, (1, 3) + _hw(size))
    arg, aux = convert(read_source(args.src), arg_shapes, aux_shapes, min_level)
    print("converted %d parameters and %d BN statistics from %s" % (len(arg), len(aux), args.src))

    check, check_names = sym, names
    if not args.classifier and fixture is not None and "detections_xyxy_score_class" in fixture.files:
        check, check_names = with_detections(sym, names, cfg)
    ok = verify(check, check_names, arg, aux, fixture, extra) if fixture is not None else True
    if not ok:
        print("verification failed: above %g; nothing written" % TOLERANCE)
        return 1
    folder = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(folder, exist_ok=True)
    save_epoch_params("%s-0000.params" % args.out, {k: mx.nd.array(v) for k, v in arg.items()},
                      {k: mx.nd.array(v) for k, v in aux.items()})
    deploy = sym[0] if args.classifier else sym  # the classifier's deploy graph is its logits only
    atomic_write("%s-symbol.json" % args.out, deploy.save)
    print("wrote %s-0000.params and %s-symbol.json" % (args.out, args.out))
    return 0


if __name__ == "__main__":
    run_cli(main)
