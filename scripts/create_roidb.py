"""Read COCO / Pascal VOC / CSV annotations and write a roidb cache (json) for training or testing.

    python scripts/create_roidb.py --format coco --ann instances_train2017.json \
        --image-dir train2017 --out data/cache/coco_train.json
    python scripts/create_roidb.py --format voc --voc-root VOCdevkit/VOC2007 --split trainval \
        --out data/cache/voc07_trainval.json [--classes aeroplane,bicycle,...]
    python scripts/create_roidb.py --format csv --ann boxes.csv --image-dir images \
        --out data/cache/mine.json [--classes cat,dog]
    python scripts/create_roidb.py --format labelimg --image-dir photos --out data/cache/mine.json
    python scripts/create_roidb.py --format yolo --image-dir images [--ann labels] \
        [--classes-file classes.txt] --out data/cache/mine.json

CSV is one row per box (image,x1,y1,x2,y2,label), Kaggle wheat (image_id,width,height,bbox,source)
or the TensorFlow object detection CSV (filename,width,height,class,xmin,ymin,xmax,ymax), told apart
by the header. labelimg: a flat folder of Pascal VOC xml beside the images (no ImageSets). yolo:
NAME.txt per image (class cx cy w h, normalised) in --ann (default the image folder, or its sibling
labels/ when it is called images/), names in --classes-file (default LABELS/classes.txt).
For VOC, --ann may name an ImageSets list instead of --split, and --image-dir overrides
VOC_ROOT/JPEGImages. --classes fixes the class order (all but coco); labels outside it are dropped
and counted. Prints images, boxes, per-class counts and what was dropped or skipped. --out must
not be one of the input files.
"""
import argparse
import os
import sys

# Runnable as `python scripts/create_roidb.py` from a checkout, without installing the repo.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.dataset import format_stats, load_coco, load_csv, load_voc, save_roidb  # noqa: E402
from core.readers import load_labelimg, load_yolo  # noqa: E402
from utils.errors import UserError, refuse_overwrite, run_cli  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--format", required=True, choices=("coco", "voc", "csv", "labelimg", "yolo"))
    parser.add_argument("--out", required=True, help="cache file to write (.json)")
    parser.add_argument("--ann", help="COCO json, CSV file, (voc) an ImageSets list file or (yolo) the label folder")
    parser.add_argument("--image-dir", help="image folder (coco/csv/labelimg/yolo; voc default VOC_ROOT/JPEGImages)")
    parser.add_argument("--classes-file", help="yolo: class names, one a line in class-id order")
    parser.add_argument("--voc-root", help="VOC folder holding Annotations/, ImageSets/, JPEGImages/")
    parser.add_argument("--split", default="trainval", help="VOC image set (default trainval)")
    parser.add_argument("--classes", help="comma-separated class names in index order (not coco); "
                                          "default: every name found, sorted (yolo: the classes file)")
    args = parser.parse_args()
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    if not args.out.endswith(".json"):
        raise UserError("--out must be a .json file, got %s" % args.out)
    voc_list = args.voc_root and os.path.join(args.voc_root, "ImageSets", "Main", args.split + ".txt")
    refuse_overwrite([("--out", args.out)], [("--ann", args.ann), ("the VOC image set list", voc_list),
                                             ("--classes-file", args.classes_file)])
    if args.classes_file and args.format != "yolo":
        raise UserError("--classes-file applies to --format yolo")
    if args.format in ("labelimg", "yolo") and not args.image_dir:
        raise UserError("--format %s needs --image-dir" % args.format)
    if args.format == "labelimg":
        roidb, categories, stats = load_labelimg(args.image_dir, classes)
    elif args.format == "yolo":
        roidb, categories, stats = load_yolo(args.image_dir, args.ann, args.classes_file, classes)
    elif args.format == "voc":
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
                raise UserError("--classes does not apply to coco: COCO keeps its own categories")
            roidb, categories, stats = load_coco(args.ann, args.image_dir)
        else:
            roidb, categories, stats = load_csv(args.ann, args.image_dir, classes)
    save_roidb(args.out, roidb, categories, source=args.format)
    print(format_stats(stats))
    print("wrote %s" % args.out)


if __name__ == "__main__":
    run_cli(main)
