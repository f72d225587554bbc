"""EfficientDet-D4 fine-tuned on the WRS dataset from COCO weights (scripts/wrs/finetune.sh).

The user's settings: 2 images per device in fp16 (GPU only; pass --set General.fp16=false on a
CPU), 6 epochs, test-time top-1000 candidates before NMS at IoU 0.5. The stem and stages 1-3 are
frozen (their BN statistics too, see builder.freeze_bn_statistics): low-level features transfer
unchanged, and a small dataset would mostly add noise to them (and to their BN statistics).

The class and box nets start fresh: scripts/strip_head.py removes them from the COCO checkpoint,
and `pretrain.exclude` lists the same patterns so that an unstripped COCO checkpoint (90 classes)
loads the same way. DatasetParam.num_classes must match the roidb; finetune.sh sets it from the
roidb's category list.
"""
from config.base import efficientdet_overrides, make_config

# scripts/strip_head.py HEAD_PATTERNS (tests/test_finetune.py checks they agree).
HEAD_PATTERNS = [r"^cls_(conv\d+|pred)_", r"^bbox_(conv\d+|pred)_"]


def get_config(is_train):
    return make_config(is_train, dict(efficientdet_overrides("d4"), **{
        "General.name": "efficientdet_d4_wrs",
        "General.batch_image": 2,
        "General.fp16": True,
        "DatasetParam.train_roidb": "data/wrs/train_roidb.json",
        "DatasetParam.val_roidb": "data/wrs/val_roidb.json",
        "ModelParam.pretrain.fixed_param": [r"^stem_", r"^stage[1-3]_"],
        "ModelParam.pretrain.exclude": list(HEAD_PATTERNS),
        "OptimizeParam.schedule.end_epoch": 6,
        "TestParam.nms_thresh": 0.5,
        "TestParam.topk_candidates": 1000,
    }))
