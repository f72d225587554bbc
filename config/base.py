"""Defaults for every EfficientDet config. Variant files call `make_config(is_train, overrides)`.

SimpleDet style: each `*Param` is a plain class whose attributes are the settings. Classes are
created afresh on every call, so overrides never leak between configs.
"""
from models.efficientdet.scaling import EFFICIENTDET_PARAMS
from utils.config import apply_overrides


def make_config(is_train, overrides=None):
    """Build the default classes, then apply `overrides` ({"Class.field": value}) with checking."""

    class General:
        name = "efficientdet"        # experiment name: outputs go to experiments/<name>/
        batch_image = 4 if is_train else 1   # images per device
        fp16 = False
        seed = 0
        log_frequency = 10           # iterations per metrics row / progress-bar update
        checkpoint_iters = 0         # also checkpoint every N iterations (0 = at epoch ends only)
        keep_last = 3                # checkpoints kept besides the per-epoch parameter files

    class KvstoreParam:
        kvstore = "local"            # local | device | nccl | dist_sync | dist_device_sync
        gpus = []                    # empty: run on CPU
        # Data parallelism over N CPU contexts (0 = off): a testing and debugging feature that runs
        # the multi-device code path (gradient reduction, SyncBN) without GPUs; not faster than one.
        cpu_devices = 0
        # BN statistics over the batch of all devices of a worker (mx.sym.contrib.SyncBatchNorm), not
        # per device; no effect with one device or where BN is frozen. Parameter names are unchanged.
        sync_bn = False
        # Under scripts/launch.py (DMLC_ROLE=worker) a non-dist kvstore becomes dist_sync (or
        # dist_device_sync with gpus). The lr then follows the global batch, batch x workers,
        # so the schedule matches one machine at that batch; False keeps the per-worker lr.
        scale_lr_by_workers = True

    class NormalizeParam:
        # RGB 0-255 in; ImageNet statistics scaled to 0-255.
        mean = (0.485 * 255, 0.456 * 255, 0.406 * 255)
        std = (0.229 * 255, 0.224 * 255, 0.225 * 255)

    class BackboneParam:
        name = "efficientnet_b0"
        # Stochastic depth in the MBConv blocks: block i of n drops its residual branch with
        # probability drop_connect * i / n (0 = off). effdet's efficientdet_d* recipe: 0.1 for D0,
        # 0.2 from D1 up (efficientdet_overrides sets it per variant).
        drop_connect = 0.2
        bn_momentum = 0.99
        bn_eps = 1e-3

    class NeckParam:
        type = "bifpn"
        width = 64
        repeats = 3
        fusion = "fast"              # fast | softmax | sum
        min_level = 3
        max_level = 7

    class HeadParam:
        repeats = 3
        prior_prob = 0.01            # class bias = -log((1 - p) / p)
        focal_alpha = 0.25           # focal loss weight of positives (1 - alpha for negatives)
        focal_gamma = 1.5
        label_smoothing = 0.0        # targets become t * (1 - ls) + 0.5 * ls
        huber_delta = 0.1            # box loss: Huber on (ty, tx, th, tw), positives only
        box_loss_weight = 50.0       # total = focal + box_loss_weight * box

    class AnchorParam:
        scale = 4.0
        num_scales = 3
        aspect_ratios = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
        pos_iou = 0.5                # IoU >= pos_iou: positive
        neg_iou = 0.5                # IoU < neg_iou: background; between the two: ignored
        force_match = True           # each ground truth also takes its best anchor

    class DatasetParam:
        num_classes = 90
        image_size = (512, 512)      # (H, W) network input
        # roidb caches written by scripts/create_roidb.py ("" = not set)
        train_roidb = ""
        val_roidb = ""
        # display names by class index for detection_infer.py ([] = the val roidb's category
        # names when that cache exists, else "0", "1", ...)
        class_names = []
        # training augmentation (core/transforms.py); eval only resizes and pads
        hflip_prob = 0.5
        scale_range = (0.1, 2.0)     # scale jitter of the input size, then a random crop
        # a box cut by the crop is kept when it keeps at least this fraction of its area (0 = any box
        # with area left, as automl and effdet do)
        crop_min_visible = 0.0
        color_jitter = (0.0, 0.0, 0.0, 0.0)  # brightness, contrast, saturation, hue (0 = off, as automl)
        # sample mixing before the geometry above (core/augment.py, core/mixing.py); 0 = off
        mosaic_prob = 0.0            # 4 images in a 2x2 around a random centre
        mixup_prob = 0.0             # blend with another image; both box sets kept with full labels
        mixup_alpha = 32.0           # blend ratio ~ Beta(alpha, alpha); 32 (YOLOv5) keeps it near 0.5
        cutmix_prob = 0.0            # a random rectangle of another image
        paste_prob = 0.0             # paste-in ("insect") patches, 1..paste_max per image
        paste_dir = ""               # folder of RGBA patches ("" = object crops cut by the roidb's boxes)
        paste_as_objects = True      # patches get boxes; False = distractors without boxes (needs paste_dir)
        paste_class = -1             # class index of paste_dir patches pasted as objects
        paste_max = 3
        paste_scale = (0.5, 1.5)     # random resize factor of each patch
        # loader (core/loader.py)
        num_workers = 2              # decoding/augmenting threads
        prefetch = 2                 # batches prepared ahead of the one being trained on

    class ModelParam:
        class pretrain:
            prefix = ""              # checkpoint prefix of pretrained weights ("" = from scratch)
            epoch = 0
            fixed_param = []         # regex patterns of parameters kept frozen (see README recipes)
            exclude = []             # regex patterns of pretrained parameters not loaded (new heads)

    class OptimizeParam:
        optimizer = "sgd"            # sgd | adam | adamw
        lr_per_64 = 0.08             # base lr per 64 images, scaled linearly with the batch
        momentum = 0.9
        wd = 4e-5
        clip_gradient = 10.0         # global L2 norm of all gradients (0 = off)
        ema_decay = 0.9998           # EMA of weights and BN statistics, used for evaluation (0 = off)
        loss_scale = 0.0             # fp16 only: 0 = dynamic loss scaling, > 0 = static scale
        # micro-batches per optimiser update: gradients of k batches are summed before one update, so
        # the update sees k x the batch (lr scaling too); schedule, clipping, EMA and checkpoints
        # count updates
        accumulate = 1
        # stop after this many epochs without a better val AP (0 = off; needs TestParam.eval_every)
        early_stop_patience = 0

        class schedule:
            type = "cosine"          # cosine | step
            begin_epoch = 0
            end_epoch = 300
            step_epochs = []         # for type = "step"
            step_factor = 0.1

        class warmup:
            epochs = 1.0
            init_lr_ratio = 0.1      # warmup starts at 0.1 x lr, as automl

    class TestParam:
        # detection_train.py: COCO AP on DatasetParam.val_roidb every N epochs and after the last
        # one, with the evaluation weights (EMA); best epoch kept as <name>-best.params (0 = off)
        eval_every = 0
        score_thresh = 0.0
        topk_candidates = 5000
        nms_type = "hard"            # hard | soft
        nms_thresh = 0.5
        soft_nms_sigma = 0.5
        max_det = 100
        # test-time augmentation in detection_test.py (core/tta.py), views merged by WBF
        tta_flip = False             # add the horizontally flipped image of every view
        tta_scales = []              # extra input sizes besides DatasetParam.image_size: 640 or (H, W)
        wbf_iou_thr = 0.55           # same-class boxes above this IoU are fused
        wbf_skip_box_thr = 0.0       # view detections scoring below this are left out of the fusion

    classes = [General, KvstoreParam, NormalizeParam, BackboneParam, NeckParam, HeadParam,
               AnchorParam, DatasetParam, ModelParam, OptimizeParam, TestParam]
    return apply_overrides(classes, overrides or {})


def efficientdet_overrides(variant):
    """Overrides that turn the defaults into paper variant `variant` ("d0".."d7x")."""
    v = EFFICIENTDET_PARAMS[variant]
    return {
        "General.name": "efficientdet_" + variant,
        "BackboneParam.name": v.backbone,
        "NeckParam.width": v.fpn_width,
        "NeckParam.repeats": v.fpn_repeats,
        "NeckParam.fusion": v.fusion,
        "NeckParam.max_level": v.max_level,
        "HeadParam.repeats": v.head_repeats,
        "AnchorParam.scale": v.anchor_scale,
        "BackboneParam.drop_connect": v.drop_path,
        "DatasetParam.image_size": (v.image_size, v.image_size),
    }
