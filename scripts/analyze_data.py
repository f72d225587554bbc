"""Check a dataset before training: counts, duplicates, box sizes and shapes, and the anchor fit.

    python scripts/analyze_data.py --config config/quickstart.py [--split train|val] [--out DIR]
        [--set Class.field=value ...]

Reads DatasetParam.<split>_roidb (default train) and prints the images, boxes per class, images
without boxes, duplicate images (same file bytes), the box sides and aspects at
DatasetParam.image_size after the eval resize, and the anchor fit: the best possible recall (the
share of boxes whose best anchor IoU reaches AnchorParam.pos_iou), the boxes smaller than the
smallest anchor can match, and a k-means suggestion of AnchorParam.aspect_ratios and scale,
printed as `--set` arguments (checked against the config's validation) when it fits better.
Writes DIR/data-<split>.png (histograms) and DIR/data-<split>.json (the numbers); DIR defaults
to experiments/<General.name>.
"""
import argparse
import os
import sys

# Runnable as `python scripts/analyze_data.py` from a checkout, without installing the repo.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.anchor_fit import anchor_settings, fit, suggestion_sets  # noqa: E402
from core.data_report import analyze, format_report, plot  # noqa: E402
from utils.fileio import write_json  # noqa: E402
from core.roidb import load_config_roidb  # noqa: E402
from utils.config import add_config_args, load_config  # noqa: E402
from utils.errors import refuse_overwrite, run_cli  # noqa: E402


def checked_suggestion(args, report, boxes):
    """Load the config again with the suggested --set items (so they pass its validation) and
    measure the fit of that config: it must be the one reported."""
    cfg = load_config(args.config, args.sets + suggestion_sets(report["suggestion"]), is_train=True)
    return fit(boxes, float(cfg.AnchorParam.pos_iou), **anchor_settings(cfg))["bpr"]


def main():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--split", choices=("train", "val"), default="train", help="which roidb (default train)")
    parser.add_argument("--out", help="folder for data-<split>.png/.json (default experiments/<General.name>)")
    parser.add_argument("--no-duplicates", action="store_true", help="skip the duplicate check (it reads every "
                        "image file)")
    args = parser.parse_args()
    cfg = load_config(args.config, args.sets, is_train=True)
    roidb, categories = load_config_roidb(cfg, args.split)
    out = args.out or os.path.join("experiments", cfg.General.name)
    png, doc = (os.path.join(out, "data-%s.%s" % (args.split, ext)) for ext in ("png", "json"))
    roidb_path = getattr(cfg.DatasetParam, args.split + "_roidb")
    refuse_overwrite([("the histogram", png), ("the report", doc)], [("the roidb", roidb_path)])
    report, boxes = analyze(cfg, roidb, categories, hash_files=not args.no_duplicates)
    if report["suggestion"] is not None:
        report["suggestion"]["bpr_checked"] = checked_suggestion(args, report, boxes)
    print("\n".join(format_report(report, "%s roidb %s" % (args.split, roidb_path))))
    plot(report, boxes, categories, png)
    write_json(doc, report)
    print("wrote %s and %s" % (png, doc))
    return 0


if __name__ == "__main__":
    run_cli(main)
