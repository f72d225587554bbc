"""Read COCO / Pascal VOC / CSV annotations and write a roidb cache (json) for training or testing.

    python scripts/create_roidb.py --format coco --ann instances_train2017.json \
        --image-dir train2017 --out data/cache/coco_train.json
    python scripts/create_roidb.py --format voc --voc-root VOCdevkit/VOC2007 --split trainval \
        --out data/cache/voc07_trainval.json [--classes aeroplane,bicycle,...]
    python scripts/create_roidb.py --format csv --ann boxes.csv --image-dir images \
        --out data/cache/mine.json [--classes cat,dog]

CSV is either one row per box (image,x1,y1,x2,y2,label) or Kaggle wheat
(image_id,width,height,bbox,source). For VOC, --ann may name an ImageSets list instead of --split,
and --image-dir overrides VOC_ROOT/JPEGImages. --classes fixes the class order (csv/voc); labels
outside it are dropped and counted. Prints images, boxes, per-class counts and what was dropped
or skipped. --out must not be one of the input files.
"""
import argparse
import os
import sys

# Runnable as `python scripts/create_roidb.py` from a checkout, without installing the repo.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.dataset import format_stats, load_coco, load_csv, load_voc, save_roidb  # noqa: E402
from utils.errors import UserError, refuse_overwrite, run_cli  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--format", required=True, choices=("coco", "voc", "csv"))
    parser.add_argument("--out", required=True, help="cache file to write (.json)")
    parser.add_argument("--ann", help="COCO json, CSV file, or (voc) an ImageSets list file")
    parser.add_argument("--image-dir", help="image folder (coco/csv; voc default VOC_ROOT/JPEGImages)")
    parser.add_argument("--voc-root", help="VOC folder holding Annotations/, ImageSets/, JPEGImages/")
    parser.add_argument("--split", default="trainval", help="VOC image set (default trainval)")
    parser.add_argument("--classes", help="comma-separated class names in index order (csv/voc); "
                                          "default: every name found, sorted")
    args = parser.parse_args()
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    if not args.out.endswith(".json"):
        raise UserError("--out must be a .json file, got %s" % args.out)
    voc_list = args.voc_root and os.path.join(args.voc_root, "ImageSets", "Main", args.split + ".txt")
    refuse_overwrite([("--out", args.out)], [("--ann", args.ann), ("the VOC image set list", voc_list)])
    if args.format == "voc":
        if not args.voc_root:
            raise UserError("--format voc needs --voc-root")
        roidb, categories, stats = load_voc(args.voc_root, args.split, list_file=args.ann,
                                            image_dir=args.image_dir,
                                            classes=classes)
    else:
        if not args.ann or not args.image_dir:
            raise UserError("--format %s needs --ann and --image-dir" % args.format)
        if args.format == "coco":
            if classes:
                raise UserError("--classes applies to csv/voc; COCO keeps its own categories")
            roidb, categories, stats = load_coco(args.ann, args.image_dir)
        else:
            roidb, categories, stats = load_csv(args.ann, args.image_dir, classes)
    save_roidb(args.out, roidb, categories, source=args.format)
    print(format_stats(stats))
    print("wrote %s" % args.out)


if __name__ == "__main__":
    run_cli(main)
