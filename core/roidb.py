"""The roidb cache (json, never pickle), its summary statistics, and the checks a script runs on
the roidb of a config: images present, classes matching the config and the weights.

The record format is described in core/dataset.py, whose readers build roidbs.
"""
import json
import os

import numpy as np

from utils.errors import UserError
from utils.fileio import atomic_write

CACHE_VERSION = 1


def roidb_stats(roidb, categories):
    """{"images", "boxes", "empty_images", "per_class": {name: count}} of a roidb."""
    counts = np.zeros(len(categories), np.int64)
    for r in roidb:
        counts += np.bincount(r["classes"], minlength=len(categories))[:len(categories)]
    return {"images": len(roidb), "boxes": int(counts.sum()),
            "empty_images": sum(1 for r in roidb if len(r["classes"]) == 0),
            "per_class": {c["name"]: int(n) for c, n in zip(categories, counts)}}


def format_stats(stats):
    """One summary line: images, boxes, per-class counts and what was clipped or dropped."""
    line = "%s: %d images (%d empty), %d boxes" % (
        stats.get("source", "roidb"), stats["images"], stats["empty_images"], stats["boxes"])
    line += "; per class: " + ", ".join("%s=%d" % kv for kv in stats["per_class"].items())
    if "dropped" in stats:
        line += "; clipped %d; dropped: %s" % (stats["clipped"], ", ".join(
            "%s=%d" % kv for kv in sorted(stats["dropped"].items())))
    skipped = {k: n for k, n in stats.get("skipped_images", {}).items() if n}
    if skipped:
        line += "; images skipped: " + ", ".join("%s=%d" % kv for kv in sorted(skipped.items()))
    return line


def save_roidb(path, roidb, categories, source=""):
    """Write the roidb as json (never pickle), with the category mapping and the source format."""
    images = [{"image": r["image"], "width": r["width"], "height": r["height"],
               "image_id": r["image_id"], "boxes": r["boxes"].tolist(),
               "classes": r["classes"].tolist()} for r in roidb]
    doc = {"version": CACHE_VERSION, "source": source, "categories": categories, "images": images}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
    atomic_write(path, write)              # a crash never leaves half a cache


def load_roidb(path):
    """Read a cache written by save_roidb -> (roidb, categories); a bad cache is a UserError."""
    try:
        with open(path) as f:
            doc = json.load(f)
        if doc.get("version") != CACHE_VERSION:
            raise ValueError("unknown cache version %r" % doc.get("version"))
        categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in doc["categories"]]
        roidb = []
        for r in doc["images"]:
            boxes = np.asarray(r["boxes"], np.float32).reshape(-1, 4)
            classes = np.asarray(r["classes"], np.int32).reshape(-1)
            if len(boxes) != len(classes) or ((classes < 0) | (classes >= len(categories))).any():
                raise ValueError("image %s has inconsistent boxes/classes" % r["image"])
            roidb.append({"image": r["image"], "width": int(r["width"]), "height": int(r["height"]),
                          "image_id": int(r["image_id"]), "boxes": boxes, "classes": classes})
    except FileNotFoundError:
        raise UserError("roidb cache not found: %s (make it with scripts/create_roidb.py)" % path)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError("roidb cache %s is corrupt: %s" % (path, e))
    return roidb, categories


def load_config_roidb(cfg, split):
    """The roidb of DatasetParam.<split>_roidb ("train" or "val"), checked: it has images, as many
    classes as DatasetParam.num_classes, and (train) at least one box."""
    path = getattr(cfg.DatasetParam, split + "_roidb")
    if not path:
        raise UserError("set DatasetParam.%s_roidb (a roidb cache from scripts/create_roidb.py)" % split)
    roidb, categories = load_roidb(path)
    if not roidb:
        raise UserError("the roidb %s has 0 images" % path)
    if len(categories) != cfg.DatasetParam.num_classes:
        raise UserError("the roidb has %d classes but DatasetParam.num_classes is %d"
                        % (len(categories), cfg.DatasetParam.num_classes))
    if split == "train" and not any(len(r["boxes"]) for r in roidb):
        # Every anchor would be background: the model would learn to detect nothing.
        raise UserError("no image of the training roidb %s has a box (%d images): nothing to learn but "
                        "background; check the annotations or --classes" % (path, len(roidb)))
    return roidb, categories


def check_class_names(weights_names, roidb_names, weights, roidb):
    """UserError naming both lists unless the classes the weights were trained on (None: not
    recorded, nothing to check) are the roidb's, in the same order."""
    if weights_names is not None and list(weights_names) != list(roidb_names):
        raise UserError("%s was trained on the classes %s but %s has %s: the class indices would not "
                        "match" % (weights, list(weights_names), roidb, list(roidb_names)))
