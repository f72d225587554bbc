"""Assemble EfficientDet symbols from a config: backbone -> neck -> heads."""
import json

import mxnet as mx

from models.efficientdet.backbone import pyramid_features
from models.efficientdet.bifpn import bifpn
from models.efficientdet.head import efficientdet_head
from models.efficientdet.layers import graph_target
from models.efficientdet.loss import detection_loss
from models.efficientdet.nasfpn import nasfpn
from models.efficientdet.postprocess import candidates, flat_predictions, postprocess
from utils.config import match_any

NECKS = {"bifpn": bifpn, "nasfpn": nasfpn}


def build_network(cfg, data=None):
    """Per-level outputs for input `data` (N, 3, H, W) with (H, W) = DatasetParam.image_size.

    Returns (cls, box) dicts {level: symbol}: cls (N, K*C, H_l, W_l), box (N, K*4, H_l, W_l).
    """
    data = data if data is not None else mx.sym.Variable("data")
    hw = tuple(cfg.DatasetParam.image_size)
    feats = pyramid_features(data, hw, cfg)
    if cfg.NeckParam.type not in NECKS:
        raise ValueError("unknown NeckParam.type '%s' (one of %s)" % (cfg.NeckParam.type, ", ".join(NECKS)))
    feats = NECKS[cfg.NeckParam.type](feats, cfg)
    return efficientdet_head(feats, cfg)


def get_raw_symbol(cfg):
    """Inference symbol without post-processing: outputs cls_out_p{L} then box_out_p{L} per level."""
    cls, box = build_network(cfg)
    outs = [mx.sym.identity(cls[l], name="cls_out_p%d" % l) for l in sorted(cls)]
    outs += [mx.sym.identity(box[l], name="box_out_p%d" % l) for l in sorted(box)]
    return mx.sym.Group(outs)


def train_data_shapes(cfg, batch):
    """[(name, shape)] of the training symbol's data inputs for a batch of `batch` images, in order:
    data (N, 3, H, W); normaliser (N,), the positive anchors of the whole step + 1 in every row
    (core.train_step fills it); with General.fp16 loss_scale (N,)."""
    h, w = cfg.DatasetParam.image_size
    return [("data", (batch, 3, h, w)), ("normaliser", (batch,))] + \
        ([("loss_scale", (batch,))] if cfg.General.fp16 else [])


def get_train_symbol(cfg, num_devices=1):
    """Training symbol: network + losses. Inputs as train_data_shapes, labels `cls_target` (N, A)
    and `box_target` (N, A, 4). Outputs cls_loss_output and box_loss_output (each (1,)): this
    device's share of the step's losses (the loss normaliser is the step's, see detection_loss).

    With General.fp16 the network runs in float16 (weights included; the optimizer keeps fp32
    masters) and the head outputs are cast back so the losses are computed in float32. With
    KvstoreParam.sync_bn and `num_devices` > 1 the training BatchNorms become SyncBatchNorm across
    the `num_devices` devices of the worker (sync_batchnorm).
    """
    data = mx.sym.Variable("data")
    if cfg.General.fp16:
        data = mx.sym.Cast(data, dtype="float16")
    with graph_target("training"):
        cls, box = build_network(cfg, data)
    cls, box = [cls[l] for l in sorted(cls)], [box[l] for l in sorted(box)]
    if cfg.General.fp16:
        cls = [mx.sym.Cast(x, dtype="float32") for x in cls]
        box = [mx.sym.Cast(x, dtype="float32") for x in box]
    h = cfg.HeadParam
    loss_scale = None
    if cfg.General.fp16:
        # Loss scaling as an input (N,) so the trainer can change it between steps (dynamic scaling).
        loss_scale = mx.sym.mean(mx.sym.BlockGrad(mx.sym.Variable("loss_scale")))
    # Every row holds the same value; a device's slice of the batch keeps it in row 0.
    normaliser = mx.sym.slice_axis(mx.sym.Variable("normaliser"), axis=0, begin=0, end=1)
    sym = detection_loss(cls, box, mx.sym.Variable("cls_target"), mx.sym.Variable("box_target"),
                         cfg.DatasetParam.num_classes, h.focal_alpha, h.focal_gamma, h.label_smoothing,
                         h.huber_delta, h.box_loss_weight, loss_scale, normaliser)
    sym = freeze_bn_statistics(sym, cfg.ModelParam.pretrain.fixed_param)
    if cfg.KvstoreParam.sync_bn and num_devices > 1:
        sym = sync_batchnorm(sym, num_devices)
    return sym


# BatchNorm attributes SyncBatchNorm shares (it has no axis / cudnn_off / act_type).
_SYNC_BN_ATTRS = ("eps", "momentum", "fix_gamma", "use_global_stats", "output_mean_var")


def sync_batchnorm(sym, num_devices):
    """Every BatchNorm that computes batch statistics becomes mx.sym.contrib.SyncBatchNorm over
    `num_devices` devices, keyed by its node name (the copies of a layer on the worker's devices
    meet under that key). Node and parameter names are unchanged, so checkpoints load either way;
    BNs on stored statistics (frozen) stay as they are."""
    graph = json.loads(sym.tojson())
    for node in graph["nodes"]:
        attrs = node.get("attrs", {})
        if node["op"] != "BatchNorm" or attrs.get("use_global_stats") == "True":
            continue
        node["op"] = "_contrib_SyncBatchNorm"
        node["attrs"] = dict({k: v for k, v in attrs.items() if k in _SYNC_BN_ATTRS},
                             ndev=str(num_devices), key=node["name"])
    return mx.sym.load_json(json.dumps(graph))


def freeze_bn_statistics(sym, patterns):
    """Make every BatchNorm whose moving statistics match a `fixed_param` pattern use its stored
    statistics (use_global_stats), so frozen BN layers stay bit-identical in training."""
    graph = json.loads(sym.tojson())
    changed = False
    for node in graph["nodes"]:
        if node["op"] == "BatchNorm" and match_any(node["name"] + "_moving_mean", patterns):
            node.setdefault("attrs", {})["use_global_stats"] = "True"
            changed = True
    return mx.sym.load_json(json.dumps(graph)) if changed else sym


def get_test_symbol(cfg, nms=True):
    """Inference symbol with post-processing in the graph (models/efficientdet/postprocess.py).

    Inputs `data` (N, 3, H, W) and `im_scale` (N, 1) (network input = original image * scale).
    Output `detections_output` (N, TestParam.max_det, 6): x1, y1, x2, y2 in original-image pixels,
    score, class (0-based contiguous), best first; padding rows are all -1.
    nms=False stops before NMS: input `data` only, outputs `cand_boxes` (N, T, 4) x1, y1, x2, y2
    in network-input pixels, `cand_logits` (N, T) best first and `cand_classes` (N, T), for a
    runtime that has its own NMS (utils/onnx_nms.py).
    """
    data = mx.sym.Variable("data")
    if cfg.General.fp16:
        data = mx.sym.Cast(data, dtype="float16")
    cls, box = build_network(cfg, data)
    cls, box = flat_predictions([cls[l] for l in sorted(cls)], [box[l] for l in sorted(box)],
                                cfg.DatasetParam.num_classes)
    if cfg.General.fp16:
        cls, box = mx.sym.Cast(cls, dtype="float32"), mx.sym.Cast(box, dtype="float32")
    if not nms:
        outs = candidates(cls, box, cfg)
        return mx.sym.Group([mx.sym.identity(o, name=n) for o, n in
                             zip(outs, ("cand_boxes", "cand_logits", "cand_classes"))])
    return postprocess(cls, box, mx.sym.Variable("im_scale"), cfg)
